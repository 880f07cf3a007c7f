"""The TensorRT builder: a verified bundle's ONNX -> strongly typed network -> ``engine.plan``.

Precision lives in the ONNX graph (Q/DQ for INT8, FP16 tensors for FP16), so the network is
strongly typed and no precision builder flag is ever set: the same code builds on TensorRT 10.x
(``STRONGLY_TYPED`` creation flag) and 11.x (always strongly typed). Version differences go through
:mod:`effdeploy.backends.tensorrt.compat`. ``tensorrt`` is imported only inside :func:`compile_bundle`.

API used (10.x and 11.x Python API, checked against both): ``Builder.create_network(flags)``,
``OnnxParser.parse_from_file`` / ``num_errors`` / ``get_error``, ``Builder.create_builder_config``,
``IBuilderConfig.set_memory_pool_limit(MemoryPoolType.WORKSPACE, bytes)``,
``builder_optimization_level``, ``create_optimization_profile`` + ``IOptimizationProfile.set_shape``
+ ``add_optimization_profile``, ``default_device_type = DeviceType.DLA`` + ``DLA_core`` +
``BuilderFlag.GPU_FALLBACK`` (only with ``--gpu-fallback``), ``can_run_on_DLA(layer)``,
``profiling_verbosity = ProfilingVerbosity.DETAILED``, ``create_timing_cache`` /
``set_timing_cache(cache, ignore_mismatch)`` / ``get_timing_cache()`` / ``ITimingCache.combine`` /
``serialize()``, ``hardware_compatibility_level``, ``BuilderFlag.VERSION_COMPATIBLE``,
``progress_monitor``, ``build_serialized_network``, ``Runtime.DLA_core``,
``Runtime.deserialize_cuda_engine``, ``create_engine_inspector().get_engine_information(
LayerInformationFormat.JSON)`` and the name-based tensor queries (all present in the 10.3.0 and 11.1
bindings, ``python/src/infer/pyCore.cpp``). One logger for the process
(:func:`effdeploy.backends.tensorrt.compat.shared_logger`).
"""

from __future__ import annotations

import fcntl
import gc
import json
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

import click

from ...bundle import load_bundle
from .compat import (
    MISSING_TENSORRT, LogCapture, adjust_parser_for_dla, capture_log, dtype_name, hardware_compat_level,
    import_tensorrt, make_progress_monitor, network_flags, new_runtime, shared_logger,
)
from ...data.frames import FRAME_INPUT, FrameInput, frame_engine_path, usable_frame_graph
from ...errors import EffdeployError, first_line
from ...files import atomic_write
from .manifest import (
    EngineManifest, GpuInfo, cuda_problem, detect_gpu, engine_manifest_path, probe_cuda, read_l4t,
    write_engine_manifest,
)
from .plan import CompileOptions, CompilePlan, check_installed, compile_hint, gpu_matches, plan_for
from ...profiles import Profile


@dataclass(frozen=True)
class CompileResult:
    plan: CompilePlan
    engine: EngineManifest
    seconds: float
    timing_cache_reused: bool
    warnings: tuple[str, ...] = ()
    frame_engines: tuple["CompileResult", ...] = ()  # one per verified frame-in graph of the bundle


def compile_bundle(
    bundle_path: str | Path,
    profile: Profile | str | None = None,
    opts: CompileOptions = CompileOptions(),
    quiet: bool = False,
) -> CompileResult:
    """Refuse what cannot work, then compile ``engine.plan`` + ``engine.json`` with the local TensorRT."""
    plan = plan_for(bundle_path, profile, opts)
    trt = import_tensorrt()
    if trt is None:
        raise EffdeployError(f"{MISSING_TENSORRT}: {compile_hint(bundle_path, plan.profile)}")
    probe = probe_cuda()
    plan = check_installed(plan, str(trt.__version__), opts.trt_version, probe.gpu, read_l4t(), cuda_problem(probe))
    result = compile_engine(trt, plan, probe.gpu, quiet=quiet)

    frames = tuple(compile_engine(trt, fplan, probe.gpu, quiet=quiet, frame=frame.to_dict())
                   for frame, fplan in frame_compile_plans(load_bundle(bundle_path), plan))
    return replace(result, frame_engines=frames) if frames else result


class _Progress:
    """Build progress on stderr: top-level phases as lines, their steps as a counter."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.started: dict[str, float] = {}

    def __call__(self, kind: str, phase: str, step: int, total: int, depth: int) -> None:
        if self.quiet or depth > 1:
            return
        pad = "  " * (depth + 1)
        if kind == "start":
            self.started[phase] = time.perf_counter()
            if depth == 0:
                click.echo(f"{pad}{phase}" + (f" ({total} steps)" if total else ""), err=True)
        elif kind == "step" and self.tty and total:
            click.echo(f"\r{pad}{phase}: {step}/{total}", err=True, nl=False)
        elif kind == "finish":
            took = time.perf_counter() - self.started.pop(phase, time.perf_counter())
            if self.tty and total:
                click.echo("\r", err=True, nl=False)
            if depth == 0:
                click.echo(f"{pad}{phase}: done in {took:.1f}s", err=True)


def _write_atomic(path: Path, data: Any) -> None:
    """:func:`effdeploy.bundle.atomic_write` of TensorRT's bytes (``IHostMemory``): a reader never
    sees half a plan; a failure is one line."""
    try:
        atomic_write(path, memoryview(data))
    except OSError as e:
        raise EffdeployError(f"cannot write {path}: {e.strerror}; choose a writable --out") from None


def _parse_onnx(trt: ModuleType, network: Any, logger: Any, onnx_path: str, for_dla: bool, log: LogCapture) -> None:
    """Parse into ``network``. The parser owns the weights until the build ("the parser object should
    not be deleted until after the builder has run", developer guide); the bindings keep it alive as
    long as the network (``keep_alive<2, 1>`` on ``OnnxParser.__init__``), so dropping the network frees both."""
    parser = trt.OnnxParser(network, logger)
    if for_dla:
        adjust_parser_for_dla(trt, parser)
    if parser.parse_from_file(onnx_path):
        return
    errors = [str(parser.get_error(i)).strip() for i in range(parser.num_errors)] or log.errors
    first = first_line(errors[0]) if errors else "unknown parser error"
    raise EffdeployError(
        f"TensorRT {trt.__version__} cannot parse {onnx_path}: {first}"
        + (f" (+{len(errors) - 1} more)" if len(errors) > 1 else "")
        + "; check the bundle with 'effdeploy inspect' and rebuild it"
    )


def _load_timing_cache(config: Any, path: Path, warn: list[str]) -> tuple[Any, bool]:
    """A timing cache from ``path`` (reused) or a new one; a stale or broken file is replaced."""
    data = b""
    if path.is_file():
        try:
            data = path.read_bytes()
        except OSError as e:
            warn.append(f"timing cache {path} unreadable ({e.strerror}); starting a new one")
    try:
        cache = config.create_timing_cache(data)
        if cache is not None and config.set_timing_cache(cache, False):
            return cache, bool(data)
    except (RuntimeError, TypeError, ValueError):  # the bindings raise on undecodable cache bytes
        pass
    if data:
        warn.append(f"timing cache {path} is from another TensorRT/GPU or damaged; starting a new one")
    cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, False):
        raise EffdeployError("TensorRT could not create a timing cache; re-run with a writable --timing-cache PATH")
    return cache, False


@contextmanager
def timing_cache_lock(path: Path) -> Iterator[None]:
    """Exclusive lock on ``<cache>.lock`` while the cache is merged and replaced, so two compiles into
    one folder cannot overwrite each other's entries (Polygraphy locks the same way: ``util.LockFile``)."""
    lock = path.with_name(path.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _save_timing_cache(config: Any, cache: Any, path: Path) -> None:
    """Merge what is on disk now (another compile may have written it meanwhile) into ``cache`` with
    ``ITimingCache.combine(other, ignore_mismatch=True)`` and replace the file, under the lock."""
    with timing_cache_lock(path):
        if path.is_file():
            try:
                on_disk = config.create_timing_cache(path.read_bytes())
            except (OSError, RuntimeError, TypeError, ValueError):  # unreadable or from another TensorRT: keep ours
                on_disk = None
            if on_disk is not None:
                cache.combine(on_disk, True)
        _write_atomic(path, cache.serialize())


def dla_layer_split(trt: ModuleType, network: Any, config: Any) -> dict[str, Any]:
    """Which network layers TensorRT says DLA can run (``IBuilderConfig.can_run_on_DLA``), before the build."""
    names = [network.get_layer(i).name for i in range(network.num_layers)]
    cannot = [network.get_layer(i).name for i in range(network.num_layers) if not config.can_run_on_DLA(network.get_layer(i))]
    return {"network_layers": len(names), "dla_capable_layers": len(names) - len(cannot), "not_dla_capable": cannot}


def dla_summary(report: dict[str, Any]) -> str:
    """One line for the compile summary: what ran on DLA and what on the GPU."""
    dla, gpu = report.get("engine_dla_layers"), report.get("engine_gpu_layers")
    cannot = report.get("not_dla_capable") or []
    parts = [f"{report.get('dla_capable_layers', '?')} of {report.get('network_layers', '?')} network layers DLA-capable"]
    if dla is not None:
        parts.append(f"engine: {len(dla)} DLA subgraph(s), {len(gpu or [])} GPU layer(s)")
    if cannot:
        parts.append("GPU: " + ", ".join(cannot[:3]) + (f" (+{len(cannot) - 3})" if len(cannot) > 3 else ""))
    return "; ".join(parts)


def _inspector_layers(trt: ModuleType, engine: Any) -> list[dict[str, Any]] | None:
    """Name and type of each engine layer from the engine inspector (built with DETAILED verbosity)."""
    try:
        inspector = engine.create_engine_inspector()
        info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    except Exception:  # best effort: the placement report must never fail a finished build
        return None
    layers = info.get("Layers", []) if isinstance(info, dict) else []
    out = []
    for layer in layers:
        if isinstance(layer, dict):
            out.append({"name": layer.get("Name"), "type": layer.get("LayerType") or layer.get("ParameterType")})
        else:
            out.append({"name": str(layer), "type": None})
    return out


def configure(trt: ModuleType, builder: Any, network: Any, plan: CompilePlan) -> Any:
    """``IBuilderConfig`` from the plan: workspace, optimisation level/profile, DLA, compat flags."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(plan.workspace_mb) << 20)
    config.builder_optimization_level = int(plan.opt_level)

    if network.num_inputs != 1:
        raise EffdeployError(f"the network has {network.num_inputs} inputs; effdeploy engines take one image input")
    inp = network.get_input(0)
    if inp.name != plan.input_name:
        raise EffdeployError(f"TensorRT sees input {inp.name!r}, the bundle says {plan.input_name!r}; rebuild the bundle")
    opt_profile = builder.create_optimization_profile()
    mn, opt, mx = plan.shapes
    opt_profile.set_shape(inp.name, mn, opt, mx)
    if config.add_optimization_profile(opt_profile) < 0:
        raise EffdeployError(f"TensorRT rejected the optimisation profile {mn}/{opt}/{mx}; check --batch")

    if plan.uses_dla:
        available = int(builder.num_DLA_cores)
        if plan.dla_core >= available:  # type: ignore[operator]
            raise EffdeployError(
                f"this device exposes {available} DLA core(s) to TensorRT; --dla-core {plan.dla_core} is not one of them"
            )
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(plan.dla_core)  # type: ignore[arg-type]
        if plan.gpu_fallback:  # off by default: an unsupported layer then fails the build instead of moving silently
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer types in the engine inspector
    if plan.hardware_compat != "none":
        config.hardware_compatibility_level = hardware_compat_level(trt, plan.hardware_compat)
    if plan.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if not plan.tf32 and hasattr(trt.BuilderFlag, "TF32"):  # a release without the flag has no TF32 to clear
        config.clear_flag(trt.BuilderFlag.TF32)
    return config


def engine_io(trt: ModuleType, engine: Any) -> tuple[dict[str, Any], ...]:
    """Names, modes, dtypes and shapes of the built engine's I/O tensors (profile 0 for inputs)."""
    out = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        t: dict[str, Any] = {
            "name": name,
            "mode": "input" if is_input else "output",
            "dtype": dtype_name(trt, engine.get_tensor_dtype(name)),
            "shape": [int(d) for d in engine.get_tensor_shape(name)],
        }
        if is_input:
            mn, opt, mx = engine.get_tensor_profile_shape(name, 0)
            t.update(min=[int(d) for d in mn], opt=[int(d) for d in opt], max=[int(d) for d in mx])
        out.append(t)
    return tuple(out)


def _compile_serialized(trt: ModuleType, logger: Any, plan: CompilePlan, log: LogCapture, warnings: list[str],
                        quiet: bool) -> tuple[Any, bool, dict[str, Any] | None]:
    """Parse, configure and build; returns (plan bytes, timing cache reused, DLA split).

    Builder, network, parser and config live only in this frame, so they are released when it returns,
    before the caller deserializes the engine (peak memory on 4-8 GB Orin Nano / NX)."""
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    _parse_onnx(trt, network, logger, plan.onnx_path, plan.uses_dla, log)
    config = configure(trt, builder, network, plan)
    dla = dla_layer_split(trt, network, config) if plan.uses_dla else None
    cache_path = Path(plan.timing_cache_path)
    cache, reused = _load_timing_cache(config, cache_path, warnings)
    monitor = make_progress_monitor(trt, _Progress(quiet))  # kept referenced until the build returns
    config.progress_monitor = monitor

    if not quiet:
        click.echo(f"building {Path(plan.plan_path).name} with TensorRT {trt.__version__} (strongly typed, "
                   f"{plan.precision} graph, batch {plan.batch_min}..{plan.batch_max})", err=True)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        detail = first_line(log.errors[-1]) if log.errors else "no detail from TensorRT"
        hint = ""
        if dla is not None and not plan.gpu_fallback and dla["not_dla_capable"]:
            first = ", ".join(dla["not_dla_capable"][:3])
            hint = (f" (DLA without GPU fallback: {len(dla['not_dla_capable'])} layer(s) DLA cannot run, first {first}; "
                    "--gpu-fallback runs them on the GPU)")
        raise EffdeployError(f"TensorRT could not build the engine: {detail}{hint}")
    try:
        _save_timing_cache(config, config.get_timing_cache() or cache, cache_path)
    except EffdeployError as e:  # the engine is fine; only the next build is slower
        warnings.append(f"timing cache not saved: {e}")
    return serialized, reused, dla


def compile_engine(trt: ModuleType, plan: CompilePlan, gpu: GpuInfo | None, quiet: bool = False,
                   frame: dict[str, Any] | None = None) -> CompileResult:
    """Compile, serialize and describe one engine; nothing is left half-written on failure.
    ``frame`` (width, height, channel_order): the plan is a frame-in graph's, recorded in engine.json."""
    t0 = time.perf_counter()
    warnings: list[str] = list(plan.notes)
    logger = shared_logger(trt)
    log = LogCapture(echo_warnings=not quiet)
    with capture_log(log):
        serialized, reused, dla = _compile_serialized(trt, logger, plan, log, warnings, quiet)
        gc.collect()  # the builder's objects are unreferenced now; free them before the engine is loaded
        runtime = new_runtime(trt, logger, plan.version_compatible, plan.dla_core,
                              allow_host_code=True)  # the plan this build just wrote
        engine = runtime.deserialize_cuda_engine(serialized)
        if engine is None:
            raise EffdeployError("TensorRT built a plan it cannot deserialize; re-run compile (the plan was not written)")
        io = engine_io(trt, engine)
        if dla is not None:
            dla.update(engine_dla_layers=list(log.dla_layers), engine_gpu_layers=list(log.gpu_layers),
                       inspector_layers=_inspector_layers(trt, engine))
        del engine, runtime

    plan_path = Path(plan.plan_path)
    engine_manifest_path(plan_path).unlink(missing_ok=True)  # never a manifest describing an older plan
    _write_atomic(plan_path, serialized)
    gpu = gpu or GpuInfo(name="unknown", compute_capability=plan.profile.compute_capability or "?")
    build = plan.compile_settings()
    if dla is not None:
        build["dla"] = dla
        warnings.append(f"DLA placement: {dla_summary(dla)}")
    manifest = EngineManifest(
        tensorrt_version=str(trt.__version__),
        gpu=gpu.to_dict(),
        profile=plan.profile.to_dict(),
        precision=plan.precision,
        onnx_sha256=plan.onnx_sha256,
        calibration_sha256=plan.calibration_sha256,
        io=io,
        preprocessing=dict(plan.preprocessing),
        build=build,
        bundle={"path": plan.bundle_path, "model": plan.model_name},
        frame=dict(frame or {}),
    )
    manifest = write_engine_manifest(plan_path, manifest)
    return CompileResult(plan, manifest, time.perf_counter() - t0, reused, tuple(warnings))


@dataclass(frozen=True)
class AutoCompile:
    """What ``effdeploy build`` learns from :func:`compile_after_build`."""

    engine: Path | None  # the plan written here, or None
    hint: str | None  # the command to run on the target when nothing was compiled here
    reason: str  # one line: why it compiled here or why not


def compile_after_build(bundle_path: str | Path, profile: Profile, quiet: bool = False) -> AutoCompile:
    """Called by ``effdeploy build`` after a verified bundle: compile here when TensorRT is importable
    and the local GPU matches the profile; otherwise return the command for the target.

    Refusals (e.g. INT8 on jetson-nano) are reported, never raised: the bundle itself is fine.
    """
    if not profile.is_gpu:
        return AutoCompile(None, None, f"{profile.name} is a CPU target: the verified bundle is the deployable artifact")
    hint = compile_hint(bundle_path, profile)
    if import_tensorrt() is None:
        return AutoCompile(None, hint, MISSING_TENSORRT)
    gpu = detect_gpu()
    if not gpu_matches(profile, gpu):
        here = f"{gpu.name} (compute capability {gpu.compute_capability})" if gpu else "no CUDA GPU"
        return AutoCompile(None, hint, f"this machine has {here}, not {profile.name}'s compute capability "
                                       f"{profile.compute_capability}; compile on the target")
    try:
        result = compile_bundle(bundle_path, profile, CompileOptions(), quiet=quiet)
    except EffdeployError as e:
        return AutoCompile(None, hint, str(e))
    return AutoCompile(Path(result.plan.plan_path), None, f"compiled here with TensorRT {result.engine.tensorrt_version}")


def frame_compile_plans(bundle: Any, plan: Any) -> list[tuple[FrameInput, Any]]:
    """One :class:`effdeploy.backends.tensorrt.plan.CompilePlan` per verified frame-in graph of ``bundle``: the main
    plan's settings, the frame graph's ONNX and its NHWC uint8 input, written beside the main plan.
    Always on the GPU: DLA takes neither uint8 frames nor the resampling MatMuls."""
    from ...files import sha256_file

    out = []
    for entry in getattr(bundle.manifest, "frames", ()) or ():
        if not usable_frame_graph(entry):
            continue
        frame = FrameInput(int(entry["width"]), int(entry["height"]), str(entry.get("channel_order", "bgr")))
        onnx_path = Path(bundle.path) / str(entry["file"])
        sha = (bundle.manifest.artifacts.get(onnx_path.name) or {}).get("sha256") or sha256_file(onnx_path)
        out.append((frame, plan.with_(
            onnx_path=str(onnx_path.resolve()), plan_path=str(frame_engine_path(plan.plan_path, frame)),
            input_name=str((entry.get("input") or {}).get("name", FRAME_INPUT)),
            input_chw=(frame.height, frame.width, 3), onnx_sha256=str(sha), dla_core=None, gpu_fallback=False,
            tf32=False)))
    return out
