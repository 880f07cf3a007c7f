"""The build cache: one root (``$EFFDEPLOY_CACHE_DIR``, else ``$XDG_CACHE_HOME/effdeploy``, else
``~/.cache/effdeploy``) with a folder per kind of entry. Entries are keyed by hashes of everything
they depend on and written atomically (``bundle.atomic_write``), so a reader never sees half of
one and a stale one is never found; a broken entry is recomputed and overwritten.

Every stage that caches asks this module for its folder; nothing else knows where the cache is.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .files import atomic_write
from .report import info

CACHE_ENV = "EFFDEPLOY_CACHE_DIR"

# kind -> what its entries are (shown by `effdeploy cache info`)
KINDS: dict[str, str] = {
    "export": "simplified FP32 ONNX graphs (torch export + onnxsim)",
    "calibration": "activation ranges per calibration method",
    "reconstruction": "INT8 bias corrections",
    "quantized": "Q/DQ graphs from ONNX Runtime's quantizer (same graph, ranges, config -> same graph)",
    "reference": "ONNX Runtime logits of a graph on an image array",
    "drift": "per-block error of a reduced-precision graph against FP32 on an image array",
    "selection": "INT8 calibration-method scores",
    "dialect": "CPU INT8 dialect latencies (valid on the machine that timed them)",
    "modules": "weights of model objects given to effdeploy.build (safetensors, by content)",
    "backend": "the faster CPU runtime per graph, CPU and versions (Runner backend='auto')",
    "sensitivity": "leave-one-out INT8 sensitivity of each conv (the repair's fallback order)",
}


def cache_root() -> Path:
    env = os.environ.get(CACHE_ENV, "")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "effdeploy"


def cache_folder(kind: str) -> Path:
    """The folder of one kind of entry (created on first write by ``atomic_write``)."""
    if kind not in KINDS:
        raise ValueError(f"unknown cache kind {kind!r}")
    return cache_root() / kind


# Every entry carries its own check: a header with the sha256 of what follows. Writes are atomic
# and durable (files.atomic_write), so a reader never sees half an entry; the check catches what
# the disk or a copy did to it afterwards (a bit flip, a truncation), and such an entry is removed
# and recomputed, never used.
ENTRY_MAGIC = b"effdeploy-cache-1 sha256="


def store(path: Path, data: bytes | str) -> bool:
    """Write one entry atomically with its checksum; False when the cache cannot be written (that
    only costs the computation next time, and the build says so once, see :func:`warn_unusable`)."""
    import hashlib

    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    try:
        atomic_write(path, ENTRY_MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
        return True
    except OSError:
        return False


def load(path: Path, quiet: bool = False) -> bytes | None:
    """One entry's payload, or None: missing, or damaged (then removed, with a note) or written in
    an older format (removed quietly). Concurrent builds may race to write the same key; both write
    whole entries of the same content, and the rename makes one of them the entry."""
    import hashlib

    try:
        raw = Path(path).read_bytes()
    except OSError:
        return None
    head, sep, payload = raw.partition(b"\n")
    if raw.startswith(ENTRY_MAGIC) and sep and hashlib.sha256(payload).hexdigest().encode() == head[len(ENTRY_MAGIC):]:
        return payload
    damaged = raw.startswith(ENTRY_MAGIC)
    try:
        Path(path).unlink()
    except OSError:
        pass
    if damaged:
        info(f"note: discarded a damaged cache entry ({Path(path).parent.name}/{Path(path).name}: its checksum does not "
             "match, e.g. a bit flip or a truncation on disk); recomputing it", quiet)
    return None


def cache_problem(folder: str | Path | None = None) -> str | None:
    """Why a cache folder (default: the root) cannot be used, or None: probed by creating it and a
    file in it (a permission check alone misses read-only mounts, a file in the way, and root)."""
    folder = Path(folder) if folder is not None else cache_root()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return e.strerror or type(e).__name__
    return None


_WARNED: set[str] = set()


def warn_unusable(folder: str | Path, reason: str, quiet: bool = False) -> None:
    """One warning line per process for an unusable cache folder, however many stages find it so."""
    if str(folder) in _WARNED or quiet:
        return
    _WARNED.add(str(folder))
    info(f"warning: cache folder {folder} cannot be used ({reason}): building without the cache (nothing is "
         f"reused or stored); set {CACHE_ENV} to a writable folder", quiet)


@dataclass(frozen=True)
class KindUsage:
    kind: str
    path: Path
    entries: int
    bytes: int

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "path": str(self.path), "entries": self.entries, "bytes": self.bytes,
                "what": KINDS.get(self.kind, "")}


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []


def usage(root: Path | None = None) -> list[KindUsage]:
    """Entries and bytes per kind (temporary files of a writer in progress included)."""
    root = root or cache_root()
    rows = []
    for kind in KINDS:
        files = _files(root / kind)
        rows.append(KindUsage(kind, root / kind, sum(not p.name.startswith(".") for p in files),
                              sum(p.stat().st_size for p in files)))
    return rows


def clear(kinds: tuple[str, ...] = (), root: Path | None = None) -> list[KindUsage]:
    """Remove every entry of ``kinds`` (all kinds when empty); returns what was removed. Only the
    known kind folders are touched, never anything else under the root."""
    import shutil

    root = root or cache_root()
    removed = [u for u in usage(root) if not kinds or u.kind in kinds]
    for u in removed:
        if u.path.is_dir():
            shutil.rmtree(u.path)
    return removed
