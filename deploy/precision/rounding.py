"""Learned rounding (``--reconstruct thorough``): AdaRound per layer, on quantized inputs.

Every quantized Conv/Gemm with a linear output (the project convs of MBConv blocks), in graph
order, is fed what the already reconstructed layers before it produce on calibration images, and
chooses for each weight whether it rounds down or up, and its bias, so that the block's output
matches FP32 (for a residual block: the layer's target is the FP32 block output less the quantized
shortcut). So the rounding absorbs the weights' error *and* part of the activation quantization in
front of the layer; the integers stay on the quantizer's grid and scales, so the graph's Q/DQ, and
what TensorRT and ONNX Runtime fuse, do not change. Layers followed by a nonlinearity are left as
rounded (:func:`effdeploy.precision.reconstruct.learn_rounding` says why).

Why in Gram form, not by running the layer on mini-batches (as AdaRound/BRECQ do): a Conv is
linear in its unfolded input, so its squared output error over *all* calibration positions is a
quadratic form in the weights, ``W G W^T - 2 W C + T``, with ``G`` the input's Gram matrix
(features x features, per group) and ``C`` its cross term with the FP32 output. Both are
accumulated once; each optimisation step is then one (out x features) by (features x features)
product, independent of the image count, with the exact gradient ``2 (W G - C^T)`` and no
mini-batch noise. That is what makes the method fit a build on two CPU cores.

The soft rounding, its regulariser and annealing are AdaRound's (Nagel et al. 2020): rectified
sigmoid ``h(V)``, ``lambda * sum(1 - |2h - 1|^beta)`` with beta from 20 to 2 after a 20 %
warm-up. The bias is not learned by gradient: for any weights its optimum is closed-form (the
mean output error, i.e. bias correction), set every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import EffdeployError

ZETA, GAMMA = 1.1, -0.1  # AdaRound's stretch of the sigmoid, so h reaches 0 and 1 exactly
WARMUP = 0.2  # share of the steps without the rounding regulariser
LAMBDA = 0.01  # the regulariser's weight against the per-row output error (AdaRound/BRECQ)
BETA = (20.0, 2.0)  # the regulariser's exponent, annealed
LR = 1e-2  # Adam on V; h moves from its start (the exact fraction) to 0 or 1 in a few hundred steps
DAMPING = 1e-2  # of the mean diagonal: directions the images do not see stay near the float weights
MIN_ROWS_PER_FEATURE = 2  # fewer output positions than this x features: the layer is left as rounded


@dataclass(frozen=True)
class Normal:
    """The normal equations of one layer over its calibration rows, per group."""

    gram: Any  # (groups, F, F): [x, 1]^T [x, 1], x the unfolded quantized input
    cross: Any  # (groups, F, out per group): [x, 1]^T y, y the FP32 layer's FP32 output
    energy: float  # sum of y^2
    rows: int  # output positions (images x pixels)


def _unfold(torch: Any, op: Any, x: Any, kernel: tuple[int, ...]) -> Any:
    """The Conv's input as (N, features, positions): what each output position multiplies."""
    F = torch.nn.functional
    a = op.attrs
    k = tuple(a.get("kernel_shape") or kernel)  # ONNX allows it absent: the weight's spatial shape
    pads = list(a.get("pads", [0, 0, 0, 0]))
    half = len(pads) // 2
    if pads[:half] != pads[half:]:
        x = F.pad(x, [pads[1], pads[3], pads[0], pads[2]])
        pads = [0] * len(pads)
    strides, dil = tuple(a.get("strides", (1, 1))), tuple(a.get("dilations", (1, 1)))
    if k == (1, 1) and strides == (1, 1) and not any(pads):
        return x.reshape(x.shape[0], x.shape[1], -1)
    return F.unfold(x, k, dilation=dil, padding=tuple(pads[:half]), stride=strides)


def normal_equations(torch: Any, op: Any, x: Any, y: Any, chunk: int = 4, kernel: tuple[int, ...] = ()) -> Normal:
    """Accumulate G and C of a Conv (or Gemm) over the images, ``chunk`` images at a time (the
    unfolded input of a 3x3 conv at 112 px is 9x the activation); ``kernel`` the weight's spatial
    shape."""
    groups = int(op.attrs.get("group", 1)) if op.kind == "Conv" else 1
    if op.kind == "Gemm":
        if op.attrs.get("transA", 0) or op.attrs.get("alpha", 1.0) != 1.0 or op.attrs.get("beta", 1.0) != 1.0:
            raise EffdeployError(f"learned rounding: Gemm {op.name} with transA/alpha/beta is not supported")
        x, y, chunk = x.reshape(x.shape[0], -1, 1), y.reshape(y.shape[0], -1, 1), x.shape[0]
    gram = cross = None
    for i in range(0, x.shape[0], chunk):
        # in float64: the error is the small difference of large sums (W G W^T - 2 W C + T), which
        # float32 sums over 10^5 rows do not resolve
        u = (_unfold(torch, op, x[i:i + chunk], kernel) if op.kind == "Conv" else x[i:i + chunk]).double()
        n, feat, pos = u.shape
        u = u.reshape(n, groups, feat // groups, pos)
        u = torch.cat([u, torch.ones_like(u[:, :, :1])], dim=2)  # the bias's feature
        t = y[i:i + chunk].reshape(n, groups, y.shape[1] // groups, pos).double()
        g = torch.einsum("ngfp,nghp->gfh", u, u)
        c = torch.einsum("ngfp,ngop->gfo", u, t)
        gram, cross = (g, c) if gram is None else (gram + g, cross + c)
    return Normal(gram, cross, float((y.double() ** 2).sum()), int(y.numel() // y.shape[1]))


def grouped(w: Any, groups: int, kind: str, trans_b: bool) -> Any:
    """Weights as (groups, out per group, features) in the unfold's feature order."""
    if kind == "Gemm":
        w = w if trans_b else w.t()
    return w.reshape(groups, w.shape[0] // groups, -1)


def _error(w_aug: Any, ne: Normal) -> Any:
    """Sum of squared output errors of the augmented weights [W, b] (groups, out, F)."""
    wg = w_aug @ ne.gram
    return (wg * w_aug).sum() - 2 * (w_aug * ne.cross.transpose(1, 2)).sum() + ne.energy


def _best_bias(w: Any, ne: Normal) -> Any:
    """The bias minimising the error for weights ``w`` (groups, out, F-1): the mean output error."""
    g, c = ne.gram, ne.cross
    sum_x, sum_y, rows = g[:, :-1, -1], c[:, -1, :], g[:, -1, -1:]
    return (sum_y - (w @ sum_x.unsqueeze(-1)).squeeze(-1)) / rows


@dataclass(frozen=True)
class Rounded:
    ints: Any  # (groups, out, F-1) integers on the quantizer's grid
    bias: Any  # (groups, out)
    error_before: float  # relative output error, the graph's integers and bias
    error_after: float  # ... the returned integers and bias
    learned: bool  # False: the graph's integers and bias, unchanged (too few rows, or learning did not help)


def learn_layer(torch: Any, ne: Normal, w: Any, ints: Any, scale: Any, bias: Any, limit: int, steps: int) -> Rounded:
    """AdaRound one layer: ``w`` the FP32 weights (groups, out, F-1), ``ints`` the graph's integers
    for them, ``scale`` (groups, out, 1) the quantizer's per-channel scales as deployed, ``bias`` the
    graph's bias (groups, out), ``limit`` the integer range's bound (weights stay in [-limit, limit]).
    The graph's own values come back unless the learned ones have a lower error on these rows."""
    w, ints, scale, bias = w.double(), ints.double(), scale.double(), bias.double()
    before = _relative(torch, ints * scale, bias, ne)
    unchanged = Rounded(ints, bias, before, before, False)
    if ne.rows < MIN_ROWS_PER_FEATURE * (ne.gram.shape[-1] - 1) or steps <= 0:
        return unchanged  # too few rows to choose on: as the quantizer rounded it
    learned = _optimise(torch, _damped(ne, w), w / scale, scale, limit, steps, ne.rows)
    best = _best_bias(learned * scale, ne)
    after = _relative(torch, learned * scale, best, ne)
    return Rounded(learned, best, before, after, True) if after < before else unchanged


def _relative(torch: Any, w: Any, b: Any, ne: Normal) -> float:
    """Relative output error ||y_q - y|| / ||y|| of weights ``w`` and bias ``b`` on the rows of ``ne``."""
    return float(_error(torch.cat([w, b.unsqueeze(-1)], -1), ne).clamp(min=0).sqrt()) / max(ne.energy, 1e-30) ** 0.5


def _damped(ne: Normal, w: Any) -> Normal:
    """The normal equations of error + d ||W - W_fp32||^2 (d a small share of the mean diagonal): in
    directions the images do not see, the weights stay near the float ones."""
    feats = ne.gram.shape[-1] - 1
    d = DAMPING * ne.gram.diagonal(dim1=1, dim2=2)[:, :feats].mean(dim=1, keepdim=True)  # (groups, 1)
    gram, cross = ne.gram.clone(), ne.cross.clone()
    idx = list(range(feats))
    gram[:, idx, idx] += d
    cross[:, :-1, :] += d.unsqueeze(-1) * w.transpose(1, 2)
    return Normal(gram, cross, ne.energy, ne.rows)


def _optimise(torch: Any, ne: Normal, ratio: Any, scale: Any, limit: int, steps: int, rows: int) -> Any:
    """Adam on AdaRound's V from h(V) = the exact fraction of ``ratio`` (= w / s); the hard integers."""
    floor = torch.floor(ratio)
    frac = (ratio - floor).clamp(1e-4, 1 - 1e-4)
    v = torch.log((frac - GAMMA) / (ZETA - frac)).float().requires_grad_(True)
    opt = torch.optim.Adam([v], lr=LR)
    for step in range(steps):
        h = (torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA).clamp(0, 1)
        wq = torch.clamp(floor + h.double(), -limit, limit) * scale
        w_aug = torch.cat([wq, _best_bias(wq.detach(), ne).unsqueeze(-1)], -1)  # the bias at its optimum
        with torch.no_grad():  # the exact gradient of the quadratic form, one matrix product
            grad = 2 * (w_aug @ ne.gram - ne.cross.transpose(1, 2))[..., :-1] / rows
        loss = (wq * grad).sum()  # d loss / d wq == grad
        if step >= WARMUP * steps:
            t = (step - WARMUP * steps) / max(1.0, (1 - WARMUP) * steps)
            beta = BETA[1] + (BETA[0] - BETA[1]) * (1 - t)
            loss = loss + LAMBDA * (1 - (2 * h - 1).abs().pow(beta)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return torch.clamp(floor + (v.detach() >= 0).double(), -limit, limit)  # h >= 0.5
