"""Frozen specifications that flow between stages: the model, its preprocessing.

Everything here is torch-free: the device side reads the same specs from a bundle manifest.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Mapping

from ..data.preprocess import Preprocessing
from ..errors import EffdeployError


Variant = Literal["b", "lite"]


@dataclass(frozen=True)
class StageSpec:
    """One row of the B0 stage table (timm/TF style): a stage of identical MBConv blocks."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    in_channels: int
    out_channels: int
    se_ratio: float = 0.25


# The EfficientNet-B0 architecture (Tan & Le 2019, Table 1). Scaling is applied by the builder.
B0_STAGES: tuple[StageSpec, ...] = (
    StageSpec(1, 3, 1, 1, 32, 16),
    StageSpec(2, 3, 2, 6, 16, 24),
    StageSpec(2, 5, 2, 6, 24, 40),
    StageSpec(3, 3, 2, 6, 40, 80),
    StageSpec(3, 5, 1, 6, 80, 112),
    StageSpec(4, 5, 2, 6, 112, 192),
    StageSpec(1, 3, 1, 6, 192, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280

# Released coefficients: phi -> (width, depth, resolution, dropout).
B_COEFFICIENTS: dict[int, tuple[float, float, int, float]] = {
    0: (1.0, 1.0, 224, 0.2),
    1: (1.0, 1.1, 240, 0.2),
    2: (1.1, 1.2, 260, 0.3),
    3: (1.2, 1.4, 300, 0.3),
    4: (1.4, 1.8, 380, 0.4),
    5: (1.6, 2.2, 456, 0.4),
    6: (1.8, 2.6, 528, 0.5),
    7: (2.0, 3.1, 600, 0.5),
}
LITE_COEFFICIENTS: dict[int, tuple[float, float, int, float]] = {
    0: (1.0, 1.0, 224, 0.2),
    1: (1.0, 1.1, 240, 0.2),
    2: (1.1, 1.2, 260, 0.3),
    3: (1.2, 1.4, 280, 0.3),
    4: (1.4, 1.8, 300, 0.3),
}
# Compound scaling (paper, eq. 3): alpha * beta^2 * gamma^2 ~= 2.
ALPHA, BETA, GAMMA = 1.2, 1.1, 1.15


@dataclass(frozen=True)
class ModelSpec:
    """A fully resolved EfficientNet: what to build and how its inputs are prepared."""

    variant: str
    phi: float
    width: float
    depth: float
    resolution: int
    dropout: float
    num_classes: int = 1000
    drop_connect: float = 0.2
    # "same": TensorFlow SAME padding (asymmetric for stride 2), used by the TF-ported weights
    # (lukemelas, timm tf_*); "symmetric": PyTorch k//2 padding (torchvision, timm).
    padding: str = "same"
    bn_eps: float = 1e-3
    parameters: int = 0
    preprocessing: Preprocessing = field(default=None)  # type: ignore[assignment]

    @property
    def name(self) -> str:
        phi = int(self.phi) if float(self.phi).is_integer() else self.phi
        return f"efficientnet-{'lite' if self.variant == 'lite' else 'b'}{phi}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["name"] = self.name
        return d

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "ModelSpec":
        d = {k: v for k, v in d.items() if k != "name"}
        d["preprocessing"] = Preprocessing.from_dict(d["preprocessing"])
        return ModelSpec(**d)


def parse_phi(value: Any) -> float:
    """Accept 1, "1", 1.5; refuse negatives and non-numbers with one clear line."""
    try:
        phi = float(value)
    except (TypeError, ValueError):
        raise EffdeployError(f"--phi must be a number >= 0 (got {value!r}); e.g. --phi 1") from None
    if not math.isfinite(phi) or phi < 0:
        raise EffdeployError(f"--phi must be a number >= 0 (got {value!r}); e.g. --phi 1")
    return phi


def model_spec(
    phi: Any,
    variant: str = "b",
    resolution: int | None = None,
    num_classes: int = 1000,
    weights_format: str = "native",
    arch: Any = None,
) -> ModelSpec:
    """Resolve phi to coefficients: the released table for integer phi, else the compound rule.

    ``arch`` (an :class:`effdeploy.model.archs.WeightsArch`) gives the padding, BatchNorm eps, resolution
    and preprocessing its library uses; without it they follow ``weights_format``.
    """
    if variant not in ("b", "lite"):
        raise EffdeployError(f"--variant must be 'b' or 'lite' (got {variant!r})")
    phi = parse_phi(phi)
    table = B_COEFFICIENTS if variant == "b" else LITE_COEFFICIENTS
    if phi.is_integer() and int(phi) in table:
        width, depth, res, dropout = table[int(phi)]
    else:
        try:
            width, depth = BETA**phi, ALPHA**phi
            res = _round_resolution(224 * GAMMA**phi)
        except OverflowError:
            raise EffdeployError(
                f"--phi {phi:g} is far beyond any EfficientNet that fits in memory (its depth coefficient "
                f"{ALPHA}^phi overflows a float); the released models are phi 0..7 (b) and 0..4 (lite)"
            ) from None
        dropout = min(0.5, 0.2 + 0.05 * phi)
    if arch is not None and arch.resolution is not None:
        res = arch.resolution
    if resolution is not None:
        if int(resolution) < 32:
            raise EffdeployError(f"--resolution must be at least 32 pixels (got {resolution})")
        res = int(resolution)
    if num_classes < 1:
        raise EffdeployError(f"--num-classes must be at least 1 (got {num_classes})")
    symmetric = weights_format in ("torchvision", "timm")
    if arch is not None:
        return ModelSpec(variant=variant, phi=phi, width=round(width, 6), depth=round(depth, 6), resolution=res,
                         dropout=dropout, num_classes=num_classes, padding=arch.padding, bn_eps=arch.bn_eps,
                         preprocessing=arch.preprocessing(res))
    return ModelSpec(
        variant=variant,
        phi=phi,
        width=round(width, 6),
        depth=round(depth, 6),
        resolution=res,
        dropout=dropout,
        num_classes=num_classes,
        padding="symmetric" if symmetric else "same",
        # torchvision's B5-B7 are TF ports and keep TF's epsilon.
        bn_eps=1e-3 if not symmetric or (weights_format == "torchvision" and phi >= 5) else 1e-5,
        preprocessing=Preprocessing.for_weights(res, variant, weights_format),
    )


def _round_resolution(r: float) -> int:
    """Nearest multiple of 8 (the stem and four stride-2 stages divide by 32, TRT likes 8)."""
    return max(32, int(round(r / 8.0)) * 8)


def round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """TF/timm rounding: nearest multiple of ``divisor``, never below 90 % of the scaled value."""
    scaled = channels * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:
        new += divisor
    return int(new)


def round_repeats(repeats: int, depth: float) -> int:
    return int(math.ceil(depth * repeats))


# --- the builder: the stage table scaled to one model (timm's rounding) --------------------------


@dataclass(frozen=True)
class BlockPlan:
    """One MBConv block after scaling: everything needed to instantiate it."""

    stage: int
    index: int
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    expand: int
    se_channels: int  # 0 = no squeeze-and-excitation
    drop_path: float
    input_size: int  # spatial size of the block input (for TF SAME padding)

    @property
    def name(self) -> str:
        return f"blocks.{self.stage}.{self.index}"

    @property
    def has_skip(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels


def stem_channels(spec: ModelSpec) -> int:
    return STEM_CHANNELS if spec.variant == "lite" else round_channels(STEM_CHANNELS, spec.width)


def head_channels(spec: ModelSpec) -> int:
    return HEAD_CHANNELS if spec.variant == "lite" else round_channels(HEAD_CHANNELS, spec.width)


def block_plan(spec: ModelSpec) -> list[BlockPlan]:
    """Scale the B0 table by the spec's width and depth coefficients."""
    lite = spec.variant == "lite"
    last = len(B0_STAGES) - 1
    rows = []
    for s, st in enumerate(B0_STAGES):
        fixed = lite and s in (0, last)
        rows.append((s, st, st.repeats if fixed else round_repeats(st.repeats, spec.depth)))
    total = sum(r for _, _, r in rows)
    plans: list[BlockPlan] = []
    size = math.ceil(spec.resolution / 2)  # after the stride-2 stem
    in_ch = stem_channels(spec)
    for s, st, repeats in rows:
        out_ch = round_channels(st.out_channels, spec.width)
        for i in range(repeats):
            stride = st.stride if i == 0 else 1
            se = 0 if lite else max(1, int(in_ch * st.se_ratio))
            plans.append(
                BlockPlan(
                    stage=s,
                    index=i,
                    in_channels=in_ch,
                    out_channels=out_ch,
                    kernel=st.kernel,
                    stride=stride,
                    expand=st.expand,
                    se_channels=se,
                    drop_path=spec.drop_connect * len(plans) / total,
                    input_size=size,
                )
            )
            size = math.ceil(size / stride)
            in_ch = out_ch
    return plans


def with_parameters(spec: ModelSpec, parameters: int) -> ModelSpec:
    return replace(spec, parameters=parameters)


@dataclass(frozen=True)
class SizeEstimate:
    """What a spec costs before anything is allocated: parameters and the largest activation
    tensor of one image (elements), from the stage table alone (O(stages), so an absurd
    ``--phi`` is priced without enumerating its blocks)."""

    parameters: int
    largest_activation: int  # elements of the biggest tensor one image produces
    largest_at: str  # where it is ("blocks.1 expand", "stem", ...)
    blocks: int

    def bytes_at(self, batch: int, dtype_bytes: int = 4) -> int:
        """Weights plus one ``batch`` of the largest activation, at ``dtype_bytes`` per element."""
        return dtype_bytes * (self.parameters + batch * self.largest_activation)


def estimate_size(spec: ModelSpec) -> SizeEstimate:
    """Parameter count (exact: the same rounding as :func:`effdeploy.model.spec.block_plan`) and the
    largest per-image activation of ``spec`` without building it."""
    lite = spec.variant == "lite"
    stem = STEM_CHANNELS if lite else round_channels(STEM_CHANNELS, spec.width)
    head = HEAD_CHANNELS if lite else round_channels(HEAD_CHANNELS, spec.width)
    size = math.ceil(spec.resolution / 2)
    params = 3 * stem * 9 + 2 * stem
    acts = [(3 * spec.resolution ** 2, "input"), (stem * size ** 2, "stem")]
    in_ch, blocks = stem, 0
    last = len(B0_STAGES) - 1

    def mbconv(cin: int, cout: int, st: StageSpec, stride: int, s: int) -> tuple[int, int, int]:
        """(parameters, largest activation, output size) of one block at input size ``s``."""
        mid = cin * st.expand
        se = 0 if lite else max(1, int(cin * st.se_ratio))
        p = (cin * mid + 2 * mid if st.expand != 1 else 0) + mid * st.kernel ** 2 + 2 * mid
        p += (mid * se + se + se * mid + mid) if se else 0
        p += mid * cout + 2 * cout
        out = math.ceil(s / stride)
        a = max(mid * (s + st.kernel - 1) ** 2, cout * out ** 2)  # the (padded) depthwise input dominates
        return p, a, out

    for i, st in enumerate(B0_STAGES):
        repeats = st.repeats if lite and i in (0, last) else round_repeats(st.repeats, spec.depth)
        out_ch = round_channels(st.out_channels, spec.width)
        p, a, size = mbconv(in_ch, out_ch, st, st.stride, size)
        params += p
        acts.append((a, f"blocks.{i} (first block)"))
        if repeats > 1:
            p, a, _ = mbconv(out_ch, out_ch, st, 1, size)
            params += (repeats - 1) * p
            acts.append((a, f"blocks.{i}"))
        in_ch, blocks = out_ch, blocks + repeats
    params += in_ch * head + 2 * head + head * spec.num_classes + spec.num_classes
    acts.append((head * size ** 2, "head"))
    largest, where = max(acts)
    return SizeEstimate(parameters=params, largest_activation=largest, largest_at=where, blocks=blocks)


# A build pushes batches of up to 32 images through the network in eager PyTorch and ONNX Runtime
# (BatchNorm init on the built-in images, export parity, verification), and the widest layer holds
# its input, its padded copy and its output at once; the weights exist as the eager model, the
# ONNX graph, an ONNX Runtime session and the precision graph (how this compares with a measured
# build is in the README, Limits). The libraries' own footprint comes on top.
BUILD_BATCH = 32
LIVE_TENSORS = 3
WEIGHT_COPIES = 4


def build_memory_bytes(size: SizeEstimate, dtype_bytes: int = 4) -> int:
    """What building (export, calibration, verification) needs at its working batch."""
    return dtype_bytes * (WEIGHT_COPIES * size.parameters + LIVE_TENSORS * BUILD_BATCH * size.largest_activation)


def physical_memory_bytes() -> int | None:
    """This machine's RAM (os.sysconf; None where it cannot be read)."""
    import os

    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.3g} {unit}" if unit == "PB" or abs(n) >= 1 else f"{n:.0f} {unit}"
        n /= 1000.0
    return f"{n:.3g} PB"


def _count(n: int) -> str:
    return f"{n:,}" if n < 10**12 else f"{n:.3g}"


def check_fits_memory(spec: ModelSpec, ram_bytes: int | None = None) -> SizeEstimate:
    """Refuse, before anything is allocated, a spec whose build could not fit in this machine's
    memory, with what it would need; the estimate otherwise."""
    size = estimate_size(spec)
    ram = physical_memory_bytes() if ram_bytes is None else ram_bytes
    need = build_memory_bytes(size)
    if ram is not None and need > ram:
        raise EffdeployError(
            f"{spec.name} at {spec.resolution} px would need about {human_bytes(need)} of memory to build "
            f"({_count(size.parameters)} parameters = {human_bytes(4 * size.parameters)} of FP32 weights; largest activation "
            f"{human_bytes(4 * size.largest_activation)} per image at {size.largest_at}, in batches of {BUILD_BATCH}); "
            f"this machine has {human_bytes(ram)}: choose a smaller --phi or --resolution"
        )
    return size


def extrapolation_warning(spec: ModelSpec) -> str | None:
    """A line for a phi beyond the released table: its coefficients are the compound rule's guess."""
    table = B_COEFFICIENTS if spec.variant == "b" else LITE_COEFFICIENTS
    top = max(table)
    if spec.phi <= top:
        return None
    family = "EfficientNet-Lite" if spec.variant == "lite" else "EfficientNet-B"
    return (f"{spec.name} is beyond the released {family} models (phi 0..{top}): width {spec.width:g}, depth "
            f"{spec.depth:g} and {spec.resolution} px are extrapolated by the compound rule, and no pretrained "
            "weights exist for it")
