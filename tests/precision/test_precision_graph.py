"""The TensorRT-dialect graph edits of effdeploy.precision on small graphs written with onnx.helper:
Q/DQ left only on the residual input of Adds, INT8 weights kept exact where FP16 cannot hold the
scale, and the full (typed) ONNX check after the FP16 conversion."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from effdeploy.errors import EffdeployError
from effdeploy.precision.qdq import (
    FP16_MIN_NORMAL, check_typed, drop_non_residual_add_qdq, refit_tiny_weight_scales, to_fp16,
)


def qdq(name: str, scale: str) -> list[onnx.NodeProto]:
    return [helper.make_node("QuantizeLinear", [name, scale, "zp"], [f"{name}_q"], name=f"{name}/Q"),
            helper.make_node("DequantizeLinear", [f"{name}_q", scale, "zp"], [f"{name}_dq"], name=f"{name}/DQ")]


def residual_block(weight_scale: np.ndarray | None = None) -> onnx.ModelProto:
    """x -> Conv(c1) -> Relu -> Conv(c2) -> Add(x, c2), every Add input behind Q/DQ as ORT's quantizer leaves it."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((4, 4, 1, 1)).astype(np.float32)
    q2 = rng.integers(-127, 128, (4, 4, 1, 1)).astype(np.int8)
    ws = weight_scale if weight_scale is not None else np.full(4, 0.01, np.float32)
    inits = [
        numpy_helper.from_array(np.array(0.05, np.float32), "s"),
        numpy_helper.from_array(np.array(0, np.int8), "zp"),
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(q2, "w2_quantized"),
        numpy_helper.from_array(ws.astype(np.float32), "w2_scale"),
        numpy_helper.from_array(np.zeros(4, np.int8), "w2_zp"),
    ]
    nodes = [
        helper.make_node("Relu", ["input"], ["x"], name="/stem/act"),
        *qdq("x", "s"),
        helper.make_node("Conv", ["x_dq", "w1"], ["c1"], name="/blocks.1.1/expand/Conv"),
        helper.make_node("Relu", ["c1"], ["r1"]),
        *qdq("r1", "s"),
        helper.make_node("DequantizeLinear", ["w2_quantized", "w2_scale", "w2_zp"], ["w2"], axis=0, name="w2/DQ"),
        helper.make_node("Conv", ["r1_dq", "w2"], ["c2"], name="/blocks.1.1/project/Conv"),
        *qdq("c2", "s"),
        helper.make_node("Add", ["x_dq", "c2_dq"], ["output"], name="/blocks.1.1/Add"),
    ]
    return checked_model(nodes, inits, [1, 4, 8, 8], opset=19)


def checked_model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], out_shape: list[int],
                  opset: int) -> onnx.ModelProto:
    """``input`` (1, 4, 8, 8) -> nodes -> ``output``, checked by ONNX."""
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, out_shape)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return s.run(None, {"input": x})[0]


def test_non_residual_add_input_loses_its_qdq():
    m = residual_block()
    assert drop_non_residual_add_qdq(m) == 1
    add = next(n for n in m.graph.node if n.op_type == "Add")
    assert add.input[0] == "x_dq"  # the residual (shortcut) input keeps its Q/DQ: TensorRT fuses it into the conv
    assert add.input[1] == "c2"  # the projection conv's output feeds the Add directly
    assert not any(n.name.startswith("c2/") for n in m.graph.node)  # the pair is gone, not left dangling
    onnx.checker.check_model(m, full_check=True)
    assert drop_non_residual_add_qdq(m) == 0  # idempotent
    x = np.random.default_rng(1).standard_normal((1, 4, 8, 8)).astype(np.float32)
    assert run(m, x).shape == (1, 4, 8, 8)


def test_adds_of_two_independent_branches_keep_both_pairs():
    """Without one input among the other's ancestors there is no residual: nothing is removed."""
    m = residual_block()
    add = next(n for n in m.graph.node if n.op_type == "Add")
    g = m.graph
    g.node.insert(0, helper.make_node("Relu", ["input"], ["y"], name="/other"))
    g.node.insert(1, helper.make_node("Conv", ["y", "w1"], ["c3"], name="/other/Conv"))
    for n in qdq("c3", "s"):
        g.node.insert(2, n) if n.op_type == "QuantizeLinear" else g.node.insert(3, n)
    add.input[0] = "c3_dq"
    onnx.checker.check_model(m)
    assert drop_non_residual_add_qdq(m) == 0


def test_tiny_weight_scales_survive_fp16_exactly():
    """Scales below FP16's normal range would be subnormal or clamped to 1e-7 by the converter."""
    scales = np.array([0.01, 3e-6, 2e-9, 0.0], np.float32)  # normal, subnormal, below the 1e-7 clamp, dead channel
    m = residual_block(scales)
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    before = inits["w2_quantized"].astype(np.float32) * scales.reshape(-1, 1, 1, 1)
    q_before = inits["w2_quantized"].copy()
    assert refit_tiny_weight_scales(m) == 2  # the two positive scales below 6.1e-5
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    assert np.array_equal(inits["w2_quantized"][[0, 3]], q_before[[0, 3]])  # other channels' weights untouched
    s_new = inits["w2_scale"]
    assert s_new[0] == np.float32(0.01) and s_new[3] == 0  # normal and zero scales untouched
    assert np.all(s_new[1:3].astype(np.float16).astype(np.float32) == s_new[1:3])  # FP16 holds them exactly
    assert np.all(s_new[1:3] >= 1e-7)  # above onnxconverter-common's clamp
    after = inits["w2_quantized"].astype(np.float32) * s_new.reshape(-1, 1, 1, 1)
    err = np.abs(after - before).max(axis=(1, 2, 3))
    assert np.all(err[1:3] <= s_new[1:3] / 2 + 1e-12)  # within half a step of what the FP32 graph used
    fp16 = to_fp16(m)
    f16 = {i.name: numpy_helper.to_array(i) for i in fp16.graph.initializer}
    assert f16["w2_scale"].dtype == np.float16
    assert np.array_equal(f16["w2_scale"][1:3].astype(np.float32), s_new[1:3])
    assert FP16_MIN_NORMAL == pytest.approx(6.1035e-5, rel=1e-4)


def test_typed_check_catches_an_fp16_fp32_mismatch():
    """A left-over FP16/FP32 mismatch passes ONNX's plain check but fails the full one used after FP16."""
    nodes = [helper.make_node("Cast", ["input"], ["h"], to=TensorProto.FLOAT16),
             helper.make_node("Add", ["h", "input"], ["output"])]
    graph = helper.make_graph(nodes, "mismatch", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    onnx.checker.check_model(model)  # the check to_fp16 used to run: passes
    with pytest.raises(EffdeployError, match="not consistently typed"):
        check_typed(model)


def repro_model() -> onnx.ModelProto:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "docs" / "ort_fp16_qdq_repro.py"
    spec = importlib.util.spec_from_file_location("ort_fp16_qdq_repro", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.model()


def test_the_ort_advice_gives_the_unoptimised_result():
    """What inspect and the bundle summary tell ONNX Runtime users (item 12) keeps the graph right:
    every other optimisation on, only WeightBiasQuantization off, equals running it unoptimised."""
    import onnxruntime as ort

    from effdeploy.backends.ort_safety import UNSAFE_TRANSFORM, ort_hint_for_graph

    m = repro_model()  # valid ONNX: the reproducer runs the full check when it builds the graph
    x = np.random.default_rng(3).uniform(-1, 1, (1, 4, 4, 4)).astype(np.float32)

    def run_with(level, disabled=()):
        o = ort.SessionOptions()
        o.graph_optimization_level = level
        o.log_severity_level = 3
        s = ort.InferenceSession(m.SerializeToString(), o, providers=["CPUExecutionProvider"],
                                 disabled_optimizers=list(disabled))
        return s.run(None, {"x": x})[0]

    L = ort.GraphOptimizationLevel
    np.testing.assert_array_equal(run_with(L.ORT_ENABLE_ALL, [UNSAFE_TRANSFORM]), run_with(L.ORT_DISABLE_ALL))
    hint = ort_hint_for_graph(m)
    assert hint and "ORT_DISABLE_ALL" in hint and UNSAFE_TRANSFORM in hint
    # FP32 scales: no FP16 hint; but its first conv keeps float weights between a DQ and a Q (through
    # Relu), which the same transform would quantize: that hint instead (its effect on a real bundle:
    # tests/backends/test_onnxrt.py)
    block_hint = ort_hint_for_graph(residual_block())
    assert "FP16" not in block_hint and "1 convs kept in float" in block_hint


def test_inspect_says_how_to_run_an_fp16_qdq_graph(tmp_path):
    from cli_errors import run_cli

    path = tmp_path / "qdq.onnx"
    onnx.save(repro_model(), str(path))
    r = run_cli("inspect", str(path))
    assert r.returncode == 0, r.stderr
    assert "ONNX Runtime: 1 Conv/Gemm with FP16 Q/DQ inputs" in r.stdout and "disabled_optimizers" in r.stdout
    js = run_cli("inspect", str(path), "--json")
    assert "WeightBiasQuantization" in js.stdout


def test_a_drop_equal_to_the_budget_passes():
    """Two images of 200 are exactly 1.0 pt; floating point made it 1.0000000000000009 and failed the gate."""
    from effdeploy.verify.gate import Budget, Comparison, check_budget

    c = Comparison(samples=200, top1_agreement=0.985, top5_agreement=1.0, cosine_mean=0.99, cosine_min=0.97,
                   max_abs=2.0, mean_abs=0.1, labelled=200, reference_top1=0.895, candidate_top1=0.885)
    assert c.accuracy_drop_pt == 1.0
    assert check_budget(c, Budget(top1_agreement=0.98, accuracy_drop_pt=1.0)) == []
    worse = Comparison(**{**c.__dict__, "candidate_top1": 0.88})
    assert check_budget(worse, Budget(accuracy_drop_pt=1.0)) == ["top-1 accuracy drop 1.50 pt > 1.00 pt"]


def swish_block() -> onnx.ModelProto:
    """An ort-cpu-dialect MBConv fragment: INT8 expand conv -> DQ -> swish -> depthwise conv -> swish
    (on a float tensor) -> SE-style gate Mul(y, Sigmoid(z)), as ORT's quantizer leaves a B-family block."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(np.array(0.05, np.float32), "s"),
        numpy_helper.from_array(np.array(128, np.uint8), "zp"),
        numpy_helper.from_array(rng.standard_normal((8, 4, 1, 1)).astype(np.float32), "w_expand"),
        numpy_helper.from_array(rng.standard_normal((8, 1, 3, 3)).astype(np.float32), "w_dw"),
    ]
    nodes = [
        *qdq("input", "s"),
        helper.make_node("Conv", ["input_dq", "w_expand"], ["e"], name="/blocks.1.0.expand/Conv"),
        *qdq("e", "s"),
        helper.make_node("Sigmoid", ["e_dq"], ["e_sig"], name="/blocks.1.0.expand.act/Sigmoid"),
        helper.make_node("Mul", ["e_dq", "e_sig"], ["e_act"], name="/blocks.1.0.expand.act/Mul"),
        helper.make_node("Conv", ["e_act", "w_dw"], ["d"], group=8, pads=[1, 1, 1, 1], name="/blocks.1.0.dw/Conv"),
        helper.make_node("Sigmoid", ["d"], ["d_sig"], name="/blocks.1.0.dw.act/Sigmoid"),
        helper.make_node("Mul", ["d_sig", "d"], ["d_act"], name="/blocks.1.0.dw.act/Mul"),
        helper.make_node("Sigmoid", ["input"], ["gate"], name="/blocks.1.0.se.gate/Sigmoid"),
        helper.make_node("ReduceMean", ["gate"], ["gate_mean"], axes=[1], keepdims=1),
        helper.make_node("Mul", ["d_act", "gate_mean"], ["output"], name="/blocks.1.0.se/Mul"),
    ]
    return checked_model(nodes, inits, [1, 8, 8, 8], opset=17)


def ort_optimized_ops(model: onnx.ModelProto, tmp_path) -> list[str]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node]


def test_swish_after_dequantize_is_written_fused_because_onnx_runtime_would_not_fuse_it(tmp_path):
    """ONNX Runtime gives each consumer of a DequantizeLinear its own copy, so the swish after an INT8
    conv stays Sigmoid + Mul (and two DequantizeLinear) in its optimised graph; written as QuickGelu
    it is one op, computing the same function. Only that swish changes: the swish on a float tensor
    (which ONNX Runtime fuses itself) and SE's gate stay as they were."""
    from effdeploy.precision.qdq import fuse_swish_after_dq

    m = swish_block()
    x = np.random.default_rng(1).standard_normal((1, 4, 8, 8)).astype(np.float32)
    before, ops_before = run(m, x), ort_optimized_ops(m, tmp_path)
    assert ops_before.count("Sigmoid") >= 2 and ops_before.count("DequantizeLinear") == 2  # ORT left it split
    fused = onnx.ModelProto()
    fused.CopyFrom(m)
    assert fuse_swish_after_dq(fused) == 1
    qg = [n for n in fused.graph.node if n.op_type == "QuickGelu"]
    assert [(n.input[0], n.output[0], n.domain, n.name) for n in qg] == [
        ("e_dq", "e_act", "com.microsoft", "/blocks.1.0.expand.act/Mul/swish")]
    assert [n.name for n in fused.graph.node if n.op_type == "Sigmoid"] == [
        "/blocks.1.0.dw.act/Sigmoid", "/blocks.1.0.se.gate/Sigmoid"]
    np.testing.assert_allclose(run(fused, x), before, rtol=1e-5, atol=1e-5)
    ops_after = ort_optimized_ops(fused, tmp_path)
    assert ops_after.count("DequantizeLinear") < ops_before.count("DequantizeLinear")
    assert ops_after.count("Sigmoid") == ops_before.count("Sigmoid") - 1
    assert fuse_swish_after_dq(fused) == 0  # idempotent
    # shape inference (the MACs `inspect` prints) does not know QuickGelu: the convs after it still count
    from effdeploy.export.exporter import macs_per_node

    assert macs_per_node(fused) == macs_per_node(m) and len(macs_per_node(m)) == 2
    # a Sigmoid whose output is also used elsewhere, or is a graph output, is not a swish to fuse
    for extra in (lambda g: g.output.append(helper.make_tensor_value_info("e_sig", TensorProto.FLOAT, None)),
                  lambda g: g.node.append(helper.make_node("Relu", ["e_sig"], ["e_sig_relu"]))):
        other = swish_block()
        extra(other.graph)
        assert fuse_swish_after_dq(other) == 0
    try:
        import openvino as ov
    except ImportError:
        return  # the [openvino] extra is optional; the dialect's graphs must still open there when it is installed
    onnx.save(fused, str(tmp_path / "fused.onnx"))
    out = ov.Core().compile_model(str(tmp_path / "fused.onnx"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})({"input": x})[0]
    np.testing.assert_allclose(out, before, rtol=1e-4, atol=1e-4)
