"""How to run a TensorRT-dialect graph on ONNX Runtime without ORT's graph optimiser breaking it.

The graph is valid ONNX (opset 19 DequantizeLinear with FP16 scales; the full ONNX check passes),
but ONNX Runtime's CPU provider (1.32, any optimisation level from BASIC) runs
``WeightBiasQuantization`` on every Conv/Gemm fed by a DequantizeLinear whose output reaches a
QuantizeLinear: it requantizes the float bias as ``Round(bias / (s_in * s_w))`` in the scales' type,
FP16, where the division overflows 65504 for ordinary biases, and the result is garbage (Lite0:
0 % top-1 agreement). Turning that one transform off, or all of them, gives the right result
(reproducer: docs/ort_fp16_qdq_repro.py). effdeploy's own runners use the manifest's
``ort_graph_optimization`` setting; this module tells everyone else.

The same transform also quantizes the *weights* of a float Conv that sits between a
DequantizeLinear and a QuantizeLinear in a cpu-dialect graph: a conv the build kept in float on
purpose (a repaired block, a single kept conv, Lite's depthwise convs with ``--int8-float dw``).
Measured on Lite0 (cpu dialect, depthwise convs float, 125 shared images): 92.0 % top-1 agreement
optimised, 98.4 % optimised without the transform and unoptimised. The precision of every conv is
the graph's decision, so effdeploy's ONNX Runtime sessions never run that transform
(:data:`DISABLED_OPTIMIZERS`), and the manifest tells other ONNX Runtime users to do the same.
"""

from __future__ import annotations

from typing import Any, Mapping

import onnx


UNSAFE_TRANSFORM = "WeightBiasQuantization"
DISABLED_OPTIMIZERS = (UNSAFE_TRANSFORM,)  # every optimised effdeploy session runs without it


def session_key(optimize: bool = True) -> dict[str, Any]:
    """What an effdeploy ONNX Runtime session computes depends on, for cache keys of its results."""
    import onnxruntime

    return {"ort": onnxruntime.__version__, "disabled_optimizers": list(DISABLED_OPTIMIZERS) if optimize else []}

SESSION_HINT = (
    "run it in ONNX Runtime with graph optimisation off (SessionOptions.graph_optimization_level = "
    "ORT_DISABLE_ALL) or with InferenceSession(..., disabled_optimizers=['WeightBiasQuantization']); "
    "ORT's WeightBiasQuantization overflows FP16 Q/DQ biases (docs/ort_fp16_qdq_repro.py)"
)


def fp16_qdq_layers(model: onnx.ModelProto) -> int:
    """Conv/Gemm nodes fed by a DequantizeLinear with an FP16 scale: what the transform can break."""
    inits = {i.name: i.data_type for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    count = 0
    for n in model.graph.node:
        if n.op_type not in ("Conv", "ConvTranspose", "Gemm") or not n.input:
            continue
        dq = producer.get(n.input[0])
        if dq is not None and dq.op_type == "DequantizeLinear" and len(dq.input) > 1 \
                and inits.get(dq.input[1]) == onnx.TensorProto.FLOAT16:
            count += 1
    return count


def ort_hint_for_graph(model: onnx.ModelProto) -> str | None:
    n = fp16_qdq_layers(model)
    if n:
        return f"{n} Conv/Gemm with FP16 Q/DQ inputs: {SESSION_HINT}"
    n = float_convs_between_qdq(model)
    return FLOAT_CONV_HINT.format(n=n) if n else None


FLOAT_CONV_HINT = (
    "run it in ONNX Runtime with InferenceSession(..., disabled_optimizers=['WeightBiasQuantization']) "
    "(as it was verified): ORT's WeightBiasQuantization would quantize the weights of the {n} convs kept in float"
)


def float_convs_between_qdq(model: onnx.ModelProto) -> int:
    """Float Conv/Gemm (FP32 weights) fed by a DequantizeLinear and feeding a QuantizeLinear, directly
    or through a Relu/Clip ORT folds into it: convs kept out of INT8 inside a Q/DQ graph, which the
    transform would quantize behind the graph's back (one followed by swish it leaves alone)."""
    inits = {i.name: i.data_type for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def reaches_q(tensor: str, through: int = 1) -> bool:
        for c in consumers.get(tensor, []):
            if c.op_type == "QuantizeLinear" or (through and c.op_type in ("Relu", "Clip") and reaches_q(c.output[0], 0)):
                return True
        return False

    count = 0
    for n in model.graph.node:
        if n.op_type not in ("Conv", "ConvTranspose", "Gemm") or len(n.input) < 2:
            continue
        dq = producer.get(n.input[0])
        if dq is not None and dq.op_type == "DequantizeLinear" and inits.get(n.input[1]) == onnx.TensorProto.FLOAT \
                and reaches_q(n.output[0]):
            count += 1
    return count


def ort_hint_for_manifest(manifest: Mapping[str, Any]) -> str | None:
    """The hint for a bundle whose manifest says it was verified with graph optimisation off, or
    with float convs inside its Q/DQ graph (verified without WeightBiasQuantization)."""
    quant = manifest.get("quantization") or {}
    if quant.get("ort_graph_optimization") == "disabled":
        return SESSION_HINT
    n = (quant.get("precision_summary") or {}).get("float_convs_between_qdq") or 0
    return FLOAT_CONV_HINT.format(n=n) if n else None
