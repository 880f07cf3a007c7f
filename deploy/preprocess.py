"""Image loading and preprocessing: the single implementation of the manifest's Preprocessing.

Calibration, verification, benchmarking and the runtime all call :func:`preprocess`, so the numbers
a bundle was calibrated and verified on are the numbers it sees in the field. Torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageOps

from .errors import EffdeployError
from .spec import Preprocessing

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}


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
    if not isinstance(frame, np.ndarray):
        raise EffdeployError(f"a frame must be a numpy array, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise EffdeployError(f"frames must be uint8 HxWx3 images, got dtype {frame.dtype}")
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise EffdeployError(f"frames must be HxWx3 (3 channels), got shape {tuple(frame.shape)}")
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise EffdeployError("frame has zero size")


def resize_crop(frame: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """Crop then resize in one resampling pass (PIL's antialiased filter over the crop box)."""
    check_frame(frame)
    h, w = frame.shape[:2]
    img = Image.fromarray(frame)
    out = img.resize(
        (spec.resolution, spec.resolution),
        resample=_RESAMPLE[spec.interpolation],
        box=crop_box(h, w, spec),
    )
    return np.asarray(out)


def normalize(batch_hwc: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """NHWC uint8 -> NCHW float32 ``(x - mean) / std``."""
    mean = np.asarray(spec.mean, dtype=np.float32)
    inv_std = (1.0 / np.asarray(spec.std, dtype=np.float64)).astype(np.float32)
    x = (batch_hwc.astype(np.float32) - mean) * inv_std
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def preprocess(frames: np.ndarray | Sequence[np.ndarray], spec: Preprocessing, bgr: bool = False) -> np.ndarray:
    """RGB (or BGR with ``bgr=True``) uint8 frames of any size -> an NCHW float32 batch."""
    if isinstance(frames, np.ndarray) and frames.ndim == 3:
        frames = [frames]
    crops = []
    for f in frames:
        if bgr:
            check_frame(f)
            f = f[:, :, ::-1]
        crops.append(resize_crop(np.ascontiguousarray(f), spec))
    if not crops:
        raise EffdeployError("no frames to preprocess")
    return normalize(np.stack(crops), spec)


def preprocess_files(paths: Iterable[str | Path], spec: Preprocessing) -> np.ndarray:
    return preprocess([load_image(p) for p in paths], spec)
