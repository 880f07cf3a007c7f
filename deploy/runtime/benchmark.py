"""What ``bench`` feeds a runner: camera-like frames (synthetic or from a file) and the
``--batch`` / ``--frame`` arguments.
"""

from __future__ import annotations

import numpy as np

from ..errors import EffdeployError


class FrameSource:
    """Camera-sized frames the way a decoder delivers them: :meth:`next` writes the next frames
    into ``batch`` buffers (untimed, as ``setup``), so each timed call sees freshly written frames
    rather than ones left in cache by the previous call or evicted by inference."""

    def __init__(self, width: int = 1920, height: int = 1080, batch: int = 1) -> None:
        self.frames = [synthetic_frame(width, height, seed=i) for i in range(batch + 1)]
        self.batch = [f.copy() for f in self.frames[:batch]]
        self._i = 0

    @property
    def frame(self) -> np.ndarray:
        return self.batch[0]

    def next(self) -> list[np.ndarray]:
        self._i += 1
        for j, buf in enumerate(self.batch):
            np.copyto(buf, self.frames[(self._i + j) % len(self.frames)])
        return self.batch


def synthetic_frame(width: int = 1920, height: int = 1080, seed: int = 0) -> np.ndarray:
    """A camera-sized RGB uint8 frame (smooth gradients plus sensor-like noise); preprocessing
    cost does not depend on the content, only on the size."""
    if width < 1 or height < 1:
        raise EffdeployError(f"frame size must be positive (got {width}x{height})")
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / max(width, 1) * 255, y / max(height, 1) * 255,
                     (x + y) / max(width + height, 1) * 255], axis=-1)
    noise = rng.normal(0, 8, size=base.shape).astype(np.float32)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def parse_frame_size(text: str) -> tuple[int, int]:
    """``"1920x1080"`` -> (1920, 1080)."""
    try:
        w, h = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise EffdeployError(f"--frame-size must look like 1920x1080 (got {text!r})") from None
    if w < 1 or h < 1:
        raise EffdeployError(f"--frame-size must be positive (got {text!r})")
    return w, h


def parse_batches(text: str) -> tuple[int, ...]:
    """``"1,8"`` -> (1, 8)."""
    try:
        batches = tuple(int(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise EffdeployError(f"--batch must be a comma-separated list of sizes like 1,8 (got {text!r})") from None
    if not batches or any(b < 1 for b in batches):
        raise EffdeployError(f"--batch sizes must be >= 1 (got {text!r})")
    return batches
