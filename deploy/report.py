"""Output for people (aligned tables, progress on stderr) and for programs (``--json``)."""

from __future__ import annotations

import json
import sys
from typing import Any, Iterable, Sequence

import click


def table(rows: Iterable[Sequence[Any]], headers: Sequence[str] | None = None) -> str:
    rows = [[_fmt(c) for c in r] for r in rows]
    if headers:
        rows = [list(headers), *rows]
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(max(len(r) for r in rows))]
    lines = []
    for n, r in enumerate(rows):
        lines.append("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip())
        if headers and n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def kv_table(pairs: Iterable[tuple[str, Any]]) -> str:
    return table([(k, v) for k, v in pairs])


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) < 1e-3 or abs(v) >= 1e6:
            return f"{v:.3e}"
        return f"{v:.4g}"
    return str(v)


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=False, default=str))


def info(msg: str, quiet: bool = False) -> None:
    """Status lines go to stderr so that stdout stays clean for tables and --json."""
    if not quiet:
        click.echo(msg, err=True)


def progress(iterable: Iterable[Any], length: int | None = None, label: str = "", quiet: bool = False):
    """A progress bar on stderr (hidden with --json / quiet so programs get clean output)."""
    if quiet:
        return _Null(iterable)
    return click.progressbar(iterable, length=length, label=label, file=sys.stderr, show_pos=True)


class _Null:
    def __init__(self, it: Iterable[Any]):
        self.it = it

    def __enter__(self) -> Iterable[Any]:
        return self.it

    def __exit__(self, *exc: object) -> None:
        return None
