"""Which quantized convs cost the INT8 graph most, by leaving each one out.

A conv's *unit* is everything its INT8 form adds: its weights, the activation quantizer in front of
it (through the tensorrt dialect's shift and pad) and, in the cpu dialect, the one on its output.
Each unit's sensitivity is the mean softmax KL from FP32 of the whole graph with only that unit in
float: the gain of keeping it out of INT8 where the error is paid (at the logits), not where it is
made. One unit's own error says little: on the distilled-b B0 the stem's swish output into
``blocks.0.0.dw`` and the SE-gated input of ``blocks.6.0.project`` are each 0.9 % and 4.7 % of the
multiply-adds and together take 45 % of the KL (docs/int8.md).

The graph runs in effdeploy's torch interpreter (the one the reconstruction uses, checked op by op
against ONNX Runtime), with the quantizers of one unit made identities. Sequential networks keep
one tensor alive between blocks, so the all-INT8 run is checkpointed there and each leave-one-out
run starts at the checkpoint before its unit: about half the work of running every variant whole.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import onnx
from onnx import numpy_helper

SENSITIVITY_IMAGES = 32  # the reconstruction's images; on 16 the order beyond the first conv moved with the images


@dataclass(frozen=True)
class ConvSensitivity:
    node: str  # the Conv/Gemm node
    kl: float  # mean KL of the graph with this unit alone in float (lower: keeping it out of INT8 helps more)
    macs_share: float  # its fraction of the network's multiply-adds

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "kl": self.kl, "macs_share": self.macs_share}


@dataclass(frozen=True)
class Sensitivity:
    """Leave-one-out sensitivities, most helpful first; the manifest records the leading ones."""

    all_int8_kl: float
    convs: tuple[ConvSensitivity, ...]
    images: int
    seconds: float
    cache_hit: bool = False

    def order(self) -> list[str]:
        return [c.node for c in self.convs]

    def to_dict(self, top: int = 8) -> dict[str, Any]:
        return {"all_int8_kl": self.all_int8_kl, "images": self.images, "seconds": self.seconds,
                "cache_hit": self.cache_hit, "leading": [c.to_dict() for c in self.convs[:top]]}


def shift_bias_fixes(g: Any, ops: list, quantized: Mapping[str, Any], unquantized: Mapping[str, Any]) -> dict:
    """weight key -> (bias name, bias as in the graph, what to add with float weights) for every conv
    whose input the tensorrt dialect shifted (x - c): there the bias holds c x the quantized weights'
    sum, so float weights need c x (float sum - quantized sum) more to be the same function."""
    producers = {o: op for op in ops for o in op.outputs}
    out = {}
    for op in ops:
        if op.kind not in ("Conv", "Gemm") or len(op.inputs) < 3 or op.inputs[1] not in quantized:
            continue
        fq = producers.get(op.inputs[0])
        sub = producers.get(fq.inputs[0]) if fq is not None and fq.kind == "FakeQuant" else None
        if sub is None or sub.kind != "Sub" or not sub.name.endswith("_shift"):
            continue
        c = float(g.const[sub.inputs[1]])
        wq, wf = quantized[op.inputs[1]].double(), unquantized[op.inputs[1]].double()
        dims = tuple(range(1, wq.dim())) if op.kind == "Conv" else (1 if op.attrs.get("transB", 0) else 0,)
        delta = (c * (wf.sum(dims) - wq.sum(dims))).float()
        out[op.inputs[1]] = (op.inputs[2], g.biases[op.inputs[2]].clone(), delta)
    return out


class Toggle:
    """The twin in the interpreter with any set of activation quantizers and conv weights switched
    to float (the rest as deployed). The bench's per-quantizer error table uses it too."""

    def __init__(self, twin: onnx.ModelProto, fp32: onnx.ModelProto, fp16_scales: bool, device: str = "cpu"):
        import torch

        from .reconstruct import GraphModule, _weight_qdq

        self.torch = torch
        self.g = GraphModule(twin, fp16_scales=fp16_scales, device=device)
        self.weights = _weight_qdq(twin)
        floats = {i.name: i for i in fp32.graph.initializer}
        self.quantized = {k: self.g.const[k] for k in self.weights}
        self.unquantized = {k: torch.from_numpy(np.array(numpy_helper.to_array(floats[w.int_name.removesuffix("_quantized")]),
                                                         np.float32)).to(device)
                            for k, w in self.weights.items()}
        self.ops = list(self.g.ops)
        self.fixes = shift_bias_fixes(self.g, self.ops, self.quantized, self.unquantized)
        self.fake_quants = {op.name for op in self.ops if op.kind == "FakeQuant"}
        # the cpu dialect's INT32 biases (at s_in x s_w): a conv in float has its float bias instead
        self.int_biases = {}
        for op in self.ops:
            if op.kind in ("Conv", "Gemm") and len(op.inputs) > 2 and op.inputs[2] in self.g.bias_int:
                init, _ = self.g.bias_int[op.inputs[2]]
                value = torch.from_numpy(np.array(numpy_helper.to_array(floats[init.removesuffix("_quantized")]),
                                                  np.float32)).to(device)
                self.int_biases[op.inputs[1]] = (op.inputs[2], self.g.bias_int[op.inputs[2]], self.g.biases[op.inputs[2]], value)

    def ops_with(self, acts: set[str]) -> list:
        """The op list with only the fake quantizers in ``acts`` left in place."""
        from .reconstruct import _Op

        return [op if op.kind != "FakeQuant" or op.name in acts else _Op("Identity", op.name, op.inputs[:1], op.outputs, {})
                for op in self.ops]

    def set_weights(self, quantized: set[str]) -> None:
        for k in self.weights:
            self.g.const[k] = self.quantized[k] if k in quantized else self.unquantized[k]
        for k, (bias, base, delta) in self.fixes.items():  # a shifted conv's bias holds c x its *quantized* weights' sum
            self.g.biases[bias] = base if k in quantized else base + delta
        for k, (bias, grid, base, value) in self.int_biases.items():
            if k in quantized:
                self.g.bias_int[bias], self.g.biases[bias] = grid, base
            else:
                self.g.bias_int.pop(bias, None)
                self.g.biases[bias] = value

    def logits(self, x: np.ndarray, acts: set[str], weights: set[str], batch: int = 16) -> np.ndarray:
        self.set_weights(weights)
        ops, xs = self.ops_with(acts), self.torch.from_numpy(x).to(self.g.device)
        last = _last_uses(self.ops, self.g.output_names)
        with self.torch.no_grad():
            return np.concatenate([_run_freeing(self, {self.g.input_name: xs[i:i + batch]}, ops, 0, last)
                                   [self.g.output_names[0]].cpu().numpy() for i in range(0, len(xs), batch)])


def conv_units(t: Toggle) -> dict[str, tuple[set[str], set[str]]]:
    """Conv/Gemm node -> (its activation quantizers, its weight key): what keeping it in float removes."""
    from .qdq import DIALECTS

    quantized_ops = {k for d in DIALECTS.values() for k in d.op_types}
    producers = {o: op for op in t.ops for o in op.outputs}
    consumers: dict[str, list] = {}
    for op in t.ops:
        for name in op.inputs:
            consumers.setdefault(name, []).append(op)
    units = {}
    for op in t.ops:
        if op.kind not in ("Conv", "Gemm") or len(op.inputs) < 2 or op.inputs[1] not in t.quantized:
            continue
        p = producers.get(op.inputs[0])
        while p is not None and p.kind in ("Sub", "Pad"):  # the tensorrt dialect's shift (and explicit pad)
            p = producers.get(p.inputs[0])
        acts = {p.name} if p is not None and p.kind == "FakeQuant" else set()
        for c in consumers.get(op.outputs[0], []):  # the cpu dialect's output Q/DQ goes with the conv, unless a
            if c.kind == "FakeQuant" and not any(u.kind in quantized_ops for u in consumers.get(c.outputs[0], [])):
                acts.add(c.name)  # quantized op (a residual Add) reads it too
        units[op.name] = (acts, {op.inputs[1]})
    return units


def checkpoints(ops: list, input_name: str, outputs: list[str], const: Mapping[str, Any]) -> dict[int, str]:
    """Op index -> the one tensor alive there (everything before it is needed only through it)."""
    produced = {input_name: -1}
    last_use: dict[str, int] = {}
    for i, op in enumerate(ops):
        for name in op.inputs:
            if name and name not in const:
                last_use[name] = i
        for name in op.outputs:
            produced[name] = i
    for name in outputs:
        last_use[name] = len(ops)
    out = {}
    for i in range(len(ops)):
        alive = [name for name, at in produced.items() if at < i and last_use.get(name, -1) >= i]
        if len(alive) == 1:
            out[i] = alive[0]
    return out


def _last_uses(ops: list, outputs: list[str]) -> dict[str, int]:
    last: dict[str, int] = {}
    for i, op in enumerate(ops):
        for name in op.inputs:
            last[name] = i
    for name in outputs:
        last[name] = len(ops)
    return last


def _run_freeing(t: Toggle, env: dict, ops: list, offset: int, last: dict[str, int],
                 ckpt: dict[int, str] | None = None, saved: dict[int, Any] | None = None) -> dict:
    """Run ``ops`` (the graph's ops from ``offset`` on), dropping each tensor after its last use
    (a whole B0 at 224 px keeps ~100 MB per image otherwise); optionally keep the checkpoints."""
    for j, op in enumerate(ops):
        i = offset + j
        if saved is not None and ckpt is not None and i in ckpt:
            saved[i] = env[ckpt[i]]
        t.g.run(env, [op])
        for name in op.inputs:
            if last.get(name) == i:
                env.pop(name, None)
    return env


def leave_one_out(t: Toggle, x: np.ndarray, reference: np.ndarray, batch: int = 8) -> dict[str, float]:
    """Per conv unit, the mean KL of the graph with that unit alone in float (``batch`` images at a
    time: memory stays that of one batch's live tensors and checkpoints)."""
    from ..export.logits import per_image_kl

    units = conv_units(t)
    index = {op.name: i for i, op in enumerate(t.ops)}
    const = set(t.g.const) | set(t.g.biases)
    ckpt = checkpoints(t.ops, t.g.input_name, t.g.output_names, dict.fromkeys(const))
    last = _last_uses(t.ops, t.g.output_names)
    all_acts, all_w = set(t.fake_quants), set(t.weights)
    starts = {node: max((s for s in ckpt if s <= min(index[a] for a in acts | {node})), default=0)
              for node, (acts, _) in units.items()}
    logits: dict[str, list[np.ndarray]] = {node: [] for node in units}
    for b in range(0, len(x), batch):
        xs = t.torch.from_numpy(x[b:b + batch]).to(t.g.device)
        saved: dict[int, Any] = {}
        t.set_weights(all_w)
        with t.torch.no_grad():  # the all-INT8 run, keeping each checkpoint's tensor
            _run_freeing(t, {t.g.input_name: xs}, t.ops, 0, last, ckpt, saved)
        for node, (acts, ws) in units.items():
            start = starts[node]
            t.set_weights(all_w - ws)
            with t.torch.no_grad():
                env = {ckpt[start]: saved[start]} if start in saved else {t.g.input_name: xs}
                env = _run_freeing(t, env, t.ops_with(all_acts - acts)[start:], start, last)
            logits[node].append(env[t.g.output_names[0]].cpu().numpy())
    t.set_weights(all_w)
    return {node: float(per_image_kl(reference, np.concatenate(parts)).mean()) for node, parts in logits.items()}


def _code_sha() -> str:
    """This module and the interpreter it runs (a change to either must not serve an old order)."""
    return hashlib.sha256(Path(__file__).read_bytes() + (Path(__file__).parent / "reconstruct.py").read_bytes()).hexdigest()[:16]


def conv_sensitivity(fp32: onnx.ModelProto, twin: onnx.ModelProto, images: np.ndarray, fp16_scales: bool,
                     device: str = "cpu") -> Sensitivity:
    """Leave-one-out sensitivity of every quantized conv on ``images`` (cached: same graphs, same
    pixels, same torch -> reused)."""
    import torch

    from ..cache import cache_folder, load, store
    from ..export.exporter import macs_per_node
    from ..export.logits import cached_logits
    from ..files import sha256_json, sha256_proto
    from ..export.logits import per_image_kl

    key = sha256_json({"twin": sha256_proto(twin), "fp32": sha256_proto(fp32), "fp16_scales": fp16_scales,
                       "images": hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest(),
                       "shape": list(images.shape), "torch": torch.__version__, "code": _code_sha(), "device": device})
    path = cache_folder("sensitivity") / f"{key[:40]}.json"
    try:
        d = json.loads(load(path) or b"null")
        return Sensitivity(d["all_int8_kl"], tuple(ConvSensitivity(**c) for c in d["convs"]), d["images"],
                           d["seconds"], cache_hit=True)
    except (ValueError, KeyError, TypeError):
        pass
    t0 = time.perf_counter()
    reference, _ = cached_logits(fp32, images)
    toggle = Toggle(twin, fp32, fp16_scales, device)
    all_int8 = toggle.logits(images, set(toggle.fake_quants), set(toggle.weights), batch=8)
    kl = leave_one_out(toggle, images, reference)
    macs = macs_per_node(fp32)
    total = sum(macs.values()) or 1.0
    convs = tuple(sorted((ConvSensitivity(n, v, macs.get(n, 0) / total) for n, v in kl.items()), key=lambda c: c.kl))
    result = Sensitivity(float(per_image_kl(reference, all_int8).mean()), convs, len(images), time.perf_counter() - t0)
    store(path, json.dumps({"all_int8_kl": result.all_int8_kl, "convs": [c.to_dict() for c in convs],
                            "images": result.images, "seconds": result.seconds}))
    return result
