"""Minimal reproducer: ONNX Runtime's WeightBiasQuantization breaks a valid FP16 Q/DQ graph.

A Conv whose input and weight come from DequantizeLinear with FP16 scales, whose bias is a float16
initializer and whose output goes (through Relu) into a QuantizeLinear, is valid ONNX (opset 19:
DequantizeLinear may take FP16 scales and then returns FP16; ``onnx.checker`` with ``full_check``
passes). With any graph optimisation level (ORT_ENABLE_BASIC already) the CPU provider's
``WeightBiasQuantization`` (onnxruntime/core/optimizer/qdq_transformer/weight_bias_quantization.cc)
rewrites the bias as ``DQ(Cast<int32>(Round(bias / (s_in * s_w))), s_in * s_w)``, computed in the scales'
type, FP16: ``bias / (s_in * s_w)`` overflows FP16's 65504 for ordinary values (here 10 / 1e-4), the
int32 cast of ``inf`` is garbage and so is the output. The transform checks that a non-DQ weight is
FP32 but not the scale type. Disabling that one transform (or every QDQ transform with the session
option ``session.disable_quant_qdq=1``, or all optimisation) gives the right result.

    python docs/ort_fp16_qdq_repro.py      # needs numpy, onnx, onnxruntime; prints one line per setting
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

S_IN, S_W, BIAS = 0.01, 0.01, 10.0  # bias / (s_in * s_w) = 1e5 > FP16 max (65504)


def model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w_q = rng.integers(-100, 100, (4, 4, 1, 1)).astype(np.int8)
    h = np.float16
    inits = [
        numpy_helper.from_array(np.array(S_IN, h), "s_in"),
        numpy_helper.from_array(np.array(0, np.int8), "zp"),
        numpy_helper.from_array(w_q, "w_q"),
        numpy_helper.from_array(np.full(4, S_W, h), "s_w"),
        numpy_helper.from_array(np.zeros(4, np.int8), "zp_w"),
        numpy_helper.from_array(np.full(4, BIAS, h), "bias"),
        numpy_helper.from_array(np.array(0.05, h), "s_out"),
    ]
    nodes = [
        helper.make_node("Cast", ["x"], ["xh"], to=TensorProto.FLOAT16),
        helper.make_node("QuantizeLinear", ["xh", "s_in", "zp"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s_in", "zp"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w_q", "s_w", "zp_w"], ["w"], axis=0),
        helper.make_node("Conv", ["xd", "w", "bias"], ["c"]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("QuantizeLinear", ["r", "s_out", "zp"], ["rq"]),
        helper.make_node("DequantizeLinear", ["rq", "s_out", "zp"], ["rd"]),
        helper.make_node("Cast", ["rd"], ["y"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(nodes, "fp16_qdq_conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])], initializer=inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    m.ir_version = 9
    onnx.checker.check_model(m, full_check=True)  # valid ONNX, types and shapes included
    return m


def run(m: onnx.ModelProto, x: np.ndarray, level: ort.GraphOptimizationLevel, disabled: list[str] | None = None,
        config: dict[str, str] | None = None) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = level
    for key, value in (config or {}).items():
        opts.add_session_config_entry(key, value)
    session = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"],
                                   disabled_optimizers=disabled or [])
    return session.run(None, {"x": x})[0]


def main() -> None:
    m = model()
    x = np.random.default_rng(1).uniform(-1, 1, (1, 4, 4, 4)).astype(np.float32)
    L = ort.GraphOptimizationLevel
    ref = run(m, x, L.ORT_DISABLE_ALL)
    print(f"onnxruntime {ort.__version__}, onnx {onnx.__version__}")
    for label, y in (
        ("ORT_DISABLE_ALL (reference)", ref),
        ("ORT_ENABLE_BASIC", run(m, x, L.ORT_ENABLE_BASIC)),
        ("ORT_ENABLE_ALL", run(m, x, L.ORT_ENABLE_ALL)),
        ("ORT_ENABLE_ALL, disabled_optimizers=['WeightBiasQuantization']",
         run(m, x, L.ORT_ENABLE_ALL, ["WeightBiasQuantization"])),
        ("ORT_ENABLE_ALL, session.disable_quant_qdq=1", run(m, x, L.ORT_ENABLE_ALL, config={"session.disable_quant_qdq": "1"})),
    ):
        print(f"{label:66s} max |y - reference| = {float(np.nanmax(np.abs(y - ref))):.4g}"
              + ("  (NaN in output)" if np.isnan(y).any() else ""))


if __name__ == "__main__":
    main()
