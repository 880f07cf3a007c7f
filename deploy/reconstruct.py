"""Block reconstruction: learn the INT8 weights of a Q/DQ graph block by block (build side, torch).

Why a torch interpreter of the Q/DQ graph rather than fake-quant modules on the eager model: the
graph *is* the deployed function (BatchNorm folded, Q/DQ exactly where the dialect put them, the
same scales, zero points, integer ranges and QuantizeLinear rounding: half to even, saturating),
so what is optimised here is what ONNX Runtime and TensorRT run, for every dialect and family
(SE, swish, TF padding) without a second description of where quantizers sit. Export parity
makes the FP32 graph the eager model's function.

The recipe (chosen by measurement, see docs/int8.md): per unit (stem, each MBConv block, head +
classifier), in graph order, AdaRound-style learned rounding of the per-channel INT8 weights
(rectified sigmoid, annealed regulariser) plus continuous float biases, trained with Adam to match
the FP32 network's output of that unit while the unit is fed the output of the already
quantized units before it (so it absorbs their activation error), with QDrop's random dropping of
activation quantization inside the unit during training. The result is integers written into the
graph's quantized initializers (and biases), never float weights rounded again by a quantizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import EffdeployError

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
_INT_RANGES = {onnx.TensorProto.INT8: (-128, 127), onnx.TensorProto.UINT8: (0, 255)}


@dataclass(frozen=True)
class QuantizedWeight:
    """One weight DequantizeLinear of the graph: its integers, per-channel scales and range."""

    node: str  # the DequantizeLinear node
    int_name: str  # its INT8 initializer (rewritten by the reconstruction)
    float_name: str  # the FP32 weight in the reference graph
    axis: int
    qmin: int
    qmax: int


@dataclass(frozen=True)
class Unit:
    """A contiguous part of the graph reconstructed as one: stem, an MBConv block, or the head."""

    name: str
    nodes: tuple[int, ...]  # indices into the interpreter's node list
    inputs: tuple[str, ...]  # tensors it reads that are produced before it (or the graph input)
    outputs: tuple[str, ...]  # tensors it produces that are read after it (or graph outputs)


def unit_of(node_name: str) -> str:
    """stem | blocks.S.I | head (the head conv, pooling and classifier are one unit)."""
    from .precision import block_of

    block = block_of(node_name)
    if block:
        return block
    return "stem" if node_name.startswith("/stem") else "head"


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _weight_qdq(model: onnx.ModelProto, weight_qmax: int) -> dict[str, QuantizedWeight]:
    """DequantizeLinear nodes whose input is an INT8 weight initializer with >1 dimension."""
    inits = {i.name: i for i in model.graph.initializer}
    out: dict[str, QuantizedWeight] = {}
    for n in model.graph.node:
        if n.op_type != "DequantizeLinear" or n.input[0] not in inits:
            continue
        t = inits[n.input[0]]
        if t.data_type != onnx.TensorProto.INT8 or len(t.dims) < 2:
            continue
        float_name = n.input[0][: -len("_quantized")] if n.input[0].endswith("_quantized") else n.input[0]
        out[n.output[0]] = QuantizedWeight(n.name, n.input[0], float_name, int(_attrs(n).get("axis", 1)),
                                           -weight_qmax, weight_qmax)
    return out


# --- the graph in torch ---------------------------------------------------------------------------

_ZETA, _GAMMA = 1.1, -0.1  # AdaRound's rectified-sigmoid stretch


def _torch():
    import torch

    return torch


class _Op:
    """One node of the interpreted graph (a Q->DQ pair on an activation is one ``FakeQuant``)."""

    __slots__ = ("kind", "name", "inputs", "outputs", "attrs", "unit")

    def __init__(self, kind: str, name: str, inputs: Sequence[str], outputs: Sequence[str], attrs: dict[str, Any]):
        self.kind, self.name, self.inputs, self.outputs, self.attrs = kind, name, list(inputs), list(outputs), attrs
        self.unit = ""


class GraphModule:
    """An ONNX graph (FP32 reference or its FP32-typed Q/DQ twin) executed with torch ops.

    Weight DequantizeLinears become learnable rounding (``QuantizedWeight``), float biases of
    Conv/Gemm become learnable, activation QuantizeLinear->DequantizeLinear pairs become fake
    quantizers with the graph's own scale, zero point and integer range.
    """

    def __init__(self, model: onnx.ModelProto, reference: onnx.ModelProto | None = None,
                 weight_qmax: int = 127, fp16_scales: bool = False):
        torch = _torch()
        self.torch = torch
        self.fp16_scales = fp16_scales
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        ref_inits = ({i.name: numpy_helper.to_array(i) for i in reference.graph.initializer}
                     if reference is not None else inits)
        self.const: dict[str, Any] = {}
        self.weights = _weight_qdq(model, weight_qmax)
        self.int_dtypes: dict[str, int] = {i.name: i.data_type for i in model.graph.initializer}
        producers = {o: n for n in model.graph.node for o in n.output}
        consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in model.graph.node:
            for t in n.input:
                consumers.setdefault(t, []).append(n)
        self.ops: list[_Op] = []
        self.params: dict[str, Any] = {}  # name -> torch Parameter (rounding logits or biases)
        self.floor: dict[str, Any] = {}
        self.float_weight: dict[str, Any] = {}
        self.scale: dict[str, Any] = {}
        self.bias_scale: dict[str, Any] = {}
        self.bias_int: dict[str, str] = {}  # INT32 bias value name -> its initializer
        fused: set[str] = set()
        for n in model.graph.node:
            a = _attrs(n)
            if n.op_type == "DequantizeLinear" and n.output[0] in self.weights:
                self._add_weight(self.weights[n.output[0]], inits, ref_inits, n)
                continue
            if n.op_type == "DequantizeLinear" and n.input[0] in inits:  # an INT32 bias
                self._add_bias(n, inits, ref_inits)
                continue
            if n.op_type == "QuantizeLinear":
                users = consumers.get(n.output[0], [])
                if users and all(u.op_type == "DequantizeLinear" for u in users):
                    fused.add(n.output[0])
                    continue  # executed as part of its DequantizeLinear
            if n.op_type == "DequantizeLinear" and n.input[0] in fused:
                q = producers[n.input[0]]
                self.ops.append(_Op("FakeQuant", n.name, [q.input[0], q.input[1], *q.input[2:3]], n.output, {}))
                continue
            self.ops.append(_Op(n.op_type, n.name, n.input, n.output, a))
        for name, arr in inits.items():
            if name not in self.params and arr.dtype != np.int8 or arr.ndim == 0:
                self.const[name] = torch.from_numpy(np.array(arr, dtype=np.float32 if arr.dtype.kind == "f"
                                                             else arr.dtype))
        for op in self.ops:  # float Conv/Gemm biases of the tensorrt dialect are learnable too
            if op.kind in ("Conv", "Gemm") and len(op.inputs) > 2 and op.inputs[2] in inits \
                    and inits[op.inputs[2]].dtype == np.float32 and op.inputs[2] not in self.params:
                src = ref_inits.get(op.inputs[2], inits[op.inputs[2]])
                self.params[op.inputs[2]] = torch.nn.Parameter(torch.from_numpy(np.array(src, np.float32)))
        self._assign_units()
        self.input_name = model.graph.input[0].name
        self.output_names = [o.name for o in model.graph.output]
        self.mode = "hard"  # "hard": deployed integers; "soft": AdaRound's relaxation (training)
        self.qdrop = 0.0  # probability of skipping an activation quantizer (training only)

    # -- construction helpers
    def _scale_tensor(self, arr: np.ndarray) -> Any:
        arr = np.asarray(arr, np.float32)
        if self.fp16_scales:
            arr = arr.astype(np.float16).astype(np.float32)  # the deployed graph's scales are FP16
        return self.torch.from_numpy(arr)

    def _add_weight(self, qw: QuantizedWeight, inits: Mapping[str, np.ndarray],
                    ref_inits: Mapping[str, np.ndarray], node: onnx.NodeProto) -> None:
        torch = self.torch
        scale = self._scale_tensor(inits[node.input[1]])
        shape = [1] * inits[qw.int_name].ndim
        shape[qw.axis] = -1
        s = scale.reshape(shape)
        w = ref_inits.get(qw.float_name)
        if w is None:  # no float original: start from the graph's integers
            w = inits[qw.int_name].astype(np.float32) * s.numpy()
        ws = torch.from_numpy(np.asarray(w, np.float32)) / s
        floor = torch.floor(ws)
        rest = (ws - floor).clamp(1e-4, 1 - 1e-4)
        v = -torch.log((_ZETA - _GAMMA) / (rest - _GAMMA) - 1)  # h(v) == rest
        self.floor[node.output[0]] = floor
        self.scale[node.output[0]] = s
        self.float_weight[node.output[0]] = ws * s
        self.params[node.output[0]] = torch.nn.Parameter(v)
        ints = torch.from_numpy(inits[qw.int_name].astype(np.float32))
        # start from the graph's own integers (nearest rounding): h >= 0.5 exactly where they round up
        up = (ints - floor) >= 0.5
        self.params[node.output[0]].data = torch.where(up, v.clamp(min=1e-3), v.clamp(max=-1e-3))

    def _add_bias(self, node: onnx.NodeProto, inits: Mapping[str, np.ndarray], ref_inits: Mapping[str, np.ndarray]) -> None:
        torch = self.torch
        scale = torch.from_numpy(np.asarray(inits[node.input[1]], np.float32))
        b = ref_inits.get(node.output[0])
        if b is None:
            b = inits[node.input[0]].astype(np.float32) * scale.numpy()
        self.bias_scale[node.output[0]] = scale
        self.bias_int[node.output[0]] = node.input[0]
        self.params[node.output[0]] = torch.nn.Parameter(torch.from_numpy(np.asarray(b, np.float32)))

    def _assign_units(self) -> None:
        """Compute nodes by name; a fake quantizer belongs to the unit of its first consumer."""
        first_user: dict[str, _Op] = {}
        for op in self.ops:
            for t in op.inputs:
                first_user.setdefault(t, op)
        for op in reversed(self.ops):
            if op.kind == "FakeQuant" and op.outputs[0] in first_user:
                op.unit = first_user[op.outputs[0]].unit or unit_of(first_user[op.outputs[0]].name)
            else:
                op.unit = unit_of(op.name)

    # -- values
    def weight(self, name: str) -> Any:
        torch = self.torch
        qw = self.weights[name]
        v = self.params[name]
        if self.mode == "soft":
            h = (torch.sigmoid(v) * (_ZETA - _GAMMA) + _GAMMA).clamp(0, 1)
        else:
            h = (v >= 0).to(v.dtype)
        return (self.floor[name] + h).clamp(qw.qmin, qw.qmax) * self.scale[name]

    def set_integers(self, name: str, ints: Any) -> None:
        """Make the hard rounding of ``name`` equal ``ints`` (soft rounding starts there too)."""
        torch = self.torch
        ints = ints.to(torch.float32).reshape(self.floor[name].shape)
        # ints == floor + h with h = 0 (logit -2: soft h = 0.04, hard 0)
        self.floor[name] = ints.clone()
        self.params[name].data = torch.full_like(ints, -2.0)  # ... soft h(-2) = 0.04 -> 0

    def integers(self, name: str) -> np.ndarray:
        torch = self.torch
        qw = self.weights[name]
        with torch.no_grad():
            h = (self.params[name] >= 0).to(torch.float32)
            return (self.floor[name] + h).clamp(qw.qmin, qw.qmax).numpy().astype(np.int8)

    def bias(self, name: str) -> Any:
        b = self.params[name]
        if name in self.bias_scale:  # INT32 bias (ort-cpu): quantized with a straight-through round
            s = self.bias_scale[name]
            return _round_ste(b / s) * s
        return b

    def value(self, name: str, env: Mapping[str, Any]) -> Any:
        if name in env:
            return env[name]
        if name in self.weights:
            return self.weight(name)
        if name in self.params:
            return self.bias(name)
        return self.const[name]

    # -- execution
    def run(self, env: dict[str, Any], ops: Iterable[_Op]) -> dict[str, Any]:
        for op in ops:
            outs = _EXEC[op.kind](self, op, [self.value(t, env) if t else None for t in op.inputs])
            for name, val in zip(op.outputs, outs if isinstance(outs, tuple) else (outs,)):
                env[name] = val
        return env

    def __call__(self, x: Any) -> Any:
        env = self.run({self.input_name: x}, self.ops)
        return env[self.output_names[0]]

    def units(self) -> list[Unit]:
        """The graph's units in execution order, with what each reads and what it hands on."""
        order: list[str] = []
        for op in self.ops:
            if op.unit not in order:
                order.append(op.unit)
        produced_by = {o: op.unit for op in self.ops for o in op.outputs}
        units = []
        for u in order:
            idx = tuple(i for i, op in enumerate(self.ops) if op.unit == u)
            own = {o for i in idx for o in self.ops[i].outputs}
            reads = [t for i in idx for t in self.ops[i].inputs if t and t not in own and
                     (t in produced_by or t == self.input_name)]
            later = {t for op in self.ops if op.unit != u for t in op.inputs} | set(self.output_names)
            units.append(Unit(u, idx, tuple(dict.fromkeys(reads)), tuple(o for o in own if o in later)))
        for k, unit in enumerate(units):
            earlier = {u.name for u in units[:k]}
            for t in unit.inputs:
                if t != self.input_name and produced_by[t] not in earlier:
                    raise EffdeployError(f"reconstruction: unit {unit.name} reads {t} from a later unit")
        return units

    def unit_params(self, unit: Unit) -> tuple[list[str], list[str]]:
        """(weight names, bias names) a unit's nodes use."""
        used = {t for i in unit.nodes for t in self.ops[i].inputs}
        return ([n for n in self.weights if n in used],
                [n for n in self.params if n in used and n not in self.weights])


def _round_ste(x: Any) -> Any:
    """Round half to even (torch.round, as QuantizeLinear) with a straight-through gradient."""
    return (x.round() - x).detach() + x


def _fake_quant(g: GraphModule, op: _Op, v: list[Any]) -> Any:
    """QuantizeLinear -> DequantizeLinear of an activation (per-tensor), with a straight-through
    gradient inside the range. torch's fused kernel multiplies by 1/scale where QuantizeLinear
    divides; the two differ only within one float ulp of a rounding tie."""
    torch = g.torch
    if "_q" not in op.attrs:
        zp_name = op.inputs[2] if len(op.inputs) > 2 else ""
        lo, hi = _INT_RANGES[g.int_dtypes.get(zp_name, onnx.TensorProto.UINT8)]
        scale = float(v[1].reshape(-1)[0])
        if v[1].numel() != 1:
            raise EffdeployError(f"reconstruction: {op.name} is not a per-tensor activation quantizer")
        if g.fp16_scales:
            scale = float(np.float32(np.float16(scale)))
        op.attrs["_q"] = (scale, int(v[2].reshape(-1)[0]) if zp_name else 0, lo, hi)
    scale, zp, lo, hi = op.attrs["_q"]
    x = v[0]
    y = torch.fake_quantize_per_tensor_affine(x, scale, zp, lo, hi)
    if g.qdrop > 0 and torch.is_grad_enabled():
        y = torch.where(torch.rand_like(x) < g.qdrop, x, y)
    return y


def _conv(g: GraphModule, op: _Op, v: list[Any]) -> Any:
    F = g.torch.nn.functional
    a = op.attrs
    pads = list(a.get("pads", [0, 0, 0, 0]))
    x = v[0]
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise EffdeployError(f"reconstruction: Conv {op.name} uses auto_pad, which is not supported")
    half = len(pads) // 2
    if pads[:half] != pads[half:]:
        x = F.pad(x, [pads[1], pads[3], pads[0], pads[2]])
        pads = [0] * len(pads)
    return F.conv2d(x, v[1], v[2] if len(v) > 2 else None, a.get("strides", 1), pads[:half],
                    a.get("dilations", 1), a.get("group", 1))


def _gemm(g: GraphModule, op: _Op, v: list[Any]) -> Any:
    a = op.attrs
    x, w = v[0], v[1]
    if a.get("transA", 0):
        x = x.t()
    if a.get("transB", 0):
        w = w.t()
    y = a.get("alpha", 1.0) * (x @ w)
    if len(v) > 2 and v[2] is not None:
        y = y + a.get("beta", 1.0) * v[2]
    return y


def _clip(g: GraphModule, op: _Op, v: list[Any]) -> Any:
    lo = v[1] if len(v) > 1 and v[1] is not None else op.attrs.get("min")
    hi = v[2] if len(v) > 2 and v[2] is not None else op.attrs.get("max")
    return g.torch.clamp(v[0], None if lo is None else float(lo), None if hi is None else float(hi))


def _reduce_mean(g: GraphModule, op: _Op, v: list[Any]) -> Any:
    axes = op.attrs.get("axes")
    if axes is None and len(v) > 1 and v[1] is not None:
        axes = [int(a) for a in v[1].tolist()]
    keep = bool(op.attrs.get("keepdims", 1))
    return v[0].mean(dim=tuple(axes) if axes is not None else None, keepdim=keep)


def _reshape(g: GraphModule, op: _Op, v: list[Any]) -> Any:
    shape = [int(s) for s in v[1].tolist()]
    shape = [v[0].shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return v[0].reshape(shape)


def _pad(g: GraphModule, op: _Op, v: list[Any]) -> Any:
    pads = [int(p) for p in v[1].tolist()] if len(v) > 1 else list(op.attrs["pads"])
    mode = op.attrs.get("mode", b"constant")
    if mode not in (b"constant", "constant"):
        raise EffdeployError(f"reconstruction: Pad {op.name} mode {mode!r} is not supported")
    half = len(pads) // 2
    torch_pads: list[int] = []
    for d in reversed(range(half)):
        torch_pads += [pads[d], pads[d + half]]
    value = float(v[2]) if len(v) > 2 and v[2] is not None else 0.0
    return g.torch.nn.functional.pad(v[0], torch_pads, value=value)


def _flatten(g: GraphModule, op: _Op, v: list[Any]) -> Any:
    axis = op.attrs.get("axis", 1)
    return v[0].reshape(int(np.prod(v[0].shape[:axis])), -1)


def _squeeze(g: GraphModule, op: _Op, v: list[Any]) -> Any:
    axes = [int(a) for a in v[1].tolist()] if len(v) > 1 else list(op.attrs.get("axes", []))
    x = v[0]
    for a in sorted(axes, reverse=True):
        x = x.squeeze(a)
    return x


def _unsqueeze(g: GraphModule, op: _Op, v: list[Any]) -> Any:
    axes = [int(a) for a in v[1].tolist()] if len(v) > 1 else list(op.attrs.get("axes", []))
    x = v[0]
    for a in sorted(axes):
        x = x.unsqueeze(a)
    return x


_EXEC: dict[str, Callable[[GraphModule, _Op, list[Any]], Any]] = {
    "FakeQuant": _fake_quant,
    "Conv": _conv,
    "Gemm": _gemm,
    "MatMul": lambda g, op, v: v[0] @ v[1],
    "Add": lambda g, op, v: v[0] + v[1],
    "Sub": lambda g, op, v: v[0] - v[1],
    "Mul": lambda g, op, v: v[0] * v[1],
    "Div": lambda g, op, v: v[0] / v[1],
    "Sigmoid": lambda g, op, v: g.torch.sigmoid(v[0]),
    "Relu": lambda g, op, v: g.torch.relu(v[0]),
    "Clip": _clip,
    "ReduceMean": _reduce_mean,
    "GlobalAveragePool": lambda g, op, v: v[0].mean(dim=(2, 3), keepdim=True),
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Pad": _pad,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Identity": lambda g, op, v: v[0],
    "Cast": lambda g, op, v: v[0],
}


# --- the reconstruction ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """How hard to reconstruct; every field is recorded in the manifest and keys the cache."""

    images: int = 128  # calibration images used (a subset of the calibration set)
    iterations: int = 200  # Adam steps per unit
    batch: int = 16
    crop: int = 56  # random spatial crop of a unit's input when it is larger (0: never crop)
    lr_rounding: float = 3e-2
    lr_bias: float = 1e-3
    rounding_weight: float = 0.01  # AdaRound regulariser weight
    qdrop: float = 0.5  # QDrop: probability of skipping an activation quantizer while training
    seed: int = 0
    name: str = "adaround+bias, block-wise, qdrop"

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


@dataclass(frozen=True)
class UnitReport:
    unit: str
    relative_error_before: float  # ||q - fp|| / ||fp|| of the unit's output on the training images
    relative_error_after: float
    weights: int
    changed_integers: int  # integers that differ from nearest rounding
    seconds: float


def _rel(a: Any, b: Any) -> float:
    return float(((a - b).norm() / b.norm().clamp(min=1e-30)).item())


def _crop(values: Sequence[Any], size: int, gen: Any) -> list[Any]:
    """The same random window (even offset, so strides stay aligned) of every 4-d input."""
    torch = _torch()
    h, w = values[0].shape[-2:]
    if size <= 0 or h <= size or any(v.dim() != 4 or v.shape[-2:] != (h, w) for v in values):
        return list(values)
    y = 2 * int(torch.randint(0, (h - size) // 2 + 1, (1,), generator=gen))
    x = 2 * int(torch.randint(0, (w - size) // 2 + 1, (1,), generator=gen))
    return [v[..., y:y + size, x:x + size] for v in values]


def _anneal(step: int, total: int, warmup: float = 0.2, start: float = 20.0, end: float = 2.0) -> float:
    """AdaRound's beta: high (flat regulariser) early, low (pushes to 0/1) late."""
    if step < warmup * total:
        return start
    t = (step - warmup * total) / max(1.0, (1 - warmup) * total)
    return end + (start - end) * max(0.0, 1.0 - t)


def reconstruct_unit(q: GraphModule, unit: Unit, ref: GraphModule, ref_inputs: Sequence[str], ref_ops: Sequence[_Op],
                     xq: Sequence[Any], xf: Sequence[Any], target: Any, recipe: Recipe, gen: Any) -> UnitReport:
    """Learn one unit's rounding and biases so that its output on ``xq`` (what the quantized units
    before it produce) matches ``target`` (the FP32 network's output of that unit)."""
    import time

    torch = q.torch
    t0 = time.perf_counter()
    names, biases = q.unit_params(unit)
    ops = [q.ops[i] for i in unit.nodes]
    out = unit.outputs[0]
    start = {k: q.integers(k) for k in names}

    def forward(values: Sequence[Any]) -> Any:
        return q.run(dict(zip(unit.inputs, values)), ops)[out]

    with torch.no_grad():
        before = _rel(forward(xq), target)
    groups = [{"params": [q.params[k] for k in names], "lr": recipe.lr_rounding}]
    if biases:
        groups.append({"params": [q.params[k] for k in biases], "lr": recipe.lr_bias})
    opt = torch.optim.Adam(groups)
    n = xq[0].shape[0]
    q.qdrop, q.mode = recipe.qdrop, "soft"
    try:
        for step in range(recipe.iterations if names or biases else 0):
            idx = torch.randint(0, n, (min(recipe.batch, n),), generator=gen)
            win = _crop([*(v[idx] for v in xq), *(v[idx] for v in xf)], recipe.crop, gen)
            with torch.no_grad():
                tgt = ref.run(dict(zip(ref_inputs, win[len(xq):])), ref_ops)[out]
            pred = forward(win[: len(xq)])
            loss = ((pred - tgt) ** 2).mean() / (tgt ** 2).mean().clamp(min=1e-12)
            if names:
                beta = _anneal(step, recipe.iterations)
                loss = loss + recipe.rounding_weight * sum(_round_reg(q.params[k], beta) for k in names) / len(names)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        q.qdrop, q.mode = 0.0, "hard"
    with torch.no_grad():
        after = _rel(forward(xq), target)
    changed = sum(int((q.integers(k) != start[k]).sum()) for k in names)
    return UnitReport(unit.name, before, after, sum(q.params[k].numel() for k in names), changed,
                      time.perf_counter() - t0)


def _round_reg(v: Any, beta: float) -> Any:
    torch = _torch()
    h = (torch.sigmoid(v) * (_ZETA - _GAMMA) + _GAMMA).clamp(0, 1)
    return (1 - (2 * h - 1).abs().pow(beta)).mean()


def _slice(g: GraphModule, inputs: Sequence[str], outputs: Sequence[str]) -> list[_Op]:
    """The ops of ``g`` that compute ``outputs`` from ``inputs`` (and constants), in order."""
    producer = {o: k for k, op in enumerate(g.ops) for o in op.outputs}
    need, stack = set(), list(outputs)
    while stack:
        t = stack.pop()
        if t in inputs or t not in producer or producer[t] in need:
            continue
        need.add(producer[t])
        stack.extend(x for x in g.ops[producer[t]].inputs if x)
    return [g.ops[k] for k in sorted(need)]


def reconstruct(qdq: onnx.ModelProto, fp32: onnx.ModelProto, images: np.ndarray, recipe: Recipe,
                weight_qmax: int = 127, fp16_scales: bool = False,
                progress: Callable[[UnitReport, int, int], None] | None = None) -> tuple[GraphModule, list[UnitReport]]:
    """Reconstruct every unit of the FP32-typed Q/DQ twin ``qdq`` in order against ``fp32``."""
    torch = _torch()
    gen = torch.Generator().manual_seed(recipe.seed)
    q = GraphModule(qdq, fp32, weight_qmax=weight_qmax, fp16_scales=fp16_scales)
    ref = GraphModule(fp32)
    alias = {op.outputs[0]: op.inputs[0] for op in q.ops if op.kind == "FakeQuant"}
    ref_names = {o for op in ref.ops for o in op.outputs} | {ref.input_name}
    units = q.units()
    x = torch.from_numpy(np.ascontiguousarray(images[: recipe.images], dtype=np.float32))
    env_q: dict[str, Any] = {q.input_name: x}
    env_f: dict[str, Any] = {ref.input_name: x}
    reports = []
    for k, unit in enumerate(units):
        outs = [o for o in unit.outputs if o in ref_names]
        if not outs:
            raise EffdeployError(f"reconstruction: unit {unit.name} has no output the FP32 graph computes")
        unit = Unit(unit.name, unit.nodes, unit.inputs, tuple(outs) + tuple(o for o in unit.outputs if o not in outs))
        ref_inputs = [alias.get(t, t) for t in unit.inputs]
        ref_ops = _slice(ref, ref_inputs, outs)
        xq = [env_q[t] for t in unit.inputs]
        xf = [env_f[t] for t in ref_inputs]
        with torch.no_grad():
            target_env = ref.run(dict(zip(ref_inputs, xf)), ref_ops)
        report = reconstruct_unit(q, unit, ref, ref_inputs, ref_ops, xq, xf, target_env[outs[0]], recipe, gen)
        with torch.no_grad():
            out_env = q.run(dict(zip(unit.inputs, xq)), [q.ops[i] for i in unit.nodes])
        later = {t for u in units[k + 1:] for t in u.inputs}
        env_q = {t: v for t, v in {**env_q, **out_env}.items() if t in later}
        env_f = {t: v for t, v in {**env_f, **target_env}.items() if t in {alias.get(s, s) for s in later}}
        reports.append(report)
        if progress:
            progress(report, k + 1, len(units))
    return q, reports


# --- layer-wise rounding with error feedback (GPTQ on the quantized network's own inputs) ---------


@dataclass
class _Stats:
    """Second moments of one layer's input rows: H = Xq'Xq, A = Xf'Xq, and the row means."""

    h: Any
    a: Any
    mean_q: Any
    mean_f: Any
    rows: int = 0


def _sample_rows(op: _Op, xs: Sequence[Any], weight_shape: Sequence[int], groups: int, count: int,
                 gen: Any) -> list[Any]:
    """The same ``count`` random receptive fields of each input in ``xs``, as (G, count, K) rows
    (G groups of K = C/G * kh * kw columns, in the weight's own column order)."""
    torch = _torch()
    F = torch.nn.functional
    if op.kind == "Gemm":
        return [(x.t() if op.attrs.get("transA", 0) else x).reshape(1, x.shape[0], -1).contiguous() for x in xs]
    a = op.attrs
    pads = list(a.get("pads", [0, 0, 0, 0]))
    kh, kw = int(weight_shape[2]), int(weight_shape[3])
    sh, sw = a.get("strides", [1, 1])
    dh, dw = a.get("dilations", [1, 1])
    n, c, h, w = xs[0].shape
    oh = (h + pads[0] + pads[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (w + pads[1] + pads[3] - dw * (kw - 1) - 1) // sw + 1
    total = n * oh * ow
    pick = torch.randperm(total, generator=gen)[:count] if total > count else torch.arange(total)
    ni, rem = pick // (oh * ow), pick % (oh * ow)
    yi, xi = (rem // ow) * sh, (rem % ow) * sw
    dy = (torch.arange(kh) * dh).reshape(1, kh, 1)
    dx = (torch.arange(kw) * dw).reshape(1, 1, kw)
    out = []
    for x in xs:
        xp = F.pad(x, [pads[1], pads[3], pads[0], pads[2]]) if any(pads) else x
        patches = xp[ni[:, None, None], :, yi[:, None, None] + dy, xi[:, None, None] + dx]  # (P, kh, kw, C)
        rows = patches.permute(0, 3, 1, 2).reshape(len(pick), groups, -1)  # (P, G, K): (c, kh, kw) order
        out.append(rows.permute(1, 0, 2).contiguous())
    return out


def _accumulate(stats: _Stats | None, rq: Any, rf: Any, max_rows: int, gen: Any) -> _Stats:
    torch = _torch()
    if rq.shape[1] > max_rows:
        pick = torch.randperm(rq.shape[1], generator=gen)[:max_rows]
        rq, rf = rq[:, pick], rf[:, pick]
    rq, rf = rq.double(), rf.double()
    h = rq.transpose(1, 2) @ rq
    a = rf.transpose(1, 2) @ rq
    if stats is None:
        return _Stats(h, a, rq.sum(1), rf.sum(1), rq.shape[1])
    stats.h += h
    stats.a += a
    stats.mean_q += rq.sum(1)
    stats.mean_f += rf.sum(1)
    stats.rows += rq.shape[1]
    return stats


def _gptq(w: Any, h: Any, scale: Any, qmin: int, qmax: int, damp: float) -> Any:
    """Round ``w`` (G, R, K) to the per-row grid ``scale`` (G, R, 1) column by column, pushing
    each column's rounding error onto the columns not yet rounded through the inverse Hessian
    (Frantar et al., GPTQ); the loss is (q - w) H (q - w)'. Returns the integers."""
    torch = _torch()
    w = w.clone()
    k = h.shape[-1]
    eye = torch.eye(k, dtype=h.dtype)
    diag = torch.diagonal(h, dim1=1, dim2=2)
    h = h + eye * (damp * diag.mean(1).clamp(min=1e-12))[:, None, None]
    dead = diag <= 0
    h = torch.where((dead[:, :, None] & dead[:, None, :]) & eye.bool(), torch.ones_like(h), h)
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    ints = torch.empty_like(w)
    for j in range(k):
        col = w[:, :, j]
        qj = torch.clamp(torch.round(col / scale[:, :, 0]), qmin, qmax)
        ints[:, :, j] = qj
        err = (col - qj * scale[:, :, 0]) / u[:, j, j][:, None]
        if j + 1 < k:
            w[:, :, j + 1:] -= err[:, :, None] * u[:, j, j + 1:][:, None, :]
    return ints


@dataclass(frozen=True)
class LayerReport:
    layer: str
    unit: str
    relative_error_before: float  # sqrt(E||W_int x_q - W x_f||^2 / E||W x_f||^2), nearest rounding
    relative_error_after: float
    changed_integers: int
    weights: int


def _layer_error(q_w: Any, w: Any, st: _Stats, hf: Any) -> float:
    """Relative output error of integer weights ``q_w`` (G, R, K) from the layer's statistics."""
    torch = _torch()
    qd, wd = q_w.double(), w.double()
    err = (torch.einsum("grk,gkj,grj->", qd, st.h, qd) - 2 * torch.einsum("grk,gjk,grj->", qd, st.a, wd)
           + torch.einsum("grk,gkj,grj->", wd, hf, wd))
    ref = torch.einsum("grk,gkj,grj->", wd, hf, wd)
    return float(torch.sqrt(err.clamp(min=0) / ref.clamp(min=1e-30)))


def solve_layer(q: GraphModule, op: _Op, xq: Any, xf: Any, recipe: "LayerRecipe", gen: Any) -> LayerReport:
    """GPTQ rounding of one layer's weights against the FP32 layer on FP32 inputs, seen through the
    quantized inputs (so rounding also absorbs the error of everything before it), then bias
    correction (the mean output error moved into the bias)."""
    torch = q.torch
    name = op.inputs[1]
    qw = q.weights[name]
    w = q.float_weight[name]
    groups = int(op.attrs.get("group", 1)) if op.kind == "Conv" else 1
    transposed = op.kind == "Gemm" and not op.attrs.get("transB", 0)
    wm = (w.t() if transposed else w).reshape(groups, (w.shape[1] if transposed else w.shape[0]) // groups, -1)
    s = q.scale[name]
    sm = (s.t() if transposed else s).reshape(groups, -1, 1)
    rq, rf = _sample_rows(op, [xq, xf], w.shape, groups, recipe.rows, gen)
    rounding = recipe.gemm_rounding if op.kind == "Gemm" else recipe.rounding
    nearest_ints = torch.clamp(torch.round(wm / sm), qw.qmin, qw.qmax)
    ints = nearest_ints
    m = min(rq.shape[1], 4096)  # error rows (a subset: the error is a mean)

    def error(i: Any) -> float:
        e = rq[:, :m] @ (i * sm).transpose(1, 2) - rf[:, :m] @ wm.transpose(1, 2)
        return float(e.norm() / (rf[:, :m] @ wm.transpose(1, 2)).norm().clamp(min=1e-30))

    before = error(nearest_ints)
    if rounding == "gptq":
        h = rq.transpose(1, 2) @ rq / rq.shape[1]
        k = h.shape[-1]
        diag = torch.diagonal(h, dim1=1, dim2=2).mean(1).clamp(min=1e-12)
        target = wm
        if recipe.asymmetric:
            a_ = rf.transpose(1, 2) @ rq / rq.shape[1]
            hd = h + torch.eye(k) * (recipe.damp * diag)[:, None, None]
            target = torch.linalg.solve(hd, (wm @ a_).transpose(1, 2)).transpose(1, 2)
        g_ints = _gptq(target.double(), h.double(), sm.double(), qw.qmin, qw.qmax, recipe.damp).float()
        if error(g_ints) < before:  # never worse than nearest rounding on the rows it was fitted on
            ints = g_ints
    qd = ints * sm
    if recipe.bias_correction:
        delta = (torch.einsum("grk,gk->gr", wm, rf.mean(1)) - torch.einsum("grk,gk->gr", qd, rq.mean(1))).reshape(-1)
    after = error(ints)
    shape = (w.t() if transposed else w).shape
    full = ints.reshape(shape)
    old = torch.from_numpy(q.integers(name).astype(np.float64))
    q.set_integers(name, full.t() if transposed else full)
    bias = op.inputs[2] if len(op.inputs) > 2 else ""
    if recipe.bias_correction and bias in q.params:
        q.params[bias].data += delta
    changed = int((old.reshape(-1) != (full.t() if transposed else full).reshape(-1)).sum())
    return LayerReport(name, op.unit, before, after, changed, int(w.numel()))


@dataclass(frozen=True)
class LayerRecipe:
    images: int = 128
    rows: int = 16384  # receptive-field rows sampled per layer (spread over the images)
    damp: float = 0.01  # GPTQ damping, fraction of the mean diagonal of H
    asymmetric: bool = True  # target W x_f (FP32 inputs) rather than W x_q
    bias_correction: bool = True
    rounding: str = "gptq"  # "gptq" | "nearest" (the quantizer's own integers)
    gemm_rounding: str = "nearest"  # the classifier sees one row per image: GPTQ overfits it
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {"name": "sequential layer-wise GPTQ rounding + bias correction", **asdict(self)}


def layerwise(qdq: onnx.ModelProto, fp32: onnx.ModelProto, images: np.ndarray, recipe: LayerRecipe,
              weight_qmax: int = 127, fp16_scales: bool = False,
              progress: Callable[[LayerReport, int, int], None] | None = None) -> tuple[GraphModule, list[LayerReport]]:
    """Every quantized Conv/Gemm in graph order, each fed by the already rounded layers before it."""
    torch = _torch()
    gen = torch.Generator().manual_seed(recipe.seed)
    q = GraphModule(qdq, fp32, weight_qmax=weight_qmax, fp16_scales=fp16_scales)
    ref = GraphModule(fp32)
    ref_index = {op.name: i for i, op in enumerate(ref.ops)}
    layers = [i for i, op in enumerate(q.ops) if op.kind in ("Conv", "Gemm") and len(op.inputs) > 1
              and op.inputs[1] in q.weights and op.name in ref_index]
    last_q = {t: i for i, op in enumerate(q.ops) for t in op.inputs}
    last_f = {t: i for i, op in enumerate(ref.ops) for t in op.inputs}
    x = torch.from_numpy(np.ascontiguousarray(images[: recipe.images], dtype=np.float32))
    x = x.contiguous(memory_format=torch.channels_last)  # torch's fast depthwise kernels want NHWC
    env_q: dict[str, Any] = {q.input_name: x}
    env_f: dict[str, Any] = {ref.input_name: x}
    pos, reports = 0, []
    with torch.no_grad():
        for i, op in enumerate(q.ops):
            if i in layers:
                j = ref_index[op.name]
                ref.run(env_f, ref.ops[pos:j])
                pos = j
                env_f = {t: v for t, v in env_f.items() if last_f.get(t, -1) >= j}
                xq = q.value(op.inputs[0], env_q)
                reports.append(solve_layer(q, op, xq, env_f[ref.ops[j].inputs[0]], recipe, gen))
                if progress:
                    progress(reports[-1], len(reports), len(layers))
            q.run(env_q, [op])
            env_q = {t: v for t, v in env_q.items() if last_q.get(t, -1) > i}
    return q, reports


# --- results: integers for the graph, cached ----------------------------------------------------


def learned_initializers(q: GraphModule) -> dict[str, np.ndarray]:
    """Initializer name -> its reconstructed value: INT8 weights, float (tensorrt) or INT32
    (ort-cpu) biases, in the dtypes the Q/DQ graph holds them."""
    torch = q.torch
    out: dict[str, np.ndarray] = {}
    for name, qw in q.weights.items():
        out[qw.int_name] = q.integers(name)
    with torch.no_grad():
        for name, p in q.params.items():
            if name in q.weights:
                continue
            if name in q.bias_int:
                ints = torch.round(p / q.bias_scale[name]).clamp(-(2 ** 31), 2 ** 31 - 1)
                out[q.bias_int[name]] = ints.numpy().astype(np.int32)
            else:
                out[name] = p.detach().numpy().astype(np.float32)
    return out


def apply_initializers(model: onnx.ModelProto, values: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` with the initializers it shares with ``values`` replaced (same dtype
    and shape, else refused); the others (blocks a repair keeps in float) stay as they are."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for init in out.graph.initializer:
        v = values.get(init.name)
        if v is None:
            continue
        old = numpy_helper.to_array(init)
        if old.shape != v.shape or old.dtype != v.dtype:
            raise EffdeployError(f"reconstruction: {init.name} is {old.dtype}{list(old.shape)} in the graph, "
                                 f"{v.dtype}{list(v.shape)} reconstructed")
        init.CopyFrom(numpy_helper.from_array(v, init.name))
    return out


@dataclass(frozen=True)
class Reconstruction:
    """What the reconstruction changed and what it measured (the manifest's record)."""

    recipe: Mapping[str, Any]
    initializers: Mapping[str, np.ndarray] = field(repr=False)
    layers: tuple[LayerReport, ...]
    images: int
    seconds: float
    cache_hit: bool = False

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {"recipe": dict(self.recipe), "images": self.images, "seconds": round(self.seconds, 2),
                "cache_hit": self.cache_hit,
                "changed_integers": sum(r.changed_integers for r in self.layers),
                "weights": sum(r.weights for r in self.layers),
                "layers": [asdict(r) for r in self.layers]}


def _code_sha() -> str:
    import hashlib
    from pathlib import Path

    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def reconstruction_key(twin: onnx.ModelProto, fp32: onnx.ModelProto, images: np.ndarray, recipe: LayerRecipe,
                       weight_qmax: int, fp16_scales: bool) -> str:
    import hashlib

    import torch

    from .bundle import sha256_json

    def sha(m: onnx.ModelProto) -> str:
        return hashlib.sha256(m.SerializeToString(deterministic=True)).hexdigest()

    return sha256_json({"twin": sha(twin), "fp32": sha(fp32), "recipe": recipe.to_dict(),
                        "images": hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest(),
                        "qmax": weight_qmax, "fp16_scales": fp16_scales, "torch": torch.__version__,
                        "code": _code_sha()})


def cached_reconstruction(twin: onnx.ModelProto, fp32: onnx.ModelProto, images: np.ndarray, recipe: LayerRecipe,
                          weight_qmax: int = 127, fp16_scales: bool = False, quiet: bool = False) -> Reconstruction:
    """:func:`layerwise` with its result cached under the build cache (same inputs -> reused)."""
    import io
    import json
    import time

    from .cache import atomic_write, cache_folder
    from .report import info

    images = images[: recipe.images]
    key = reconstruction_key(twin, fp32, images, recipe, weight_qmax, fp16_scales)
    path = cache_folder("reconstruction") / f"{key[:40]}.npz"
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["__meta__"]))
            values = {k: z[k] for k in z.files if k != "__meta__"}
        return Reconstruction(meta["recipe"], values, tuple(LayerReport(**r) for r in meta["layers"]),
                              meta["images"], meta["seconds"], cache_hit=True)
    except (OSError, KeyError, ValueError, TypeError):
        pass
    t0 = time.perf_counter()

    def progress(r: LayerReport, k: int, n: int) -> None:
        info(f"      reconstruct [{k}/{n}] {r.unit} {r.layer.split('_DequantizeLinear')[0]}: layer error "
             f"{r.relative_error_before:.4f} -> {r.relative_error_after:.4f}", quiet)

    q, reports = layerwise(twin, fp32, images, recipe, weight_qmax=weight_qmax, fp16_scales=fp16_scales,
                           progress=progress)
    values = learned_initializers(q)
    rec = Reconstruction(recipe.to_dict(), values, tuple(reports), len(images), time.perf_counter() - t0)
    meta = {"recipe": rec.recipe, "layers": [r.__dict__ for r in reports], "images": rec.images,
            "seconds": rec.seconds}
    buf = io.BytesIO()
    np.savez(buf, __meta__=np.array(json.dumps(meta)), **values)
    try:
        atomic_write(path, buf.getvalue())
    except OSError:
        pass  # an unwritable cache only costs the reconstruction next time
    return rec
