"""Frame-in graphs: the manifest's preprocessing as ONNX ops in front of the model.

A camera app on a Jetson has a weak CPU and a strong GPU; with a frame-in graph it hands the raw
uint8 frame (NHWC, BGR as OpenCV delivers it, or RGB) to the engine and gets logits back. The graph
is :func:`effdeploy.data.preprocess.preprocess` written as ops, for one frame size, from the same plan
(:func:`effdeploy.data.preprocess.resample_plan`):

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
from typing import Any, Sequence

import numpy as np

from ..data.frames import FRAME_INPUT, FrameInput, PIXELS_OUTPUT, PREPROCESSED_OUTPUT, check_frame_spec
from ..data.preprocess import Preprocessing
from ..errors import EffdeployError


# Output rows per MatMul of a resampling pass. A GPU runs one dense MatMul per pass fastest
# (fewest kernels); a CPU wastes most of a dense pass on zeros, so CPU profiles regroup the band.
GPU_BLOCK = 0  # 0: one dense MatMul per pass
CPU_BLOCK = 32


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

    from ..data.preprocess import resample_plan

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
