"""The frames a bundle's frame-in graphs take: size, channel order, names in the manifest and
beside an engine. Shared by the build (graphs, verification), compile and the runtime, so torch- and
ONNX-free.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from ..errors import EffdeployError
from .preprocess import Preprocessing


FRAME_FORMATS = ("bgr", "rgb")
FRAME_INPUT = "frame"
PIXELS_OUTPUT = "pixels"  # RGB 0..255 before normalisation (the preprocessing-only graph's check output)
PREPROCESSED_OUTPUT = "preprocessed"


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


# The two paths a frame takes in the runtime (effdeploy.runtime.frames), as the camera example prints them.
PATH_FRAME = "frame-in"
PATH_CPU = "cpu"


def frame_engine_path(plan_path: str | Path, frame: FrameInput) -> Path:
    """``engine.plan`` -> ``engine-frame-1920x1080.plan`` beside it (its manifest: ``.json``)."""
    p = Path(plan_path)
    return p.with_name(f"{p.stem}-frame-{frame.size}{p.suffix or '.plan'}")
