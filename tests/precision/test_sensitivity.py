"""The conv fallback's ranking (effdeploy.precision.sensitivity): leaving one conv's INT8 out in the
interpreter is the graph quantized without that conv, the checkpointed leave-one-out run is the
whole run, and a conv kept in float keeps its own bias when reconstructed values are written back."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from effdeploy.precision.qdq import calibration_tensors, config_for, quantize
from effdeploy.precision.sensitivity import Toggle, checkpoints, conv_units, leave_one_out
from effdeploy.precision.reconstruct import GraphModule
from effdeploy.verify.repair import fallback_counts, per_image_kl

RES = 96


@pytest.fixture(scope="module")
def b0():
    """B0 at 96 px (random weights: the function is what is checked; B0 has swish, SE, TF SAME pads
    and, in the tensorrt dialect, shifted inputs), max ranges from 12 built-in views, 8 real photos."""
    from effdeploy.calibration import plan_calibration, run_calibrations
    from effdeploy.data.datasets import builtin_image_paths
    from effdeploy.data.preprocess import preprocess_files
    from effdeploy.export.exporter import cached_export
    from effdeploy.model.network import build_model

    model = build_model(0, "b", resolution=RES)
    fp32, _ = cached_export(model, RES)
    pre = model.spec.preprocessing
    out = {}
    for gpu in (True, False):
        cfg = config_for(gpu, method="max")
        cal = run_calibrations(fp32, calibration_tensors(fp32, cfg), plan_calibration(None, 12, 0), pre,
                               methods=("max",), quiet=True)
        out[gpu] = (cfg, cal["max"].artifact.ranges)
    return fp32, out, preprocess_files(builtin_image_paths()[:8], pre)


def _twin(fp32, cfg, ranges, **keep):
    return quantize(fp32, ranges, replace(cfg, fp16_rest=False, **keep))


def _run(model: onnx.ModelProto, x: np.ndarray, fp16_scales: bool) -> np.ndarray:
    g = GraphModule(model, fp16_scales=fp16_scales)
    with torch.no_grad():
        return g(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("gpu", [True, False], ids=["tensorrt", "cpu"])
def test_one_unit_in_float_is_the_graph_quantized_without_that_conv(b0, gpu):
    """For the first depthwise conv (shifted and padded in the tensorrt dialect), a project conv and
    the classifier: the toggled twin has exactly the quantizers and INT8 weights of the graph the
    repair builds with that conv kept out of INT8, and computes what it computes (the tensorrt
    dialect to float precision; the cpu dialect's INT32 biases and ~100 output quantizers in a row
    turn bias rounding into code flips, so there: far closer to it than to all-INT8)."""
    from effdeploy.precision.reconstruct import _weight_qdq

    fp32, by_dialect, x = b0
    cfg, ranges = by_dialect[gpu]
    twin = _twin(fp32, cfg, ranges)
    t = Toggle(twin, fp32, fp16_scales=cfg.fp16_rest)
    units = conv_units(t)
    assert len(units) == 50  # B0 by hand: stem, head, classifier, 16 dw, 16 project, 15 expand
    everything = t.logits(x, t.fake_quants, set(t.weights))
    for node in ("/blocks.0.0.dw.bn/Conv", "/blocks.3.1.project.bn/Conv", "/classifier/Gemm"):
        acts, weights = units[node]
        assert acts and len(weights) == 1
        kept_graph = _twin(fp32, cfg, ranges, keep_nodes=(node,))
        g = GraphModule(kept_graph)
        assert {op.name for op in g.ops if op.kind == "FakeQuant"} == t.fake_quants - acts, node
        assert set(_weight_qdq(kept_graph)) == set(t.weights) - weights, node
        toggled = t.logits(x, t.fake_quants - acts, set(t.weights) - weights)
        kept = _run(kept_graph, x, cfg.fp16_rest)
        if gpu:
            assert np.abs(toggled - kept).max() <= 1e-4 * np.abs(kept).max(), node
        else:
            assert np.linalg.norm(toggled - kept) < 0.2 * np.linalg.norm(everything - kept), node
        assert np.abs(everything - kept).max() > 1e-3 * np.abs(kept).max(), f"{node} in float changed nothing"


def test_leave_one_out_from_checkpoints_is_the_whole_run(b0):
    fp32, by_dialect, x = b0
    cfg, ranges = by_dialect[True]
    t = Toggle(_twin(fp32, cfg, ranges), fp32, fp16_scales=True)
    const = dict.fromkeys(set(t.g.const) | set(t.g.biases))
    marks = checkpoints(t.ops, t.g.input_name, t.g.output_names, const)
    assert len(marks) >= 16  # at least one single live tensor between each pair of B0's 16 blocks
    reference = _run(fp32, x, False)
    kl = leave_one_out(t, x, reference)
    units = conv_units(t)
    for node in ("/stem.bn/Conv", "/blocks.2.1.expand.bn/Conv", "/blocks.6.0.project.bn/Conv", "/classifier/Gemm"):
        acts, weights = units[node]
        whole = t.logits(x, t.fake_quants - acts, set(t.weights) - weights)
        assert kl[node] == pytest.approx(float(per_image_kl(reference, whole).mean()), rel=1e-5, abs=1e-9), node


def test_a_kept_conv_keeps_its_own_bias_under_reconstructed_values(b0):
    """The reconstruction fits biases on the all-INT8 graph; a shifted conv's bias there holds c x its
    quantized weights' sum. A repair that keeps that conv in float must not take it (it did: every
    candidate of a B0 build with the reconstruction accepted agreed 0 % before this was fixed)."""
    fp32, by_dialect, x = b0
    cfg, ranges = by_dialect[True]
    node = "/blocks.0.0.dw.bn/Conv"
    plain = _twin(fp32, cfg, ranges)
    inits = {i.name: numpy_helper.to_array(i) for i in plain.graph.initializer}
    fitted = {n.input[2]: inits[n.input[2]] + np.float32(0.5) for n in plain.graph.node
              if n.op_type == "Conv" and len(n.input) > 2 and n.input[2] in inits}
    conv = next(n for n in plain.graph.node if n.name == node)
    assert conv.input[2] in fitted
    kept = quantize(fp32, ranges, replace(cfg, fp16_rest=False, keep_nodes=(node,)), initializers=fitted)
    values = {i.name: numpy_helper.to_array(i) for i in kept.graph.initializer}
    original = {i.name: numpy_helper.to_array(i) for i in fp32.graph.initializer}
    kconv = next(n for n in kept.graph.node if n.name == node)
    assert kconv.input[1] in original and kconv.input[2] in original  # float weights, no DequantizeLinear
    assert np.array_equal(values[kconv.input[2]], original[kconv.input[2]])  # and its own bias
    others = [n.input[2] for n in kept.graph.node if n.op_type == "Conv" and n.name != node and len(n.input) > 2
              and n.input[2] in fitted]
    assert len(others) >= 40 and all(np.array_equal(values[b], fitted[b]) for b in others)


def test_fallback_counts_fit_the_multiply_add_cap():
    shares = [0.01, 0.05, 0.03, 0.02, 0.5]
    assert fallback_counts(shares, 0.10) == [1, 2, 3]  # 0.01, 0.06, 0.09; four would be 0.11
    assert fallback_counts(shares, 0.11) == [1, 2, 3, 4]
    assert fallback_counts(shares, 0.005) == []
    assert fallback_counts(shares[:2], 1.0) == [1, 2]  # no more counts than convs
    assert fallback_counts([], 1.0) == []
