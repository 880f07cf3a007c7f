"""Logits of ONNX graphs on ONNX Runtime: plain, cached by graph and pixels, and at named inner
tensors. Every stage that compares graphs (method choice, reconstruction, verification, repair,
drift) gets its numbers here, so they are computed one way."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnx

from .exporter import block_of


def run_batched(infer: Callable[[np.ndarray], np.ndarray], data: np.ndarray, batch: int = 32,
                label: str = "", quiet: bool = True) -> np.ndarray:
    """Run a runner over a preprocessed array in batches, with progress for long runs."""
    from ..report import progress

    starts = list(range(0, len(data), batch))
    outs = []
    with progress(starts, label=label, quiet=quiet) as bar:
        for i in bar:
            outs.append(np.asarray(infer(data[i:i + batch]), dtype=np.float32))
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


def ort_logits(model: onnx.ModelProto | Path, data: np.ndarray, optimize: bool = True, batch: int = 32) -> np.ndarray:
    from ..backends.onnxrt import OnnxRuntimeRunner

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

    from ..backends.ort_safety import session_key
    from ..files import sha256_json, sha256_proto
    from ..cache import cache_folder, load, store

    if not use_cache:
        return ort_logits(model, data, optimize=optimize), False
    key = sha256_json({
        "model": sha256_proto(model),
        "data": hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest(),
        "shape": list(data.shape), "optimize": optimize, **session_key(optimize),
    })
    path = cache_folder("reference") / f"{key[:40]}.npy"
    try:
        cached = np.load(io.BytesIO(load(path) or b""), allow_pickle=False)
        if cached.shape[0] == len(data):
            return cached, True
    except (OSError, ValueError, EOFError):  # missing or corrupt: run again
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


def run_outputs(model: onnx.ModelProto, names: Sequence[str], data: np.ndarray, optimize: bool) -> dict[str, np.ndarray]:
    """Inner tensors of a graph (made graph outputs) on an image array, in batches of 16."""
    from ..backends.onnxrt import OnnxRuntimeRunner

    runner = OnnxRuntimeRunner(_with_outputs(model, names), optimize=optimize)
    outs: dict[str, list[np.ndarray]] = {n: [] for n in names}
    try:
        for i in range(0, len(data), 16):
            for n, r in runner.run_all(data[i:i + 16], names).items():
                outs[n].append(r.astype(np.float32))
    finally:
        runner.close()
    return {n: np.concatenate(v) for n, v in outs.items()}


def per_image_kl(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """KL divergence of each image's candidate softmax from the reference one (nats): a continuous,
    per-image measure, so two candidates can be compared image by image."""
    ref = reference.astype(np.float64)
    cand = candidate.astype(np.float64)
    logp = ref - ref.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    logq = cand - cand.max(1, keepdims=True)
    logq -= np.log(np.exp(logq).sum(1, keepdims=True))
    return (np.exp(logp) * (logp - logq)).sum(1)
