"""Image loading and preprocessing: the single implementation of the manifest's Preprocessing.

Calibration, verification, benchmarking and the runtime all call :func:`preprocess`, so the numbers
a bundle was calibrated and verified on are the numbers it sees in the field. Torch-free.

**The definition.** "Resize the shorter side to ``spec.resize``, center-crop ``spec.resolution``"
is one antialiased resampling pass over the crop box (:func:`crop_box`, fractional source
coordinates) with Pillow's filters and Pillow's per-output weight windows (``precompute_coeffs``:
the kernel stretched by the downscale factor, clipped at the frame edge and renormalised), rounded
to 0..255 and then normalised ``(x - mean) / std``. Up to version 0.1 this *was*
``PIL.Image.resize(box=...)``; :func:`resize_crop_pil` keeps that reference.

**Why not Pillow itself.** Pillow's scalar resampler needs ~6 ms for a 1080p frame and ~40 ms for
4K on one core, and copies the frame into its own 4-byte layout first. Here the same separable
weights are applied as small dense blocks of a banded matrix with BLAS, one pass per axis in
Pillow's order, rounded and clipped to 0..255 after each pass as Pillow stores them, written
straight into NCHW. Two deviations, measured against Pillow by ``bench/runtime_perf.py``:

* weights on a 2^-15 grid (``spec.RESAMPLE_BITS``) instead of Pillow's 2^-22: a level per pass at
  most (docs/runtime.md has the figures). On that grid every float32 sum of 0..255 pixels is exact,
  so BLAS here, ONNX Runtime in a frame-in graph and TensorRT (TF32 off) give the same pixels bit
  for bit; with plain float32 weights their summation orders moved 1 value in ~40,000 by a level,
  enough to flip near-tied images through an INT8 input quantizer. A manifest from before the grid
  (no ``resample_bits``) keeps float32 weights;
* downscale factor >= 4 (the crop box is >= 4x the model resolution: 1080p and up for 224 px
  models): first an exact k x k box average (``cv2.INTER_AREA`` with an integer factor, k the
  largest power of two that leaves a factor >= 2), then the exact weights for the rest. This is
  Pillow's own ``reducing_gap`` idea with a gap of 2 and cuts a 1080p frame from ~3 ms to ~1 ms;
  the box adds a blur of k/2 source pixels under a kernel >= 4k wide: mean 0.2-0.4 levels, max
  ~10 at isolated edge pixels on real photographs.

Pretrained Lite0 on the 500 shared ImageNet images: the same top-1 as the Pillow path on every
image at their own size (89.6 % both); scaled to 1080p (the pre-reduced path) the same top-1 on
99.6 % of them (89.0 % vs 89.2 %). See docs/runtime.md.

``interpolation = "nearest"`` has no weight windows and still goes through Pillow.

The weight blocks depend only on (frame size, spec), so they are memoised per shape (a pure
function cache; a camera stream computes them once).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image, ImageOps

from ..errors import EffdeployError



IMAGENET_MEAN_255 = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD_255 = (0.229 * 255, 0.224 * 255, 0.225 * 255)
LITE_MEAN_255 = (127.0, 127.0, 127.0)
LITE_STD_255 = (128.0, 128.0, 128.0)
CROP_PCT = 0.875
# The resampling weights lie on a 2^-15 grid (Pillow uses 2^-22 integers). With 0..255 pixels every
# product and every partial sum is then an exact float32, so any FP32 backend (BLAS, ONNX Runtime's
# MatMul in a frame-in graph, TensorRT with TF32 off) computes the same pixels bit for bit, whatever
# its summation order; 15 is the most bits for which 255 * sum(|w|) * 2^bits stays below 2^24.
RESAMPLE_BITS = 15


@dataclass(frozen=True)
class Preprocessing:
    """The one definition of input preprocessing; calibration, verify and the runtime all read it.

    Resize the shorter side to ``resize`` (``resolution / crop_pct``), center-crop ``resolution``,
    then ``(pixel - mean) / std`` on the 0-255 scale, RGB, NCHW float32.
    """

    resolution: int
    resize: int
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN_255
    std: tuple[float, float, float] = IMAGENET_STD_255
    channel_order: str = "RGB"
    layout: str = "NCHW"
    # Resampling weights on a 2^-bits grid; None: plain float32 weights (bundles built before the grid).
    resample_bits: int | None = RESAMPLE_BITS

    @staticmethod
    def for_weights(resolution: int, variant: str, weights_format: str) -> "Preprocessing":
        """ImageNet mean/std for the B family and torchvision/timm weights; (x-127)/128 for Lite."""
        lite_norm = variant == "lite" and weights_format not in ("torchvision", "timm")
        return Preprocessing(
            resolution=resolution,
            resize=int(math.floor(resolution / CROP_PCT)),
            mean=LITE_MEAN_255 if lite_norm else IMAGENET_MEAN_255,
            std=LITE_STD_255 if lite_norm else IMAGENET_STD_255,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "Preprocessing":
        d = dict(d)
        d["mean"] = tuple(float(x) for x in d["mean"])
        d["std"] = tuple(float(x) for x in d["std"])
        d.setdefault("resample_bits", None)  # a manifest from before the grid keeps its float32 weights
        return Preprocessing(**d)


_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}

# Pre-reduce by powers of two while the remaining downscale factor stays >= this (see module doc).
REDUCING_GAP = 2.0
# Output rows per dense block of the banded weight matrix: small blocks waste few multiplications
# on zeros, large ones make fewer BLAS calls; 16 was fastest from 480p to 4K here (8 and 24 within
# 10 %), and with cold caches (a frame arriving between inferences) fewer calls matter more.
BLOCK = 16


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image (EXIF-rotated, grayscale, CMYK, palette, 16-bit, alpha) -> 8-bit RGB."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8), mode="L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


def load_image(path: str | Path) -> np.ndarray:
    """Read a file into an HxWx3 uint8 RGB array; unreadable files raise EffdeployError."""
    try:
        with Image.open(path) as img:
            img.load()
            return np.asarray(to_rgb(img))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise EffdeployError(f"cannot read image {path}: {e}") from None


def crop_box(height: int, width: int, spec: Preprocessing) -> tuple[float, float, float, float]:
    """The source-pixel box that 'resize shorter side to spec.resize, center-crop resolution' keeps."""
    scale = spec.resize / min(height, width)
    new_w, new_h = round(width * scale), round(height * scale)
    left = (new_w - spec.resolution) / 2.0
    top = (new_h - spec.resolution) / 2.0
    sx, sy = width / new_w, height / new_h
    return (left * sx, top * sy, (left + spec.resolution) * sx, (top + spec.resolution) * sy)


def check_frame(frame: np.ndarray) -> None:
    """Refuse anything but a non-empty HxWx3 uint8 array, with one line saying what was given."""
    if not isinstance(frame, np.ndarray):
        raise EffdeployError(f"a frame must be a numpy array, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise EffdeployError(
            f"frames must be uint8 HxWx3 images, got dtype {frame.dtype}; convert with "
            "np.clip(x, 0, 255).astype(np.uint8) (scale 0..1 floats by 255 first)"
        )
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise EffdeployError(
            f"frames must be HxWx3 (3 channels), got shape {tuple(frame.shape)}; convert grayscale/BGRA "
            "with cv2.cvtColor first"
        )
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise EffdeployError(f"frame has zero size {tuple(frame.shape)}; check the camera or decoder")


# --- resampling weights (Pillow's filters and windows, libImaging/Resample.c) -----------------


def _bicubic(x: np.ndarray) -> np.ndarray:
    a = -0.5
    x = np.abs(x)
    return np.where(x < 1.0, ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0,
                    np.where(x < 2.0, (((x - 5.0) * x + 8.0) * x - 4.0) * a, 0.0))


def _triangle(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _box(x: np.ndarray) -> np.ndarray:
    return ((x > -0.5) & (x <= 0.5)).astype(np.float64)


def _hamming(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.where(x == 0.0, 1.0, np.sin(np.pi * x) / (np.pi * x))
    return np.where(x >= 1.0, 0.0, s * (0.54 + 0.46 * np.cos(np.pi * x)))


def _lanczos(x: np.ndarray) -> np.ndarray:
    def sinc(v: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(v == 0.0, 1.0, np.sin(np.pi * v) / (np.pi * v))

    return np.where(np.abs(x) < 3.0, sinc(x) * sinc(x / 3.0), 0.0)


_FILTERS: dict[str, tuple[float, Callable[[np.ndarray], np.ndarray]]] = {
    "bicubic": (2.0, _bicubic),
    "bilinear": (1.0, _triangle),
    "box": (0.5, _box),
    "hamming": (1.0, _hamming),
    "lanczos": (3.0, _lanczos),
}


@dataclass(frozen=True)
class AxisWeights:
    """One axis of the resampling as dense blocks of a banded matrix.

    ``lo:hi`` is the span of source samples any output reads; each block is
    ``(out0, out1, in0, in1, weights[out1 - out0, in1 - in0])`` with ``in*`` relative to ``lo``
    (weights transposed, ``[in, out]``, for a right-multiplied axis).
    """

    lo: int
    hi: int
    blocks: tuple[tuple[int, int, int, int, np.ndarray], ...]


def axis_weights(in_size: int, box0: float, box1: float, out_size: int, interpolation: str,
                 block: int = BLOCK, transpose: bool = False, bits: int | None = None) -> AxisWeights:
    """Pillow's ``precompute_coeffs`` (window per output, clipped at the edge, renormalised), then
    rounded to a 2^-``bits`` grid (see ``spec.RESAMPLE_BITS``) where ``bits`` is given."""
    support, fn = _FILTERS[interpolation]
    scale = (box1 - box0) / out_size
    filterscale = max(scale, 1.0)
    support *= filterscale
    centers = box0 + (np.arange(out_size) + 0.5) * scale
    # C's (int) cast truncates toward zero; the clamp to 0 makes floor and trunc agree.
    xmin = np.clip(np.trunc(centers - support + 0.5).astype(np.int64), 0, in_size)
    xmax = np.clip(np.trunc(centers + support + 0.5).astype(np.int64), 0, in_size)
    taps = max(1, int((xmax - xmin).max()))
    pos = xmin[:, None] + np.arange(taps)[None, :]
    w = fn((pos - centers[:, None] + 0.5) / filterscale)
    w = np.where(pos < xmax[:, None], w, 0.0)
    total = w.sum(axis=1, keepdims=True)
    w = np.divide(w, total, out=np.zeros_like(w), where=total != 0.0)
    if bits is not None:
        w = np.rint(w * 2.0**bits) / 2.0**bits
        if 255.0 * float(np.abs(w).sum(axis=1).max()) * 2.0**bits >= 2.0**24:
            raise EffdeployError(f"{interpolation} weights on a 2^-{bits} grid would not sum exactly in float32; "
                                 "use fewer resample bits")
    lo, hi = int(xmin.min()), int(max(xmax.max(), xmin.min() + 1))
    blocks = []
    for o0 in range(0, out_size, block):
        o1 = min(o0 + block, out_size)
        i0, i1 = int(xmin[o0:o1].min()), int(max(xmax[o0:o1].max(), xmin[o0:o1].min() + 1))
        dense = np.zeros((o1 - o0, i1 - i0), dtype=np.float64)
        for r in range(o0, o1):
            n = int(xmax[r] - xmin[r])
            dense[r - o0, xmin[r] - i0 : xmin[r] - i0 + n] = w[r, :n]
        dense = np.ascontiguousarray(dense.T) if transpose else dense
        blocks.append((o0, o1, i0 - lo, i1 - lo, dense.astype(np.float32)))
    return AxisWeights(lo, hi, tuple(blocks))


@dataclass(frozen=True)
class ResamplePlan:
    """How a frame of one size becomes the model's crop: pre-reduction, then two banded passes."""

    reduce: int  # k: k x k box average first (1 = none)
    region: tuple[int, int, int, int]  # y0, y1, x0, x1 of the source that is box-averaged
    rows: AxisWeights  # over the (reduced) image's rows
    cols: AxisWeights  # over the (reduced) image's columns
    vertical_first: bool = False  # Pillow's pass order (see resample_plan)


@lru_cache(maxsize=32)
def resample_plan(height: int, width: int, spec: Preprocessing) -> ResamplePlan:
    """Pure function of (frame size, spec); memoised because a video repeats one size."""
    if spec.interpolation not in _FILTERS:
        raise EffdeployError(
            f"interpolation {spec.interpolation!r} is not supported; use one of {', '.join(sorted(_RESAMPLE))}"
        )
    x0, y0, x1, y1 = crop_box(height, width, spec)
    out = spec.resolution
    factor = min(x1 - x0, y1 - y0) / out
    k = 1
    while factor / (2 * k) >= REDUCING_GAP:
        k *= 2
    if k == 1:
        region = (0, height, 0, width)
        in_h, in_w, bx = height, width, (x0, y0, x1, y1)
    else:
        margin = _FILTERS[spec.interpolation][0] * factor + 2 * k
        ry0, rx0 = max(0, math.floor(y0 - margin)), max(0, math.floor(x0 - margin))
        ry1, rx1 = min(height, math.ceil(y1 + margin)), min(width, math.ceil(x1 + margin))
        in_h, in_w = (ry1 - ry0) // k, (rx1 - rx0) // k
        region = (ry0, ry0 + in_h * k, rx0, rx0 + in_w * k)
        bx = ((x0 - rx0) / k, (y0 - ry0) / k, (x1 - rx0) / k, (y1 - ry0) / k)
    rows = axis_weights(in_h, bx[1], bx[3], out, spec.interpolation, bits=spec.resample_bits)
    cols = axis_weights(in_w, bx[0], bx[2], out, spec.interpolation, transpose=True, bits=spec.resample_bits)
    # Pillow >= 11 (ImagingResampleInner) runs the vertical pass first when the height shrinks by
    # more than twice as many pixels as the width; the order matters where the rounded, clipped
    # intermediate over/undershoots, so follow it.
    vertical_first = (in_h - out) > 0 and (in_h - out) > (in_w - out) * 2
    return ResamplePlan(k, region, rows, cols, vertical_first)


def _box_reduce(frame: np.ndarray, plan: ResamplePlan) -> np.ndarray:
    """Exact k x k block means (k a power of two) via OpenCV's integer-factor INTER_AREA path."""
    import cv2

    y0, y1, x0, x1 = plan.region
    img = frame[y0:y1, x0:x1]
    k = plan.reduce
    while k > 1:
        img = cv2.resize(img, (img.shape[1] // 2, img.shape[0] // 2), interpolation=cv2.INTER_AREA)
        k //= 2
    return img


def _resample_planar(frame: np.ndarray, spec: Preprocessing, out: np.ndarray) -> None:
    """Write the frame's crop as float32 0..255 (rounded) into ``out`` (3, R, R), frame channel order.

    Pillow's order of the two passes (see :func:`resample_plan`), each rounded and clipped to 0..255.
    """
    import cv2

    h, w = frame.shape[:2]
    plan = resample_plan(h, w, spec)
    img = _box_reduce(frame, plan) if plan.reduce > 1 else frame
    rows, cols = plan.rows, plan.cols
    src_h, src_w = rows.hi - rows.lo, cols.hi - cols.lo
    # cv2.split into preallocated planes is ~15x faster than letting it allocate its outputs.
    planes_u8 = np.empty((3, src_h, src_w), dtype=np.uint8)
    cv2.split(img[rows.lo:rows.hi, cols.lo:cols.hi], [planes_u8[0], planes_u8[1], planes_u8[2]])
    planes = planes_u8.astype(np.float32)
    res = spec.resolution
    # One GEMM per channel and block (numpy loops over the leading axis): each stays below
    # OpenBLAS's threading threshold, so preprocessing keeps to one core beside the inference threads.
    if plan.vertical_first:
        mid = np.empty((3, res, src_w), dtype=np.float32)
        _vertical(planes, rows, mid)
        _round_clip(mid)
        _horizontal(mid, cols, out)
    else:
        mid = np.empty((3, src_h, res), dtype=np.float32)
        _horizontal(planes, cols, mid)
        _round_clip(mid)
        _vertical(mid, rows, out)
    _round_clip(out)


def _horizontal(src: np.ndarray, cols: AxisWeights, dst: np.ndarray) -> None:
    for o0, o1, i0, i1, wgt_t in cols.blocks:
        np.matmul(src[:, :, i0:i1], wgt_t, out=dst[:, :, o0:o1])


def _vertical(src: np.ndarray, rows: AxisWeights, dst: np.ndarray) -> None:
    for o0, o1, i0, i1, wgt in rows.blocks:
        np.matmul(wgt, src[:, i0:i1], out=dst[:, o0:o1])


def _round_clip(x: np.ndarray) -> None:
    """Pillow stores every pass as uint8: round, then clip to 0..255 (in place, float32 kept)."""
    np.rint(x, out=x)
    np.clip(x, 0.0, 255.0, out=x)


def resize_crop_pil(frame: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """The reference: Pillow's resize over the crop box (the definition up to effdeploy 0.1)."""
    check_frame(frame)
    h, w = frame.shape[:2]
    img = Image.fromarray(np.ascontiguousarray(frame))
    out = img.resize((spec.resolution, spec.resolution), resample=_RESAMPLE[spec.interpolation],
                     box=crop_box(h, w, spec))
    return np.asarray(out)


def resize_crop(frame: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """The model's crop of one frame as uint8 HxWx3 (same channel order as the frame)."""
    check_frame(frame)
    if spec.interpolation == "nearest":
        return resize_crop_pil(frame, spec)
    planar = np.empty((3, spec.resolution, spec.resolution), dtype=np.float32)
    _resample_planar(frame, spec, planar)
    return np.ascontiguousarray(planar.transpose(1, 2, 0)).astype(np.uint8)


def normalize(batch_hwc: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """NHWC uint8 -> NCHW float32 ``(x - mean) / std``."""
    mean = np.asarray(spec.mean, dtype=np.float32)
    inv_std = (1.0 / np.asarray(spec.std, dtype=np.float64)).astype(np.float32)
    x = (batch_hwc.astype(np.float32) - mean) * inv_std
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _normalize_planar(planes: np.ndarray, spec: Preprocessing, bgr: bool, out: np.ndarray) -> None:
    """(3, R, R) 0..255 in frame order -> ``out`` (3, R, R) normalised, RGB order; in place."""
    order = (2, 1, 0) if bgr else (0, 1, 2)
    for c, src in enumerate(order):
        inv = np.float32(1.0 / float(spec.std[c]))
        np.subtract(planes[src], np.float32(spec.mean[c]), out=out[c])
        out[c] *= inv


def preprocess(frames: np.ndarray | Sequence[np.ndarray], spec: Preprocessing, bgr: bool = False) -> np.ndarray:
    """RGB (or BGR with ``bgr=True``) uint8 frames of any size -> an NCHW float32 batch.

    ``frames`` is one HxWx3 frame, an NxHxWx3 array or a sequence of frames of any sizes.
    """
    if isinstance(frames, np.ndarray) and frames.ndim == 3:
        frames = [frames]
    elif isinstance(frames, np.ndarray) and frames.ndim != 4:
        check_frame(frames)
    frames = list(frames)
    if not frames:
        raise EffdeployError("no frames to preprocess")
    for f in frames:
        check_frame(f)
    res = spec.resolution
    batch = np.empty((len(frames), 3, res, res), dtype=np.float32)
    planes = np.empty((3, res, res), dtype=np.float32)
    for i, f in enumerate(frames):
        if spec.interpolation == "nearest":
            planes[...] = resize_crop_pil(f, spec).transpose(2, 0, 1)
        else:
            _resample_planar(f, spec, planes)
        _normalize_planar(planes, spec, bgr, batch[i])
    return batch


def preprocess_files(paths: Iterable[str | Path], spec: Preprocessing) -> np.ndarray:
    return preprocess([load_image(p) for p in paths], spec)
