"""Content hashes and atomic, durable writes: what every stage and the cache use to write a file
that a reader never sees half-written (nor, after a power cut, renamed but empty) and to key what
it depends on.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_proto(message: Any) -> str:
    """sha256 of a protobuf (an ONNX graph) in its deterministic encoding: the cache keys' graph part."""
    return hashlib.sha256(message.SerializeToString(deterministic=True)).hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def process_umask() -> int:
    """The umask, read from /proc where it can be (setting it to read it is not thread-safe)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists (one owned by another user counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _owner_pid(name: str, marker: str) -> int | None:
    """The pid in ``.<name><marker><pid>-...`` (staging folders, temp files), or None."""
    head = name.rpartition(marker)[2].split("-", 1)[0].split(".", 1)[0]
    return int(head) if head.isdigit() else None


def fsync_dir(path: str | Path) -> None:
    """Make a rename or a new entry in ``path`` durable (POSIX: the directory itself must be synced)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems (and Windows) cannot sync a directory; the rename is still atomic
        pass
    finally:
        os.close(fd)


def fsync_tree(folder: str | Path) -> None:
    """Sync every file under ``folder`` and the folders themselves: a bundle renamed into place after
    this survives a power cut whole (without it the rename may land before the data)."""
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                fd = os.open(os.path.join(root, name), os.O_RDONLY)
            except OSError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(root)


def atomic_write(path: str | Path, data: bytes | bytearray | memoryview | str) -> None:
    """Write through a temp file in the same folder and rename: readers (and caches) never see a
    half-written file. The temp file carries the writer's pid, so one left by a killed process
    is removed by the next write of the same file; the file gets the mode any other file
    written here gets (0666 less the umask), not mkstemp's private 0600."""
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}-", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~process_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename can be
        os.replace(tmp, path)
        fsync_dir(path.parent)  # and the rename itself
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    for left in glob.glob(os.path.join(glob.escape(str(path.parent)), f".{glob.escape(path.name)}.tmp-*.tmp")):
        pid = _owner_pid(os.path.basename(left), ".tmp-")
        if pid is not None and not process_alive(pid):
            try:
                os.unlink(left)
            except OSError:
                pass
