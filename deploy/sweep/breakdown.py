"""Where a CPU point's latency goes, by kind of layer, beside where its multiply-adds are.

The paper's FLOPs rule says latency grows like the multiply-adds; on a real target it does not,
because some layers are bound by memory, not arithmetic (depthwise convs, swish, the SE gate, the
quantizers). A sweep measures that rather than assuming it: ONNX Runtime's own per-node profiler
runs the bundle's graph as ``bench`` does (same optimisation level and threads), every node of the
graph ONNX Runtime actually executes (fused and re-laid-out) is put in a kind by its op and shapes,
and the kinds' shares of the time are set beside their shares of the multiply-adds.

ONNX Runtime's profiler, not a timer of our own, because only the runtime knows its fused nodes; its
optimised graph is saved next to the profile to read each node's attributes (group, kernel).
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

KINDS = ("stem", "depthwise", "pointwise", "conv", "se", "pooling", "classifier", "elementwise", "quantize",
         "layout", "other")
LABELS = {"stem": "stem conv", "depthwise": "depthwise convs", "pointwise": "1x1 convs (expand, project, head)",
          "conv": "other convs", "se": "squeeze-and-excitation (its convs and gate)", "pooling": "pooling",
          "classifier": "classifier", "elementwise": "elementwise (swish, sigmoid, adds)",
          "quantize": "quantize/dequantize", "layout": "layout (reorders, transposes, reshapes)", "other": "other"}
CONV_OPS = {"Conv", "FusedConv", "QLinearConv", "ConvInteger", "NhwcFusedConv", "NhwcConv"}
MATMUL_OPS = {"Gemm", "MatMul", "FusedGemm", "QGemm", "MatMulInteger", "FusedMatMul", "MatMulIntegerToFloat"}
POOL_OPS = {"ReduceMean", "GlobalAveragePool", "QLinearGlobalAveragePool", "AveragePool", "QLinearAveragePool"}
QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QDQ"}
LAYOUT_OPS = {"ReorderInput", "ReorderOutput", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity",
              "Cast", "Pad", "MemcpyToHost", "MemcpyFromHost"}
ELEMENTWISE_OPS = {"Sigmoid", "QuickGelu", "Mul", "Add", "Sub", "Relu", "Clip", "HardSigmoid", "HardSwish", "Sum",
                   "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu", "Div", "Swish"}


def _shape(entry: Mapping[str, Any]) -> list[int]:
    """A profile's ``{"float": [1, 32, 112, 112]}`` -> the shape."""
    return list(next(iter(entry.values()))) if entry else []


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def classify(op: str, attrs: Mapping[str, Any], inputs: Sequence[Sequence[int]], output: Sequence[int],
             weight: Sequence[int] | None = None) -> tuple[str, int]:
    """(kind, multiply-adds) of one executed node from its op, attributes and the shapes ONNX
    Runtime reports (logical NCHW, or NHWC for its channels-last QLinearConv)."""
    x = list(inputs[0]) if inputs else []
    out_n = int(np.prod(output)) if output else 0
    if op in CONV_OPS:
        last = bool(attrs.get("channels_last"))  # ORT's NHWC QLinearConv (com.microsoft) says so
        channels, spatial = (x[-1], x[1:-1]) if last and len(x) >= 3 else (x[1], x[2:]) if len(x) >= 3 else (0, [])
        group = int(attrs.get("group", 1))
        kernel = list(attrs.get("kernel_shape") or (weight[2:] if weight is not None else [1]))
        macs = out_n * (channels // max(group, 1)) * int(np.prod(kernel)) if channels else 0
        if group == 1 and spatial and all(s == 1 for s in spatial):  # SE's convs run on pooled [N, C, 1, 1]
            return "se", macs  # (at tiny resolutions a last stage on 1x1 maps counts here too)
        if group > 1:
            return "depthwise", macs
        if channels and channels <= 4:
            return "stem", macs
        return ("pointwise" if all(k == 1 for k in kernel) else "conv"), macs
    if op in MATMUL_OPS:
        return "classifier", out_n * (x[-1] if x else 0)
    if op in POOL_OPS:
        return "pooling", 0
    if op in QUANT_OPS:
        return "quantize", 0
    if op in LAYOUT_OPS:
        return "layout", 0
    if op in ("Mul", "QLinearMul") and len(inputs) >= 2:
        shapes = [list(s) for s in inputs if len(s) == 4]
        if len(shapes) == 2 and shapes[0] != shapes[1] and any(s[2:] == [1, 1] or s[1:3] == [1, 1] for s in shapes):
            return "se", 0  # the gate: a [N, C, H, W] map times a per-channel [N, C, 1, 1] vector
    if op in ELEMENTWISE_OPS:
        return "elementwise", 0
    return "other", 0


def profile_breakdown(model_path: Path, optimize: bool, batch: int, threads: int | None,
                      runs: int = 20) -> dict[str, dict[str, float]]:
    """Per kind: mean milliseconds per call (kernel time, summed over its nodes) and multiply-adds,
    from ``runs`` profiled calls after 3 unprofiled warm-up calls of the same session."""
    import onnx

    from ..backends.onnxrt import OnnxRuntimeRunner

    with tempfile.TemporaryDirectory(prefix="effdeploy-profile-") as tmp:
        runner = OnnxRuntimeRunner(model_path, threads=threads, optimize=optimize, profile_dir=Path(tmp))
        x = np.random.default_rng(0).standard_normal([batch, *runner.input_shape[1:]]).astype(np.float32)
        for _ in range(3 + runs):
            runner.infer(x)
        events = json.loads(Path(runner.session.end_profiling()).read_text())
        graph = onnx.load(str(Path(tmp) / "optimized.onnx"), load_external_data=False).graph
    nodes = {n.name: n for n in graph.node}
    inits = {i.name: list(i.dims) for i in graph.initializer}
    kernel = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
    per_call = len(kernel) / (3 + runs)  # the first 3 calls' events are dropped: warm-up
    kernel = kernel[int(round(3 * per_call)):]
    out = {k: {"ms": 0.0, "macs": 0} for k in KINDS}
    seen: set[str] = set()
    for e in kernel:
        name, args = e["name"][: -len("_kernel_time")], e.get("args", {})
        node = nodes.get(name)
        op = args.get("op_name") or (node.op_type if node is not None else "other")
        attrs = _attrs(node) if node is not None else {}
        w_index = 3 if op == "QLinearConv" else 1
        weight = inits.get(node.input[w_index]) if node is not None and len(node.input) > w_index else None
        kind, macs = classify(op, attrs, [_shape(s) for s in args.get("input_type_shape", [])],
                              _shape((args.get("output_type_shape") or [{}])[0]), weight)
        out[kind]["ms"] += e.get("dur", 0) / 1000.0 / runs
        if name not in seen:  # each node's multiply-adds once per call
            seen.add(name)
            out[kind]["macs"] += macs
    return {k: {"ms": round(v["ms"], 4), "macs": int(v["macs"])} for k, v in out.items() if v["ms"] or v["macs"]}


def shares(breakdown: Mapping[str, Mapping[str, float]]) -> dict[str, tuple[float, float]]:
    """Per kind: (share of the kernel time, share of the multiply-adds)."""
    t = sum(v["ms"] for v in breakdown.values()) or 1.0
    m = sum(v["macs"] for v in breakdown.values()) or 1.0
    return {k: (v["ms"] / t, v["macs"] / m) for k, v in breakdown.items()}


def departures(points: Sequence[Any], min_share: float = 0.05) -> list[str]:
    """Per precision, one line per kind of layer whose share of the latency departs from its share
    of the multiply-adds (by 1.5x either way, or >= 5 % of the time with none), at the smallest and
    the largest phi swept, and how its time grew against the network's multiply-adds."""
    lines = []
    for precision in dict.fromkeys(p.precision for p in points):
        mine = sorted((p for p in points if p.precision == precision and p.breakdown and p.error is None),
                      key=lambda p: p.phi)
        if not mine:
            continue
        lo, hi = mine[0], mine[-1]
        s_lo, s_hi = shares(lo.breakdown), shares(hi.breakdown)
        for kind in KINDS:
            t_lo, m_lo = s_lo.get(kind, (0.0, 0.0))
            t_hi, m_hi = s_hi.get(kind, (0.0, 0.0))
            if max(t_lo, t_hi) < min_share:
                continue
            ratio = (t_lo / m_lo) if m_lo else math.inf
            if 1 / 1.5 < ratio < 1.5:
                continue
            growth = ""
            if (hi is not lo and lo.macs and hi.macs and hi.macs != lo.macs and lo.breakdown.get(kind, {}).get("ms")
                    and hi.breakdown.get(kind, {}).get("ms")):
                e = math.log(hi.breakdown[kind]["ms"] / lo.breakdown[kind]["ms"]) / math.log(hi.macs / lo.macs)
                growth = f"; its time grew as MACs^{e:.2f} from phi {lo.phi:g} to {hi.phi:g}"
            where = (f"{100 * t_lo:.0f} % of the time at phi {lo.phi:g}" +
                     (f", {100 * t_hi:.0f} % at phi {hi.phi:g}" if hi is not lo else ""))
            what = (f"{100 * m_lo:.1f} % of the multiply-adds, {where} ({ratio:.1f}x its share)" if m_lo
                    else f"no multiply-adds, {where}")
            lines.append(f"{precision} {LABELS[kind]}: {what}{growth}")
    return lines
