"""The engine manifest (``engine.json`` beside ``engine.plan``) and what this device is.

A TensorRT plan only runs on the TensorRT release and GPU that built it, and a truncated or
corrupted plan can crash the process that deserializes it. So every plan effdeploy writes gets a
small JSON manifest (what built it, for which GPU and profile, from which ONNX and calibration, the
I/O tensors, the preprocessing, the sha256 of the plan), and every load checks the plan against it
*before* TensorRT sees a byte of it. The device facts those checks and the compile rules need
(CUDA through cuda-python, the GPUs, a Jetson's L4T release) are read here too. Torch-free and
TensorRT-free: the runtime imports this module.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping

from ... import __version__
from .compat import TrtVersion, version_compatible_runs
from ...errors import EffdeployError, first_line
from ...files import atomic_write, sha256_file

ENGINE_FORMAT_VERSION = 1
ENGINE_MANIFEST_SUFFIX = ".json"


@dataclass(frozen=True)
class GpuInfo:
    """The GPU a plan was built on or is about to run on."""

    name: str
    compute_capability: str  # "8.7"
    index: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def normalize_cc(cc: str | float | None) -> str | None:
    """``"8.7"``, ``8.7``, ``"sm_87"``, ``"87"`` -> ``"8.7"``."""
    if cc is None:
        return None
    s = str(cc).strip().lower().removeprefix("sm_").removeprefix("sm")
    if "." in s:
        major, minor = s.split(".", 1)
        return f"{int(major)}.{int(minor or 0)}"
    if s.isdigit() and len(s) >= 2:
        return f"{int(s[:-1])}.{int(s[-1])}"
    if s.isdigit():
        return f"{int(s)}.0"
    raise EffdeployError(f"{cc!r} is not a compute capability; write it like 8.7")


def cc_tuple(cc: str) -> tuple[int, int]:
    major, minor = normalize_cc(cc).split(".")  # type: ignore[union-attr]
    return int(major), int(minor)


def cuda_runtime() -> ModuleType | None:
    """cuda-python's runtime bindings (``cuda.bindings.runtime``; ``cuda.cudart`` before 12.6)."""
    try:
        from cuda.bindings import runtime  # noqa: PLC0415

        return runtime
    except ImportError:
        pass
    try:
        from cuda import cudart  # type: ignore[attr-defined]  # noqa: PLC0415

        return cudart
    except ImportError:
        return None


def cuda_python_version() -> str | None:
    """The installed cuda-python (or cuda-bindings) distribution's version, None when absent."""
    from importlib import metadata  # noqa: PLC0415

    for dist in ("cuda-python", "cuda-bindings"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def cuda_version_text(version: int | None) -> str:
    """12060 -> "12.6" (the encoding of cudaRuntimeGetVersion / cudaDriverGetVersion)."""
    if not version:
        return "none"
    return f"{version // 1000}.{(version % 1000) // 10}"


@dataclass(frozen=True)
class CudaProbe:
    """What cuda-python reports here; ``error`` is the CUDA error that made the GPU unusable."""

    bindings: str | None = None  # cuda-python version; None: not installed
    runtime_version: int | None = None  # CUDA runtime inside cuda-python (statically linked), e.g. 12060
    driver_version: int | None = None  # newest CUDA the driver supports; 0: no driver
    gpus: tuple[GpuInfo, ...] = ()
    free_bytes: int | None = None  # of GPU ``gpus[0]`` (only when memory was asked for)
    total_bytes: int | None = None
    error: str | None = None

    @property
    def gpu(self) -> GpuInfo | None:
        return self.gpus[0] if self.gpus else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["runtime"] = cuda_version_text(self.runtime_version)
        d["driver"] = cuda_version_text(self.driver_version)
        return d


def _cuda_error_text(rt: ModuleType, err: Any) -> str:
    name = desc = ""
    try:
        name = _text(rt.cudaGetErrorName(err)[1])
        desc = _text(rt.cudaGetErrorString(err)[1])
    except Exception:  # an enum the bindings cannot name: keep its number
        return f"CUDA error {int(err)}" if isinstance(err, int) else f"CUDA error {err}"
    return f"{name}: {desc}" if name and desc else (name or desc or str(err))


def _text(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).split(b"\0", 1)[0].decode(errors="replace")
    return str(value).strip()


def probe_cuda(index: int = 0, memory: bool = False) -> CudaProbe:
    """Ask cuda-python for the CUDA versions, the GPUs and (``memory``) device ``index``'s free memory.

    Never raises: a CUDA error (e.g. ``cudaErrorInsufficientDriver`` when cuda-python 13 meets JetPack
    6's CUDA 12.6 driver) is kept in ``error`` so the caller can say it instead of "no GPU".
    """
    rt = cuda_runtime()
    version = cuda_python_version()
    if rt is None:
        return CudaProbe(bindings=version, error=None if version is None else "cuda.bindings.runtime does not import")
    ok = rt.cudaError_t.cudaSuccess
    runtime_v = driver_v = None
    try:
        err, v = rt.cudaRuntimeGetVersion()
        runtime_v = int(v) if err == ok else None
        err, v = rt.cudaDriverGetVersion()
        driver_v = int(v) if err == ok else None
        err, count = rt.cudaGetDeviceCount()
        if err != ok:
            return CudaProbe(version, runtime_v, driver_v, error=_cuda_error_text(rt, err))
        gpus = []
        for i in range(int(count)):
            err, props = rt.cudaGetDeviceProperties(i)
            if err != ok:
                return CudaProbe(version, runtime_v, driver_v, tuple(gpus), error=_cuda_error_text(rt, err))
            gpus.append(GpuInfo(name=_text(props.name), compute_capability=f"{props.major}.{props.minor}", index=i))
        if gpus and index >= len(gpus):
            return CudaProbe(version, runtime_v, driver_v, tuple(gpus), error=f"GPU {index} does not exist ({len(gpus)} visible)")
        gpus = gpus[index:] + gpus[:index]  # the asked-for GPU first
        free = total = None
        if memory and gpus:
            err, = rt.cudaSetDevice(index)[:1]
            if err == ok:
                err, free, total = rt.cudaMemGetInfo()
            if err != ok:
                return CudaProbe(version, runtime_v, driver_v, tuple(gpus), error=_cuda_error_text(rt, err))
        return CudaProbe(version, runtime_v, driver_v, tuple(gpus), free, total)
    except Exception as e:  # a missing libcuda surfaces as RuntimeError in some cuda-python releases
        return CudaProbe(version, runtime_v, driver_v, error=f"{type(e).__name__}: {first_line(e, 160)}")


def cuda_problem(probe: CudaProbe) -> str | None:
    """One line saying why cuda-python cannot use a GPU here and what to do, or None when it can."""
    if probe.bindings is None and probe.error is None:
        return ("cuda-python is not installed here; pip install 'effdeploy[jetson]' on a Jetson, "
                "'effdeploy[tensorrt]' elsewhere")
    rt, drv = probe.runtime_version, probe.driver_version
    if rt and drv and rt // 1000 > drv // 1000:
        return (
            f"cuda-python {probe.bindings or '?'} carries the CUDA {cuda_version_text(rt)} runtime but the driver supports "
            f"CUDA {cuda_version_text(drv)} (JetPack 6: 12.6); install the matching major: "
            f"pip install 'cuda-python>={drv // 1000}.0,<{drv // 1000 + 1}'"
            + (f" ({probe.error})" if probe.error else "")
        )
    if probe.error:
        return f"CUDA reports {probe.error}"
    if drv == 0:
        return "no NVIDIA driver answers (cudaDriverGetVersion reports 0); install the driver or run on the target"
    if not probe.gpus:
        return "cuda-python sees no CUDA GPU here; run on the target GPU"
    return None


def detect_gpu(index: int = 0) -> GpuInfo | None:
    """Name and compute capability of local GPU ``index``, or None (see :func:`probe_cuda` for why)."""
    return probe_cuda(index).gpu


@dataclass(frozen=True)
class L4tRelease:
    """The Jetson Linux (L4T) release of a Jetson, from /etc/nv_tegra_release; tells the JetPack."""

    major: int
    revision: str

    @property
    def jetpack(self) -> str:
        """JetPack line for this L4T: R32 -> 4, R35 -> 5, R36 -> 6, R38/R39 -> 7 (JetPack release notes)."""
        return {32: "4", 35: "5", 36: "6", 38: "7", 39: "7"}.get(self.major, "?")

    @property
    def minor(self) -> int:
        head = self.revision.split(".")[0]
        return int(head) if head.isdigit() else 0

    @property
    def jetpack_release(self) -> str:
        """The JetPack release where the TensorRT it ships differs within a line (JetPack archive's L4T
        table): R32.6 -> 4.6 (TensorRT 8.0.1), R32.7 -> 4.6.1+ (8.2.1), R36.2/R36.3 -> 6.0 (8.6.2),
        R36.4+ -> 6.1+ (10.3)."""
        if self.major == 32:
            return "4.6.1+" if self.minor >= 7 else ("4.6" if self.minor == 6 else "4.5 or older")
        if self.major == 36:
            return "6.1+" if self.minor >= 4 else "6.0"
        return self.jetpack

    def __str__(self) -> str:
        return f"L4T R{self.major}.{self.revision} (JetPack {self.jetpack_release})"


def parse_l4t(text: str) -> L4tRelease | None:
    """``# R36 (release), REVISION: 4.3, GCID: ...`` -> L4tRelease(36, "4.3")."""
    m = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text or "")
    return L4tRelease(int(m.group(1)), m.group(2).rstrip(".")) if m else None


def read_l4t(path: str | Path = "/etc/nv_tegra_release") -> L4tRelease | None:
    try:
        return parse_l4t(Path(path).read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return None


@dataclass(frozen=True)
class EngineManifest:
    """What built a plan and what it expects; the runtime trusts the plan only through this."""

    tensorrt_version: str
    gpu: Mapping[str, Any]  # GpuInfo.to_dict()
    profile: Mapping[str, Any]  # Profile.to_dict()
    precision: str
    onnx_sha256: str
    calibration_sha256: str | None
    io: tuple[Mapping[str, Any], ...]  # {name, mode, dtype, shape, [min, opt, max]}
    preprocessing: Mapping[str, Any]
    build: Mapping[str, Any] = field(default_factory=dict)  # the CompilePlan knobs used
    bundle: Mapping[str, Any] = field(default_factory=dict)  # {path, model}
    frame: Mapping[str, Any] = field(default_factory=dict)  # {width, height, channel_order} of a frame-in engine
    plan_sha256: str = ""
    plan_bytes: int = 0
    created: str = ""
    effdeploy_version: str = __version__
    format_version: int = ENGINE_FORMAT_VERSION

    @property
    def gpu_info(self) -> GpuInfo:
        return GpuInfo(
            name=str(self.gpu.get("name", "?")),
            compute_capability=str(self.gpu.get("compute_capability", "?")),
            index=int(self.gpu.get("index", 0)),
        )

    @property
    def inputs(self) -> list[Mapping[str, Any]]:
        return [t for t in self.io if t.get("mode") == "input"]

    @property
    def outputs(self) -> list[Mapping[str, Any]]:
        return [t for t in self.io if t.get("mode") == "output"]

    @property
    def profile_name(self) -> str:
        return str(self.profile.get("name", "?"))

    @property
    def version_compatible(self) -> bool:
        return bool(self.build.get("version_compatible", False))

    @property
    def hardware_compat(self) -> str:
        return str(self.build.get("hardware_compat", "none"))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["io"] = [dict(t) for t in self.io]
        return d

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "EngineManifest":
        d = dict(d)
        if int(d.get("format_version", 0)) > ENGINE_FORMAT_VERSION:
            raise EffdeployError(
                f"engine manifest format {d['format_version']} is newer than this effdeploy understands; upgrade effdeploy"
            )
        d["io"] = tuple(dict(t) for t in d.get("io", ()))
        known = set(EngineManifest.__dataclass_fields__)
        return EngineManifest(**{k: v for k, v in d.items() if k in known})

    def with_(self, **changes: Any) -> "EngineManifest":
        return replace(self, **changes)


def engine_manifest_path(plan_path: str | Path) -> Path:
    """``engine.plan`` -> ``engine.json`` (same directory, same stem)."""
    p = Path(plan_path)
    return p.with_name(p.stem + ENGINE_MANIFEST_SUFFIX) if p.suffix else p.with_name(p.name + ENGINE_MANIFEST_SUFFIX)


def write_engine_manifest(plan_path: str | Path, manifest: EngineManifest) -> EngineManifest:
    """Hash the plan into the manifest and write it atomically (written after the plan)."""
    plan = Path(plan_path)
    manifest = manifest.with_(
        plan_sha256=sha256_file(plan),
        plan_bytes=plan.stat().st_size,
        created=manifest.created or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    text = json.dumps(manifest.to_dict(), indent=2) + "\n"
    atomic_write(engine_manifest_path(plan), text)
    return EngineManifest.from_dict(json.loads(text))  # exactly what a later load returns


def load_engine_manifest(plan_path: str | Path, verify: bool = True) -> EngineManifest:
    """Read ``engine.json`` beside ``plan_path``; with ``verify``, prove the plan is the one it describes.

    Truncation (size) and corruption (sha256) are caught here, before TensorRT deserializes anything.
    """
    plan = Path(plan_path)
    if not plan.is_file():
        raise EffdeployError(f"engine {plan} does not exist; build one on the target with 'effdeploy compile BUNDLE'")
    mpath = engine_manifest_path(plan)
    if not mpath.is_file():
        raise EffdeployError(
            f"{plan} has no {mpath.name} beside it (not written by 'effdeploy compile', or the compile was "
            "interrupted); compile it again with 'effdeploy compile BUNDLE'"
        )
    try:
        manifest = EngineManifest.from_dict(json.loads(mpath.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError, ValueError, KeyError, AttributeError) as e:
        raise EffdeployError(f"{mpath} is not a valid engine manifest ({e}); compile the engine again") from None
    if verify:
        size = plan.stat().st_size
        if manifest.plan_bytes and size != manifest.plan_bytes:
            what = "truncated" if size < manifest.plan_bytes else "larger than recorded"
            raise EffdeployError(
                f"{plan} is {what} ({size} of {manifest.plan_bytes} bytes); copy it again or recompile: "
                f"{rebuild_command(manifest, plan)}"
            )
        if not manifest.plan_sha256 or sha256_file(plan) != manifest.plan_sha256:
            raise EffdeployError(
                f"{plan} does not match the sha256 in {mpath.name} (corrupt or replaced); copy it again or "
                f"recompile: {rebuild_command(manifest, plan)}"
            )
    return manifest


def compile_command(bundle_path: str | Path, profile_name: str, profile_path: str | None, plan_path: str | Path) -> str:
    """``effdeploy compile BUNDLE --profile P --out PLAN``, quoted for a shell; the profile is named
    by its TOML path when it came from a user's file, else by its built-in name."""
    origin = str(profile_path or "")
    profile = origin if origin.endswith(".toml") else profile_name
    parts = ["effdeploy", "compile", str(bundle_path), "--profile", str(profile), "--out", str(plan_path)]
    return " ".join(shlex.quote(p) for p in parts)


def rebuild_command(manifest: EngineManifest, plan_path: str | Path) -> str:
    """The one command that rebuilds this engine on the machine that should run it."""
    return compile_command(manifest.bundle.get("path") or "BUNDLE", manifest.profile_name,
                           manifest.profile.get("path"), plan_path)


def compat_problems(
    manifest: EngineManifest, runtime_version: str | None, gpu: GpuInfo | None
) -> tuple[list[str], list[str]]:
    """(errors, warnings) for running ``manifest``'s plan on TensorRT ``runtime_version`` and ``gpu``.

    Rules: without version compatibility the release must match exactly (TensorRT refuses others);
    with it, newer runtimes of the same major and 10 -> 11 are allowed. Without hardware
    compatibility the compute capability must match; ``ampere_plus`` accepts CC >= 8.0,
    ``same_compute_capability`` the same CC. A different GPU model of the same CC only warns,
    because TensorRT itself only warns (tactics were timed on the build GPU).
    """
    errors: list[str] = []
    warnings: list[str] = []
    built = TrtVersion.parse(manifest.tensorrt_version)
    if runtime_version is not None:
        rt = TrtVersion.parse(runtime_version)
        if manifest.version_compatible:
            if not version_compatible_runs(built, rt):
                errors.append(
                    f"it is a version-compatible engine from TensorRT {built}, which runs only on newer 10.x/11.x "
                    f"runtimes as documented, not on TensorRT {rt}"
                )
        elif not built.same_build_as(rt):
            errors.append(f"it was built by TensorRT {built} and this machine has TensorRT {rt}")
    if gpu is not None:
        bcc = manifest.gpu_info.compute_capability
        level = manifest.hardware_compat
        here = cc_tuple(gpu.compute_capability)
        if level == "ampere_plus":
            if here < (8, 0):
                errors.append(
                    f"it is an Ampere-and-newer engine and {gpu.name} has compute capability {gpu.compute_capability}"
                )
        elif normalize_cc(bcc) != normalize_cc(gpu.compute_capability):
            errors.append(
                f"it was built for {manifest.gpu_info.name} (compute capability {bcc}) and this GPU is "
                f"{gpu.name} (compute capability {gpu.compute_capability})"
            )
        elif level == "none" and manifest.gpu_info.name != gpu.name:
            warnings.append(
                f"built on {manifest.gpu_info.name}, running on {gpu.name} (same compute capability); "
                "rebuild here for tuned tactics"
            )
    return errors, warnings


def check_engine_runs_here(
    manifest: EngineManifest, plan_path: str | Path, runtime_version: str | None, gpu: GpuInfo | None
) -> list[str]:
    """Raise one line saying how to rebuild when the plan cannot run here; return the warnings."""
    errors, warnings = compat_problems(manifest, runtime_version, gpu)
    if errors:
        raise EffdeployError(
            f"{plan_path} cannot run here: {'; '.join(errors)}. Engines run only where they were built; "
            f"rebuild it on this machine: {rebuild_command(manifest, plan_path)}"
        )
    return warnings
