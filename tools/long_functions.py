"""Functions of the effdeploy package longer than 80 lines (def line to last line), for issue 12's
layout rule; import cycles are ``tools/import_cycles.py``. Reads the files as text.

Usage: python tools/long_functions.py   (exit 1 when there is one)"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_LINES = 80


def long_functions(limit: int = MAX_LINES) -> list[tuple[int, str]]:
    found = []
    for root in ("deploy", "calibration"):
        for path in sorted((REPO / root).rglob("*.py")):
            for n in ast.walk(ast.parse(path.read_text())):
                if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > limit:
                    found.append((n.end_lineno - n.lineno + 1, f"{path.relative_to(REPO)}:{n.name}"))
    return sorted(found, reverse=True)


def main() -> int:
    found = long_functions()
    print(f"functions longer than {MAX_LINES} lines: {len(found)}")
    for n, where in found:
        print(f"  {n:4d}  {where}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
