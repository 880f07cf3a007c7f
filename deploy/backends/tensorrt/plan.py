"""Bundle + profile + flags -> a :class:`CompilePlan`, and the rules that refuse impossible compiles.

Everything here is a plain function over frozen data so it can be tested without TensorRT or a GPU:
the builder (:mod:`effdeploy.backends.tensorrt.build`) only executes a plan that survived these
rules. Rules that need no TensorRT (precision, DLA, release table, bundle status) run before
TensorRT is looked for, so ``effdeploy compile --trt-version X --dry-run`` answers "would this work
on the target?" from a workstation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from ...bundle import Bundle, USABLE_STATUSES, check_writable_out, load_bundle, status_warning
from .compat import (
    HARDWARE_COMPAT_LEVELS, MIN_SAME_CC_HW_COMPAT, MIN_STRONGLY_TYPED, TrtVersion, dla_gap_reason,
    dla_supported, same_cc_hw_compat_supported, strongly_typed_supported,
)
from ...errors import EffdeployError, first_line
from ...files import sha256_file
from .manifest import GpuInfo, L4tRelease, cc_tuple, compile_command, detect_gpu, normalize_cc
from ...profiles import Profile, load_profile

DEFAULT_ENGINE_NAME = "engine.plan"
TIMING_CACHE_NAME = "timing.cache"
CALIBRATION_ARTIFACT = "calibration.json"
MAX_OPT_LEVEL = 5  # IBuilderConfig.builder_optimization_level: 0..5, default 3 (10.x and 11.x)


@dataclass(frozen=True)
class CompileOptions:
    """The command-line knobs; None means "take it from the profile"."""

    out: Path | None = None
    dla_core: int | None = None
    batch: tuple[int, int, int] | None = None
    workspace_mb: int | None = None
    opt_level: int | None = None
    timing_cache: Path | None = None
    force: bool = False
    hardware_compat: str | None = None
    version_compatible: bool | None = None
    trt_version: str | None = None
    gpu_fallback: bool = False  # DLA only: let layers DLA cannot run go to the GPU (off: the compile fails instead)


@dataclass(frozen=True)
class CompilePlan:
    """Exactly what the builder will do; written into engine.json as ``build``."""

    bundle_path: str
    onnx_path: str
    plan_path: str
    timing_cache_path: str
    profile: Profile
    precision: str
    model_name: str
    input_name: str
    input_chw: tuple[int, int, int]
    batch_min: int
    batch_opt: int
    batch_max: int
    workspace_mb: int
    opt_level: int
    dla_core: int | None
    gpu_fallback: bool
    hardware_compat: str
    version_compatible: bool
    onnx_sha256: str
    calibration_sha256: str | None
    preprocessing: Mapping[str, Any] = field(default_factory=dict)
    trt_version: str | None = None  # the release the refusal rules were checked against
    force: bool = False
    # TF32 (on by default in TensorRT) rounds FP32 MatMul/Conv inputs to 10 mantissa bits; frame engines
    # clear it so the resampling MatMuls keep preprocess()'s exact pixels (spec.RESAMPLE_BITS).
    tf32: bool = True
    notes: tuple[str, ...] = ()

    @property
    def uses_dla(self) -> bool:
        return self.dla_core is not None

    def shape(self, batch: int) -> tuple[int, int, int, int]:
        return (batch, *self.input_chw)

    @property
    def shapes(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) input shapes for the optimisation profile."""
        return self.shape(self.batch_min), self.shape(self.batch_opt), self.shape(self.batch_max)

    def compile_settings(self) -> dict[str, Any]:
        """The knobs recorded in engine.json (no paths that only mean something on this machine)."""
        return {
            "batch": [self.batch_min, self.batch_opt, self.batch_max],
            "workspace_mb": self.workspace_mb,
            "opt_level": self.opt_level,
            "dla_core": self.dla_core,
            "gpu_fallback": self.gpu_fallback,
            "hardware_compat": self.hardware_compat,
            "version_compatible": self.version_compatible,
            "strongly_typed": True,
            "tf32": self.tf32,
            "forced": self.force,
        }

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["profile"] = self.profile.name
        d["notes"] = list(self.notes)
        return d

    def with_(self, **changes: Any) -> "CompilePlan":
        return replace(self, **changes)


# --- small parsers ---------------------------------------------------------------------------------


def parse_batch(text: str) -> tuple[int, int, int]:
    """``"1,4,8"`` -> (1, 4, 8); ``"4"`` -> (4, 4, 4). Refuse anything not 1 <= min <= opt <= max."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise EffdeployError(f"--batch must be MIN,OPT,MAX integers like 1,4,8 (got {text!r})") from None
    if len(nums) == 1:
        nums = nums * 3
    if len(nums) != 3:
        raise EffdeployError(f"--batch must be MIN,OPT,MAX integers like 1,4,8 (got {text!r})")
    lo, opt, hi = nums
    if not (1 <= lo <= opt <= hi):
        raise EffdeployError(f"--batch needs 1 <= min <= opt <= max (got {lo},{opt},{hi}); e.g. --batch 1,4,8")
    return lo, opt, hi


# --- bundle facts ----------------------------------------------------------------------------------


def onnx_input(onnx_path: Path) -> tuple[str, tuple[int, ...]]:
    """Name and shape (-1 for symbolic dims) of the graph's first real input, read without weights."""
    import onnx  # noqa: PLC0415 - a base dependency, but only needed here

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError / OSError subclasses
        raise EffdeployError(f"cannot read {onnx_path}: {first_line(e)}; rebuild the bundle") from None
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise EffdeployError(f"{onnx_path} has {len(inputs)} inputs; effdeploy engines take one NCHW image input")
    dims = tuple(
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1
        for d in inputs[0].type.tensor_type.shape.dim
    )
    return inputs[0].name, dims


def fp16_qdq_scales(onnx_path: Path) -> bool:
    """Whether any Q/DQ node's scale is an FP16 initializer (read without external weights)."""
    import onnx  # noqa: PLC0415

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception:  # onnx_input already reported an unreadable file
        return False
    inits = {i.name: i.data_type for i in model.graph.initializer}
    return any(
        n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 1
        and inits.get(n.input[1]) == onnx.TensorProto.FLOAT16
        for n in model.graph.node
    )


def calibration_sha256(bundle: Bundle) -> str | None:
    """sha256 of the calibration that produced an INT8 bundle's scales (None for fp32/fp16)."""
    art = bundle.manifest.artifacts.get(CALIBRATION_ARTIFACT)
    if art and art.get("sha256"):
        return str(art["sha256"])
    q = dict(bundle.manifest.quantization or {})
    for key in ("calibration_sha256", "sha256"):
        if q.get(key):
            return str(q[key])
    cal = q.get("calibration")
    if isinstance(cal, Mapping) and cal.get("sha256"):
        return str(cal["sha256"])
    return None


def onnx_sha256(bundle: Bundle) -> str:
    art = bundle.manifest.artifacts.get(bundle.model_path.name)
    if art and art.get("sha256"):
        return str(art["sha256"])
    return sha256_file(bundle.model_path)


# --- refusal rules: each returns one line (what is wrong, what to do) or None ----------------------


def refuse_cpu_profile(profile: Profile) -> str | None:
    if not profile.is_gpu:
        return (
            f"profile {profile.name} is a CPU target and has no TensorRT engine; its deployable artifact is the "
            "bundle itself - pass a GPU profile such as --profile jetson-orin"
        )
    return None


def refuse_status(bundle: Bundle) -> str | None:
    status = bundle.manifest.status
    if status not in USABLE_STATUSES:
        return (
            f"bundle {bundle.path} is {status!r}, not verified; only {', '.join(USABLE_STATUSES)} bundles are compiled - rebuild "
            "it with 'effdeploy build' until it passes verification"
        )
    return None


def refuse_precision(profile: Profile, precision: str) -> str | None:
    if precision in profile.precisions:
        return None
    arch = f" ({profile.architecture}, compute capability {profile.compute_capability})" if profile.architecture else ""
    fallback = next((p for p in ("fp16", "fp32") if p in profile.precisions), profile.default_precision)
    return (
        f"{profile.name}{arch} has no {precision.upper()} kernels; rebuild the bundle with --precision {fallback} "
        f"(this profile runs {', '.join(profile.precisions)})"
    )


def refuse_dla_request(profile: Profile, dla_core: int | None) -> str | None:
    if dla_core is None:
        return None
    if dla_core < 0:
        return f"--dla-core must be >= 0 (got {dla_core})"
    if profile.dla_cores == 0:
        return f"{profile.name} has no DLA; drop --dla-core to build for the GPU"
    if dla_core >= profile.dla_cores:
        return f"{profile.name} has {profile.dla_cores} DLA core(s) (0..{profile.dla_cores - 1}); got --dla-core {dla_core}"
    return None


def refuse_dla_batch(batch: tuple[int, int, int] | None, dla_core: int | None) -> str | None:
    """DLA has no dynamic shapes: TensorRT's DLA restrictions require min = opt = max for every
    wildcard dimension, and the runtime shape must equal the build shape."""
    if dla_core is None or batch is None or batch[0] == batch[1] == batch[2]:
        return None
    lo, opt, hi = batch
    return (
        f"DLA runs one fixed batch size (TensorRT needs min = opt = max on DLA), got --batch {lo},{opt},{hi}; "
        f"pass one size such as --batch {opt}, or drop --dla-core to keep the range on the GPU"
    )


def dla_batch(profile: Profile) -> tuple[int, int, int]:
    """The profile's batch range collapsed to its opt for DLA (min = opt = max)."""
    return (profile.batch_opt,) * 3


def dla_notes(precision: str, version: str | None, gpu_fallback: bool, fp16_scales: bool) -> tuple[str, ...]:
    """What is known (and not) about this DLA build before TensorRT runs; written into the plan.

    Sources: TensorRT 10.x/11.x "GPU Fallback Mode" (with fallback on, unsupported layers run on the
    GPU without an error), 11.4.1 "Strongly Typed Networks for DLA" (strongly typed DLA networks
    arrive in 11.4.1), 11.4 "ONNX Parser Flags for DLA" (the Q/DQ described there need FP32 scales).
    """
    notes = []
    if gpu_fallback:
        notes.append("GPU fallback on: layers DLA cannot run go to the GPU silently; engine.json lists where each layer ran")
    else:
        notes.append("DLA without GPU fallback: a layer DLA cannot run stops the build with its name "
                     "(--gpu-fallback lets such layers run on the GPU)")
    if precision == "int8":
        v = TrtVersion.parse(version) if version else None
        if v is None or v.major == 10:
            notes.append("INT8 Q/DQ in a strongly typed network on DLA is not documented for TensorRT 10.x "
                         "(strongly typed DLA networks are documented from 11.4.1); the device check shows whether it builds")
        if fp16_scales and (v is None or v.major >= 11):
            notes.append("this graph carries FP16 Q/DQ scales; TensorRT 11.4's DLA pages describe Q/DQ with FP32 scales")
    return tuple(notes)


def refuse_dla_precision(profile: Profile, precision: str, dla_core: int | None) -> str | None:
    if dla_core is None or precision in profile.dla_precisions:
        return None
    ok = " or ".join(profile.dla_precisions) or "nothing"
    return (
        f"DLA has no {precision.upper()} kernels ({profile.name} DLA runs {ok}); rebuild the bundle with "
        f"--precision {profile.dla_precisions[0] if profile.dla_precisions else 'fp16'} or drop --dla-core"
    )


def refuse_release_table(profile: Profile) -> str | None:
    """Targets whose every TensorRT release predates strongly typed networks (Nano, Xavier NX)."""
    if not profile.tensorrt:
        return None
    if any(_release_reaches_floor(r) for r in profile.tensorrt):
        return None
    newest = max(profile.tensorrt, key=lambda r: TrtVersion.parse(r.min_version))
    return (
        f"{profile.name} tops out at TensorRT {TrtVersion.parse(newest.min_version).short()} ({newest.platform}), and "
        f"effdeploy compiles strongly typed networks, which need TensorRT >= {MIN_STRONGLY_TYPED}; deploy the verified "
        "bundle with ONNX Runtime on the device instead (effdeploy bench BUNDLE)"
    )


def _release_reaches_floor(r: Any) -> bool:
    """Whether a release range contains any version >= the strongly typed floor."""
    return r.max_version is None or TrtVersion.parse(r.max_version) > TrtVersion.parse(MIN_STRONGLY_TYPED)


def refuse_dla_version(profile: Profile, version: str | None, dla_core: int | None) -> str | None:
    if dla_core is None:
        return None
    if version is None:  # TensorRT unknown: refuse only if no release of the target can do DLA
        if profile.tensorrt and not any(r.dla for r in profile.tensorrt):
            return f"no TensorRT release for {profile.name} builds DLA engines; drop --dla-core"
        return None
    v = TrtVersion.parse(version)
    if not dla_supported(v):
        return (
            f"{dla_gap_reason(v)}; drop --dla-core to build for the GPU, or use TensorRT 10.3-10.7 (JetPack 6.1+) or "
            "11.4.1+ (JetPack 7.2.2+) on the target"
        )
    release = _release_for(profile, v)
    if release is not None and not release.dla:
        return f"TensorRT {v} on {release.platform} has no DLA for {profile.name}; drop --dla-core"
    return None


def _release_for(profile: Profile, v: TrtVersion) -> Any:
    for r in profile.tensorrt:
        if r.contains(v):
            return r
    return None


def refuse_trt_version(profile: Profile, version: str | None, l4t: L4tRelease | None = None) -> str | None:
    """The TensorRT release must have strong typing, exist for the target, and fit its JetPack."""
    if version is None:
        return None
    v = TrtVersion.parse(version)
    if l4t is not None and l4t.jetpack_release == "6.0" and v < TrtVersion.parse(MIN_STRONGLY_TYPED):
        return (
            f"this device runs {l4t}, which ships TensorRT {v}; strongly typed networks need TensorRT >= "
            f"{MIN_STRONGLY_TYPED}: upgrade the device to JetPack 6.1+ (TensorRT 10.3), or deploy the verified bundle "
            "with ONNX Runtime (effdeploy bench BUNDLE)"
        )
    if not strongly_typed_supported(v):
        return (
            f"effdeploy builds strongly typed networks, which need TensorRT >= {MIN_STRONGLY_TYPED} (got {v}); install "
            "TensorRT 10.x/11.x on the target, or deploy the verified bundle with ONNX Runtime (effdeploy bench BUNDLE)"
        )
    if l4t is not None and l4t.jetpack == "6" and v.major >= 11:
        return (
            f"TensorRT {v} does not run on JetPack 6 ({l4t}): JetPack 6.1+ stays on TensorRT 10.3-10.7; use its "
            "TensorRT 10.3 or upgrade the device to JetPack 7.2.2+ (TensorRT 11.4.1+)"
        )
    if not profile.tensorrt or _release_for(profile, v) is not None:
        return None
    jp6 = [r for r in profile.tensorrt if "jetpack 6" in r.platform.lower()]
    offered = "; ".join(
        f"{r.platform}: {r.min_version}" + (f"-<{r.max_version}" if r.max_version else "+") for r in profile.tensorrt
    )
    if v.major >= 11 and jp6:
        newer = [r for r in profile.tensorrt if TrtVersion.parse(r.min_version).major >= 11]
        later = (
            f"; TensorRT 11 reaches {profile.name} only as {newer[0].min_version}+ on {newer[0].platform}"
            if newer else f"; no JetPack ships TensorRT 11 for {profile.name}"
        )
        return (
            f"TensorRT {v} does not run on JetPack 6 ({jp6[0].platform} ships TensorRT {jp6[0].min_version}){later} - "
            f"use --trt-version {jp6[0].min_version}" + (f" or {newer[0].min_version}+" if newer else "")
        )
    return f"TensorRT {v} is not a release for {profile.name}; releases for this target: {offered}"


def refuse_hardware_compat(profile: Profile, level: str, version: str | None) -> str | None:
    if level not in HARDWARE_COMPAT_LEVELS:
        return f"--hardware-compat must be one of {', '.join(HARDWARE_COMPAT_LEVELS)} (got {level!r})"
    if level == "ampere_plus" and profile.compute_capability and cc_tuple(profile.compute_capability) < (8, 0):
        return (
            f"Ampere-and-newer hardware compatibility is only for engines built on Ampere or later GPUs; {profile.name} "
            f"has compute capability {profile.compute_capability} - drop --hardware-compat"
        )
    if level == "same_compute_capability" and version is not None and not same_cc_hw_compat_supported(version):
        return (
            f"same-compute-capability hardware compatibility needs TensorRT >= {MIN_SAME_CC_HW_COMPAT} "
            f"(got {version}); use ampere_plus or drop --hardware-compat"
        )
    return None


def refuse_local_gpu(profile: Profile, gpu: GpuInfo | None, force: bool, cuda_problem: str | None = None) -> str | None:
    """Engines are tuned for and tied to the build GPU: build on a GPU of the profile's CC.

    ``cuda_problem`` (from :func:`effdeploy.backends.tensorrt.manifest.cuda_problem`) is the real CUDA error when there is
    one, e.g. cuda-python 13 on JetPack 6's CUDA 12.6 driver, so it is said instead of "no GPU".
    """
    if force or not profile.compute_capability:
        return None
    if gpu is None and cuda_problem:
        return f"cuda-python cannot use a GPU here: {cuda_problem}"
    if gpu is None:
        return "no CUDA GPU is visible here (cuda-python finds no device); run compile on the target GPU"
    if normalize_cc(gpu.compute_capability) != normalize_cc(profile.compute_capability):
        return (
            f"this GPU is {gpu.name} (compute capability {gpu.compute_capability}) but {profile.name} is compute "
            f"capability {profile.compute_capability}; compile on the target, pick its profile, or pass --force"
        )
    return None


def _first(*lines: str | None) -> None:
    for line in lines:
        if line:
            raise EffdeployError(line)


# --- plan construction -----------------------------------------------------------------------------


def default_plan_path(bundle_path: str | Path) -> Path:
    """The engine lives in the bundle directory (rebuilding the bundle replaces it, as it should)."""
    return Path(bundle_path) / DEFAULT_ENGINE_NAME


def check_plan_path(plan_path: Path) -> None:
    """Refuse (before minutes of building) an --out that cannot be written as a file."""
    if plan_path.is_dir():
        raise EffdeployError(f"--out {plan_path} is a directory; pass a file path such as {plan_path / DEFAULT_ENGINE_NAME}")
    check_writable_out(plan_path)


def plan_batch(profile: Profile, opts: CompileOptions, model_path: Path, graph_batch: int,
               notes: list[str]) -> tuple[int, int, int]:
    """The optimisation profile's (min, opt, max) batch: ``--batch``, else the profile's range; one
    size on DLA; only the graph's own size when its batch is fixed (``graph_batch`` > 0). What was
    changed, and why, is appended to ``notes``."""
    batch = opts.batch or (profile.batch_min, profile.batch_opt, profile.batch_max)
    if opts.dla_core is not None and not opts.batch and graph_batch <= 0 and len(set(batch)) > 1:
        batch = dla_batch(profile)
        notes.append(f"DLA runs one fixed batch: batch {batch[0]} (the profile's opt; --batch N for another size)")
    if graph_batch > 0:  # static batch in the graph: the profile range cannot widen it
        if opts.batch and batch != (graph_batch,) * 3:
            raise EffdeployError(
                f"{model_path} has a fixed batch of {graph_batch}; --batch {','.join(map(str, batch))} is impossible - "
                f"use --batch {graph_batch} or rebuild the bundle with a dynamic batch"
            )
        if batch != (graph_batch,) * 3:
            notes.append(f"graph has a fixed batch of {graph_batch}; profile batch range ignored")
        batch = (graph_batch,) * 3
    return batch


def make_plan(bundle: Bundle, profile: Profile, opts: CompileOptions = CompileOptions()) -> CompilePlan:
    """Translate bundle + profile + flags into a CompilePlan, refusing (one line) what cannot work.

    Checks here need neither TensorRT nor a GPU. ``opts.trt_version`` (when given) is the target's
    TensorRT release the version rules are checked against.
    """
    precision = bundle.manifest.precision
    hw = opts.hardware_compat if opts.hardware_compat is not None else profile.hardware_compatibility
    version = str(TrtVersion.parse(opts.trt_version)) if opts.trt_version else None
    _first(
        refuse_cpu_profile(profile),
        refuse_status(bundle),
        refuse_precision(profile, precision),
        refuse_dla_request(profile, opts.dla_core),
        refuse_dla_precision(profile, precision, opts.dla_core),
        refuse_dla_batch(opts.batch, opts.dla_core),
        refuse_release_table(profile),
        refuse_dla_version(profile, version, opts.dla_core),
        refuse_trt_version(profile, version),
        refuse_hardware_compat(profile, hw, version),
    )
    if opts.workspace_mb is not None and opts.workspace_mb < 1:
        raise EffdeployError(f"--workspace-mb must be >= 1 (got {opts.workspace_mb})")
    if opts.opt_level is not None and not (0 <= opts.opt_level <= MAX_OPT_LEVEL):
        raise EffdeployError(f"--opt-level must be 0..{MAX_OPT_LEVEL} (got {opts.opt_level}); 3 is TensorRT's default")

    name, dims = onnx_input(bundle.model_path)
    if len(dims) != 4 or any(d <= 0 for d in dims[1:]):
        raise EffdeployError(f"{bundle.model_path} input {name} has shape {dims}; expected (batch, C, H, W) with fixed C, H, W")
    notes: list[str] = []
    if status_warning(bundle.manifest.status):
        notes.append(status_warning(bundle.manifest.status))
    batch = plan_batch(profile, opts, bundle.model_path, dims[0], notes)

    gpu_fallback = bool(opts.gpu_fallback) and opts.dla_core is not None
    if opts.dla_core is not None:
        notes.extend(dla_notes(precision, version, gpu_fallback, fp16_qdq_scales(bundle.model_path)))
    plan_path = Path(opts.out) if opts.out else default_plan_path(bundle.path)
    check_plan_path(plan_path)
    cache = Path(opts.timing_cache) if opts.timing_cache else plan_path.parent / TIMING_CACHE_NAME
    return CompilePlan(
        bundle_path=str(Path(bundle.path).resolve()),
        onnx_path=str(bundle.model_path.resolve()),
        plan_path=str(plan_path),
        timing_cache_path=str(cache),
        profile=profile,
        precision=precision,
        model_name=bundle.manifest.model.name,
        input_name=name,
        input_chw=(int(dims[1]), int(dims[2]), int(dims[3])),
        batch_min=batch[0],
        batch_opt=batch[1],
        batch_max=batch[2],
        workspace_mb=int(opts.workspace_mb or profile.workspace_mb),
        opt_level=int(opts.opt_level if opts.opt_level is not None else profile.builder_optimization_level),
        dla_core=opts.dla_core,
        gpu_fallback=gpu_fallback,
        hardware_compat=hw,
        version_compatible=bool(opts.version_compatible if opts.version_compatible is not None else profile.version_compatible),
        onnx_sha256=onnx_sha256(bundle),
        calibration_sha256=calibration_sha256(bundle),
        preprocessing=bundle.manifest.preprocessing.to_dict(),
        trt_version=version,
        force=opts.force,
        notes=tuple(notes),
    )


def check_installed(plan: CompilePlan, installed: str, requested: str | None, gpu: GpuInfo | None,
                    l4t: L4tRelease | None, cuda_problem: str | None = None) -> CompilePlan:
    """The rules that need the local TensorRT and GPU; returns the plan pinned to ``installed``."""
    v = str(TrtVersion.parse(installed))
    if requested and not TrtVersion.parse(requested).same_build_as(v):
        raise EffdeployError(
            f"--trt-version {requested} differs from the installed TensorRT {v}; an engine is built by the TensorRT "
            "that runs it - drop --trt-version here, or use it with --dry-run to check another target"
        )
    _first(
        refuse_dla_version(plan.profile, v, plan.dla_core),
        refuse_trt_version(plan.profile, v, l4t),
        refuse_hardware_compat(plan.profile, plan.hardware_compat, v),
        refuse_local_gpu(plan.profile, gpu, plan.force, cuda_problem),
    )
    return plan.with_(trt_version=v)


# --- what other stages call ------------------------------------------------------------------------


def compile_hint(bundle_path: str | Path, profile: Profile) -> str:
    """The one command to run on the target to turn this bundle into an engine."""
    return compile_command(bundle_path, profile.name, profile.path, default_plan_path(bundle_path))


def gpu_matches(profile: Profile, gpu: GpuInfo | None) -> bool:
    return bool(profile.is_gpu and gpu is not None and profile.compute_capability
                and normalize_cc(gpu.compute_capability) == normalize_cc(profile.compute_capability))


def local_gpu_matches(profile: Profile, detect: Callable[[], GpuInfo | None] = detect_gpu) -> bool:
    """Whether this machine's GPU has the profile's compute capability (False without a GPU)."""
    return gpu_matches(profile, detect())


def resolve_profile(bundle_manifest_profile: Any, profile: Profile | str | None) -> Profile:
    """``--profile`` when given, else the profile the bundle was built for."""
    if isinstance(profile, Profile):
        return profile
    if profile:
        return load_profile(profile)
    data = dict(bundle_manifest_profile or {})
    if not data:
        raise EffdeployError("the bundle records no profile; pass --profile (e.g. --profile jetson-orin)")
    try:
        return Profile.from_dict(data)
    except (TypeError, ValueError):
        return load_profile(str(data.get("name")))


def plan_for(bundle_path: str | Path, profile: Profile | str | None, opts: CompileOptions) -> CompilePlan:
    bundle = load_bundle(bundle_path)
    return make_plan(bundle, resolve_profile(bundle.manifest.profile, profile), opts)
