"""INT8 reconstruction: make the quantized graph reproduce the FP32 network, layer by layer (build side).

Why a torch interpreter of the Q/DQ graph rather than fake-quant modules on the eager model: the
graph *is* the deployed function (BatchNorm folded, Q/DQ exactly where the dialect put them, the
same scales, zero points, integer ranges and QuantizeLinear rounding: half to even, saturating),
so what is corrected here is what ONNX Runtime and TensorRT run, for every dialect and family
(SE, swish, TF padding) without a second description of where quantizers sit. Export parity
makes the FP32 graph the eager model's function.

The recipe, chosen by measurement among those tried (docs/int8.md has the figures): sequential
empirical bias correction. Every quantized Conv/Gemm, in graph order, is fed what the already
corrected layers before it produce on calibration images; the mean of its output error against
the FP32 layer on FP32 inputs (per output channel) moves into its bias. So each layer absorbs the
systematic part of its own weight rounding *and* of the activation quantization in front of it;
every Conv/Gemm stays INT8 and the integers stay the quantizer's. ``--reconstruct thorough``
(:func:`learn_rounding`, effdeploy.precision.rounding) instead learns the integers and bias of the
layers with a linear output and leaves the others as quantized. What changed is written into the
graph (float for the tensorrt dialect, INT32 at scale s_in * s_w for ort-cpu), never float weights
rounded again by a quantizer.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import EffdeployError


_INT_RANGES = {onnx.TensorProto.INT8: (-128, 127), onnx.TensorProto.UINT8: (0, 255)}


@dataclass(frozen=True)
class QuantizedWeight:
    """One weight DequantizeLinear of the graph: its INT8 initializer and per-channel axis."""

    node: str  # the DequantizeLinear node
    int_name: str  # its INT8 initializer
    axis: int


def unit_of(node_name: str) -> str:
    """stem | blocks.S.I | head (the head conv, pooling and classifier are one unit)."""
    from ..export.exporter import block_of

    block = block_of(node_name)
    if block:
        return block
    return "stem" if node_name.startswith("/stem") else "head"


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _weight_qdq(model: onnx.ModelProto) -> dict[str, QuantizedWeight]:
    """DequantizeLinear nodes whose input is an INT8 weight initializer with >1 dimension."""
    inits = {i.name: i for i in model.graph.initializer}
    out: dict[str, QuantizedWeight] = {}
    for n in model.graph.node:
        if n.op_type != "DequantizeLinear" or n.input[0] not in inits:
            continue
        t = inits[n.input[0]]
        if t.data_type != onnx.TensorProto.INT8 or len(t.dims) < 2:
            continue
        out[n.output[0]] = QuantizedWeight(n.name, n.input[0], int(_attrs(n).get("axis", 1)))
    return out


# --- the graph in torch ---------------------------------------------------------------------------


def _torch():
    import torch

    return torch


class _Op:
    """One node of the interpreted graph (a Q->DQ pair on an activation is one ``FakeQuant``)."""

    __slots__ = ("kind", "name", "inputs", "outputs", "attrs")

    def __init__(self, kind: str, name: str, inputs: Sequence[str], outputs: Sequence[str], attrs: dict[str, Any]):
        self.kind, self.name, self.inputs, self.outputs, self.attrs = kind, name, list(inputs), list(outputs), attrs


class GraphModule:
    """An ONNX graph (FP32 reference or its FP32-typed Q/DQ twin) executed with torch ops.

    Weight DequantizeLinears are folded to their float values (integers x per-channel scale);
    biases (float, or INT32 DequantizeLinears) are editable tensors in ``biases``; activation
    QuantizeLinear->DequantizeLinear pairs are fake quantizers with the graph's own scale, zero
    point and integer range.
    """

    def __init__(self, model: onnx.ModelProto, fp16_scales: bool = False, device: str = "cpu"):
        torch = _torch()
        self.torch = torch
        self.device = device
        self.fp16_scales = fp16_scales  # the tensorrt dialect deploys its scales as FP16
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        self.int_dtypes = {i.name: i.data_type for i in model.graph.initializer}
        weights = _weight_qdq(model)
        producers = {o: n for n in model.graph.node for o in n.output}
        consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in model.graph.node:
            for t in n.input:
                consumers.setdefault(t, []).append(n)
        self.const: dict[str, Any] = {}
        self.biases: dict[str, Any] = {}  # bias value name -> float tensor (the corrected value)
        self.bias_int: dict[str, tuple[str, Any]] = {}  # INT32 bias value -> (initializer, scale)
        self.weights: dict[str, tuple[QuantizedWeight, Any]] = {}  # weight DQ output -> (its integers, scale)
        self.ops: list[_Op] = []
        fused: set[str] = set()
        for n in model.graph.node:
            if n.op_type == "DequantizeLinear" and n.input[0] in inits:
                scale = self._scale(inits[n.input[1]], n.output[0] in weights)
                q = torch.from_numpy(inits[n.input[0]].astype(np.float32))
                if n.output[0] in weights:
                    shape = [1] * q.dim()
                    shape[weights[n.output[0]].axis] = -1
                    self.const[n.output[0]] = q * scale.reshape(shape)
                    self.weights[n.output[0]] = (weights[n.output[0]], scale)
                else:  # an INT32 bias at scale s_in * s_w
                    self.bias_int[n.output[0]] = (n.input[0], scale)
                    self.biases[n.output[0]] = q * scale
                continue
            if n.op_type == "QuantizeLinear":
                users = consumers.get(n.output[0], [])
                if users and all(u.op_type == "DequantizeLinear" for u in users):
                    fused.add(n.output[0])
                    continue  # executed as part of its DequantizeLinear
            if n.op_type == "DequantizeLinear" and n.input[0] in fused:
                q = producers[n.input[0]]
                self.ops.append(_Op("FakeQuant", n.name, q.input[:3], n.output, {}))
                continue
            self.ops.append(_Op(n.op_type, n.name, n.input, n.output, _attrs(n)))
        for name, arr in inits.items():
            if name not in self.const:
                self.const[name] = torch.from_numpy(np.array(arr, dtype=np.float32 if arr.dtype.kind == "f" else arr.dtype))
        for op in self.ops:  # float Conv/Gemm biases (tensorrt dialect, FP32 graph)
            if op.kind in ("Conv", "Gemm") and len(op.inputs) > 2 and op.inputs[2] in inits \
                    and op.inputs[2] not in self.biases and inits[op.inputs[2]].dtype == np.float32:
                self.biases[op.inputs[2]] = self.const[op.inputs[2]].clone()
        self.input_name = model.graph.input[0].name
        self.output_names = [o.name for o in model.graph.output]
        if device != "cpu":
            self.const = {k: v.to(device) for k, v in self.const.items()}
            self.biases = {k: v.to(device) for k, v in self.biases.items()}
            self.bias_int = {k: (i, sc.to(device)) for k, (i, sc) in self.bias_int.items()}
            self.weights = {k: (w, sc.to(device)) for k, (w, sc) in self.weights.items()}
        self.learned_ints: dict[str, np.ndarray] = {}  # INT8 weight initializer -> learned integers (thorough)

    def _scale(self, arr: np.ndarray, fp16: bool) -> Any:
        arr = np.array(arr, np.float32)  # a copy: initializers from ONNX are read-only buffers, torch wants writable
        if fp16 and self.fp16_scales:
            arr = arr.astype(np.float16).astype(np.float32)
        return self.torch.from_numpy(arr)

    def value(self, name: str, env: Mapping[str, Any]) -> Any:
        if name in env:
            return env[name]
        if name in self.biases:
            b = self.biases[name]
            if name in self.bias_int:  # as deployed: rounded to its INT32 grid
                s = self.bias_int[name][1]
                return self.torch.round(b / s) * s
            return b
        return self.const[name]

    def run(self, env: dict[str, Any], ops: Iterable[_Op]) -> dict[str, Any]:
        for op in ops:
            outs = _EXEC[op.kind](self, op, [self.value(t, env) if t else None for t in op.inputs])
            for name, val in zip(op.outputs, outs if isinstance(outs, tuple) else (outs,)):
                env[name] = val
        return env

    def __call__(self, x: Any) -> Any:
        with self.torch.no_grad():
            env = self.run({self.input_name: x}, self.ops)
        return env[self.output_names[0]]


def _fake_quant(g: GraphModule, op: _Op, v: list[Any]) -> Any:
    """QuantizeLinear -> DequantizeLinear of an activation (per-tensor). torch's fused kernel
    multiplies by 1/scale where QuantizeLinear divides; the two differ only within one float ulp
    of a rounding tie."""
    if "_q" not in op.attrs:
        if v[1].numel() != 1:
            raise EffdeployError(f"reconstruction: {op.name} is not a per-tensor activation quantizer")
        zp_name = op.inputs[2] if len(op.inputs) > 2 else ""
        lo, hi = _INT_RANGES[g.int_dtypes.get(zp_name, onnx.TensorProto.UINT8)]
        scale = float(v[1].reshape(-1)[0])
        if g.fp16_scales:
            scale = float(np.float32(np.float16(scale)))
        op.attrs["_q"] = (scale, int(v[2].reshape(-1)[0]) if zp_name else 0, lo, hi)
    scale, zp, lo, hi = op.attrs["_q"]
    return g.torch.fake_quantize_per_tensor_affine(v[0], scale, zp, lo, hi)


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
    "QuickGelu": lambda g, op, v: v[0] * g.torch.sigmoid(float(op.attrs.get("alpha", 1.0)) * v[0]),  # ort-cpu's swish
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


# --- the correction -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """What the reconstruction does; recorded in the manifest and part of the cache key."""

    images: int = 32  # calibration images (a subset of them) the corrections are measured on
    mode: str = "bias"  # bias: sequential bias correction; thorough: learned rounding (effdeploy.precision.rounding)
    device: str = "cpu"  # where torch runs it (resolve_device)
    steps: int = 500  # thorough: optimisation steps per layer

    @property
    def name(self) -> str:
        return MODES[self.mode]

    def to_dict(self) -> dict[str, Any]:
        d = {"name": self.name, "mode": self.mode, "images": self.images, "device": self.device}
        return {**d, "steps": self.steps} if self.mode == "thorough" else d


MODES = {"bias": "sequential bias correction",
         "thorough": "learned rounding of the convs with a linear output (AdaRound per layer on quantized inputs)"}


THOROUGH_MIN_IMAGES = 32  # what learned rounding was measured with; on 8 images Lite0 flipped 1 of 6 new ones


def default_mode(variant: str, images: int, dialect: str | bool) -> str:
    """What ``--reconstruct auto`` runs on ``images`` reconstruction images in ``dialect`` (a name, or
    whether the profile is a GPU's). Thorough needs at least THOROUGH_MIN_IMAGES to choose on, else bias.
    Lite: thorough in every dialect (the default build's KL on new images 0.0050 -> 0.0031 tensorrt,
    0.0156 -> 0.0051 cpu, for about 25 s more on two cores). The B family: thorough where the Q/DQ sit
    at conv inputs only (tensorrt; openvino, the same placement in FP32): B0 default build 97.8 % ->
    98.0 % agreement, KL 0.0104 -> 0.0099, drop 0.8 -> 0.0 pt on the tensorrt dialect; bias on the
    cpu dialect, where the all-INT8 graph then holds the budget on the selection split, so
    the block repair, which does better there, never runs (KL 0.0180 -> 0.0256). docs/int8.md,
    *Learned rounding*, has the table."""
    if images < THOROUGH_MIN_IMAGES:
        return "bias"
    from .qdq import dialect_named

    return "thorough" if variant == "lite" or not dialect_named(dialect).output_qdq else "bias"


DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> str:
    """``--device``: auto is cuda where torch sees a GPU, else cpu; cuda without one is refused."""
    torch = _torch()
    if name not in DEVICES:
        raise EffdeployError(f"--device {name!r} is not one of {', '.join(DEVICES)}")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise EffdeployError(f"--device cuda: torch {torch.__version__} sees no CUDA GPU here; use --device cpu "
                             "(or auto, which picks the GPU where there is one)")
    return name


@contextlib.contextmanager
def fp32_convolutions(torch: Any, device: str) -> Iterator[None]:
    """cuDNN defaults to TF32 (10-bit mantissas) for float32 convolutions on Ampere and newer; the
    corrections would then measure TF32's error along with INT8's. Off while the reconstruction runs,
    restored after (torch keeps the switch process-wide)."""
    if device != "cuda":
        yield
        return
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@dataclass(frozen=True)
class LayerReport:
    layer: str  # the Conv/Gemm node
    unit: str  # stem | blocks.S.I | head
    relative_error_before: float  # ||y_q - y_fp32|| / ||y_fp32|| of its output on the images, before ...
    relative_error_after: float  # ... and after its bias moved
    bias_shift: float  # ||delta b|| / ||b||


def _rel(a: Any, b: Any) -> float:
    return float(((a - b).norm() / b.norm().clamp(min=1e-30)).item())


def correct_biases(qdq: onnx.ModelProto, fp32: onnx.ModelProto, images: np.ndarray, fp16_scales: bool = False,
                   progress: Callable[[LayerReport, int, int], None] | None = None,
                   device: str = "cpu") -> tuple[GraphModule, list[LayerReport]]:
    """Every quantized Conv/Gemm in graph order: its mean output error against the FP32 layer
    (quantized inputs vs FP32 inputs, per output channel) moves into its bias."""
    torch = _torch()
    with fp32_convolutions(torch, device):
        return _correct_biases(torch, qdq, fp32, images, fp16_scales, progress, device)


def _correct_biases(torch: Any, qdq: onnx.ModelProto, fp32: onnx.ModelProto, images: np.ndarray, fp16_scales: bool,
                    progress: Callable[[LayerReport, int, int], None] | None,
                    device: str) -> tuple[GraphModule, list[LayerReport]]:
    q, ref = GraphModule(qdq, fp16_scales=fp16_scales, device=device), GraphModule(fp32, device=device)
    ref_names = {op.name for op in ref.ops}
    layers = {i for i, op in enumerate(q.ops) if op.kind in ("Conv", "Gemm") and len(op.inputs) > 2
              and op.inputs[2] in q.biases and op.name in ref_names}

    def fit(op: _Op, ref_op: _Op, inputs: dict[str, Any], env_q: dict[str, Any],
            env_f: dict[str, Any]) -> tuple[LayerReport, Any]:
        y_f, y_q = env_f[ref_op.outputs[0]], env_q[op.outputs[0]]
        delta = (y_f - y_q).mean(dim=(0, 2, 3) if y_q.dim() == 4 else (0,))
        bias = op.inputs[2]
        before = _rel(y_q, y_f)
        q.biases[bias] = q.biases[bias] + delta
        y_new = q.run(dict(inputs), [op])[op.outputs[0]]  # bias rounded as deployed
        return LayerReport(op.name, unit_of(op.name), before, _rel(y_new, y_f),
                           float(delta.norm() / q.biases[bias].norm().clamp(min=1e-30))), y_new

    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(device)
    x = x.contiguous(memory_format=torch.channels_last)  # torch's fast depthwise kernels want NHWC
    return q, _sequential(torch, q, ref, x, layers, fit, progress)


def _sequential(torch: Any, q: GraphModule, ref: GraphModule, x: Any, layers: set[int],
                fit: Callable[..., tuple[LayerReport, Any]],
                progress: Callable[[LayerReport, int, int], None] | None) -> list[LayerReport]:
    """Run the Q/DQ graph and the FP32 graph side by side on ``x``; at each of ``layers`` (indices
    into q.ops) ``fit(op, ref_op, inputs, env_q, env_f)`` changes ``q`` and returns its report and
    the layer's new output, which the layers after it see. Tensors no later op reads are dropped."""
    ref_index = {op.name: i for i, op in enumerate(ref.ops)}
    last_q = {t: i for i, op in enumerate(q.ops) for t in op.inputs}
    last_f = {t: i for i, op in enumerate(ref.ops) for t in op.inputs}
    env_q: dict[str, Any] = {q.input_name: x}
    env_f: dict[str, Any] = {ref.input_name: x}
    pos, reports = 0, []
    with torch.no_grad():
        for i, op in enumerate(q.ops):
            inputs = {t: env_q[t] for t in op.inputs if t in env_q}
            q.run(env_q, [op])
            if i in layers:
                j = ref_index[op.name]
                ref.run(env_f, ref.ops[pos:j + 1])
                pos = j + 1
                env_f = {t: v for t, v in env_f.items() if last_f.get(t, -1) >= pos or t == ref.ops[j].outputs[0]}
                report, env_q[op.outputs[0]] = fit(op, ref.ops[j], inputs, env_q, env_f)
                reports.append(report)
                if progress:
                    progress(reports[-1], len(reports), len(layers))
            env_q = {t: v for t, v in env_q.items() if last_q.get(t, -1) > i}
    return reports


def learn_rounding(qdq: onnx.ModelProto, fp32: onnx.ModelProto, images: np.ndarray, fp16_scales: bool = False,
                   progress: Callable[[LayerReport, int, int], None] | None = None, device: str = "cpu",
                   steps: int = 500) -> tuple[GraphModule, list[LayerReport]]:
    """``--reconstruct thorough``: every quantized Conv/Gemm with a linear output, in graph order,
    learns its rounding and bias on what the layers before it produce (effdeploy.precision.rounding)."""
    torch = _torch()
    with fp32_convolutions(torch, device):
        return _learn_rounding(torch, qdq, fp32, images, fp16_scales, progress, device, steps)


NONLINEAR = ("Sigmoid", "QuickGelu", "Relu", "Clip", "Tanh", "HardSigmoid", "HardSwish", "Softmax")


def _activated(q: GraphModule) -> set[str]:
    """Tensors that go through a nonlinearity: into one directly, through activation quantizers, or
    into a quantizer whose range starts at 0 (ONNX Runtime folds ReLU/ReLU6 into U8 quantizers)."""
    out: set[str] = set()
    for op in reversed(q.ops):  # consumers come after producers
        if op.kind in NONLINEAR or (op.kind == "FakeQuant" and (op.outputs[0] in out or _clips_at_zero(q, op))):
            out.update(op.inputs[:1])
    return out


def _clips_at_zero(q: GraphModule, op: _Op) -> bool:
    zp_name = op.inputs[2] if len(op.inputs) > 2 else ""
    lo, _ = _INT_RANGES[q.int_dtypes.get(zp_name, onnx.TensorProto.UINT8)]
    zp = int(q.const[zp_name].reshape(-1)[0]) if zp_name else 0
    return zp == lo


def _weight_limit(qdq: onnx.ModelProto) -> int:
    """The bound of the weights' integer range as the quantizer used it (127, or 64 for 7-bit weights)."""
    inits = {i.name: i for i in qdq.graph.initializer}
    return max(int(np.abs(numpy_helper.to_array(inits[w.int_name]).astype(np.int32)).max())
               for w in _weight_qdq(qdq).values())


def _learn_rounding(torch: Any, qdq: onnx.ModelProto, fp32: onnx.ModelProto, images: np.ndarray, fp16_scales: bool,
                    progress: Callable[[LayerReport, int, int], None] | None, device: str,
                    steps: int) -> tuple[GraphModule, list[LayerReport]]:
    q, ref = GraphModule(qdq, fp16_scales=fp16_scales, device=device), GraphModule(fp32, device=device)
    limit = _weight_limit(qdq)
    ref_names = {op.name for op in ref.ops}
    # A layer whose output goes through a nonlinearity is left as the quantizer rounded it: its
    # linear output error is the wrong objective there (B0's head: the fit lowered the conv's error
    # and raised the pooled swish features' error 0.116 -> 0.148; learning every layer's rounding
    # took B0's KL on new images from 0.0115 to 0.136, docs/int8.md).
    activated = _activated(q)
    layers = {i for i, op in enumerate(q.ops) if op.kind in ("Conv", "Gemm") and len(op.inputs) > 2
              and op.inputs[2] in q.biases and op.inputs[1] in q.weights and op.name in ref_names
              and op.outputs[0] not in activated}

    def fit(op: _Op, ref_op: _Op, inputs: dict[str, Any], env_q: dict[str, Any],
            env_f: dict[str, Any]) -> tuple[LayerReport, Any]:
        y_f = _block_target(q, ref, op, ref_op, env_q, env_f)
        with torch.enable_grad():
            report = _round_layer(torch, q, op, ref.value(ref_op.inputs[1], {}), inputs[op.inputs[0]], y_f, limit, steps)
        return report, q.run(dict(inputs), [op])[op.outputs[0]]

    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(device)
    return q, _sequential(torch, q, ref, x, layers, fit, progress)


def _block_target(q: GraphModule, ref: GraphModule, op: _Op, ref_op: _Op, env_q: dict[str, Any],
                  env_f: dict[str, Any]) -> Any:
    """What the layer's output should be: the FP32 layer's, or where it feeds a residual Add (the
    project conv of an MBConv block), the FP32 block output less the quantized shortcut, so that
    the block's output, not the layer's alone, matches FP32 (their errors are correlated)."""
    y_f = env_f[ref_op.outputs[0]]
    via = next((o.outputs[0] for o in q.ops if o.kind == "FakeQuant" and o.inputs[0] == op.outputs[0]), op.outputs[0])
    add = next((o for o in q.ops if o.kind == "Add" and via in o.inputs and unit_of(o.name) == unit_of(op.name)), None)
    ref_add = next((o for o in ref.ops if add is not None and o.name == add.name and ref_op.outputs[0] in o.inputs), None)
    if add is None or ref_add is None:
        return y_f
    other_q = add.inputs[1 - add.inputs.index(via)]
    other_f = ref_add.inputs[1 - ref_add.inputs.index(ref_op.outputs[0])]
    if other_q not in env_q:  # the shortcut's quantizer runs later in graph order: run it now
        producer = next(o for o in q.ops if other_q in o.outputs)
        r_q = q.run({t: env_q[t] for t in producer.inputs if t in env_q}, [producer])[other_q]
    else:
        r_q = env_q[other_q]
    return y_f + env_f[other_f] - r_q


def _round_layer(torch: Any, q: GraphModule, op: _Op, w_fp32: Any, x: Any, y_f: Any, limit: int,
                 steps: int) -> LayerReport:
    """Learn one layer's integers and bias; where they beat the graph's, write them into ``q``."""
    from .rounding import grouped, learn_layer, normal_equations

    qw, scale = q.weights[op.inputs[1]]
    w_q = q.const[op.inputs[1]]
    trans_b = bool(op.attrs.get("transB", 0))
    if tuple(w_fp32.shape) != tuple(w_q.shape) or qw.axis != (0 if op.kind == "Conv" or trans_b else 1):
        raise EffdeployError(f"learned rounding: {op.name}'s weights are {list(w_q.shape)} (axis {qw.axis}) in the "
                             f"INT8 graph, {list(w_fp32.shape)} in the FP32 one")
    groups = int(op.attrs.get("group", 1)) if op.kind == "Conv" else 1
    shape = [1] * w_q.dim()
    shape[qw.axis] = -1
    per_out = scale.reshape(-1).expand(w_q.shape[qw.axis]).reshape(shape).double()  # per-tensor or per-channel
    as_grouped = lambda t: grouped(t, groups, op.kind, trans_b)
    w_g = as_grouped(w_fp32)
    scale_g = as_grouped(per_out.expand(w_q.shape))[..., :1]
    graph_ints = as_grouped(torch.round(w_q.double() / per_out))  # the quantizer's integers, as deployed
    bias = q.biases[op.inputs[2]]
    r = learn_layer(torch, normal_equations(torch, op, x, y_f, kernel=tuple(w_q.shape[2:])), w_g, graph_ints, scale_g,
                    bias.reshape(w_g.shape[0], w_g.shape[1]), limit, steps)
    if r.learned:
        ints = r.ints.reshape(-1, r.ints.shape[-1])
        ints = (ints.t() if op.kind == "Gemm" and not trans_b else ints).reshape(w_q.shape)
        q.learned_ints[qw.int_name] = ints.cpu().numpy().astype(np.int8)
        q.const[op.inputs[1]] = (ints * per_out).to(w_q.dtype)
        q.biases[op.inputs[2]] = r.bias.reshape(-1).to(bias.dtype)
    new_bias = q.biases[op.inputs[2]]
    shift = float((new_bias - bias).norm() / new_bias.norm().clamp(min=1e-30))
    return LayerReport(op.name, unit_of(op.name), r.error_before, r.error_after, shift)


# --- results: integers for the graph, cached ----------------------------------------------------


def learned_initializers(q: GraphModule) -> dict[str, np.ndarray]:
    """Initializer name -> its corrected value: float biases (tensorrt) or INT32 biases at their
    scale s_in * s_w (ort-cpu), in the dtypes the Q/DQ graph holds them."""
    torch = q.torch
    out: dict[str, np.ndarray] = dict(q.learned_ints)
    for name, b in q.biases.items():
        if name in q.bias_int:
            init, scale = q.bias_int[name]
            out[init] = torch.round(b / scale).clamp(-(2 ** 31), 2 ** 31 - 1).cpu().numpy().astype(np.int32)
        else:
            out[name] = b.cpu().numpy().astype(np.float32)
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
    logit_rel_mse: tuple[float, float] | None = None  # on its images, ONNX Runtime: plain -> corrected
    accepted: bool = True  # False: not better on its own images, so not written into the graph
    strength: float = 1.0  # the share of each correction applied (see STRENGTHS)
    strength_scores: Mapping[float, float] | None = None  # strength -> ONNX Runtime's logit relative MSE

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        units: dict[str, dict[str, float]] = {}
        for layer in self.layers:  # a unit's error is its last layer's
            units[layer.unit] = {"relative_error_before": layer.relative_error_before,
                                 "relative_error_after": layer.relative_error_after}
        return {"recipe": dict(self.recipe), "images": self.images, "seconds": round(self.seconds, 2),
                "cache_hit": self.cache_hit, "accepted": self.accepted,
                "logit_relative_mse": list(self.logit_rel_mse) if self.logit_rel_mse else None,
                "strength": self.strength,
                "strength_logit_relative_mse": ({f"{a:g}": v for a, v in self.strength_scores.items()}
                                                if self.strength_scores else None),
                "biases_corrected": sum(r.bias_shift > 0 for r in self.layers) if self.accepted else 0,
                "weights_learned": (sum(1 for v in self.initializers.values() if np.asarray(v).dtype == np.int8)
                                    if self.accepted else 0),
                "units": units, "layers": [asdict(r) for r in self.layers]}


# The corrections go in at one strength for the whole network, the one with the lowest logit error
# ONNX Runtime measures on the images they were fitted on (0: the plain graph). Each layer's mean error
# also holds what the corrected layers before it already moved, so the full correction can overshoot
# (docs/int8.md has the measurements).
STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


def at_strength(plain: Mapping[str, np.ndarray], corrected: Mapping[str, np.ndarray], a: float) -> dict[str, np.ndarray]:
    """Biases moved ``a`` of the way from the plain graph's values to the corrected ones (INT32 ones rounded)."""
    out = {}
    for k, v in corrected.items():
        b = np.asarray(plain[k], np.float64)
        x = b + a * (np.asarray(v, np.float64) - b)
        out[k] = np.rint(x).astype(v.dtype) if v.dtype.kind == "i" else x.astype(v.dtype)
    return out


def _code_sha() -> str:
    import hashlib
    from pathlib import Path

    return hashlib.sha256(Path(__file__).read_bytes()
                          + (Path(__file__).parent / "rounding.py").read_bytes()).hexdigest()[:16]


def reconstruction_key(twin: onnx.ModelProto, fp32: onnx.ModelProto, images: np.ndarray, recipe: Recipe,
                       fp16_scales: bool) -> str:
    import hashlib

    import torch

    from ..files import sha256_json, sha256_proto

    return sha256_json({"twin": sha256_proto(twin), "fp32": sha256_proto(fp32), "recipe": recipe.to_dict(),
                        "images": hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest(),
                        "fp16_scales": fp16_scales, "torch": torch.__version__,
                        "code": _code_sha()})


def cached_reconstruction(twin: onnx.ModelProto, fp32: onnx.ModelProto, images: np.ndarray, recipe: Recipe,
                          fp16_scales: bool = False, quiet: bool = False) -> Reconstruction:
    """:func:`correct_biases` (or, thorough, :func:`learn_rounding`) with its result cached under the
    build cache (same inputs -> reused)."""
    import io
    import json
    import time
    import zipfile

    from ..cache import cache_folder, load, store
    from ..report import info

    images = images[: recipe.images]
    key = reconstruction_key(twin, fp32, images, recipe, fp16_scales)
    path = cache_folder("reconstruction") / f"{key[:40]}.npz"
    try:
        with np.load(io.BytesIO(load(path, quiet) or b""), allow_pickle=False) as z:
            meta = json.loads(str(z["__meta__"]))
            values = {k: z[k] for k in z.files if k != "__meta__"}
        return Reconstruction(meta["recipe"], values, tuple(LayerReport(**r) for r in meta["layers"]),
                              meta["images"], meta["seconds"], cache_hit=True)
    except (OSError, KeyError, ValueError, TypeError, EOFError, zipfile.BadZipFile):  # missing or corrupt: recompute
        pass
    t0 = time.perf_counter()

    def progress(r: LayerReport, k: int, n: int) -> None:
        spent = time.perf_counter() - t0
        info(f"      reconstruct [{k}/{n}] {r.layer}: output error {r.relative_error_before:.4f} -> "
             f"{r.relative_error_after:.4f} ({spent:.0f} s, ETA {spent * (n - k) / k:.0f} s)", quiet)

    if recipe.mode == "thorough":
        q, reports = learn_rounding(twin, fp32, images, fp16_scales=fp16_scales, progress=progress,
                                    device=recipe.device, steps=recipe.steps)
    else:
        q, reports = correct_biases(twin, fp32, images, fp16_scales=fp16_scales, progress=progress,
                                    device=recipe.device)
    values = learned_initializers(q)
    rec = Reconstruction(recipe.to_dict(), values, tuple(reports), len(images), time.perf_counter() - t0)
    meta = {"recipe": rec.recipe, "layers": [r.__dict__ for r in reports], "images": rec.images,
            "seconds": rec.seconds}
    buf = io.BytesIO()
    np.savez(buf, __meta__=np.array(json.dumps(meta)), **values)
    store(path, buf.getvalue())
    return rec
