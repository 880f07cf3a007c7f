"""Precision lives in the graph: explicit Q/DQ for INT8, FP16-typed tensors for FP16.

TensorRT 11 removed the FP16/INT8 builder flags and calibrators; TensorRT 10 builds the same
graphs as strongly typed networks. So this stage turns the simplified FP32 ONNX into the graph
that is deployed, in the dialect the profile's runtime executes well:

* ``tensorrt`` (GPU profiles): symmetric INT8 (zero point 0), per-channel weights, per-tensor
  activations, Q/DQ only at the *inputs* of Conv/Gemm and residual Adds (where TensorRT fuses
  them; a Q/DQ on a conv output would split Conv+activation fusions and cost accuracy,
  docs/int8.md), everything else FP16 with explicit types (opset 19 for FP16 Q/DQ scales).
* ``ort-cpu`` (the ``cpu`` profile): QDQ around Conv/Gemm/Add/Clip so ONNX Runtime fuses them
  into QLinear kernels; activation signedness (U8S8 vs S8S8) is chosen by timing both; the swish
  after a DequantizeLinear is written as one QuickGelu, which ONNX Runtime would not fuse there.
* ``openvino`` (the ``cpu-openvino`` profile): the tensorrt dialect's placement (Q/DQ at the
  inputs of Conv/Gemm/Add, symmetric S8 activations with the shift of lopsided inputs, per-channel
  weights in 7 bits, as ``ort-cpu``, for CPUs without VNNI) with everything else in FP32: OpenVINO turns each Q/DQ pair into a
  FakeQuantize and runs the conv after it in INT8 (docs/int8.md, *An OpenVINO dialect*).

Q/DQ insertion uses ONNX Runtime's quantizer (``quantize_static``) fed with our own calibrated
ranges through its documented calibration-cache file; FP16 conversion uses onnxconverter-common.
"""

from __future__ import annotations

import functools
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import EffdeployError, first_line
from ..export.exporter import block_of


TENSORRT = "tensorrt"
ORT_CPU = "ort-cpu"
OPENVINO = "openvino"
GPU_OPSET = 19  # DequantizeLinear with FP16 scales (FP16 outputs) needs opset >= 19


@dataclass(frozen=True)
class QuantConfig:
    """What gets INT8 and how; every choice is recorded in the manifest."""

    dialect: str = TENSORRT
    method: str = "max"
    activations: str = "int8"  # "int8" (symmetric) or "uint8" (asymmetric, ORT CPU)
    quantize_se: bool = False  # SE path (pool -> FC -> act -> FC -> sigmoid): tiny compute, fragile
    quantize_stem: bool = True
    quantize_classifier: bool = True
    quantize_depthwise: bool = True  # the depthwise convs (and their input quantizers)
    keep_blocks: tuple[str, ...] = ()  # MBConv blocks kept in higher precision (sensitivity fallback)
    keep_nodes: tuple[str, ...] = ()  # single Conv/Gemm nodes kept in higher precision (the conv fallback)
    fp16_rest: bool = True  # tensorrt: non-INT8 ops in FP16
    # ort-cpu: 7-bit weights (ORT's reduce_range). x86 CPUs without VNNI multiply U8xS8 pairs into
    # saturating 16-bit sums (VPMADDUBSW), which 8-bit weights overflow; 7 bits never do.
    reduce_range: bool = False
    # symmetric activations: conv inputs whose range is lopsided (swish outputs) are quantized as
    # x - c, with c times the weights' sum in the bias (effdeploy.precision.transforms)
    shift_skewed: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["keep_blocks"] = list(self.keep_blocks)
        d["keep_nodes"] = list(self.keep_nodes)
        return d


@dataclass(frozen=True)
class Dialect:
    """How one runtime wants its INT8 graph: a row of :data:`DIALECTS`, read instead of branching
    on dialect names. A new runtime's dialect is a new row."""

    name: str
    op_types: tuple[str, ...]  # ops that get Q/DQ
    activations: tuple[str, ...]  # activation forms it runs, preferred first ("int8" S8S8, "uint8" U8S8)
    fp16_rest: bool  # everything outside INT8 in FP16
    opset: int | None  # the graph is converted to this opset first (FP16 DequantizeLinear scales need 19)
    output_qdq: bool  # Q/DQ on op outputs too, with INT32 biases (ORT's QLinear fusions want them)
    reduce_range: bool  # 7-bit weights (see QuantConfig.reduce_range)
    shift_skewed: bool = False  # symmetric activations: quantize lopsided conv inputs as x - c (see QuantConfig)
    fused_swish: bool = False  # swish after a DequantizeLinear written as one QuickGelu (see fuse_swish_after_dq)


DIALECTS: dict[str, Dialect] = {
    # TensorRT fuses float biases itself; an INT32 bias at scale s_in * s_w would underflow FP16.
    TENSORRT: Dialect(TENSORRT, ("Conv", "Gemm", "Add"), ("int8",), fp16_rest=True, opset=GPU_OPSET,
                      output_qdq=False, reduce_range=False, shift_skewed=True),
    ORT_CPU: Dialect(ORT_CPU, ("Conv", "Gemm", "Add", "Clip", "Relu"), ("uint8", "int8"), fp16_rest=False,
                     opset=None, output_qdq=True, reduce_range=True, fused_swish=True),
    # ONNX Runtime runs this graph mostly as float convs after DequantizeLinear (slowly) but computes
    # the function it defines, so the build verifies with it (FP32: its graph optimiser may run, as
    # for every graph without FP16 Q/DQ, needs_unoptimized_ort); bench/accuracy.py --openvino judges
    # OpenVINO's INT8 kernels on the same images. 7-bit weights as in ort-cpu: OpenVINO's INT8
    # convolutions saturate the same way on CPUs without VNNI (docs/int8.md, *Saturation*).
    OPENVINO: Dialect(OPENVINO, ("Conv", "Gemm", "Add"), ("int8",), fp16_rest=False, opset=GPU_OPSET,
                      output_qdq=False, reduce_range=True, shift_skewed=True),
}
RUNTIME_DIALECTS = {"tensorrt": TENSORRT, "onnxruntime": ORT_CPU, "openvino": OPENVINO}  # a profile's runtime


FLOAT_PARTS = ("se", "stem", "classifier", "dw")  # what --int8-float names (QuantConfig.quantize_*)


def default_float_parts(variant: str, dialect: str | bool) -> tuple[str, ...]:
    """The EfficientNet parts an INT8 build keeps in float unless ``--int8-float`` says otherwise.

    SE always: its convs run on [N, C, 1, 1] (nothing to gain) and INT8 there measured no better.
    For the B family the depthwise convs too (9 % of B0's multiply-adds): their inputs are swish
    outputs, one per-tensor scale over channels of very different ranges, and keeping them in float
    nearly halved the default build's KL on new images in the tensorrt and cpu dialects (on the CPU it was faster
    too). The stem as well in the cpu dialect: there ORT's fused QLinearConv wants the stem's output
    quantized before swish, the largest single quantizer of either dialect; kept float it costs about
    3 % of B0's multiply-adds. Lite keeps its depthwise convs in INT8: its default builds hold the
    budget, and float depthwise convs gained less there (cpu dialect: KL 0.0156 -> 0.0134, one image
    fewer in agreement) for a device cost not measured yet (docs/int8.md has every figure)."""
    if variant == "b":
        return ("se", "stem", "dw") if dialect_named(dialect).output_qdq else ("se", "dw")
    return ("se",)


def dialect_named(dialect: str | bool) -> Dialect:
    """A dialect by name (:data:`DIALECTS`), or by whether the profile is a GPU's (tensorrt / ort-cpu)."""
    if isinstance(dialect, bool):
        return DIALECTS[TENSORRT if dialect else ORT_CPU]
    return DIALECTS[dialect]


def dialect_of(config: QuantConfig) -> Dialect:
    return DIALECTS[config.dialect]


def config_for(dialect: str | bool, method: str = "max", activations: str | None = None) -> QuantConfig:
    """The dialect's INT8 config: ``dialect`` a name (``RUNTIME_DIALECTS[profile.target_runtime]``)
    or whether the profile is a GPU's."""
    d = dialect_named(dialect)
    return QuantConfig(dialect=d.name, method=method,
                       activations=activations if activations in d.activations else d.activations[0],
                       fp16_rest=d.fp16_rest, reduce_range=d.reduce_range, shift_skewed=d.shift_skewed)


def weight_qmax(config: QuantConfig) -> int:
    """The largest INT8 weight magnitude the quantizer uses (ORT: 127 symmetric, 64 reduced)."""
    return 64 if config.reduce_range else 127


def op_types(config: QuantConfig) -> list[str]:
    return list(dialect_of(config).op_types)


def excluded_nodes(model: onnx.ModelProto, config: QuantConfig) -> list[str]:
    """Nodes kept out of INT8 by the EfficientNet-aware rules and the fallback list."""
    keep, nodes = set(config.keep_blocks), set(config.keep_nodes)
    out = []
    for n in model.graph.node:
        name = n.name
        if not config.quantize_se and ".se." in name:
            out.append(name)
        elif not config.quantize_stem and name.startswith("/stem"):
            out.append(name)
        elif not config.quantize_classifier and name.startswith("/classifier"):
            out.append(name)
        elif not config.quantize_depthwise and ".dw." in name:
            out.append(name)
        elif block_of(name) in keep or name in nodes:
            out.append(name)
    return out


def kept_nodes(model: onnx.ModelProto, config: QuantConfig) -> list[str]:
    """The nodes a repair keeps out of INT8 (kept blocks and single kept convs), beyond the rules."""
    blocks, nodes = set(config.keep_blocks), set(config.keep_nodes)
    return [n.name for n in model.graph.node if block_of(n.name) in blocks or n.name in nodes]


def calibration_tensors(model: onnx.ModelProto, config: QuantConfig) -> list[str]:
    """Every float activation ORT's quantizer may ask a range for (inputs/outputs of quantized op types)."""
    inits = {i.name for i in model.graph.initializer}
    types = set(op_types(config))
    names: list[str] = []
    for n in model.graph.node:
        if n.op_type in types:
            names += [t for t in [*n.input, *n.output] if t and t not in inits]
    return list(dict.fromkeys(names))


def quantize(model: onnx.ModelProto, ranges: Mapping[str, Any], config: QuantConfig,
             initializers: Mapping[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """Insert Q/DQ with ORT's quantizer using our ranges; write reconstructed integers and biases
    (``initializers``, see effdeploy.precision.reconstruct) into it; then FP16 for the rest (tensorrt)."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.calibrate import save_tensors_data

    from ..calibration.calibrators import ranges_to_tensors_data

    dialect = dialect_of(config)
    src = onnx.version_converter.convert_version(model, dialect.opset) if dialect.opset else model
    if config.shift_skewed and config.activations == "int8":
        from .transforms import shift_skewed_inputs

        src, ranges, _ = shift_skewed_inputs(src, ranges, weight_qmax(config), skip=excluded_nodes(src, config),
                                             fp16_scales=dialect.fp16_rest)  # the twin too: its biases are the deployed ones
    td = ranges_to_tensors_data(ranges, config.method, symmetric=config.activations == "int8")
    act = QuantType.QInt8 if config.activations == "int8" else QuantType.QUInt8
    extra: dict[str, Any] = {
        "ActivationSymmetric": config.activations == "int8",
        "WeightSymmetric": True,
    }
    if not dialect.output_qdq:  # Q/DQ only on inputs; biases stay float
        extra["OpTypesToExcludeOutputQuantization"] = op_types(config)
        extra["QuantizeBias"] = False
    with tempfile.TemporaryDirectory(prefix="effdeploy-q-") as tmp:
        src_path, out_path, cache = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx", Path(tmp) / "ranges.json"
        save_tensors_data(td, cache)
        stored = _quantized_path(src, cache.read_bytes(), config)
        out = _load_quantized(stored)
        if out is None:
            onnx.save(src, str(src_path))
            out = _quantize_static(src, src_path, out_path, cache, config, td, act, extra)
            _store_quantized(stored, out)
    if initializers:  # before the refit below, which requantizes the integers it finds
        # Values fitted on the all-INT8 graph; a conv a repair keeps in float keeps its own bias (a
        # shifted conv's fitted bias holds c x its quantized weights' sum: wrong for float weights).
        kept = set(kept_nodes(src, config))
        own = {t for n in out.graph.node if n.name in kept for t in n.input}
        out = apply_initializers(out, {k: v for k, v in initializers.items() if k not in own})
    if not dialect.output_qdq:
        drop_non_residual_add_qdq(out)
    if dialect.fused_swish:
        fuse_swish_after_dq(out)
    if config.fp16_rest:
        refit_tiny_weight_scales(out)
        out = to_fp16(out)
    return out


def _quantized_path(src: onnx.ModelProto, ranges_json: bytes, config: QuantConfig) -> Path:
    """Where ORT's quantizer output for (graph, ranges, config) is cached: the build repeats the same
    call (the repair's twins, a rebuild), and each costs seconds of ORT's Python."""
    import hashlib

    import onnxruntime

    from ..files import sha256_json, sha256_proto
    from ..cache import cache_folder

    key = sha256_json({"graph": sha256_proto(src),
                       "ranges": hashlib.sha256(ranges_json).hexdigest(), "config": config.to_dict(),
                       "onnxruntime": onnxruntime.__version__, "code": code_key()})
    return cache_folder("quantized") / f"{key[:40]}.onnx"


@functools.lru_cache(maxsize=1)  # the files do not change under a running build, which asks for every graph
def code_key() -> str:
    """The hash of the code that writes the dialects' graphs (this module and its transforms): part of
    every cache key for a quantized graph or a measurement of one, so an edit to a dialect re-makes them."""
    import hashlib

    here = Path(__file__)
    return hashlib.sha256(here.read_bytes() + (here.parent / "transforms.py").read_bytes()).hexdigest()


def _load_quantized(path: Path) -> onnx.ModelProto | None:
    from google.protobuf.message import DecodeError

    from ..cache import load

    data = load(path)
    try:
        return onnx.load_from_string(data) if data is not None else None
    except DecodeError:
        return None  # unreadable: quantize again


def _store_quantized(path: Path, model: onnx.ModelProto) -> None:
    from ..cache import store

    store(path, model.SerializeToString())


def _quantize_static(src: onnx.ModelProto, src_path: Path, out_path: Path, cache: Path, config: QuantConfig,
                     td: Any, act: Any, extra: dict[str, Any]) -> onnx.ModelProto:
    """ORT's quantize_static on the saved graph with our ranges (its calibration cache)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    import logging

    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # ORT's quantizer warns about pre-processing we did
    try:
        quantize_static(
            str(src_path), str(out_path), None, quant_format=QuantFormat.QDQ,
            op_types_to_quantize=op_types(config), per_channel=True, reduce_range=config.reduce_range,
            activation_type=act,
            weight_type=QuantType.QInt8, nodes_to_exclude=excluded_nodes(src, config),
            calibrate_method=td.calibration_method, calibration_cache_path=str(cache), extra_options=extra,
        )
    except Exception as e:
        raise EffdeployError(f"INT8 quantization failed: {first_line(e, 200)}") from None
    finally:
        logging.getLogger().setLevel(level)
    return onnx.load(str(out_path))


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output if o}


def _through_qdq(tensor: str, producers: Mapping[str, onnx.NodeProto]) -> str:
    """The tensor a DequantizeLinear(QuantizeLinear(t)) pair stands for (``tensor`` itself otherwise)."""
    dq = producers.get(tensor)
    if dq is not None and dq.op_type == "DequantizeLinear":
        q = producers.get(dq.input[0])
        if q is not None and q.op_type == "QuantizeLinear":
            return q.input[0]
    return tensor


def _ancestors(tensor: str, producers: Mapping[str, onnx.NodeProto]) -> set[str]:
    seen: set[str] = set()
    stack = [tensor]
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        node = producers.get(t)
        if node is not None:
            stack.extend(i for i in node.input if i)
    return seen


def drop_non_residual_add_qdq(model: onnx.ModelProto) -> int:
    """Remove the Q/DQ pair ORT's quantizer puts on the *non-residual* input of residual Adds.

    ORT quantizes both Add inputs; TensorRT fuses Conv + residual Add only when the conv output (the
    branch computed from the other input) has no Q/DQ: its placement guide shows the extra pair as the
    pattern that "forces the separation" (one more kernel per MBConv block). ModelOpt removes it the
    same way (``build_non_residual_input_map``: the input on the longer path to the common ancestor).
    Here: of Add(a, b), b is non-residual when it is produced by a Conv and a is among b's ancestors.
    Returns how many pairs were removed; the graph is edited in place.
    """
    g = model.graph
    producers = _producers(model)
    consumers: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    outputs = {o.name for o in g.output}
    dead: set[int] = set()
    removed = 0
    for node in g.node:
        if node.op_type != "Add" or len(node.input) != 2:
            continue
        real = [_through_qdq(i, producers) for i in node.input]
        for k in (0, 1):
            other = real[1 - k]
            src = producers.get(real[k])
            if real[k] == node.input[k] or src is None or src.op_type != "Conv":
                continue
            if other not in _ancestors(real[k], producers):
                continue
            dq = producers[node.input[k]]
            q = producers[dq.input[0]]
            node.input[k] = real[k]
            removed += 1
            consumers[dq.output[0]] -= 1
            if consumers[dq.output[0]] == 0 and dq.output[0] not in outputs:
                dead.add(id(dq))
                consumers[q.output[0]] -= 1
                if consumers[q.output[0]] == 0 and q.output[0] not in outputs:
                    dead.add(id(q))
            break
    if dead:
        keep = [n for n in g.node if id(n) not in dead]
        del g.node[:]
        g.node.extend(keep)
        used = {i for n in g.node for i in n.input}
        inits = [i for i in g.initializer if i.name in used]
        del g.initializer[:]
        g.initializer.extend(inits)
    return removed


def fuse_swish_after_dq(model: onnx.ModelProto) -> int:
    """Write each swish ``Mul(x, Sigmoid(x))`` whose ``x`` is a DequantizeLinear output as one
    ``com.microsoft.QuickGelu(x, alpha=1)``: the same function, x * sigmoid(x).

    ONNX Runtime fuses Sigmoid + Mul into QuickGelu itself, but not here: its QDQ handling first gives
    each consumer of a DequantizeLinear its own copy, so Sigmoid and Mul no longer share an input. In
    the ort-cpu dialect that is the swish after every INT8 conv of the B family (B0: its 15 expand
    convs and its head conv, and the stem where it is INT8): two DequantizeLinear, a Sigmoid and a
    Mul where one DequantizeLinear and one QuickGelu would do (docs/int8.md, *Swish after
    DequantizeLinear*). OpenVINO reads QuickGelu too. Returns how many
    were fused; the graph is edited in place, tensor names kept.
    """
    from onnx import helper

    g = model.graph
    producers = _producers(model)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in g.output}
    fused: dict[int, onnx.NodeProto] = {}  # id(Mul) -> its QuickGelu
    dead: set[int] = set()  # id(Sigmoid)
    gone: set[str] = set()  # the Sigmoids' outputs
    for sig in g.node:
        x = sig.input[0] if sig.op_type == "Sigmoid" and sig.input else ""
        dq = producers.get(x)
        users = consumers.get(sig.output[0], [])
        if dq is None or dq.op_type != "DequantizeLinear" or sig.output[0] in outputs or len(users) != 1:
            continue
        mul = users[0]
        if mul.op_type != "Mul" or sorted(mul.input) != sorted((x, sig.output[0])):
            continue
        fused[id(mul)] = helper.make_node("QuickGelu", [x], [mul.output[0]], name=f"{mul.name or sig.name}/swish",
                                          domain="com.microsoft", alpha=1.0)
        dead.add(id(sig))
        gone.add(sig.output[0])
    if not fused:
        return 0
    nodes = [fused.get(id(n), n) for n in g.node if id(n) not in dead]
    del g.node[:]
    g.node.extend(nodes)
    kept_info = [v for v in g.value_info if v.name not in gone]
    del g.value_info[:]
    g.value_info.extend(kept_info)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return len(fused)


#: Smallest positive value that survives onnxconverter-common's FP16 conversion unchanged: it clamps
#: magnitudes below 1e-7 to 1e-7 (``min_positive_val``), and 2**-23 is the FP16 subnormal just above.
FP16_SCALE_FLOOR = float(np.float16(2.0**-23))
FP16_MIN_NORMAL = float(np.finfo(np.float16).tiny)


def refit_tiny_weight_scales(model: onnx.ModelProto) -> int:
    """Keep INT8 weights exact across the FP16 conversion where their scale is below FP16's normal range.

    A per-channel weight scale below ~6.1e-5 becomes an FP16 subnormal (few significant bits) or is
    clamped to 1e-7 by the converter, so ``q * scale`` changes. For those channels the scale is set to
    a value FP16 holds exactly (the FP16 value at or above s, at least 2**-23) and the INT8 weights are requantized
    against it, so the FP16 graph dequantizes what the FP32 Q/DQ graph did (within half a step).
    Returns the number of channels refitted; edits initializers in place.
    """

    inits = {i.name: i for i in model.graph.initializer}
    done: set[str] = set()
    changed = 0
    for n in model.graph.node:
        if n.op_type != "DequantizeLinear" or len(n.input) < 2 or n.input[1] in done:
            continue
        w_init, s_init = inits.get(n.input[0]), inits.get(n.input[1])
        if w_init is None or s_init is None or s_init.data_type != onnx.TensorProto.FLOAT:
            continue
        if w_init.data_type != onnx.TensorProto.INT8:
            continue
        s = numpy_helper.to_array(s_init).astype(np.float32)
        tiny = (s > 0) & (s < FP16_MIN_NORMAL)
        if not tiny.any():
            continue
        q = numpy_helper.to_array(w_init).astype(np.float32)
        axis = next((a.i for a in n.attribute if a.name == "axis"), 1) if s.ndim else 0
        s_new = s.copy()
        up = s[tiny].astype(np.float16)  # the FP16 value at or above s, so q * s / s_new stays within +-127
        up = np.where(up.astype(np.float32) < s[tiny], np.nextafter(up, np.float16(np.inf)), up)
        s_new[tiny] = np.maximum(up.astype(np.float32), FP16_SCALE_FLOOR)
        shape = [1] * q.ndim
        if s.ndim:
            shape[axis] = -1
        ratio = np.ones_like(s)
        ratio[tiny] = s[tiny] / s_new[tiny]
        ratio = ratio.reshape(shape) if s.ndim else ratio
        q_new = np.clip(np.round(q * ratio), -127, 127).astype(np.int8)
        w_init.CopyFrom(numpy_helper.from_array(q_new, w_init.name))
        s_init.CopyFrom(numpy_helper.from_array(s_new.astype(np.float32), s_init.name))
        done.add(n.input[1])
        changed += int(tiny.sum())
    return changed


def to_fp16(model: onnx.ModelProto, keep_fp32_ops: Sequence[str] = ()) -> onnx.ModelProto:
    """FP16 everywhere but the graph's FP32 inputs/outputs (onnxconverter-common)."""
    from onnxconverter_common import float16

    if max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0) < GPU_OPSET:
        has_qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
        if has_qdq:
            model = onnx.version_converter.convert_version(model, GPU_OPSET)
    block = list(float16.DEFAULT_OP_BLOCK_LIST) + list(keep_fp32_ops)
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # one warning per weight clamped below FP16's range
            out = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=block)
    except Exception as e:
        raise EffdeployError(f"FP16 conversion failed: {first_line(e, 200)}") from None
    check_typed(out)
    return out


def check_typed(model: onnx.ModelProto) -> None:
    """The full ONNX check (strict shape and type inference): an FP16/FP32 mismatch left in the graph
    fails here, not first inside a strongly typed TensorRT build on the device."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # ValidationError / InferenceError
        first = first_line(e, 240)
        raise EffdeployError(f"the FP16 graph is not consistently typed ({first}); please report it") from None


def needs_unoptimized_ort(model: onnx.ModelProto) -> bool:
    """ONNX Runtime's CPU graph optimiser (1.32) mis-rewrites FP16 DequantizeLinear graphs
    (Lite0: 0 % top-1 optimised, 97 % unoptimised), so those are verified as written. The culprit
    is its WeightBiasQuantization transform (see effdeploy.backends.ort_safety)."""
    fp16_dq = False
    inits = {i.name: i for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear" and len(n.input) > 1 and n.input[1] in inits:
            if inits[n.input[1]].data_type == onnx.TensorProto.FLOAT16:
                fp16_dq = True
                break
    return fp16_dq


def precision_summary(model: onnx.ModelProto) -> dict[str, Any]:
    """How much of the graph runs in which precision (what a reviewer wants to see)."""
    from collections import Counter

    inits = {i.name: i for i in model.graph.initializer}
    quantized_inputs = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    counts: Counter[str] = Counter()
    for n in model.graph.node:
        if n.op_type in ("Conv", "Gemm", "MatMul"):
            counts["int8" if n.input and n.input[0] in quantized_inputs else "float"] += 1
    fp16_inits = sum(1 for i in inits.values() if i.data_type == onnx.TensorProto.FLOAT16)
    from ..backends.ort_safety import float_convs_between_qdq

    return {
        "float_convs_between_qdq": float_convs_between_qdq(model),
        "shifted_inputs": sum(1 for n in model.graph.node if n.op_type == "Sub" and n.name.endswith("_shift")),
        "conv_gemm_int8": counts["int8"],
        "conv_gemm_float": counts["float"],
        "quantize_nodes": sum(1 for n in model.graph.node if n.op_type == "QuantizeLinear"),
        "fp16_initializers": fp16_inits,
    }


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
