"""The portable bundle: a directory with ``model.onnx`` and ``manifest.json``.

The manifest is the single source of truth every later stage reads (calibration, verify, compile,
bench, runtime). Bundles are written into a temporary sibling directory and renamed into place,
so a failed or interrupted build never leaves a directory that looks complete.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Mapping

from .data.preprocess import Preprocessing
from .errors import EffdeployError
from .files import _owner_pid, atomic_write, process_alive, process_umask, sha256_file
from .model.spec import ModelSpec


MANIFEST = "manifest.json"
MODEL = "model.onnx"
REFERENCE = "reference.onnx"  # the FP32 simplified export, kept beside reduced-precision graphs
FORMAT_VERSION = 1

STATUS_VERIFIED = "verified"
STATUS_FAILED_PARITY = "failed-parity"
STATUS_UNVERIFIED = "unverified"
# The budget held, but on too few verification images to resolve it (one flip would decide it).
STATUS_CHECKED = "checked"
# No accuracy claim is possible (random weights, or an untrained head): numerical checks only.
STATUS_BENCHMARK_ONLY = "benchmark-only"
# Statuses a bundle can be compiled, benchmarked and run with; all but "verified" with a warning.
USABLE_STATUSES = (STATUS_VERIFIED, STATUS_CHECKED, STATUS_BENCHMARK_ONLY)


def status_warning(status: str) -> str | None:
    """The one line shown when a usable bundle is not ``verified`` (None when it is)."""
    if status == STATUS_CHECKED:
        return ("status checked: the accuracy budget held on too few images to verify it; "
                "rebuild with more --verify-data images for 'verified'")
    if status == STATUS_BENCHMARK_ONLY:
        return "status benchmark-only: random weights or an untrained head; latency figures only, no accuracy claim"
    return None


@dataclass(frozen=True)
class Manifest:
    """Everything later stages need to know about a bundle, without torch."""

    model: ModelSpec
    precision: str
    profile: Mapping[str, Any]
    weights: Mapping[str, Any]
    status: str = STATUS_UNVERIFIED
    artifacts: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    io: Mapping[str, Any] = field(default_factory=dict)
    versions: Mapping[str, str] = field(default_factory=dict)
    parity: Mapping[str, Any] = field(default_factory=dict)
    graph: Mapping[str, Any] = field(default_factory=dict)
    quantization: Mapping[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    created: str = ""
    format_version: int = FORMAT_VERSION
    frames: tuple[Mapping[str, Any], ...] = ()  # frame-in graphs (effdeploy.export.frames), one per frame size
    labels: str | None = None  # the class-names file in the bundle (build --labels); None: ImageNet's or "class N"

    @property
    def preprocessing(self) -> Preprocessing:
        return self.model.preprocessing

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        d["notes"] = list(self.notes)
        return d

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "Manifest":
        d = dict(d)
        if d.get("format_version", 0) > FORMAT_VERSION:
            raise EffdeployError(
                f"bundle format {d['format_version']} is newer than this effdeploy understands; upgrade effdeploy"
            )
        d["model"] = ModelSpec.from_dict(d["model"])
        d["notes"] = tuple(d.get("notes", ()))
        known = set(Manifest.__dataclass_fields__)
        return Manifest(**{k: v for k, v in d.items() if k in known})

    def with_(self, **changes: Any) -> "Manifest":
        return replace(self, **changes)


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: Manifest

    @property
    def model_path(self) -> Path:
        return self.path / MODEL

    @property
    def reference_path(self) -> Path | None:
        p = self.path / REFERENCE
        return p if p.exists() else None

    @property
    def status(self) -> str:
        return self.manifest.status

    def check(self) -> None:
        """Every artifact present with the hash the manifest recorded."""
        for name, meta in self.manifest.artifacts.items():
            p = self.path / name
            if not p.is_file():
                raise EffdeployError(f"bundle {self.path} is incomplete: {name} is missing; rebuild it")
            if "sha256" in meta and sha256_file(p) != meta["sha256"]:
                raise EffdeployError(f"bundle {self.path}: {name} does not match its sha256 in the manifest (corrupt or edited); rebuild it")


def is_bundle(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def load_bundle(path: str | Path, check: bool = True) -> Bundle:
    path = Path(path)
    if not path.exists():
        raise EffdeployError(f"{path} does not exist; pass a bundle directory written by 'effdeploy build'")
    if not is_bundle(path):
        raise EffdeployError(f"{path} is not a bundle (no {MANIFEST}); pass a directory written by 'effdeploy build'")
    try:
        data = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        manifest = Manifest.from_dict(data)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise EffdeployError(f"{path / MANIFEST} is not a valid effdeploy manifest ({e}); rebuild the bundle") from None
    bundle = Bundle(path, manifest)
    if check:
        bundle.check()
    return bundle


def artifact_entry(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def write_manifest(directory: Path, manifest: Manifest) -> Manifest:
    """Hash every artifact in ``directory`` into the manifest and write it (last)."""
    artifacts = {
        p.name: artifact_entry(p)
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")
    }
    manifest = manifest.with_(artifacts=artifacts, created=manifest.created or time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    atomic_write(directory / MANIFEST, json.dumps(manifest.to_dict(), indent=2, sort_keys=False) + "\n")
    return manifest


def check_output_dir(out: Path) -> None:
    """Refuse early (before minutes of work) when the bundle cannot be written where asked."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise EffdeployError(f"--out {out} exists and is not a directory; choose another path")
    if out.exists() and any(out.iterdir()) and not is_bundle(out):
        raise EffdeployError(f"--out {out} is a non-empty directory that is not a bundle; choose another path")
    check_writable_out(out)


def check_writable_out(out: Path) -> None:
    """Refuse an ``--out`` whose nearest existing parent folder this process cannot write into
    (checked before minutes of work; the bundle and the engine both use it)."""
    probe_dir = Path(out).resolve().parent
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    if not os.access(probe_dir, os.W_OK | os.X_OK):
        raise EffdeployError(f"--out {out}: {probe_dir} is not writable; choose a writable location")
    try:  # root passes os.access everywhere, yet /proc, sysfs and some mounts refuse new files even to root
        with tempfile.TemporaryFile(dir=probe_dir, prefix=".effdeploy-probe-"):
            pass
    except OSError as e:
        raise EffdeployError(f"--out {out}: {probe_dir} is not writable ({e.strerror or e}); "
                             "choose a writable location") from None


PARTIAL_MARKER = ".partial-"  # .<out>.partial-<pid>-<random>: a build in progress (or killed)
OLD_MARKER = ".old-"  # .<out>.old-<pid>: the previous bundle during the final swap
OWNER = ".owner.json"  # in a staging folder: who is writing it (removed before the rename)


def _start_time(pid: int) -> str | None:
    """A process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return None


def _owner_gone(folder: Path, pid: int | None) -> bool:
    """True only when the process that created ``folder`` has certainly ended on this host."""
    import socket

    if pid is None:
        return False  # not written by this version: nothing says whose it is
    try:
        owner = json.loads((folder / OWNER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        owner = {}
    if owner.get("host") not in (None, socket.gethostname()):
        return False  # a build on another machine sharing this folder
    if not process_alive(pid):
        return True
    started = owner.get("started")
    return started is not None and _start_time(pid) not in (None, started)  # the pid was reused


def stale_partials(out: Path) -> list[Path]:
    """Staging (and mid-swap) folders beside ``out`` whose owner process is gone: what a killed
    build of the same ``out`` left behind."""
    out = Path(out)
    parent = out.resolve().parent
    if not parent.is_dir():
        return []
    found = []
    for marker in (PARTIAL_MARKER, OLD_MARKER):
        for p in sorted(parent.glob(f".{glob.escape(out.name)}{marker}*")):
            if p.is_dir() and not p.is_symlink() and _owner_gone(p, _owner_pid(p.name[len(out.name) + 1:], marker)):
                found.append(p)
    return found


def remove_stale_partials(out: Path) -> list[str]:
    """Clean up after a killed build of ``out``: its staging folders are removed; a previous
    bundle caught mid-swap (``out`` itself gone) is renamed back. One line per folder, saying so."""
    out = Path(out)
    done = []
    for p in stale_partials(out):
        from .model.spec import human_bytes

        size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and not f.is_symlink())
        if OLD_MARKER in p.name[len(out.name) + 1:] and not out.exists():
            os.replace(p, out)
            done.append(f"restored the previous bundle {out} from {p.name} (a build was killed while swapping it)")
            continue
        shutil.rmtree(p, ignore_errors=True)
        if not p.exists():
            done.append(f"removed {p.name} ({human_bytes(size)}) beside {out}: left by a build whose process "
                        "is gone (killed)")
    return done


@contextmanager
def staging_dir(out: Path) -> Iterator[Path]:
    """A temporary sibling of ``out``; renamed onto ``out`` only if the body finishes.

    An existing bundle at ``out`` is replaced only after the new one is complete. The folder's
    name and its ``.owner.json`` record this process, so a build killed outright (SIGKILL, power
    loss) leaves a folder that :func:`remove_stale_partials` recognises as abandoned.
    """
    import socket

    out = Path(out)
    check_output_dir(out)
    try:
        out.resolve().parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}{PARTIAL_MARKER}{os.getpid()}-", dir=out.resolve().parent))
        os.chmod(tmp, 0o777 & ~process_umask())  # mkdtemp's 0700 would make a shared bundle unreadable
        (tmp / OWNER).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                             "started": _start_time(os.getpid())}), encoding="utf-8")
    except OSError as e:
        raise EffdeployError(f"cannot write --out {out}: {e.strerror}; choose a writable location") from None
    try:
        yield tmp
        (tmp / OWNER).unlink(missing_ok=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.resolve().parent / f".{out.name}{OLD_MARKER}{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
