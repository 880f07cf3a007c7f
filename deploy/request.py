"""The build request: every choice a build takes, with the defaults the CLI shows. Kept free of
heavy imports so the command line can read its defaults at start-up."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

CALIBRATION_METHODS = ("max", "percentile", "entropy", "mse")  # effdeploy.calibration implements them
# The repair keeps at most half of the multiply-adds out of INT8 by default: beyond that the bundle
# is mostly an FP16/FP32 model under an INT8 label (random B1 "verified" with all 23 blocks kept
# in FP16 is what an uncapped repair produced); --max-kept-macs raises it deliberately.
MAX_KEPT_MACS_PCT = 50.0
RECONSTRUCT_MODES = ("auto", "bias", "thorough")  # --reconstruct (effdeploy.precision.reconstruct.MODES + auto)
RECONSTRUCT_IMAGES = 32  # calibration images the INT8 reconstruction fits on (a subset of them)
REPAIR_SELECTION_IMAGES = 256  # calibration images the repair chooses kept blocks on (never the gate's)


@dataclass(frozen=True)
class BuildRequest:
    """What `effdeploy build` was asked for; its defaults are the CLI's (the click options read them)."""

    phi: Any
    variant: str = "b"
    precision: str = "fp32"
    profile: Any = None  # effdeploy.profiles.Profile (required by the build)
    weights: str | None = None
    weights_arch: str | None = None  # SOURCE:NAME[.TAG], effdeploy.model.archs
    replace_head: bool = False  # a new, untrained head instead of the checkpoint's (benchmark-only)
    preprocessing: tuple[tuple[str, Any], ...] = ()  # overrides: resize, crop_pct, interpolation, mean, std
    resolution: int | None = None
    out: Path | None = None
    num_classes: int | None = None  # None: the weights folder's class count, else 1000
    labels: str | None = None  # --labels FILE: class names recorded in the bundle
    module: Any = None  # a model object given to effdeploy.build (adopted, see effdeploy.model.adopt)
    calib_data: str | None = None
    calib_images: int = 256
    calib_images_given: bool = True  # False: the default count (messages say so)
    calib_method: str = "auto"
    verify_data: str | None = None
    verify_images: int = 200
    seed: int = 0
    budget: Any = None  # effdeploy.verify.Budget; None: the precision's default with the flags applied
    accuracy_budget: float | None = None  # percent top-1 disagreement allowed; enables repair
    repair: bool = True  # INT8 missing its budget keeps sensitive blocks in higher precision
    max_kept_macs: float = MAX_KEPT_MACS_PCT  # ... at most this percentage of the multiply-adds
    conv_fallback: bool = True  # with the repair: single convs out of INT8 by leave-one-out sensitivity, on evidence
    int8_float_parts: tuple[str, ...] | None = None  # parts kept out of INT8 (se, stem, classifier, dw); None: precision.default_float_parts
    reconstruct: bool = True  # INT8: correct every layer's bias for the error in front of it
    reconstruct_mode: str = "auto"  # bias (sequential bias correction) | thorough (learned rounding) | auto (by family)
    reconstruct_images: int = RECONSTRUCT_IMAGES
    device: str = "auto"  # where torch runs the reconstruction: auto (cuda where torch sees one), cpu, cuda
    allow_parity_failure: bool = False
    quiet: bool = False
    frames: tuple[Any, ...] = ()  # effdeploy.data.frames.FrameInput per --frame size: frame-in graphs


def default(name: str) -> Any:
    """A BuildRequest field's default (the click option shows and uses it)."""
    return next(f.default for f in fields(BuildRequest) if f.name == name)
