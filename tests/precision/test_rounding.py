"""Learned rounding (``--reconstruct thorough``): the normal equations are the layer's squared
error, the learned integers stay on the quantizer's grid and beat nearest rounding on their rows."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from effdeploy.precision.reconstruct import _EXEC, _Op
from effdeploy.precision.rounding import _best_bias, _error, grouped, learn_layer, normal_equations

F = torch.nn.functional

LAYERS = {  # name -> (op, input shape, weight shape)
    "3x3 stride 2, TF-style asymmetric pads": (_Op("Conv", "c", ["x", "w", "b"], ["y"], {
        "kernel_shape": [3, 3], "strides": [2, 2], "pads": [0, 0, 1, 1], "group": 1}), (3, 6, 15, 15), (8, 6, 3, 3)),
    "depthwise 5x5": (_Op("Conv", "c", ["x", "w", "b"], ["y"], {
        "kernel_shape": [5, 5], "pads": [2, 2, 2, 2], "group": 6}), (3, 6, 12, 12), (6, 1, 5, 5)),
    "1x1": (_Op("Conv", "c", ["x", "w", "b"], ["y"], {"kernel_shape": [1, 1], "group": 1}), (3, 16, 9, 9), (10, 16, 1, 1)),
    "grouped 3x3": (_Op("Conv", "c", ["x", "w", "b"], ["y"], {
        "kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "group": 2}), (3, 8, 10, 10), (6, 4, 3, 3)),
    "Gemm transB": (_Op("Gemm", "g", ["x", "w", "b"], ["y"], {"transB": 1}), (40, 12), (5, 12)),
}


def _run(op, x, w, b):
    return _EXEC[op.kind](SimpleNamespace(torch=torch), op, [x, w, b])


def _layer(name, seed=0):
    op, xs, ws = LAYERS[name]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(xs, generator=g, dtype=torch.float64)
    w = torch.randn(ws, generator=g, dtype=torch.float64)
    b = torch.randn(ws[0], generator=g, dtype=torch.float64)
    groups = int(op.attrs.get("group", 1)) if op.kind == "Conv" else 1
    return op, x, w, b, groups


@pytest.mark.parametrize("name", list(LAYERS))
def test_normal_equations_are_the_layers_squared_error(name):
    """W G W^T - 2 W C + T equals the squared error of running the layer, for any weights and bias."""
    op, x, w, b, groups = _layer(name)
    y = _run(op, x, w, b) + 0.1 * torch.randn_like(_run(op, x, w, b))  # a target the layer cannot reach
    ne = normal_equations(torch, op, x.float(), y.float(), chunk=2)
    w2, b2 = w + 0.05 * torch.randn_like(w), b - 0.3
    direct = float(((_run(op, x.float(), w2.float(), b2.float()).double() - y.float().double()) ** 2).sum())
    w_aug = torch.cat([grouped(w2, groups, op.kind, True), b2.reshape(groups, -1, 1)], -1)
    assert float(_error(w_aug, ne)) == pytest.approx(direct, rel=1e-6)
    assert ne.rows == y.numel() // y.shape[1]


@pytest.mark.parametrize("name", ["3x3 stride 2, TF-style asymmetric pads", "depthwise 5x5", "Gemm transB"])
def test_best_bias_is_the_mean_output_error(name):
    op, x, w, b, groups = _layer(name, seed=1)
    y = _run(op, x, w, b) + 0.2
    ne = normal_equations(torch, op, x.float(), y.float())
    got = _best_bias(grouped(w, groups, op.kind, True), ne).reshape(-1)
    axes = (0, 2, 3) if y.dim() == 4 else (0,)
    want = (y - _run(op, x, w, torch.zeros_like(b))).mean(dim=axes)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["3x3 stride 2, TF-style asymmetric pads", "depthwise 5x5"])
def test_learned_rounding_beats_nearest_and_stays_on_the_grid(name):
    """The target is the FP32 layer on a *different* (unquantized) input, as in the build: the
    learned integers are each the floor or the ceiling of w / s, within the range, and their
    output error on these rows is below nearest rounding with its best bias. The inputs are
    correlated (smooth images, a shared channel), as activations are: on white noise nearest
    rounding is already about the best there is."""
    op, x, w, b, groups = _layer(name, seed=2)
    x = F.avg_pool2d(x, 3, 1, 1) * 3 + x[:, :1]
    x_q = torch.round(x * 4) / 4  # the layer's input after an activation quantizer
    y = _run(op, x, w, b)
    scale = (w.reshape(w.shape[0], -1).abs().amax(1) / 7).reshape(groups, -1, 1)  # a coarse 4-bit grid
    wg = grouped(w, groups, op.kind, True)
    ne = normal_equations(torch, op, x_q.float(), y.float())
    ratio = wg / scale
    r = learn_layer(torch, ne, wg, torch.round(ratio), scale, b.reshape(groups, -1), limit=7, steps=300)
    assert r.learned
    assert bool(((r.ints == torch.floor(ratio)) | (r.ints == torch.floor(ratio) + 1)).all())
    assert int(r.ints.abs().max()) <= 7
    nearest = torch.round(ratio)
    nearest_err = float(_error(torch.cat([nearest * scale, _best_bias(nearest * scale, ne).unsqueeze(-1)], -1), ne))
    assert r.error_after ** 2 * ne.energy < nearest_err
    assert r.error_after < r.error_before


def test_too_few_rows_leave_the_layer_as_rounded():
    """A classifier on fewer images than twice its features: nothing to choose on, nothing changes."""
    op, x, w, b, groups = _layer("Gemm transB")
    x = x[:10]  # 10 rows < 2 x 13 features
    y = _run(op, x, w, b) + 1.0
    scale = (w.abs().amax(1) / 127).reshape(1, -1, 1)
    ints = torch.round(grouped(w, 1, "Gemm", True) / scale)
    r = learn_layer(torch, normal_equations(torch, op, x.float(), y.float()), grouped(w, 1, "Gemm", True), ints,
                    scale, b.reshape(1, -1), limit=127, steps=100)
    assert not r.learned
    assert torch.equal(r.ints, ints.double())
    assert torch.equal(r.bias, b.reshape(1, -1).double()) and r.error_after == r.error_before


def test_the_step_gradient_is_the_error_gradient_at_the_best_bias():
    """The optimiser's hand-written gradient 2 (W G - C^T), bias at its optimum, is autograd's
    gradient of the squared error through the closed-form bias (8-bit grid, large integers)."""
    op, x, w, b, groups = _layer("3x3 stride 2, TF-style asymmetric pads", seed=3)
    ne = normal_equations(torch, op, x.float(), (_run(op, x, w, b) + 0.1).float())
    wg = grouped(w, groups, op.kind, True).clone().requires_grad_(True)
    err = _error(torch.cat([wg, _best_bias(wg, ne).unsqueeze(-1)], -1), ne)
    err.backward()
    with torch.no_grad():
        w_aug = torch.cat([wg, _best_bias(wg, ne).unsqueeze(-1)], -1)
        hand = 2 * (w_aug @ ne.gram - ne.cross.transpose(1, 2))[..., :-1]
    np.testing.assert_allclose(hand.numpy(), wg.grad.numpy(), rtol=1e-6, atol=1e-6 * float(hand.abs().max()))


def test_damping_pulls_towards_the_float_weights():
    """The damped equations add d ||W - W_fp32||^2 (up to a constant), not d ||W||^2: the float
    weights stay the continuous optimum's anchor, and an 8-bit layer's large integers are not
    pulled towards zero."""
    from effdeploy.precision.rounding import DAMPING, _damped

    op, x, w, b, groups = _layer("1x1", seed=4)
    ne = normal_equations(torch, op, x.float(), _run(op, x, w, b).float())
    wg = grouped(w, groups, op.kind, True)
    damped = _damped(ne, wg)
    d = DAMPING * float(ne.gram.diagonal(dim1=1, dim2=2)[:, :-1].mean())
    for trial in range(3):
        w2 = wg + 0.1 * torch.randn_like(wg)
        aug = torch.cat([w2, torch.randn(groups, wg.shape[1], 1, dtype=torch.float64)], -1)
        extra = float(_error(aug, damped) - _error(aug, ne))
        want = d * float(((w2 - wg) ** 2).sum() - (wg ** 2).sum())
        assert extra == pytest.approx(want, rel=1e-6)


def _gemm_graphs(trans_b: bool, rows: int = 64, n_in: int = 8, n_out: int = 5):
    """A Q/DQ twin (per-channel INT8 weights on the output axis) and its FP32 graph, one Gemm."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    w = rng.standard_normal((n_out, n_in)).astype(np.float32)
    stored = w if trans_b else w.T.copy()
    scale = (np.abs(w).max(1) / 127).astype(np.float32)
    ints = np.clip(np.round(stored / (scale[:, None] if trans_b else scale[None, :])), -127, 127).astype(np.int8)
    x = rng.standard_normal((rows, n_in)).astype(np.float32) @ rng.standard_normal((n_in, n_in)).astype(np.float32)
    bias = numpy_helper.from_array(rng.standard_normal(n_out).astype(np.float32), "B")
    io = ([helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", n_in])],
          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", n_out])])
    gemm = lambda a, b: helper.make_node("Gemm", [a, b, "B"], ["Y"], name="g", transB=int(trans_b))
    fp32 = helper.make_model(helper.make_graph([gemm("X", "W")], "f", *io, [numpy_helper.from_array(stored, "W"), bias]),
                             opset_imports=[helper.make_opsetid("", 17)])
    inits = [numpy_helper.from_array(ints, "W_q"), numpy_helper.from_array(scale, "W_s"),
             numpy_helper.from_array(np.zeros(n_out, np.int8), "W_z"), bias,
             numpy_helper.from_array(np.float32(np.abs(x).max() / 127), "X_s"), numpy_helper.from_array(np.int8(0), "X_z")]
    nodes = [helper.make_node("QuantizeLinear", ["X", "X_s", "X_z"], ["X_q"]),
             helper.make_node("DequantizeLinear", ["X_q", "X_s", "X_z"], ["X_dq"]),
             helper.make_node("DequantizeLinear", ["W_q", "W_s", "W_z"], ["W_dq"], axis=0 if trans_b else 1),
             gemm("X_dq", "W_dq")]
    twin = helper.make_model(helper.make_graph(nodes, "q", *io, inits), opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(twin)
    return twin, fp32, x, ints


@pytest.mark.parametrize("trans_b", [True, False], ids=["transB", "plain"])
def test_learned_gemm_integers_are_written_where_the_graph_keeps_them(trans_b):
    """The learned integers go back into the INT8 initializer in its own layout (Gemm's weight is
    (out, in) with transB, (in, out) without; its scales on the output axis): ONNX Runtime computes
    what the interpreter learned, every integer within one step of the quantizer's."""
    from effdeploy.export.logits import ort_logits
    from effdeploy.precision.qdq import apply_initializers
    from effdeploy.precision.reconstruct import learn_rounding, learned_initializers

    twin, fp32, x, ints = _gemm_graphs(trans_b)
    q, reports = learn_rounding(twin, fp32, x, steps=200)
    assert len(reports) == 1 and reports[0].relative_error_after < reports[0].relative_error_before
    values = learned_initializers(q)
    assert values["W_q"].dtype == np.int8 and values["W_q"].shape == ints.shape
    assert 0 < int((values["W_q"] != ints).sum()) and int(np.abs(values["W_q"].astype(int) - ints).max()) <= 1
    learned = apply_initializers(twin, values)
    got = q(torch.from_numpy(x)).numpy()
    want = ort_logits(learned, x, optimize=False)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))
    ref = ort_logits(fp32, x, optimize=False)
    assert np.abs(want - ref).mean() < np.abs(ort_logits(twin, x, optimize=False) - ref).mean()
