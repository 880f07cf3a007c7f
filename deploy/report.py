"""Output for people (aligned tables, progress on stderr) and for programs (``--json``).

Status lines go to the ``effdeploy`` logger, so an application or a notebook decides how to show
them (``logging.basicConfig(level=logging.INFO)``, or ``effdeploy.build(..., progress=print)``);
the command line attaches :class:`CliHandler`, which prints them on stderr as plain lines, and
only then draws progress bars.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Sequence

import click

LOG = logging.getLogger("effdeploy")


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
    """A status line (never on stdout, which stays clean for tables and --json). Lines that start
    with ``warning:`` are logged as warnings, so an application that configured nothing sees them."""
    if not quiet:
        (LOG.warning if msg.startswith("warning:") else LOG.info)(msg)


class CliHandler(logging.Handler):
    """The command line's status lines: each message as it is, on the stderr of the moment."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(record.getMessage(), err=True)


def attach_cli_output() -> None:
    """What ``effdeploy`` (the command) shows: status lines on stderr, and progress bars."""
    if not any(isinstance(h, CliHandler) for h in LOG.handlers):
        LOG.addHandler(CliHandler())
    LOG.setLevel(logging.INFO)
    LOG.propagate = False


@contextmanager
def lines_to(callback: Callable[[str], None] | None) -> Iterator[None]:
    """Status lines to ``callback`` for the duration (the Python API's ``progress=``)."""
    if callback is None:
        yield
        return

    class _To(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            callback(record.getMessage())

    saved, level, propagate = list(LOG.handlers), LOG.level, LOG.propagate
    LOG.handlers[:] = [_To()]  # the lines go to the callback only, whatever else was attached
    LOG.setLevel(logging.INFO)
    LOG.propagate = False
    try:
        yield
    finally:
        LOG.handlers[:] = saved
        LOG.setLevel(level)
        LOG.propagate = propagate


def progress(iterable: Iterable[Any], length: int | None = None, label: str = "", quiet: bool = False):
    """A progress bar with an ETA on stderr, on the command line only (hidden with --json / quiet,
    and in applications, which get the status lines through logging)."""
    if quiet or not any(isinstance(h, CliHandler) for h in LOG.handlers):
        return _Null(iterable)
    return click.progressbar(iterable, length=length, label=label, file=sys.stderr, show_pos=True)


class _Null:
    def __init__(self, it: Iterable[Any]):
        self.it = it

    def __enter__(self) -> Iterable[Any]:
        return self.it

    def __exit__(self, *exc: object) -> None:
        return None

def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (sound at 0 or n successes, unlike the
    normal approximation)."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, centre - half), min(1.0, centre + half))
