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
    r = learn_layer(torch, ne, wg, scale, b.reshape(groups, -1), limit=7, steps=300)
    ratio = wg / scale
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
    r = learn_layer(torch, normal_equations(torch, op, x.float(), y.float()), grouped(w, 1, "Gemm", True), scale,
                    b.reshape(1, -1), limit=127, steps=100)
    assert not r.learned
    assert torch.equal(r.ints, torch.round(grouped(w, 1, "Gemm", True).double() / scale))
    assert torch.equal(r.bias, b.reshape(1, -1).double()) and r.error_after == r.error_before
