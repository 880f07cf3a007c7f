"""``effdeploy doctor``: what this machine has for TensorRT and for the CPU profiles, and whether it
can compile for a GPU profile or run a CPU profile's bundles.

Gathering (:func:`gather`) touches the system: the ``tensorrt`` module, cuda-python, the driver,
``/etc/nv_tegra_release``. Judging (:func:`assess`) is a pure function of the gathered
:class:`Facts`, so the rules are tested anywhere; it reuses the compile refusal rules, so doctor and
``effdeploy compile`` cannot disagree. Every problem is one line that says what to do.
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..backends.tensorrt.compat import dla_supported
from ..backends.tensorrt.manifest import (
    CudaProbe, L4tRelease, cuda_problem, cuda_version_text, probe_cuda, read_l4t,
)
from ..backends.tensorrt.plan import (
    refuse_cpu_profile, refuse_local_gpu, refuse_release_table, refuse_trt_version,
)
from ..errors import first_line
from ..profiles import Profile


@dataclass(frozen=True)
class TensorRTInfo:
    """The importable ``tensorrt`` module, or why there is none."""

    version: str | None = None
    origin: str | None = None  # "JetPack system package (...)", "pip wheel tensorrt-cu12 10.13.3", ...
    location: str | None = None
    error: str | None = None  # why the import failed (absent, or its libraries do not load)
    dla_cores: int | None = None  # IRuntime.num_DLA_cores


@dataclass(frozen=True)
class CpuInfo:
    """The host CPU for the CPU profiles: its INT8 dot product (8-bit weights saturate without VNNI,
    docs/int8.md, *Saturation*) and which CPU runtimes are installed (versions; None: absent)."""

    model: str
    int8_dot: str
    vnni_flags: tuple[str, ...] = ()
    onnxruntime: str | None = None
    openvino: str | None = None


@dataclass(frozen=True)
class Facts:
    """Everything doctor looked at (the --json output's ``facts``)."""

    python: str
    machine: str
    tensorrt: TensorRTInfo
    cuda: CudaProbe
    l4t: L4tRelease | None = None
    cpu: CpuInfo | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "python": self.python,
            "machine": self.machine,
            "tensorrt": asdict(self.tensorrt),
            "cuda": self.cuda.to_dict(),
            "l4t": None if self.l4t is None else {
                "release": f"R{self.l4t.major}.{self.l4t.revision}", "jetpack": self.l4t.jetpack_release},
            "cpu": None if self.cpu is None else asdict(self.cpu),
        }


@dataclass(frozen=True)
class Verdict:
    """Problems (one line each, with what to do) and, for a profile, whether compile can run here."""

    problems: tuple[str, ...] = ()
    profile: str | None = None
    can_compile: bool | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    can_run: bool | None = None  # a CPU profile: whether this machine runs its bundles (FP32, FP16)
    can_run_int8: bool | None = None  # ... and its INT8 bundles, as they open by default (not refused)

    def to_dict(self) -> dict[str, Any]:
        return {"problems": list(self.problems), "profile": self.profile, "can_compile": self.can_compile,
                "can_run": self.can_run, "can_run_int8": self.can_run_int8, "notes": list(self.notes)}


def tensorrt_origin(location: str | None, dist: str | None, dist_version: str | None) -> str:
    """Where the bindings came from: JetPack's ``python3-libnvinfer`` installs into dist-packages,
    pip wheels (``tensorrt``, ``tensorrt-cu12``, ``tensorrt-cu13``) into site-packages."""
    if dist:
        return f"pip wheel {dist} {dist_version or ''}".strip()
    if location and "dist-packages" in location:
        return "system package (JetPack: python3-libnvinfer)"
    return "unknown (not a pip distribution)"


def _tensorrt_dist() -> tuple[str | None, str | None]:
    from importlib import metadata  # noqa: PLC0415

    for dist in ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt_cu13", "tensorrt_cu12"):
        try:
            return dist, metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None, None


def gather_tensorrt() -> TensorRTInfo:
    try:
        import tensorrt as trt  # noqa: PLC0415 - doctor's whole point is to try
    except ImportError as e:
        return TensorRTInfo(error=f"not installed ({first_line(e, 120)})")
    except OSError as e:  # the module is there but libnvinfer does not load
        return TensorRTInfo(error=f"installed but its libraries do not load ({first_line(e, 160)})")
    location = str(Path(getattr(trt, "__file__", "") or "").parent) or None
    dist, dist_version = _tensorrt_dist()
    dla = None
    try:
        from ..backends.tensorrt.compat import shared_logger  # noqa: PLC0415

        dla = int(trt.Runtime(shared_logger(trt)).num_DLA_cores)
    except Exception:  # no GPU / driver: the version is still worth reporting
        dla = None
    return TensorRTInfo(version=str(trt.__version__), origin=tensorrt_origin(location, dist, dist_version),
                        location=location, dla_cores=dla)


def module_version(module: str, providers: dict[str, list[str]] | None = None) -> str | None:
    """The installed version of whichever distribution provides ``module`` (package metadata, nothing
    imported): ``onnxruntime`` comes as onnxruntime, onnxruntime-gpu, onnxruntime-openvino, ... ;
    with several, the first, as pip lists them."""
    from importlib import metadata  # noqa: PLC0415

    providers = metadata.packages_distributions() if providers is None else providers
    for dist in providers.get(module, ()):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def gather_cpu() -> CpuInfo:
    """The CPU's flags and the runtimes' installed versions."""
    from importlib import metadata  # noqa: PLC0415

    from ..backends.cpu_features import describe_int8_dot, vnni_flags  # noqa: PLC0415
    from ..backends.timing import cpu_model  # noqa: PLC0415

    providers = metadata.packages_distributions()
    return CpuInfo(model=cpu_model(), int8_dot=describe_int8_dot(), vnni_flags=vnni_flags(),
                   onnxruntime=module_version("onnxruntime", providers), openvino=module_version("openvino", providers))


def gather() -> Facts:
    return Facts(
        python=platform.python_version(),
        machine=f"{platform.system()} {platform.machine()}",
        tensorrt=gather_tensorrt(),
        cuda=probe_cuda(memory=True),
        l4t=read_l4t(),
        cpu=gather_cpu(),
    )


def assess_cpu(cpu: CpuInfo, profile: Profile) -> Verdict:
    """A CPU profile needs no TensorRT. Its bundles run where ONNX Runtime is installed (an OpenVINO
    profile's on OpenVINO where that is installed, else on ONNX Runtime with its INT8 convs in float,
    as Runner.open falls back); its INT8 bundles are refused where the runtime they open on would
    saturate their 8-bit weights (the VNNI profiles on a CPU without VNNI, as Runner.open refuses).
    On a VNNI CPU a portable profile hears about its 8-bit twin, as its build does."""
    from ..backends.cpu_features import int8_build_notes, kernels_saturate, twin_profile  # noqa: PLC0415
    from ..backends.openvino import MISSING_OPENVINO  # noqa: PLC0415 - the module imports openvino only when opened

    wants_openvino = profile.target_runtime == "openvino"
    runs_on = "openvino" if wants_openvino and cpu.openvino else "onnxruntime"
    problems: list[str] = []
    if wants_openvino and not cpu.openvino:
        fallback = "its bundles run on ONNX Runtime instead, INT8 convs in float (slower)" if cpu.onnxruntime else ""
        if profile.vnni and not cpu.vnni_flags:  # with OpenVINO its INT8 bundles would open there and be refused
            problems.append(f"profile {profile.name}'s 8-bit INT8 weights would saturate in OpenVINO's INT8 kernels on "
                            f"this CPU ({cpu.int8_dot}), so installing OpenVINO would not help its INT8 bundles; "
                            f"{fallback or 'they need ONNX Runtime'}; for OpenVINO's speed build with --profile "
                            f"{twin_profile('openvino', vnni=False)} and pip install 'effdeploy[openvino]'")
        else:
            problems.append("; ".join(p for p in (MISSING_OPENVINO, fallback) if p))
    if not cpu.onnxruntime and runs_on == "onnxruntime":
        problems.append("ONNX Runtime is not installed: pip install 'effdeploy'")
    can_run = cpu.onnxruntime is not None or runs_on == "openvino"
    dialect = "openvino" if wants_openvino else "ort-cpu"  # precision.qdq.RUNTIME_DIALECTS (a later stage: not imported)
    saturating = kernels_saturate(bool(profile.vnni), dialect, runs_on, cpu.vnni_flags)
    if saturating:
        portable = twin_profile(profile.target_runtime, vnni=False)
        other = (", or run them with --backend onnxruntime (INT8 convs in float, slower)"
                 if wants_openvino and cpu.onnxruntime else "")
        problems.append(f"profile {profile.name}'s 8-bit INT8 weights saturate on this CPU ({cpu.int8_dot}), so its INT8 "
                        f"bundles are refused here; use --profile {portable} (7-bit weights, any x86 CPU){other}")
    notes = () if profile.vnni else tuple(int8_build_notes(profile, cpu.vnni_flags))
    return Verdict(tuple(problems), profile.name, None, notes, can_run=can_run, can_run_int8=can_run and not saturating)


def assess(facts: Facts, profile: Profile | None = None) -> Verdict:
    """The problems on this machine, and (with a profile) whether ``effdeploy compile`` can run here."""
    problems: list[str] = []
    notes: list[str] = []
    trt = facts.tensorrt
    if trt.version is None:
        problems.append(f"TensorRT is {trt.error or 'not installed'}: on a Jetson use JetPack's python3-libnvinfer in a "
                        "--system-site-packages venv with pip install 'effdeploy[jetson]'; elsewhere pip install "
                        "'effdeploy[tensorrt]' (docs/tensorrt.md)")
    cuda_line = cuda_problem(facts.cuda)
    if cuda_line:
        problems.append(cuda_line)
    if facts.l4t is not None and trt.version is not None:
        line = refuse_trt_version(_any_gpu_profile(profile), trt.version, facts.l4t)
        if line and line not in problems:
            problems.append(line)
    if facts.l4t is not None and facts.l4t.jetpack_release == "6.0":
        problems.append(f"{facts.l4t} ships TensorRT 8.6, which has no strongly typed networks; upgrade to JetPack 6.1+ "
                        "(TensorRT 10.3) to compile engines here")
    if profile is None:
        return Verdict(tuple(dict.fromkeys(problems)), None, None, tuple(notes))
    if not profile.is_gpu:
        if facts.cpu is None:  # Facts built without gather_cpu (a caller's own): no verdict rather than TensorRT's
            return Verdict((), profile.name, None, ("the CPU was not examined, so there is no verdict on this CPU profile",))
        return assess_cpu(facts.cpu, profile)

    lines = [refuse_cpu_profile(profile), refuse_release_table(profile)]
    if trt.version is not None:
        lines.append(refuse_trt_version(profile, trt.version, facts.l4t))
    if not cuda_line:  # a CUDA problem is already one line above
        lines.append(refuse_local_gpu(profile, facts.cuda.gpu, False, None))
    problems.extend(line for line in lines if line)
    if profile.dla_cores and trt.version is not None:
        if trt.dla_cores is not None and trt.dla_cores < profile.dla_cores:
            notes.append(f"TensorRT sees {trt.dla_cores} DLA core(s); {profile.name} has {profile.dla_cores}")
        if not dla_supported(trt.version):
            notes.append(f"TensorRT {trt.version} builds no DLA engines (DLA: 10.0-10.7 and 11.4.1+); GPU engines only")
    can = trt.version is not None and not any(line for line in lines) and not cuda_line
    return Verdict(tuple(dict.fromkeys(problems)), profile.name, can, tuple(notes))


def _any_gpu_profile(profile: Profile | None) -> Profile:
    """Release checks that depend only on the device (JetPack vs TensorRT) need a profile-shaped
    argument; an empty release table makes :func:`refuse_trt_version` check the device alone."""
    if profile is not None and profile.is_gpu:
        return Profile(name=profile.name, description="", device="gpu", precisions=profile.precisions)
    return Profile(name="this device", description="", device="gpu", precisions=("fp32",))


def rows(facts: Facts, verdict: Verdict) -> list[tuple[str, str]]:
    """The table for people: check, value."""
    trt, cuda = facts.tensorrt, facts.cuda
    out: list[tuple[str, str]] = [
        ("python", f"{facts.python} ({facts.machine})"),
        ("TensorRT", f"{trt.version} - {trt.origin}" if trt.version else f"absent: {trt.error}"),
    ]
    if trt.location:
        out.append(("TensorRT location", trt.location))
    out.append(("cuda-python", cuda.bindings or "absent"))
    if cuda.bindings:
        out.append(("CUDA runtime (cuda-python) / driver", f"{cuda_version_text(cuda.runtime_version)} / "
                                                           f"{cuda_version_text(cuda.driver_version)}"))
    for g in cuda.gpus:
        out.append((f"GPU {g.index}", f"{g.name} (compute capability {g.compute_capability})"))
    if cuda.free_bytes is not None and cuda.total_bytes:
        out.append(("GPU memory free / total", f"{cuda.free_bytes / 2**30:.2f} / {cuda.total_bytes / 2**30:.2f} GiB"))
    if trt.dla_cores is not None:
        out.append(("DLA cores (TensorRT)", str(trt.dla_cores)))
    out.append(("Jetson Linux", str(facts.l4t) if facts.l4t else "not a Jetson (no /etc/nv_tegra_release)"))
    if facts.cpu is not None:
        out.append(("CPU", f"{facts.cpu.model} (INT8 dot product: {facts.cpu.int8_dot})"))
        out.append(("ONNX Runtime / OpenVINO", f"{facts.cpu.onnxruntime or 'absent'} / {facts.cpu.openvino or 'absent'}"))
    if verdict.profile and verdict.can_run is not None:
        out.append((f"run {verdict.profile} bundles here", "no" if not verdict.can_run else
                    "yes, INT8 too" if verdict.can_run_int8 else "yes, but not its INT8 bundles"))
    elif verdict.profile and verdict.can_compile is not None:
        out.append((f"compile for {verdict.profile}", "yes" if verdict.can_compile else "no"))
    for n in verdict.notes:
        out.append(("note", n))
    for p in verdict.problems:
        out.append(("problem", p))
    if not verdict.problems:
        out.append(("problems", "none"))
    return out
