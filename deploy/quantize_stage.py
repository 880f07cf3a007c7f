"""The INT8 stage of a build: calibrate, choose the method by measurement, insert Q/DQ, pick the
CPU dialect by timing, and repair a missed accuracy budget by keeping sensitive blocks in
higher precision. Pure functions over ONNX protos and arrays; the build orchestrates them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import onnx

from .precision import (
    ORT_CPU,
    QuantConfig,
    block_of,
    calibration_tensors,
    needs_unoptimized_ort,
    quantize,
)
from .report import info


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
    warnings: tuple[str, ...] = ()
    seconds: float = 0.0
    reconstruction: Any = None  # effdeploy.reconstruct.Reconstruction, or None (--no-reconstruct)

    @property
    def initializers(self) -> Mapping[str, np.ndarray] | None:
        """Reconstructed integers and biases for :func:`quantize` (a repair re-quantizes with them)."""
        rec = self.reconstruction
        return rec.initializers if rec is not None and rec.accepted else None


def ort_logits(model: onnx.ModelProto | Path, data: np.ndarray, optimize: bool = True, batch: int = 32) -> np.ndarray:
    from .backends.onnxrt import OnnxRuntimeRunner
    from .verify import run_batched

    runner = OnnxRuntimeRunner(model, optimize=optimize)
    try:
        return run_batched(runner.infer, data, batch)
    finally:
        runner.close()


def cached_logits(model: onnx.ModelProto, data: np.ndarray, optimize: bool = True,
                  use_cache: bool = True) -> tuple[np.ndarray, bool]:
    """A graph's ONNX Runtime logits on an image array, reused when the same graph saw the same
    pixels before (the FP32 reference and, on a rebuild with the same inputs, the candidate too).
    Keyed by the graph's bytes, the input array's bytes, the optimisation setting and ONNX
    Runtime's version."""
    import hashlib
    import io

    import onnxruntime

    from .bundle import sha256_json
    from .cache import cache_folder, store

    if not use_cache:
        return ort_logits(model, data, optimize=optimize), False
    key = sha256_json({
        "model": hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest(),
        "data": hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest(),
        "shape": list(data.shape), "ort": onnxruntime.__version__, "optimize": optimize,
    })
    path = cache_folder("reference") / f"{key[:40]}.npy"
    try:
        cached = np.load(path)
        if cached.shape[0] == len(data):
            return cached, True
    except (OSError, ValueError):
        pass
    logits = ort_logits(model, data, optimize=optimize)
    buf = io.BytesIO()
    np.save(buf, logits)
    store(path, buf.getvalue())
    return logits, False


def reference_logits(fp32: onnx.ModelProto, data: np.ndarray, use_cache: bool = True) -> tuple[np.ndarray, bool]:
    """FP32-graph logits on the verification images (cached, see :func:`cached_logits`)."""
    return cached_logits(fp32, data, use_cache=use_cache)


def relative_mse(reference: np.ndarray, candidate: np.ndarray) -> float:
    ref = reference.astype(np.float64)
    return float(((candidate.astype(np.float64) - ref) ** 2).mean() / max((ref ** 2).mean(), 1e-30))


def latency_ms(model: onnx.ModelProto, sample: np.ndarray, runs: int = 10) -> float:
    """Median batch-1 latency on ONNX Runtime (CPU dialect choice)."""
    from .backends.onnxrt import OnnxRuntimeRunner

    r = OnnxRuntimeRunner(model)
    x = sample[:1]
    for _ in range(2):
        r.infer(x)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        r.infer(x)
        times.append((time.perf_counter() - t) * 1e3)
    r.close()
    return float(np.median(times))


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
    images), quantize, for the CPU dialect choose U8S8 or S8S8 by timing both, then (``recipe``)
    reconstruct the INT8 weights on ``reconstruction_data(n)``: n calibration images."""
    from .calibration import METHODS, run_calibrations

    t0 = time.perf_counter()
    tensors = calibration_tensors(fp32, config)
    candidates = METHODS if method == "auto" else (method,)
    outcomes = run_calibrations(fp32_path, tensors, plan, spec, methods=candidates, quiet=quiet)  # one pass
    first = outcomes[candidates[0]]
    info(f"      calibration: {first.artifact.image_count} images, "
         f"{'cache hit' if first.cache_hit else f'{first.artifact.seconds:.1f} s'}", quiet)
    scores: dict[str, float] = {}
    models: dict[str, onnx.ModelProto] = {}
    if len(candidates) > 1:
        saved = _load_selection(outcomes, config)
        if saved is not None:
            scores = saved
        else:
            # Ranges are judged on the FP32-typed twin (same Q/DQ, ORT-optimised, fast); the FP16
            # typing of the other ops is independent of the calibration method.
            # Unoptimised: the Q/DQ twin as written, in float (ORT's x86 integer kernels without VNNI
            # saturate S8 activations, which would judge the CPU instead of the ranges).
            x = selection_data()
            ref = ort_logits(fp32, x)
            for m in candidates:
                twin = quantize(fp32, outcomes[m].artifact.ranges, replace(config, method=m, fp16_rest=False))
                scores[m] = relative_mse(ref, ort_logits(twin, x, optimize=False))
            _store_selection(outcomes, config, scores)
        chosen = min(scores, key=scores.get)
        info("      method by measurement (relative logit MSE on calibration images): "
             + ", ".join(f"{m} {s:.2e}" for m, s in scores.items()) + f" -> {chosen}"
             + (" (cached)" if saved is not None else ""), quiet)
    else:
        chosen = candidates[0]
    config = replace(config, method=chosen)
    model = models.get(chosen) or quantize(fp32, outcomes[chosen].artifact.ranges, config)
    timings: dict[str, float] = {}
    timed = None
    if config.dialect == ORT_CPU:
        timed = _load_dialect(outcomes[chosen].artifact.key, config)
        if timed is None:
            x = selection_data()
            other = replace(config, activations="int8" if config.activations == "uint8" else "uint8")
            other_model = quantize(fp32, outcomes[chosen].artifact.ranges, other)
            timings = {
                _form(config): latency_ms(model, x),
                _form(other): latency_ms(other_model, x),
                "fp32": latency_ms(fp32, x),
            }
            if timings[_form(other)] < timings[_form(config)]:
                model, config = other_model, other
            _store_dialect(outcomes[chosen].artifact.key, config, timings)
        else:
            timings, activations = timed
            if activations != config.activations:
                config = replace(config, activations=activations)
                model = quantize(fp32, outcomes[chosen].artifact.ranges, config)
        info("      cpu dialect by timing (batch 1, ms): "
             + ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
             + f" -> {_form(config)}" + (" (measured before on this machine)" if timed else ""), quiet)
    out = outcomes[chosen]
    rec = None
    if recipe is not None and reconstruction_data is not None:
        model, rec = reconstruct_int8(fp32, out.artifact.ranges, config, recipe, reconstruction_data, quiet)
    return Int8Result(
        model=model, config=config, artifact=out.artifact, cache_hit=out.cache_hit,
        calibration_ids=tuple(out.ids), method_scores=scores, dialect_timings_ms=timings,
        dialect_timed_before=timed is not None,
        warnings=tuple(out.warnings), seconds=time.perf_counter() - t0, reconstruction=rec,
    )


def reconstruct_int8(fp32: onnx.ModelProto, ranges: Mapping[str, Any], config: QuantConfig, recipe: Any,
                     data: Callable[[int], np.ndarray], quiet: bool) -> tuple[onnx.ModelProto, Any]:
    """Learn the INT8 weights on the FP32-typed twin (the deployed graph's function), write them
    into the deployed graph; reused from the cache when the same inputs were reconstructed."""
    from .precision import TENSORRT
    from .reconstruct import apply_initializers, cached_reconstruction

    twin = quantize(fp32, ranges, replace(config, fp16_rest=False))
    images = data(recipe.images)
    rec = cached_reconstruction(twin, fp32, images, recipe,
                                fp16_scales=config.dialect == TENSORRT and config.fp16_rest, quiet=quiet)
    # A safety net: the corrected graph, run by ONNX Runtime itself, must beat the plain one on the
    # images the corrections were measured on; otherwise they are not used (and the manifest says so).
    ref, _ = cached_logits(fp32, images)
    plain, _ = cached_logits(twin, images, optimize=False)
    fixed, _ = cached_logits(apply_initializers(twin, rec.initializers), images, optimize=False)
    before, after = relative_mse(ref, plain), relative_mse(ref, fixed)
    rec = replace(rec, logit_rel_mse=(before, after), accepted=after < before)
    info(f"      reconstruction ({rec.recipe['name']}, {rec.images} calibration images, {len(rec.layers)} layers): "
         f"logit relative MSE {before:.3e} -> {after:.3e}"
         + ("" if rec.accepted else " - not better, not used")
         + (", cache hit" if rec.cache_hit else f", {rec.seconds:.1f} s"), quiet)
    if not rec.accepted:
        return quantize(fp32, ranges, config), rec
    return quantize(fp32, ranges, config, initializers=rec.initializers), rec


def _selection_path(outcomes: Mapping[str, Any], config: QuantConfig) -> Path:
    from .bundle import sha256_json
    from .cache import cache_folder

    keys = sorted(o.artifact.key for o in outcomes.values())
    cfg = {k: v for k, v in config.to_dict().items() if k not in ("method", "fp16_rest")}
    return cache_folder("selection") / f"{sha256_json({'keys': keys, 'config': cfg})[:32]}.json"


def _read_json(path: Path) -> Any:
    """A small cache record, or None when it is missing or unreadable."""
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, record: Any) -> None:
    import json

    from .cache import store

    store(path, json.dumps(record))


def _load_selection(outcomes: Mapping[str, Any], config: QuantConfig) -> dict[str, float] | None:
    """A method choice measured before on the same calibration data and graph."""
    scores = _read_json(_selection_path(outcomes, config))
    return scores if isinstance(scores, dict) and set(scores) == set(outcomes) else None


def _store_selection(outcomes: Mapping[str, Any], config: QuantConfig, scores: Mapping[str, float]) -> None:
    _write_json(_selection_path(outcomes, config), dict(scores))


def _form(config: QuantConfig) -> str:
    return "U8S8" if config.activations == "uint8" else "S8S8"


def _dialect_path(calibration_key: str, config: QuantConfig) -> Path:
    """Keyed by the graph and ranges (the calibration key), the Q/DQ options, ONNX Runtime's
    version and this machine's CPU: the timing is only valid where it was taken."""
    import os
    import platform

    import onnxruntime

    from .bundle import sha256_json
    from .cache import cache_folder

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cfg = {k: v for k, v in config.to_dict().items() if k != "activations"}
    key = sha256_json({"calibration": calibration_key, "config": cfg, "ort": onnxruntime.__version__,
                       "cpu": cpu, "cores": os.cpu_count()})
    return cache_folder("dialect") / f"{key[:32]}.json"


def _load_dialect(calibration_key: str, config: QuantConfig) -> tuple[dict[str, float], str] | None:
    """The CPU dialect timed before for the same graph and ranges on this machine."""
    d = _read_json(_dialect_path(calibration_key, config))
    try:
        timings = {str(k): float(v) for k, v in d["timings_ms"].items()}
        return (timings, d["activations"]) if d["activations"] in ("uint8", "int8") else None
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def _store_dialect(calibration_key: str, config: QuantConfig, timings: Mapping[str, float]) -> None:
    _write_json(_dialect_path(calibration_key, config),
                {"timings_ms": dict(timings), "activations": config.activations})


# --- drift and sensitivity ----------------------------------------------------------------------

def block_outputs(model: onnx.ModelProto) -> dict[str, str]:
    """MBConv block -> the tensor it produces (the output of its last node), in graph order."""
    last: dict[str, str] = {}
    for n in model.graph.node:
        b = block_of(n.name)
        if b and n.output:
            last[b] = n.output[0]
    return last


def _with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inferred = onnx.shape_inference.infer_shapes(m)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    existing = {o.name for o in m.graph.output}
    for n in names:
        if n not in existing:
            m.graph.output.append(onnx.helper.make_tensor_value_info(n, types.get(n, onnx.TensorProto.FLOAT), None))
    return m


def _run_outputs(model: onnx.ModelProto, names: Sequence[str], data: np.ndarray, optimize: bool) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    m = _with_outputs(model, names)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    s = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    inp = s.get_inputs()[0].name
    outs: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for i in range(0, len(data), 16):
        res = s.run(list(names), {inp: data[i:i + 16]})
        for n, r in zip(names, res):
            outs[n].append(r.astype(np.float32))
    return {n: np.concatenate(v) for n, v in outs.items()}


def drift_report(reference: onnx.ModelProto, candidate: onnx.ModelProto, data: np.ndarray) -> list[dict[str, Any]]:
    """Per-MBConv-block relative error (||a-b|| / ||a||) between the FP32 reference and the
    reduced-precision graph, and how much each block adds: where accuracy goes."""
    blocks = block_outputs(reference)
    cand_tensors = {o for n in candidate.graph.node for o in n.output}
    blocks = {b: t for b, t in blocks.items() if t in cand_tensors}
    if not blocks:
        return []
    names = list(blocks.values())
    a = _run_outputs(reference, names, data, optimize=True)
    b = _run_outputs(candidate, names, data, optimize=not needs_unoptimized_ort(candidate))
    rows, prev = [], 0.0
    for block, t in blocks.items():
        ra, rb = a[t].astype(np.float64), b[t].astype(np.float64)
        err = float(np.linalg.norm(ra - rb) / max(np.linalg.norm(ra), 1e-30))
        rows.append({"block": block, "tensor": t, "relative_error": err, "added": err - prev})
        prev = err
    return rows


def sensitivity_order(drift: Sequence[Mapping[str, Any]]) -> list[str]:
    """Blocks by the error they add (largest first): the ones to keep in higher precision."""
    return [r["block"] for r in sorted(drift, key=lambda r: -r["added"])]


def block_macs_shares(model: onnx.ModelProto) -> dict[str, float]:
    """Each MBConv block's fraction of the network's multiply-adds (what keeping it out of INT8 costs)."""
    from .export import macs_per_node

    per_node = macs_per_node(model)
    total = sum(per_node.values())
    shares: dict[str, float] = {}
    for name, macs in per_node.items():
        b = block_of(name)
        if b is not None and total:
            shares[b] = shares.get(b, 0.0) + macs / total
    return shares
