"""The portable bundle: a directory with ``model.onnx`` and ``manifest.json``.

The manifest is the single source of truth every later stage reads (calibration, verify, compile,
bench, runtime). Bundles are written into a temporary sibling directory and renamed into place,
so a failed or interrupted build never leaves a directory that looks complete.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Mapping

from .data.preprocess import Preprocessing
from .errors import EffdeployError, first_line
from .files import _owner_pid, atomic_write, fsync_dir, fsync_tree, process_alive, process_umask, sha256_file
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
        p = self.path / REFERENCE  # only a listed (so checked) artifact
        return p if REFERENCE in self.manifest.artifacts and p.exists() else None

    @property
    def status(self) -> str:
        return self.manifest.status

    def check(self) -> None:
        """Every artifact a regular file inside the bundle with the size and hash the manifest
        recorded, and every ONNX file's external data one of those artifacts."""
        import stat

        artifacts = self.manifest.artifacts
        for name, meta in artifacts.items():
            p = self.path / name
            try:
                st = os.lstat(p)
            except OSError:
                raise EffdeployError(f"bundle {self.path} is incomplete: {name} is missing; rebuild it") from None
            if not stat.S_ISREG(st.st_mode):
                raise EffdeployError(f"bundle {self.path}: {name} is not a regular file (a link or a folder); "
                                     "refusing it: a bundle's files live inside it; rebuild or copy it again")
            if st.st_size != meta.get("bytes", st.st_size) or sha256_file(p) != meta["sha256"]:
                raise EffdeployError(f"bundle {self.path}: {name} does not match its sha256 in the manifest (corrupt or edited); rebuild it")
        graphs = {n for n in artifacts if n.endswith(".onnx")} | {str(f.get("file")) for f in self.manifest.frames}
        for name in sorted(graphs & set(artifacts)):
            for location in onnx_external_data(self.path / name):
                if location not in artifacts:
                    raise EffdeployError(f"bundle {self.path}: {name} keeps tensor data in {location[:80]!r}, which is "
                                         "not a file of the bundle; refusing it")


# --- a bundle is a file from somewhere else: what a manifest may name and claim ----------------------
#
# Whoever made a bundle also wrote its manifest, so nothing in it is trusted: artifact names stay
# plain file names in the bundle folder (no separators, no "..", no hidden files, no symlinks), ONNX
# external data may only point at such an artifact (so it is hashed too), and sizes, dims, counts,
# strings and nesting have bounds far above any real bundle. Each check fails in one line.

MAX_MANIFEST_BYTES = 16 << 20
MAX_JSON_DEPTH = 32
MAX_STRING = 1 << 16
MAX_ARTIFACTS = 256
MAX_ARTIFACT_BYTES = 1 << 40
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,199}")


def safe_artifact_name(name: Any) -> bool:
    """A plain file name in the bundle folder: letters, digits and ``._+-``, not hidden, no separators."""
    return isinstance(name, str) and _NAME.fullmatch(name) is not None and ".." not in name


def _json_shape_problem(obj: Any) -> str | None:
    """Nesting deeper than MAX_JSON_DEPTH or a string longer than MAX_STRING, without recursion."""
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return f"nested deeper than {MAX_JSON_DEPTH} levels"
        if isinstance(value, str) and len(value) > MAX_STRING:
            return f"holds a string of {len(value)} characters (at most {MAX_STRING})"
        if isinstance(value, dict):
            stack.extend((k, depth + 1) for k in value)
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
    return None


def _int_in(value: Any, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def _num_in(value: Any, lo: float, hi: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and lo <= value <= hi


def manifest_problem(d: Any) -> str | None:
    """Why a parsed manifest cannot be trusted to name files and size buffers, or None."""
    if not isinstance(d, dict):
        return "it is not a JSON object"
    shape = _json_shape_problem(d)
    if shape:
        return f"it is {shape}"
    artifacts = d.get("artifacts", {})
    if not isinstance(artifacts, dict) or len(artifacts) > MAX_ARTIFACTS:
        return f"its artifact list is not a mapping of at most {MAX_ARTIFACTS} files"
    for name, meta in artifacts.items():
        if not safe_artifact_name(name) or name == MANIFEST:
            return f"it names the artifact {name[:80]!r}, which is not a plain file name inside the bundle"
        if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str) or len(meta["sha256"]) != 64 \
                or not _int_in(meta.get("bytes", 0), 0, MAX_ARTIFACT_BYTES):
            return f"its entry for {name} has no valid sha256 and byte count"
    if MODEL not in artifacts:
        return f"it does not list {MODEL} among its artifacts (so nothing would check it)"
    model = d.get("model")
    if not isinstance(model, dict):
        return "it has no model description"
    pre = model.get("preprocessing")
    # far above anything a build accepts, so no bundle effdeploy writes is refused
    checks = [("model.resolution", model.get("resolution"), _int_in, 1, 1 << 15),
              ("model.num_classes", model.get("num_classes", 1000), _int_in, 1, 10 ** 7),
              ("model.phi", model.get("phi"), _num_in, 0, 1000), ("model.width", model.get("width"), _num_in, 1e-3, 1e4),
              ("model.depth", model.get("depth"), _num_in, 1e-3, 1e4),
              ("model.preprocessing.resize", pre.get("resize") if isinstance(pre, dict) else None, _int_in, 1, 1 << 16)]
    for what, value, ok, lo, hi in checks:
        if not ok(value, lo, hi):
            return f"{what} is {str(value)[:40]!r}, outside {lo}..{hi}"
    frames = d.get("frames", [])
    if not isinstance(frames, list) or len(frames) > 64:
        return "its frame-in graph list is not a list of at most 64 entries"
    for entry in frames:
        if not isinstance(entry, dict) or entry.get("file") not in artifacts \
                or not all(_int_in(entry.get(k), 1, 16384) for k in ("width", "height")):
            return "a frame-in graph entry names no artifact of the bundle or has no sane frame size"
    labels = d.get("labels")
    if labels is not None and labels not in artifacts:
        return f"its labels file {str(labels)[:80]!r} is not an artifact of the bundle"
    return None


def onnx_external_data(path: Path) -> list[str]:
    """The external-data locations an ONNX file's tensors point at (initializers, node attributes
    and subgraphs), read without loading that data."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends
        raise EffdeployError(f"{path} is not a readable ONNX file ({type(e).__name__}); rebuild the bundle") from None
    out: list[str] = []
    graphs: list = [model.graph]
    tensors = [t for f in model.functions for n in f.node for a in n.attribute for t in ([a.t] if a.HasField("t") else [])]
    graphs += [a.g for f in model.functions for n in f.node for a in n.attribute if a.HasField("g")]
    while graphs:
        g = graphs.pop()
        tensors += list(g.initializer) + [s.values for s in g.sparse_initializer]
        for node in g.node:
            for a in node.attribute:
                tensors.extend([a.t] if a.HasField("t") else [])
                tensors.extend(a.tensors)
                tensors.extend([a.sparse_tensor.values] if a.HasField("sparse_tensor") else [])
                graphs.extend([a.g] if a.HasField("g") else [])
                graphs.extend(a.graphs)
    for t in tensors:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            out.extend(e.value for e in t.external_data if e.key == "location")
    return out


def is_bundle(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def load_bundle(path: str | Path, check: bool = True) -> Bundle:
    path = Path(path)
    if not path.exists():
        raise EffdeployError(f"{path} does not exist; pass a bundle directory written by 'effdeploy build'")
    if not is_bundle(path):
        raise EffdeployError(f"{path} is not a bundle (no {MANIFEST}); pass a directory written by 'effdeploy build'")
    mpath = path / MANIFEST
    try:
        too_big = mpath.is_symlink() or mpath.stat().st_size > MAX_MANIFEST_BYTES
        text = None if too_big else mpath.read_bytes().decode("utf-8")
    except OSError as e:
        raise EffdeployError(f"cannot read {mpath}: {e.strerror or type(e).__name__}") from None
    except UnicodeDecodeError:
        raise EffdeployError(f"{mpath} is not a valid effdeploy manifest (not UTF-8 text); rebuild the bundle") from None
    if too_big:
        raise EffdeployError(f"{mpath} is a link or larger than {MAX_MANIFEST_BYTES >> 20} MiB; not a manifest "
                             "'effdeploy build' writes; rebuild the bundle")
    try:
        data = json.loads(text)
        problem = manifest_problem(data)
        if problem:
            raise EffdeployError(f"{mpath} is not a manifest effdeploy can trust: {problem}; rebuild the bundle")
        manifest = Manifest.from_dict(data)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, AttributeError,
            RecursionError) as e:
        raise EffdeployError(f"{mpath} is not a valid effdeploy manifest ({first_line(e, 120)}); rebuild the bundle") from None
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
    try:
        fsync_tree(tmp)  # every artifact and the manifest on disk before the rename makes them the bundle
        with _swap_lock(out):  # two builds to one --out: each swap whole, the later one's bundle stays
            old = None
            if out.exists():
                old = out.resolve().parent / f".{out.name}{OLD_MARKER}{os.getpid()}"
                os.replace(out, old)
            os.replace(tmp, out)
            fsync_dir(out.resolve().parent)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise EffdeployError(f"cannot put the bundle in place at {out}: {e.strerror or type(e).__name__}; "
                             "check the disk and permissions there") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def _swap_lock(out: Path) -> Iterator[None]:
    """An advisory lock on ``out``'s parent folder (no lock file left behind), held only while one
    build swaps its bundle into place; swaps into one folder are milliseconds, so sharing is cheap."""
    import fcntl

    fd = os.open(out.resolve().parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
