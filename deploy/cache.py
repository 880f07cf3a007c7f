"""The build cache: one root (``$EFFDEPLOY_CACHE_DIR``, else ``~/.cache/effdeploy``) with a folder
per kind of entry (calibration, export, reconstruction, reference logits, ...). Entries are keyed
by hashes of everything they depend on and written atomically, so a reader never sees half."""

from __future__ import annotations

from pathlib import Path

from .bundle import atomic_write  # noqa: F401  (the one atomic writer, re-exported for cache users)


def cache_root() -> Path:
    from .calibration import default_cache_dir

    return default_cache_dir().parent


def cache_folder(kind: str) -> Path:
    """The folder of one kind of cache entry (created on first write by ``atomic_write``)."""
    return cache_root() / kind
