"""``effdeploy cache``: what the build cache holds, and clearing it."""

from __future__ import annotations

import click

from . import cli


def _rows(usages):  # type: ignore[no-untyped-def]
    return [(u.kind, u.entries, f"{u.bytes / 1e6:.1f}", str(u.path)) for u in usages]


@cli.group("cache")
def cache_group() -> None:
    """The build cache (exports, calibrations, reconstructions, logits) under $EFFDEPLOY_CACHE_DIR."""


@cache_group.command("info")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
def cache_info_cmd(as_json: bool) -> None:
    """Entries and size of each kind of cache entry.

    Example: effdeploy cache info
    """
    from ..cache import cache_root, usage
    from ..report import emit_json, table

    rows = usage()
    if as_json:
        emit_json({"root": str(cache_root()), "kinds": [u.to_dict() for u in rows],
                   "bytes": sum(u.bytes for u in rows)})
        return
    click.echo(f"cache root: {cache_root()} (set EFFDEPLOY_CACHE_DIR to move it)")
    click.echo(table([*_rows(rows), ("total", sum(u.entries for u in rows), f"{sum(u.bytes for u in rows) / 1e6:.1f}", "")],
                     headers=["kind", "entries", "MB", "folder"]))


@cache_group.command("clear")
@click.argument("kinds", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
def cache_clear_cmd(kinds: tuple[str, ...], as_json: bool) -> None:
    """Remove cached entries: every kind, or only KINDS (export, calibration, reconstruction, ...).
    Builds recompute what they need; nothing in a bundle depends on the cache.

    Example: effdeploy cache clear reconstruction
    """
    from ..cache import KINDS, cache_root, clear
    from ..errors import EffdeployError
    from ..report import emit_json, table

    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise EffdeployError(f"unknown cache kind {unknown[0]!r}; choose from {', '.join(KINDS)} (or none for all)")
    removed = clear(tuple(kinds))
    if as_json:
        emit_json({"root": str(cache_root()), "removed": [u.to_dict() for u in removed]})
        return
    click.echo(table(_rows(removed), headers=["kind", "entries removed", "MB", "folder"]))
