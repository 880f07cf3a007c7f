"""Verification of frame-in graphs: the graph against ``preprocess()`` pixel by pixel, and its
logits against ``preprocess()`` + model on the verification images scaled to the frame size;
``add_frame_graphs`` builds, checks and records them for the bundle.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..backends.onnxrt import FrameSession, OnnxRuntimeRunner
from ..data.frames import PIXELS_OUTPUT, FrameInput, check_frame_spec, frame_graph_name, frame_line
from ..data.preprocess import Preprocessing
from ..errors import EffdeployError
from ..export.frames import CPU_BLOCK, GPU_BLOCK, frame_model, preprocessing_model


# Verification budget (issue 15): every pixel within one level of preprocess(), and the logits'
# top-1 the same as preprocess() + model on at least 99.5 % of the frames.
MAX_PIXEL_LEVELS = 1.0
MIN_TOP1_AGREEMENT = 0.995
VERIFY_FRAMES = 200  # at most this many verification images per frame size


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
        from .gate import Budget, gate_status, verify_images_needed

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
    from ..data.datasets import builtin_image_paths
    from ..data.preprocess import load_image

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
    from ..data.preprocess import preprocess, resize_crop
    from ..backends.onnxrt import OnnxRuntimeRunner

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

    from ..data.preprocess import resample_plan
    from ..report import info

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
