"""The INT8 stage of a build: calibrate, choose the method by measurement, insert Q/DQ in the
profile's dialect, choose the activation form by timing where the dialect offers two, and
reconstruct. Pure functions over ONNX protos and arrays; the build orchestrates them (the repair
of a missed budget is :mod:`effdeploy.verify.repair`)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import onnx

from ..export.logits import cached_logits, ort_logits, relative_mse
from .qdq import OPENVINO, QuantConfig, calibration_tensors, code_key, dialect_of, quantize
from ..report import info


@dataclass(frozen=True)
class Int8Result:
    model: onnx.ModelProto
    config: QuantConfig
    artifact: Any  # effdeploy.calibration.CalibrationArtifact
    cache_hit: bool
    calibration_ids: tuple[str, ...]
    method_scores: Mapping[str, float] = field(default_factory=dict)
    dialect_timings_ms: Mapping[str, float] = field(default_factory=dict)
    dialect_timed_before: bool = False  # the timings come from an earlier build on this machine
    warnings: tuple[str, ...] = ()  # the calibration's
    speed_note: str | None = None  # where FP32 ran faster than all-INT8 here (fp32_faster_note)
    seconds: float = 0.0
    reconstruction: Any = None  # effdeploy.precision.reconstruct.Reconstruction, or None (--no-reconstruct)
    plan: Any = None  # the calibration plan (the repair's selection split is drawn from it)

    @property
    def initializers(self) -> Mapping[str, np.ndarray] | None:
        """Reconstructed integers and biases for :func:`quantize` (a repair re-quantizes with them)."""
        rec = self.reconstruction
        return rec.initializers if rec is not None and rec.accepted else None

    def to_manifest(self) -> dict[str, Any]:
        """The INT8 part of the manifest's ``quantization`` record."""
        return {
            "dialect": self.config.dialect,
            "config": self.config.to_dict(),
            "activations": "S8 symmetric" if self.config.activations == "int8" else "U8 asymmetric",
            "weights": "S8 symmetric per-channel, " + ("7-bit (|q| <= 64)" if self.config.reduce_range
                                                           else "8-bit (|q| <= 127)"),
            "method": self.config.method,
            "method_scores": dict(self.method_scores),
            "cpu_dialect_latency_ms": dict(self.dialect_timings_ms),
            "cpu_dialect_timed_before": self.dialect_timed_before,
            "reconstruction": self.reconstruction.to_dict() if self.reconstruction is not None else None,
            "calibration": {**self.artifact.manifest_entry(), "cache_hit": self.cache_hit,
                            "builtin": self.artifact.builtin, "warnings": list(self.warnings)},
        }


def run_int8(
    fp32: onnx.ModelProto,
    fp32_path: Path,
    config: QuantConfig,
    plan: Any,
    spec: Any,
    method: str,
    selection_data: Callable[[], np.ndarray],
    quiet: bool = False,
    recipe: Any = None,
    reconstruction_data: Callable[[int], np.ndarray] | None = None,
) -> Int8Result:
    """Calibrate on ``plan``, choose the method (``auto``: lowest logit error on calibration
    images), quantize, choose the activation form by timing where the dialect offers two, then
    (``recipe``) reconstruct the INT8 weights on ``reconstruction_data(n)``: n calibration images."""
    from ..calibration import METHODS, run_calibrations

    t0 = time.perf_counter()
    tensors = calibration_tensors(fp32, config)
    candidates = METHODS if method == "auto" else (method,)
    outcomes = run_calibrations(fp32_path, tensors, plan, spec, methods=candidates, quiet=quiet)  # one pass
    first = outcomes[candidates[0]]
    info(f"      calibration: {first.artifact.image_count} images, "
         f"{'cache hit' if first.cache_hit else f'{first.artifact.seconds:.1f} s'}", quiet)
    chosen, scores = choose_method(fp32, outcomes, config, selection_data, quiet)
    config = replace(config, method=chosen)
    out = outcomes[chosen]
    model, config, timings, timed_before = choose_activations(fp32, out.artifact, config, selection_data, quiet)
    rec = None
    if recipe is not None and reconstruction_data is not None:
        model, rec = reconstruct_int8(fp32, model, out.artifact.ranges, config, recipe, reconstruction_data, quiet)
    return Int8Result(
        model=model, config=config, artifact=out.artifact, cache_hit=out.cache_hit,
        calibration_ids=tuple(out.ids), method_scores=scores, dialect_timings_ms=timings,
        dialect_timed_before=timed_before, speed_note=fp32_faster_note(timings, config),
        warnings=tuple(out.warnings), seconds=time.perf_counter() - t0, reconstruction=rec, plan=plan,
    )


def choose_method(fp32: onnx.ModelProto, outcomes: Mapping[str, Any], config: QuantConfig,
                  selection_data: Callable[[], np.ndarray], quiet: bool) -> tuple[str, dict[str, float]]:
    """The calibration method whose ranges give the lowest logit error on calibration images
    (cached per calibration data and graph); the only one when a single method was asked for."""
    if len(outcomes) == 1:
        return next(iter(outcomes)), {}
    scores = _load_selection(outcomes, config)
    cached = scores is not None
    if scores is None:
        # Judged on the FP32-typed twin (the FP16 typing of the other ops is independent of the
        # method), unoptimised: ORT's x86 integer kernels without VNNI saturate S8 activations,
        # which would judge the CPU instead of the ranges.
        x = selection_data()
        ref = ort_logits(fp32, x)
        scores = {}
        for m, outcome in outcomes.items():
            twin = quantize(fp32, outcome.artifact.ranges, replace(config, method=m, fp16_rest=False))
            scores[m] = relative_mse(ref, ort_logits(twin, x, optimize=False))
        _store_selection(outcomes, config, scores)
    chosen = min(scores, key=scores.get)
    info("      method by measurement (relative logit MSE on calibration images): "
         + ", ".join(f"{m} {s:.2e}" for m, s in scores.items()) + f" -> {chosen}" + (" (cached)" if cached else ""),
         quiet)
    return chosen, scores


def _median_ms(runner: Any, sample: np.ndarray, runs: int) -> float:
    """Median batch-1 latency of an open runner, closed after."""
    from ..backends.timing import TimingPlan, time_callable

    with runner as r:
        x = sample[:1]
        return 1e3 * float(np.median(time_callable(lambda: r.infer(x), TimingPlan(warmup=2, iterations=runs))))


def latency_ms(model: onnx.ModelProto, sample: np.ndarray, runs: int = 10) -> float:
    """Median batch-1 latency on ONNX Runtime (the activation-form choice)."""
    from ..backends.onnxrt import OnnxRuntimeRunner

    return _median_ms(OnnxRuntimeRunner(model), sample, runs)


def latencies_ms(models: Mapping[str, onnx.ModelProto], sample: np.ndarray, rounds: int = 2,
                 runs: int = 10) -> dict[str, float]:
    """Batch-1 latencies on ONNX Runtime of several graphs, each timed alone (its session the only
    one open, as deployed) in turn, ``rounds`` times: the best round's median per graph. Timed once
    each, one after the other, a moment of load on the build's cores once made the FP32 graph look
    faster than INT8 when it was not (docs/int8.md, *Swish after DequantizeLinear*). Not interleaved
    call by call: with several sessions open their spinning threads and weights compete for two cores
    and the cache (three B0 sessions timed 1.1-3x slower than alone)."""
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, model in models.items():
            best[name] = min(best.get(name, float("inf")), latency_ms(model, sample, runs))
    return best


def openvino_latency_ms(path: Path, sample: np.ndarray, runs: int = 10) -> float:
    """Median batch-1 latency of an ONNX file on OpenVINO (f32 pinned), as :func:`latency_ms`."""
    from ..backends.openvino import OpenVinoRunner

    return _median_ms(OpenVinoRunner(path), sample, runs)


def openvino_timings(fp32: onnx.ModelProto, model: onnx.ModelProto, sample: np.ndarray) -> dict[str, float]:
    """The openvino dialect's INT8 graph on OpenVINO against the FP32 graph on both CPU runtimes
    (batch 1, ms), so the build can say where FP32 is faster (on an AVX2-only EPYC the distilled B0
    was: docs/int8.md); empty where OpenVINO is not installed."""
    import tempfile
    import warnings

    from ..backends.openvino import import_openvino

    if import_openvino() is None:
        return {}
    try:
        with tempfile.TemporaryDirectory(prefix="effdeploy-ov-timing-") as d:
            paths = {name: Path(d) / f"{name}.onnx" for name in ("fp32", "int8")}
            onnx.save(fp32, str(paths["fp32"]))
            onnx.save(model, str(paths["int8"]))
            return {"INT8 on OpenVINO": openvino_latency_ms(paths["int8"], sample),
                    "FP32 on OpenVINO": openvino_latency_ms(paths["fp32"], sample),
                    "FP32 on ONNX Runtime": latency_ms(fp32, sample)}
    except Exception as e:  # a speed note is not worth a failed build (a broken plugin, say)
        warnings.warn(f"OpenVINO could not time the INT8 graph ({type(e).__name__}: {str(e)[:160]}); no speed note")
        return {}


def fp32_faster_note(timings: Mapping[str, float], config: QuantConfig) -> str | None:
    """Where the dialect timing found the FP32 graph faster than the chosen all-INT8 one on this CPU,
    a line saying so and by how much (the B family on ONNX Runtime's CPU kernels: Q/DQ around swish
    and SE costs more than the INT8 convs save); None where INT8 is faster or nothing was timed."""
    if "INT8 on OpenVINO" in timings:  # the openvino dialect: INT8 as OpenVINO runs it, FP32 on the faster runtime
        int8 = timings["INT8 on OpenVINO"]
        runtime, fp32 = min(((k, v) for k, v in timings.items() if k.startswith("FP32")), key=lambda kv: kv[1])
        if int8 <= fp32:
            return None
        return (f"on this CPU the FP32 graph runs faster than all-INT8 (INT8 on OpenVINO {int8:.1f} ms, {runtime} "
                f"{fp32:.1f} ms at batch 1: INT8 takes {int8 / fp32:.2f}x FP32's time); for speed here build "
                "--precision fp32, or compare runtimes with effdeploy bench BUNDLE --backend auto")
    fp32, int8 = timings.get("fp32"), timings.get(_form(config))
    if fp32 is None or int8 is None or int8 <= fp32:
        return None
    return (f"on this CPU ONNX Runtime runs the FP32 graph faster than all-INT8 ({_form(config)} {int8:.1f} ms, FP32 "
            f"{fp32:.1f} ms at batch 1: INT8 takes {int8 / fp32:.2f}x FP32's time); for speed here build --precision "
            "fp32, or compare runtimes with effdeploy bench BUNDLE --backend auto")


def choose_activations(fp32: onnx.ModelProto, artifact: Any, config: QuantConfig,
                       selection_data: Callable[[], np.ndarray],
                       quiet: bool) -> tuple[onnx.ModelProto, QuantConfig, dict[str, float], bool]:
    """Where the dialect runs both U8S8 and S8S8 (ONNX Runtime's CPU kernels), timed on this
    machine (cached per machine) and chosen by :func:`pick_activations`; else its one form. Returns
    the graph, the config, the timings and whether they were measured before."""
    model = quantize(fp32, artifact.ranges, config)
    forms = dialect_of(config).activations
    if config.dialect == OPENVINO:  # one form; whether INT8 pays on this CPU is still worth saying
        from ..backends.cpu_features import vnni_flags

        # 8-bit weights (a VNNI profile) on a CPU without VNNI: saturating kernels, not the target's speed
        timings = openvino_timings(fp32, model, selection_data()[:1]) if config.reduce_range or vnni_flags() else {}
        if timings:
            info("      openvino dialect, timed (batch 1, ms): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()),
                 quiet)
        return model, config, timings, False
    if len(forms) < 2:
        return model, config, {}, False
    timings = _load_dialect(artifact.key, config)
    timed_before = timings is not None
    models = {config.activations: model}  # each form quantized once: the timed graph is the one kept
    if timings is None:
        models.update({f: quantize(fp32, artifact.ranges, replace(config, activations=f))
                       for f in forms if f not in models})
        timings = latencies_ms({**{_form_name(f): m for f, m in models.items()}, "fp32": fp32}, selection_data())
        _store_dialect(artifact.key, config, timings)
    chosen = pick_activations(timings, forms)
    if chosen != config.activations:
        config = replace(config, activations=chosen)
        model = models[chosen] if chosen in models else quantize(fp32, artifact.ranges, config)
    faster = min(timings[_form_name(f)] for f in forms[1:]) < timings[_form_name(forms[0])]
    kept = f" (the more accurate form: {_form_name(forms[1])} is not {FORM_MARGIN - 1:.0%} faster)" \
        if chosen == forms[0] and faster else ""
    info("      cpu dialect by timing (batch 1, ms): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
         + f" -> {_form(config)}{kept}" + (" (measured before on this machine)" if timed_before else ""), quiet)
    return model, config, timings, timed_before


FORM_MARGIN = 1.10  # how much faster another activation form must time than the preferred one


def pick_activations(timings: Mapping[str, float], forms: tuple[str, ...]) -> str:
    """The dialect's preferred (more accurate) activation form, unless another timed at least
    FORM_MARGIN faster. On B0 in the cpu dialect U8S8 agreed 98.4 % (KL 0.0125) and S8S8 97.6 %
    (KL 0.0142), and U8S8's logit cosine was higher in all three float-part configurations measured
    (docs/int8.md, *Choosing the activation form*). Where the two timed within a few per cent (what two
    builds on one machine disagree by), picking the faster flipped between builds, so a build's
    accuracy depended on the noise of its timing."""
    preferred = forms[0]
    others = [f for f in forms[1:] if timings[_form_name(f)] * FORM_MARGIN < timings[_form_name(preferred)]]
    return min(others, key=lambda f: timings[_form_name(f)]) if others else preferred


def reconstruct_int8(fp32: onnx.ModelProto, plain: onnx.ModelProto, ranges: Mapping[str, Any], config: QuantConfig,
                     recipe: Any, data: Callable[[int], np.ndarray], quiet: bool) -> tuple[onnx.ModelProto, Any]:
    """Learn the INT8 weights on the FP32-typed twin (the deployed graph's function), write them
    into the deployed graph (``plain`` is it without them, returned when they do not help);
    reused from the cache when the same inputs were reconstructed."""
    from .reconstruct import cached_reconstruction

    twin = quantize(fp32, ranges, replace(config, fp16_rest=False)) if config.fp16_rest else plain
    images = data(recipe.images)
    rec = cached_reconstruction(twin, fp32, images, recipe,
                                fp16_scales=config.fp16_rest, quiet=quiet)
    rec = choose_strength(fp32, twin, rec, images)
    scores = rec.strength_scores or {}
    before, after = rec.logit_rel_mse
    info(f"      reconstruction ({rec.recipe['name']}, {rec.images} calibration images, {len(rec.layers)} layers, "
         f"{rec.recipe.get('device', 'cpu')}): logit relative MSE {before:.3e} -> {after:.3e}"
         + ((f" at strength {rec.strength:g}" if recipe.mode == "bias" else ", used") if rec.accepted
            else " - not better on its images, not used")
         + " (" + ", ".join(f"{a:g}: {v:.2e}" for a, v in scores.items()) + ")"
         + (", cache hit" if rec.cache_hit else f", {rec.seconds:.1f} s"), quiet)
    if not rec.accepted:
        return plain, rec
    return quantize(fp32, ranges, config, initializers=rec.initializers), rec


def choose_strength(fp32: onnx.ModelProto, twin: onnx.ModelProto, rec: Any, images: np.ndarray) -> Any:
    """The corrections at the strength (reconstruct.STRENGTHS) whose graph, run by ONNX Runtime itself,
    has the lowest logit error on the images they were measured on; 0 (the plain graph, not accepted)
    when none beats it. A safety net and a damper: the interpreter's per-layer gains need not add up."""
    from onnx import numpy_helper

    from .qdq import apply_initializers
    from .reconstruct import STRENGTHS, at_strength

    ref, _ = cached_logits(fp32, images)
    plain_values = {i.name: numpy_helper.to_array(i) for i in twin.graph.initializer if i.name in rec.initializers}
    # learned integers are all or nothing: halfway between two roundings is neither
    grid = STRENGTHS if rec.recipe.get("mode", "bias") == "bias" else (0.0, 1.0)
    values = {a: at_strength(plain_values, rec.initializers, a) for a in grid}
    scores = {a: relative_mse(ref, cached_logits(twin if a == 0 else apply_initializers(twin, values[a]), images,
                                                 optimize=False)[0]) for a in grid}
    best = min(grid, key=lambda a: (scores[a], a))
    return replace(rec, initializers=values[best], strength=best,
                   strength_scores=scores, logit_rel_mse=(scores[0.0], scores[best]), accepted=best > 0)


def _selection_path(outcomes: Mapping[str, Any], config: QuantConfig) -> Path:
    from ..files import sha256_json
    from ..cache import cache_folder

    keys = sorted(o.artifact.key for o in outcomes.values())
    cfg = {k: v for k, v in config.to_dict().items() if k not in ("method", "fp16_rest")}
    return cache_folder("selection") / f"{sha256_json({'keys': keys, 'config': cfg})[:32]}.json"


def _read_json(path: Path) -> Any:
    """A small cache record, or None when it is missing or unreadable."""
    import json

    from ..cache import load

    try:
        return json.loads(load(path) or b"null")
    except (OSError, ValueError):
        return None


def _write_json(path: Path, record: Any) -> None:
    import json

    from ..cache import store

    store(path, json.dumps(record))


def _load_selection(outcomes: Mapping[str, Any], config: QuantConfig) -> dict[str, float] | None:
    """A method choice measured before on the same calibration data and graph."""
    scores = _read_json(_selection_path(outcomes, config))
    return scores if isinstance(scores, dict) and set(scores) == set(outcomes) else None


def _store_selection(outcomes: Mapping[str, Any], config: QuantConfig, scores: Mapping[str, float]) -> None:
    _write_json(_selection_path(outcomes, config), dict(scores))


def _form(config: QuantConfig) -> str:
    return _form_name(config.activations)


def _form_name(activations: str) -> str:
    return "U8S8" if activations == "uint8" else "S8S8"


def _dialect_path(calibration_key: str, config: QuantConfig) -> Path:
    """Keyed by the graph and ranges (the calibration key), the Q/DQ options and the dialect's
    graph edits (its row and the code that writes it: an edit is a new graph to time), ONNX
    Runtime's version and this machine's CPU: the timing is only valid where it was taken."""
    import os
    import platform

    from ..files import sha256_json
    from ..cache import cache_folder

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cfg = {k: v for k, v in config.to_dict().items() if k != "activations"}
    from ..backends.ort_safety import session_key

    key = sha256_json({"calibration": calibration_key, "config": cfg, "dialect": asdict(dialect_of(config)),
                       "code": code_key(), "cpu": cpu, "cores": os.cpu_count(), **session_key()})
    return cache_folder("dialect") / f"{key[:32]}.json"


def _load_dialect(calibration_key: str, config: QuantConfig) -> dict[str, float] | None:
    """The CPU dialect's forms timed before for the same graph and ranges on this machine: the
    timings, from which the form is chosen again (so a change of rule applies to old records)."""
    d = _read_json(_dialect_path(calibration_key, config))
    try:
        timings = {str(k): float(v) for k, v in d["timings_ms"].items()}
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    needed = {_form_name(f) for f in dialect_of(config).activations} | {"fp32"}
    return timings if needed <= timings.keys() and all(v > 0 for v in timings.values()) else None


def _store_dialect(calibration_key: str, config: QuantConfig, timings: Mapping[str, float]) -> None:
    _write_json(_dialect_path(calibration_key, config), {"timings_ms": dict(timings)})
