"""Rewrites of the graph that make the B family quantize under symmetric INT8 (swish, SE).

Measured on the distilled B0 (docs/int8.md, per-quantizer table): with the weights in FP32 and
one activation quantizer at a time, the inputs of the SE-gated project convs carry about three
quarters of the INT8 logit error and the swish outputs into the depthwise convs most of the rest.
Both are swish outputs (times a gate in (0, 1)), so they lie in [-0.278, max]: a symmetric range
(TensorRT's activations are symmetric) wastes half its codes on negatives that never occur.

**Shift of skewed inputs**: the conv quantizes ``x - c`` instead (``c`` the middle of the
calibrated range, so the step halves) and takes ``c`` times its weights' sum into its bias. Exact
for 1x1 convs and the classifier; a padded (depthwise) conv first gets its zero padding as an
explicit Pad, so the border still sees the FP32 graph's zeros (tests check both on real images).
The Sub of a single-valued constant is a pointwise op that TensorRT fuses into the producer's
kernel (developer guide, "PointWise Fusion"); the Pad is a separate copy where a dw conv is shifted.
SE equalisation (SmoothQuant through the gate) was measured too and did not win (docs/int8.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper


SHIFT_MIN_GAIN = 1.25  # a shift that narrows the symmetric range by less is not worth an op


@dataclass(frozen=True)
class Shifted:
    """One conv/Gemm input quantized as ``x - c``."""

    tensor: str
    node: str
    c: float
    gain: float  # old symmetric range / new one
    padded: bool  # the conv's zero padding became an explicit Pad


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _set_attr(node: onnx.NodeProto, name: str, value: Any) -> None:
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, value))


def shift_skewed_inputs(model: onnx.ModelProto, ranges: Mapping[str, Any], weight_qmax: int = 127,
                        min_gain: float = SHIFT_MIN_GAIN, skip: Sequence[str] = (), fp16_scales: bool = False,
                        ) -> tuple[onnx.ModelProto, dict[str, Any], tuple[Shifted, ...]]:
    """Quantize ``x - c`` instead of ``x`` at every Conv/Gemm input (but the nodes in ``skip``,
    which stay float) whose calibrated range is lopsided enough that centring it narrows the
    symmetric range by ``min_gain`` or more. The bias takes ``c`` times the sum of the weights *as
    quantized* (per-channel, symmetric, ``weight_qmax`` levels, as ORT's quantizer rounds them, with
    the scales in FP16 where the deployed graph holds them so): with the float sum, every weight's
    rounding error would be multiplied by ``c`` at every pixel.
    Returns the graph, the ranges with the shifted tensors' ranges added, and what was shifted;
    the graph is meant to be quantized, not run in float."""
    from ..calibration.calibrators import TensorRange

    model = _copy(model)
    inits = {i.name: i for i in model.graph.initializer}
    graph_inputs = {i.name for i in model.graph.input}
    nodes = list(model.graph.node)
    new_ranges = dict(ranges)
    records = []
    for node in list(nodes):
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 2 or node.input[1] not in inits \
                or node.name in skip:
            continue
        t = node.input[0]
        r = ranges.get(t)
        if r is None or t in graph_inputs or not (r.min < 0 < r.max):
            continue
        half = (r.max - r.min) / 2.0
        gain = max(-r.min, r.max) / half
        if gain < min_gain:
            continue
        c = float(np.float16((r.max + r.min) / 2.0))  # exact in the FP16 graph too (tensorrt dialect)
        w = _as_quantized(numpy_helper.to_array(inits[node.input[1]]), weight_qmax,
                          axis=0 if node.op_type == "Conv" or _attr(node, "transB", 0) else 1, fp16_scales=fp16_scales)
        if node.op_type == "Gemm":
            if _attr(node, "transA", 0) or _attr(node, "alpha", 1.0) != 1.0 or _attr(node, "beta", 1.0) != 1.0:
                continue
            per_out = (w if _attr(node, "transB", 0) else w.T).sum(axis=1)
        elif _attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            continue
        else:
            per_out = w.sum(axis=(1, 2, 3))  # group conv: output channel o sums its own input channels
        _add_to_bias(model, node, inits, c * per_out)
        src, padded = t, False
        pads = list(_attr(node, "pads", [])) if node.op_type == "Conv" else []
        if any(pads):
            src = _explicit_pad(model, nodes, node, t, pads)
            padded = True
        cname = f"{node.name}_shift_c"
        model.graph.initializer.append(numpy_helper.from_array(np.array(c, np.float32), cname))
        shifted = f"{t}_shifted_for_{node.name.strip('/').replace('/', '_')}"
        nodes.insert(nodes.index(node), helper.make_node("Sub", [src, cname], [shifted], name=f"{node.name}_shift"))
        node.input[0] = shifted
        new_ranges[shifted] = TensorRange(float(r.min - c), float(r.max - c), float(half))
        records.append(Shifted(t, node.name, c, float(gain), padded))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model, new_ranges, tuple(records)


def _as_quantized(w: np.ndarray, qmax: int, axis: int, fp16_scales: bool = False) -> np.ndarray:
    """The weights as per-channel symmetric INT8 dequantizes them (round half to even, like
    QuantizeLinear; the scale in FP16 where the graph will hold it so), in float64."""
    from ..calibration.calibrators import per_channel_weight_scales

    w = np.asarray(w, np.float32)
    scale = per_channel_weight_scales(w, axis=axis, max_level=qmax)
    shape = [1] * w.ndim
    shape[axis] = -1
    s = scale.reshape(shape)
    q = np.clip(np.round(w / s), -qmax, qmax)
    if fp16_scales:
        s = s.astype(np.float16).astype(np.float32)
    return q.astype(np.float64) * s.astype(np.float64)


def _add_to_bias(model: onnx.ModelProto, node: onnx.NodeProto, inits: dict[str, Any], delta: np.ndarray) -> None:
    """bias += delta (a new bias initializer where the node has none)."""
    if len(node.input) > 2 and node.input[2]:
        b = inits[node.input[2]]
        value = numpy_helper.to_array(b).astype(np.float64) + delta
        b.CopyFrom(numpy_helper.from_array(value.astype(np.float32), b.name))
        return
    name = f"{node.name}_shift_bias"
    model.graph.initializer.append(numpy_helper.from_array(delta.astype(np.float32), name))
    while len(node.input) < 3:
        node.input.append("")
    node.input[2] = name


def _explicit_pad(model: onnx.ModelProto, nodes: list[onnx.NodeProto], conv: onnx.NodeProto, t: str,
                  pads: list[int]) -> str:
    """The conv's zero padding as a Pad node before it (the conv's own pads set to 0)."""
    half = len(pads) // 2
    onnx_pads = [0, 0, *pads[:half], 0, 0, *pads[half:]]  # N, C, spatial begins; N, C, spatial ends
    pname = f"{conv.name}_pad_amounts"
    model.graph.initializer.append(numpy_helper.from_array(np.array(onnx_pads, np.int64), pname))
    out = f"{t}_padded_for_{conv.name.strip('/').replace('/', '_')}"
    nodes.insert(nodes.index(conv), helper.make_node("Pad", [t, pname], [out], name=f"{conv.name}_pad", mode="constant"))
    _set_attr(conv, "pads", [0] * len(pads))
    return out
