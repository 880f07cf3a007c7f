"""How to run a TensorRT-dialect graph on ONNX Runtime without ORT's graph optimiser breaking it.

The graph is valid ONNX (opset 19 DequantizeLinear with FP16 scales; the full ONNX check passes),
but ONNX Runtime's CPU provider (1.32, any optimisation level from BASIC) runs
``WeightBiasQuantization`` on every Conv/Gemm fed by a DequantizeLinear whose output reaches a
QuantizeLinear: it requantizes the float bias as ``Round(bias / (s_in * s_w))`` in the scales' type,
FP16, where the division overflows 65504 for ordinary biases, and the result is garbage (Lite0:
0 % top-1 agreement). Turning that one transform off, or all of them, gives the right result
(reproducer: docs/ort_fp16_qdq_repro.py). effdeploy's own runners use the manifest's
``ort_graph_optimization`` setting; this module tells everyone else.
"""

from __future__ import annotations

from typing import Any, Mapping

import onnx


UNSAFE_TRANSFORM = "WeightBiasQuantization"

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
    return f"{n} Conv/Gemm with FP16 Q/DQ inputs: {SESSION_HINT}" if n else None


def ort_hint_for_manifest(manifest: Mapping[str, Any]) -> str | None:
    """The hint for a bundle whose manifest says it was verified with graph optimisation off."""
    quant = manifest.get("quantization") or {}
    return SESSION_HINT if quant.get("ort_graph_optimization") == "disabled" else None
