"""Import cycles inside the effdeploy package, lazy (in-function) imports included.

Walks every ``import`` / ``from ... import`` statement of every module under ``deploy/``
(``effdeploy``) and ``calibration/`` (``effdeploy.calibration``, as pyproject maps them), at any
depth: module level, inside functions, under ``if TYPE_CHECKING``. ``from pkg import name`` counts
as an import of ``pkg.name`` when that is a module, else of ``pkg``. It reads the files as text
and runs none of them, so it needs neither torch nor TensorRT.

Usage: python tools/import_cycles.py [--prefix effdeploy.backends]
Prints each cycle (a strongly connected group of modules) with the statements that close it, and
exits 1 when there is one; with ``--prefix`` only cycles touching modules under that prefix count.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = {"effdeploy": REPO / "deploy", "effdeploy.calibration": REPO / "calibration", "effdeploy.profiles": REPO / "profiles"}


def modules() -> dict[str, Path]:
    """Module name -> file, for every .py file of the package."""
    found: dict[str, Path] = {}
    for package, root in ROOTS.items():
        for path in sorted(root.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def edges(mods: dict[str, Path]) -> dict[str, list[tuple[str, int, bool]]]:
    """module -> [(imported module, line, lazy)] for imports of the package's own modules."""
    out: dict[str, list[tuple[str, int, bool]]] = {m: [] for m in mods}
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        top = set(id(n) for n in tree.body)
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(mod, path.name == "__init__.py", node)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                while t and t not in mods:  # import a.b.c of a non-module attribute: its module
                    t = t.rpartition(".")[0]
                if t and t != mod:
                    out[mod].append((t, node.lineno, id(node) not in top))
    return out


def cycles(graph: dict[str, list[tuple[str, int, bool]]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    groups: list[list[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted({t for t, _, _ in graph[start]})))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on.add(start)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        group.append(w)
                        if w == node:
                            break
                    if len(group) > 1:
                        groups.append(sorted(group))
            elif nxt not in index:
                index[nxt] = low[nxt] = counter
                counter += 1
                stack.append(nxt)
                on.add(nxt)
                work.append((nxt, iter(sorted({t for t, _, _ in graph[nxt]}))))
            elif nxt in on:
                low[node] = min(low[node], index[nxt])
    return groups


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prefix", default="", help="count only cycles touching modules under this prefix")
    args = ap.parse_args(argv)
    mods = modules()
    graph = edges(mods)
    found = [g for g in cycles(graph) if any(m == args.prefix or m.startswith(args.prefix) for m in g)]
    for group in found:
        print("cycle: " + ", ".join(group))
        members = set(group)
        for m in group:
            for t, line, lazy in sorted(set(graph[m])):
                if t in members:
                    print(f"  {mods[m].relative_to(REPO)}:{line}: {m} -> {t}{' (lazy)' if lazy else ''}")
    n_edges = sum(len({(t, line) for t, line, _ in v}) for v in graph.values())
    print(f"{len(found)} cycle(s) among {len(mods)} modules, {n_edges} imports of the package's own modules"
          + (f" (cycles touching {args.prefix})" if args.prefix else ""))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
