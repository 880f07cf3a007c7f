"""Frame-in graphs: the manifest's preprocessing as ONNX ops in front of the model.

A camera app on a Jetson has a weak CPU and a strong GPU; with a frame-in graph it hands the raw
uint8 frame (NHWC, BGR as OpenCV delivers it, or RGB) to the engine and gets logits back. The graph
is :func:`effdeploy.preprocess.preprocess` written as ops, for one frame size, from the same plan
(:func:`effdeploy.preprocess.resample_plan`):

* ``Cast`` to float32 first (TensorRT takes uint8 only as a network input converted by a cast),
  then ``Slice`` to the source rows and columns the resampling reads;
* the integer box pre-reduction as 2x2 ``AveragePool`` steps, each rounded half up with
  ``Floor(x + 0.5)`` as OpenCV's integer-factor ``INTER_AREA`` stores it (``(sum + 2) >> 2``);
* the two antialiased passes as ``MatMul`` with the very weight matrices ``preprocess()`` uses
  (its banded blocks, regrouped into ``block`` output rows; grouping adds only exact zeros), in
  Pillow's pass order, each followed by ``Round`` and ``Clip(0, 255)`` where the definition rounds;
* channel order to RGB (a ``Slice`` with step -1 for BGR), then ``(x - mean) * (1 / std)`` with the
  float32 constants ``preprocess()`` uses, then the model.

The preprocessing part is FP32 and never quantized; only ops TensorRT's ONNX parser supports.
Verification (:func:`verify_frame_graph`) compares the graph with ``preprocess()`` pixel by pixel
and the logits with ``preprocess()`` + model on the verification images scaled to the frame size.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .backends import infer_in_batches_of
from .backends.onnxrt import OnnxRuntimeRunner
from .errors import EffdeployError
from .spec import Preprocessing

FRAME_FORMATS = ("bgr", "rgb")
FRAME_INPUT = "frame"
PIXELS_OUTPUT = "pixels"  # RGB 0..255 before normalisation (the preprocessing-only graph's check output)
PREPROCESSED_OUTPUT = "preprocessed"
# Verification budget (issue 15): every pixel within one level of preprocess(), and the logits'
# top-1 the same as preprocess() + model on at least 99.5 % of the frames.
MAX_PIXEL_LEVELS = 1.0
MIN_TOP1_AGREEMENT = 0.995
VERIFY_FRAMES = 200  # at most this many verification images per frame size
# Output rows per MatMul of a resampling pass. A GPU runs one dense MatMul per pass fastest
# (fewest kernels); a CPU wastes most of a dense pass on zeros, so CPU profiles regroup the band.
GPU_BLOCK = 0  # 0: one dense MatMul per pass
CPU_BLOCK = 32


@dataclass(frozen=True)
class FrameInput:
    """A frame a bundle's frame-in graph accepts: size and channel order."""

    width: int
    height: int
    channel_order: str = "bgr"

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"

    def __str__(self) -> str:
        return f"{self.size} {self.channel_order}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_frames(text: str | None, channel_order: str = "bgr") -> tuple[FrameInput, ...]:
    """``"1920x1080,1280x720"`` -> frame inputs; one line naming the flag when malformed."""
    if not text:
        return ()
    fmt = str(channel_order).lower()
    if fmt not in FRAME_FORMATS:
        raise EffdeployError(f"--frame-format must be bgr or rgb (got {channel_order!r})")
    out: list[FrameInput] = []
    for part in (p.strip().lower() for p in str(text).split(",")):
        try:
            w, h = (int(v) for v in part.split("x"))
        except ValueError:
            raise EffdeployError(f"--frame takes WIDTHxHEIGHT sizes separated by commas, e.g. --frame "
                                 f"1920x1080,1280x720 (got {part!r})") from None
        if w < 1 or h < 1 or w > 16384 or h > 16384:
            raise EffdeployError(f"--frame sizes must be 1..16384 pixels a side (got {part!r})")
        f = FrameInput(w, h, fmt)
        if f not in out:
            out.append(f)
    return tuple(out)


def check_frame_spec(spec: Preprocessing) -> None:
    """Refuse a preprocessing the graph cannot express (no weight windows for ``nearest``)."""
    from .preprocess import _FILTERS

    if spec.interpolation not in _FILTERS:
        raise EffdeployError(f"--frame needs a resampling filter with weights ({', '.join(sorted(_FILTERS))}); "
                             f"the preprocessing uses {spec.interpolation!r}: drop --frame or pass --interpolation bicubic")


def frame_graph_name(frame: FrameInput) -> str:
    return f"model-frame-{frame.size}.onnx"


# --- the graph --------------------------------------------------------------------------------


def _dense(blocks: Sequence[tuple[int, int, int, int, np.ndarray]], out_size: int, span: int,
           transposed: bool) -> np.ndarray:
    """The banded blocks of preprocess's plan as one [out, in] float32 matrix (exact copies)."""
    w = np.zeros((out_size, span), dtype=np.float32)
    for o0, o1, i0, i1, blk in blocks:
        w[o0:o1, i0:i1] = blk.T if transposed else blk
    return w


def _groups(w: np.ndarray, block: int) -> list[tuple[int, int, int, int]]:
    """(o0, o1, i0, i1) per group of ``block`` output rows: the span of their non-zero weights."""
    out_size = w.shape[0]
    step = out_size if block <= 0 else block
    groups = []
    for o0 in range(0, out_size, step):
        o1 = min(o0 + step, out_size)
        cols = np.flatnonzero(np.any(w[o0:o1] != 0.0, axis=0))
        i0, i1 = (int(cols[0]), int(cols[-1]) + 1) if len(cols) else (0, 1)
        groups.append((o0, o1, i0, i1))
    return groups


class _Graph:
    """A few helpers over onnx.helper so the builder below reads as the definition does."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._n = 0

    def name(self, base: str) -> str:
        self._n += 1
        return f"frame_pre/{base}_{self._n}"

    def const(self, base: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        n = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value), n))
        return n

    def op(self, op_type: str, inputs: Sequence[str], base: str | None = None, out: str | None = None,
           **attrs: Any) -> str:
        from onnx import helper

        o = out or self.name(base or op_type)
        self.nodes.append(helper.make_node(op_type, list(inputs), [o], name=self.name(op_type), **attrs))
        return o

    def slice(self, x: str, starts: Sequence[int], ends: Sequence[int], axes: Sequence[int],
              steps: Sequence[int] | None = None) -> str:
        args = [x, self.const("starts", np.asarray(starts, np.int64)), self.const("ends", np.asarray(ends, np.int64)),
                self.const("axes", np.asarray(axes, np.int64))]
        if steps is not None:
            args.append(self.const("steps", np.asarray(steps, np.int64)))
        return self.op("Slice", args)

    def round_clip(self, x: str) -> str:
        lo, hi = self.const("zero", np.float32(0.0)), self.const("max255", np.float32(255.0))
        return self.op("Clip", [self.op("Round", [x]), lo, hi])


def _pass(g: _Graph, x: str, w: np.ndarray, block: int, vertical: bool) -> str:
    """One resampling pass: ``W @ x`` over rows (vertical) or ``x @ W.T`` over columns."""
    axis = 2 if vertical else 3
    parts = []
    groups = _groups(w, block)
    for o0, o1, i0, i1 in groups:
        src = x if (i0 == 0 and i1 == w.shape[1]) else g.slice(x, [i0], [i1], [axis])
        if vertical:
            parts.append(g.op("MatMul", [g.const("rows_w", w[o0:o1, i0:i1]), src]))
        else:
            parts.append(g.op("MatMul", [src, g.const("cols_w", np.ascontiguousarray(w[o0:o1, i0:i1].T))]))
    return parts[0] if len(parts) == 1 else g.op("Concat", parts, axis=axis)


def preprocessing_model(frame: FrameInput, spec: Preprocessing, batch: int | str = "N", block: int = CPU_BLOCK,
                        opset: int = 18, ir_version: int | None = None, pixels_output: bool = True,
                        cast_first: bool = False) -> Any:
    """The preprocessing alone as an ONNX model: ``frame`` uint8 [N, H, W, 3] -> ``preprocessed``
    float32 [N, 3, R, R] (and ``pixels``, RGB 0..255, for the parity check)."""
    import onnx
    from onnx import TensorProto, helper

    from .preprocess import resample_plan

    check_frame_spec(spec)
    plan = resample_plan(frame.height, frame.width, spec)
    k, res = plan.reduce, spec.resolution
    rows, cols = plan.rows, plan.cols
    g = _Graph()
    # The source rows/columns the passes read, in frame coordinates (a box average of k x k blocks
    # aligned to the region's origin, so the reduced image's lo:hi starts k * lo into the region).
    y0, _, x0, _ = plan.region
    starts, ends = [y0 + k * rows.lo, x0 + k * cols.lo], [y0 + k * rows.hi, x0 + k * cols.hi]
    if cast_first:  # TensorRT: a uint8 network input feeds a cast before any other layer
        x = g.slice(g.op("Cast", [FRAME_INPUT], to=TensorProto.FLOAT), starts, ends, [1, 2])
        x = g.op("Transpose", [x], perm=[0, 3, 1, 2])
    else:  # ONNX Runtime: crop and transpose the uint8 pixels that are read, then convert them
        x = g.op("Transpose", [g.slice(FRAME_INPUT, starts, ends, [1, 2])], perm=[0, 3, 1, 2])
        x = g.op("Cast", [x], to=TensorProto.FLOAT)
    half = g.const("half", np.float32(0.5))
    for _ in range(int(round(math.log2(k)))):
        x = g.op("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2])
        x = g.op("Floor", [g.op("Add", [x, half])])
    wr = _dense(rows.blocks, res, rows.hi - rows.lo, transposed=False)
    wc = _dense(cols.blocks, res, cols.hi - cols.lo, transposed=True)
    if plan.vertical_first:
        x = _pass(g, g.round_clip(_pass(g, x, wr, block, vertical=True)), wc, block, vertical=False)
    else:
        x = _pass(g, g.round_clip(_pass(g, x, wc, block, vertical=False)), wr, block, vertical=True)
    x = g.round_clip(x)
    if frame.channel_order == "bgr":
        x = g.slice(x, [2], [-4], [1], [-1])  # channels 2, 1, 0
    pixels = g.op("Identity", [x], out=PIXELS_OUTPUT) if pixels_output else x
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    inv = np.asarray([np.float32(1.0 / float(s)) for s in spec.std], dtype=np.float32).reshape(1, 3, 1, 1)
    y = g.op("Sub", [pixels, g.const("mean", mean)])
    g.op("Mul", [y, g.const("inv_std", inv)], out=PREPROCESSED_OUTPUT)
    inputs = [helper.make_tensor_value_info(FRAME_INPUT, TensorProto.UINT8, [batch, frame.height, frame.width, 3])]
    outputs = [helper.make_tensor_value_info(PREPROCESSED_OUTPUT, TensorProto.FLOAT, [batch, 3, res, res])]
    if pixels_output:
        outputs.append(helper.make_tensor_value_info(PIXELS_OUTPUT, TensorProto.FLOAT, [batch, 3, res, res]))
    graph = helper.make_graph(g.nodes, f"frame_preprocessing_{frame.size}", inputs, outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    if ir_version is not None:
        model.ir_version = ir_version
    onnx.checker.check_model(model)
    return model


def _model_io(model: Any) -> tuple[Any, str]:
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise EffdeployError(f"the model has {len(inputs)} inputs; a frame-in graph needs one NCHW image input")
    return inputs[0], model.graph.output[0].name


def frame_model(model: Any, frame: FrameInput, spec: Preprocessing, block: int = CPU_BLOCK,
                cast_first: bool = False) -> Any:
    """The frame-in graph: the preprocessing of :func:`preprocessing_model` feeding ``model``."""
    import onnx
    from onnx import compose

    inp, _ = _model_io(model)
    dims = inp.type.tensor_type.shape.dim
    batch: int | str = dims[0].dim_value if dims[0].HasField("dim_value") and dims[0].dim_value > 0 else (
        dims[0].dim_param or "N")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 18)
    pre = preprocessing_model(frame, spec, batch=batch, block=block, opset=opset, ir_version=model.ir_version,
                              pixels_output=False, cast_first=cast_first)
    # The preprocessing's opset must be the model's (merge_models requires equal imports).
    pre.opset_import.extend([o for o in model.opset_import if o.domain not in ("", "ai.onnx")])
    merged = compose.merge_models(pre, model, io_map=[(PREPROCESSED_OUTPUT, inp.name)])
    merged.graph.name = f"{model.graph.name or 'model'}_frame_{frame.size}"
    onnx.checker.check_model(merged)
    return merged


# --- running a frame graph with ONNX Runtime -------------------------------------------------------


class FrameSession(OnnxRuntimeRunner):
    """A frame-in ONNX graph on ONNX Runtime: ``infer(frames NHWC uint8) -> logits``, the frames
    handed over as they are (the runner's float cast would be wrong for them)."""

    def infer(self, frames: np.ndarray, outputs: Sequence[str] | None = None) -> Any:  # type: ignore[override]
        out = self.session.run(list(outputs or self.output_names[:1]), {self.input_name: frames})
        return out[0] if outputs is None else out


# --- verification -----------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameVerification:
    """The frame graph against ``preprocess()`` (+ model) on real frames of its size."""

    images: int  # frames compared
    source: str
    pixel_max_abs: float  # 0..255 levels, before normalisation
    pixel_mean_abs: float
    pixels_off: int  # pixel values (of all channels) that differ at all
    top1_agreement: float
    logits_max_abs: float
    seconds: float
    max_pixel_levels: float = MAX_PIXEL_LEVELS
    min_top1_agreement: float = MIN_TOP1_AGREEMENT

    @property
    def misses(self) -> list[str]:
        out = []
        if self.pixel_max_abs > self.max_pixel_levels:
            out.append(f"pixels differ from preprocess() by up to {self.pixel_max_abs:g} levels "
                       f"(budget {self.max_pixel_levels:g})")
        if self.top1_agreement < self.min_top1_agreement:
            out.append(f"top-1 agreement with preprocess() + model {100 * self.top1_agreement:.2f} % "
                       f"(budget {100 * self.min_top1_agreement:.1f} %)")
        return out

    @property
    def passed(self) -> bool:
        return not self.misses

    @property
    def status(self) -> str:
        """verified / checked / failed-parity, by the bundle gate's rule: with fewer frames than
        1 / (1 - budget) (200 for 99.5 %) one flipped frame would decide it, so a pass is only checked."""
        from .verify import Budget, gate_status, verify_images_needed

        enough = self.images >= verify_images_needed(Budget(top1_agreement=self.min_top1_agreement))
        return gate_status(self.misses, None if enough else "too few frames")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed, "misses": self.misses, "status": self.status}


def scale_to_frame(image: np.ndarray, frame: FrameInput) -> np.ndarray:
    """An RGB image as a camera frame of ``frame``'s size: scaled (bicubic) to cover it, center-cropped,
    in ``frame``'s channel order. OpenCV, not Pillow: this only makes test content, and Pillow takes
    most of a frame check's time to upscale to 1080p."""
    import cv2

    h, w = image.shape[:2]
    s = max(frame.width / w, frame.height / h)
    nw, nh = max(frame.width, round(w * s)), max(frame.height, round(h * s))
    big = cv2.resize(np.ascontiguousarray(image), (nw, nh), interpolation=cv2.INTER_CUBIC)
    left, top = (nw - frame.width) // 2, (nh - frame.height) // 2
    out = big[top:top + frame.height, left:left + frame.width]
    return np.ascontiguousarray(out[:, :, ::-1] if frame.channel_order == "bgr" else out)


def verification_images(ids: Sequence[str], limit: int = VERIFY_FRAMES) -> tuple[list[np.ndarray], str]:
    """The build's images that are image files (RGB), else the built-in images."""
    from .datasets import builtin_image_paths
    from .preprocess import load_image

    paths = list(dict.fromkeys(Path(i) for i in ids if Path(i).is_file()))[:limit]
    source = "the build's images"
    if not paths:
        paths, source = builtin_image_paths()[:limit], "the built-in images"
    images = []
    for p in paths:
        try:
            images.append(load_image(p))
        except EffdeployError:
            continue
    if not images:
        raise EffdeployError("no readable images to verify the frame-in graph on; pass --verify-data DIR")
    return images, source


def frame_views(images: Sequence[np.ndarray], count: int = VERIFY_FRAMES, seed: int = 0) -> list[np.ndarray]:
    """``count`` real views: each image whole, then seeded crops (half to all of each side) of them
    in turn. The frame graph chooses nothing on images, so any real content checks it fairly, and
    crops of the same photo meet the resampling at other scales and phases."""
    rng = np.random.default_rng(seed)
    views = list(images[:count])
    i = 0
    while len(views) < count:
        img = images[i % len(images)]
        i += 1
        h, w = img.shape[:2]
        ch, cw = max(1, int(h * rng.uniform(0.5, 1.0))), max(1, int(w * rng.uniform(0.5, 1.0)))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        views.append(img[y:y + ch, x:x + cw])
    return views


def verify_frame_graph(frame: FrameInput, spec: Preprocessing, pre: Any, graph: Any, model: Any,
                       images: Sequence[np.ndarray], source: str, optimize: bool = True) -> FrameVerification:
    """Pixels of ``pre`` (the preprocessing-only graph) vs ``preprocess()``, and logits of ``graph``
    (the frame-in graph) vs ``model`` on ``preprocess()``'s tensor, one frame at a time."""
    from .preprocess import preprocess, resize_crop
    from .backends.onnxrt import OnnxRuntimeRunner

    t0 = time.perf_counter()
    pre_s = FrameSession(pre)
    graph_s = FrameSession(graph, optimize=optimize)
    ref = OnnxRuntimeRunner(model, optimize=optimize)
    worst, total, off, count, agree, logit_worst = 0.0, 0.0, 0, 0, 0, 0.0
    bgr = frame.channel_order == "bgr"
    try:
        for img in images:
            f = scale_to_frame(img, frame)
            want = resize_crop(f, spec).astype(np.float32)  # frame channel order, HWC
            want = want[:, :, ::-1] if bgr else want
            (got,) = pre_s.infer(f[None], outputs=[PIXELS_OUTPUT])
            d = np.abs(got[0].transpose(1, 2, 0) - want)
            worst, total, off, count = max(worst, float(d.max())), total + float(d.sum()), off + int((d > 0).sum()), count + d.size
            a = ref.infer(preprocess(f, spec, bgr=bgr))
            b = np.asarray(graph_s.infer(f[None]), dtype=np.float32)
            agree += int(np.argmax(a[0]) == np.argmax(b[0]))
            logit_worst = max(logit_worst, float(np.abs(a - b).max()))
    finally:
        pre_s.close()
        graph_s.close()
        ref.close()
    return FrameVerification(images=len(images), source=source, pixel_max_abs=worst, pixel_mean_abs=total / count,
                             pixels_off=off, top1_agreement=agree / len(images), logits_max_abs=logit_worst,
                             seconds=time.perf_counter() - t0)


# --- the build stage --------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameGraphRecord:
    """One frame-in graph as the manifest lists it (``manifest.frames``)."""

    file: str
    frame: FrameInput
    input: Mapping[str, Any]
    block: int  # output rows per MatMul (0: one dense MatMul per pass)
    cast_first: bool  # the whole frame is cast to float32 before the crop (TensorRT) or only the crop (CPU)
    box_reduce: int  # k of the k x k box pre-reduction (1: none)
    nodes: int  # preprocessing nodes in front of the model
    ops: Mapping[str, int]
    verification: FrameVerification
    verified: bool = field(default=False)

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, **self.frame.to_dict(), "input": dict(self.input), "block": self.block,
                "cast_first": self.cast_first,
                "box_reduce": self.box_reduce, "preprocessing_nodes": self.nodes, "preprocessing_ops": dict(self.ops),
                "verification": self.verification.to_dict(), "verified": self.verified}


def add_frame_graphs(directory: Path, model: Any, spec: Preprocessing, frames: Sequence[FrameInput],
                     verify_ids: Sequence[str], optimize: bool, gpu: bool, quiet: bool = False) -> tuple[dict[str, Any], ...]:
    """Write and verify one frame-in graph per frame size into a bundle's staging ``directory``;
    the manifest entries (the files are hashed with the rest of the bundle)."""
    import collections

    import onnx

    from .preprocess import resample_plan
    from .report import info

    check_frame_spec(spec)
    block = GPU_BLOCK if gpu else CPU_BLOCK
    photos, source = verification_images(verify_ids)
    images = frame_views(photos)
    source = f"{len(photos)} of {source}" + (" (whole, then cropped)" if len(images) > len(photos) else "")
    records = []
    for frame in frames:
        graph = frame_model(model, frame, spec, block=block, cast_first=gpu)
        pre = preprocessing_model(frame, spec, block=block, cast_first=gpu)
        check = verify_frame_graph(frame, spec, pre, graph, model, images, source, optimize=optimize)
        name = frame_graph_name(frame)
        onnx.save(graph, str(directory / name))
        pre_nodes = [n for n in graph.graph.node if n.name.startswith("frame_pre/")]
        inp = graph.graph.input[0]
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in inp.type.tensor_type.shape.dim]
        rec = FrameGraphRecord(
            file=name, frame=frame, input={"name": inp.name, "dtype": "uint8", "shape": dims, "layout": "NHWC"},
            block=block, cast_first=gpu, box_reduce=resample_plan(frame.height, frame.width, spec).reduce, nodes=len(pre_nodes),
            ops=dict(collections.Counter(n.op_type for n in pre_nodes)), verification=check,
            verified=check.status == "verified")
        info(f"      frame-in graph {frame}: {frame_line(rec.to_dict())}", quiet)
        if not check.passed:
            info(f"warning: frame-in graph {frame} missed its budget ({'; '.join(check.misses)}); the runtime "
                 "will not use it (CPU preprocessing instead)", quiet)
        records.append(rec.to_dict())
    return tuple(records)


def usable_frame_graph(entry: Mapping[str, Any]) -> bool:
    """A frame graph the runtime and compile use: its budget held (verified, or checked on too few frames)."""
    return bool((entry.get("verification") or {}).get("passed", entry.get("verified")))


def frame_line(entry: Mapping[str, Any]) -> str:
    """'pixels max 1 / mean 0.0004 levels vs preprocess(), top-1 agreement 100.00 % of 4 images'."""
    v = entry.get("verification") or {}
    state = v.get("status") or ("verified" if entry.get("verified") else "NOT verified")
    return (f"{state}: pixels max {v.get('pixel_max_abs', float('nan')):g} / mean {v.get('pixel_mean_abs', float('nan')):.4f} "
            f"levels vs preprocess(), top-1 agreement {100 * v.get('top1_agreement', 0.0):.2f} % of "
            f"{v.get('images', 0)} frames ({v.get('source', 'real images')})")


# --- the runtime side -------------------------------------------------------------------------

PATH_FRAME = "frame-in"
PATH_CPU = "cpu"


@dataclass
class _Route:
    frame: FrameInput
    backend: Any  # FrameSession or a TensorRTRunner of a frame engine
    file: str

    def infer(self, frames: np.ndarray) -> np.ndarray:
        return infer_in_batches_of(self.backend, frames)


class FrameRouter:
    """The frame-in graphs (or engines) a Runner hands raw frames to, keyed by (height, width, order).

    Frames of another size or channel order take the CPU path (``preprocess()`` + the model);
    frames that are not HxWx3 uint8 are refused by :func:`effdeploy.preprocess.check_frame`.
    """

    def __init__(self, routes: Sequence[_Route] = ()) -> None:
        self._routes = {(r.frame.height, r.frame.width, r.frame.channel_order): r for r in routes}

    @property
    def inputs(self) -> tuple[FrameInput, ...]:
        return tuple(r.frame for r in self._routes.values())

    def key(self, frame: np.ndarray, bgr: bool) -> tuple[int, int, str] | None:
        """The route for one frame (checked first), or None for the CPU path."""
        from .preprocess import check_frame

        check_frame(frame)
        k = (int(frame.shape[0]), int(frame.shape[1]), "bgr" if bgr else "rgb")
        return k if k in self._routes else None

    def route(self, key: tuple[int, int, str]) -> _Route:
        return self._routes[key]

    def describe(self, frame: np.ndarray, bgr: bool) -> str:
        """Which path a frame takes, in words (the camera example prints it)."""
        k = self.key(frame, bgr)
        if k is not None:
            r = self._routes[k]
            return f"{PATH_FRAME}: {r.file} takes {r.frame} frames ({r.backend.name}); preprocessing inside the graph"
        got = f"{frame.shape[1]}x{frame.shape[0]} {'bgr' if bgr else 'rgb'}"
        takes = ", ".join(str(f) for f in self.inputs) or "no frame-in graphs (build with --frame WxH)"
        return f"{PATH_CPU}: preprocess() on the CPU, then the model (frames are {got}; the artifact takes {takes})"

    def close(self) -> None:
        for r in self._routes.values():
            r.backend.close()
        self._routes = {}


def open_frame_routes(art: Any, threads: int | None = None, spin: bool = True) -> FrameRouter:
    """The verified frame-in graphs of a bundle (ONNX Runtime) or the frame engines beside an
    ``engine.plan`` (TensorRT); an empty router for anything else."""
    kind = getattr(art, "kind", None)
    if kind == "bundle" and art.manifest is not None:
        from .backends.onnxrt import manifest_optimize

        routes = []
        for entry in getattr(art.manifest, "frames", ()) or ():
            path = Path(art.path) / str(entry.get("file", ""))
            if not usable_frame_graph(entry) or not path.is_file():
                continue
            frame = FrameInput(int(entry["width"]), int(entry["height"]), str(entry.get("channel_order", "bgr")))
            session = FrameSession(path, threads=threads, optimize=manifest_optimize(art.manifest),
                                   session_config={"session.intra_op.allow_spinning": "1" if spin else "0"})
            routes.append(_Route(frame, session, path.name))
        return FrameRouter(routes)
    if kind == "engine":
        return FrameRouter([_Route(f, _open_trt(p), p.name) for f, p in frame_engines_beside(Path(art.model_path))])
    return FrameRouter()


def _open_trt(path: Path) -> Any:
    from .backends.tensorrt.runner import TensorRTRunner

    return TensorRTRunner.open(path)


# --- frame engines (effdeploy compile) ------------------------------------------------------------


def frame_engine_path(plan_path: str | Path, frame: FrameInput) -> Path:
    """``engine.plan`` -> ``engine-frame-1920x1080.plan`` beside it (its manifest: ``.json``)."""
    p = Path(plan_path)
    return p.with_name(f"{p.stem}-frame-{frame.size}{p.suffix or '.plan'}")


def frame_engines_beside(plan_path: Path) -> list[tuple[FrameInput, Path]]:
    """The frame engines ``effdeploy compile`` wrote beside ``plan_path`` (engine.json ``frame``)."""
    from .backends.tensorrt.manifest import load_engine_manifest

    out = []
    for p in sorted(plan_path.parent.glob(f"{plan_path.stem}-frame-*{plan_path.suffix}")):
        try:
            frame = dict(getattr(load_engine_manifest(p, verify=False), "frame", None) or {})
        except EffdeployError:
            continue
        if frame:
            out.append((FrameInput(int(frame["width"]), int(frame["height"]), str(frame["channel_order"])), p))
    return out


def frame_compile_plans(bundle: Any, plan: Any) -> list[tuple[FrameInput, Any]]:
    """One :class:`effdeploy.backends.tensorrt.plan.CompilePlan` per verified frame-in graph of ``bundle``: the main
    plan's settings, the frame graph's ONNX and its NHWC uint8 input, written beside the main plan.
    Always on the GPU: DLA takes neither uint8 frames nor the resampling MatMuls."""
    from .bundle import sha256_file

    out = []
    for entry in getattr(bundle.manifest, "frames", ()) or ():
        if not usable_frame_graph(entry):
            continue
        frame = FrameInput(int(entry["width"]), int(entry["height"]), str(entry.get("channel_order", "bgr")))
        onnx_path = Path(bundle.path) / str(entry["file"])
        sha = (bundle.manifest.artifacts.get(onnx_path.name) or {}).get("sha256") or sha256_file(onnx_path)
        out.append((frame, plan.with_(
            onnx_path=str(onnx_path.resolve()), plan_path=str(frame_engine_path(plan.plan_path, frame)),
            input_name=str((entry.get("input") or {}).get("name", FRAME_INPUT)),
            input_chw=(frame.height, frame.width, 3), onnx_sha256=str(sha), dla_core=None, gpu_fallback=False,
            tf32=False)))
    return out
