"""What a checkpoint's authors ran: the known torchvision and timm EfficientNet / EfficientNet-Lite
model names with their padding, BatchNorm epsilon and evaluation preprocessing.

Why a table: a state dict does not say which function it belongs to. timm's ``efficientnet_b1`` and
``tf_efficientnet_b1`` have the same keys and shapes, but the second pads like TensorFlow ("SAME",
asymmetric at stride 2) with BatchNorm eps 1e-3; built the wrong way its logits are off by most of
their scale, and verification against our own (equally wrong) eager model would not notice. The
preprocessing differs per weights tag too (torchvision B1 V1 resizes to 256 bicubic, V2 to 255
bilinear; timm's ``.ap`` tags normalise with mean/std 0.5).

Every row was read from the library itself: timm 1.0.31 (``timm.models._registry`` default
configs, ``pretrained_cfg`` of each tag, ``create_model(name)``'s stem BatchNorm eps and padding
module) and torchvision 0.28 (each ``EfficientNet_B*_Weights`` member's ``transforms()`` and the
model's first BatchNorm eps); each row's ``cite`` names the definition it comes from. timm's
default tag is the first one its registry lists (``generate_default_cfgs``: the first tag with
weights), torchvision's the enum's ``DEFAULT``. B8, L2 and EfficientNetV2 are other architectures
and are not listed. Torch-free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from ..data.preprocess import Preprocessing
from ..errors import EffdeployError


SOURCES = ("torchvision", "timm", "lukemelas", "native")
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # timm's IMAGENET_INCEPTION_MEAN/STD
TIMM = "timm 1.0.31, timm/models/efficientnet.py"
TORCHVISION = "torchvision 0.28, torchvision/models/efficientnet.py"


@dataclass(frozen=True)
class WeightsArch:
    """One library model name and weights tag: the function and the preprocessing its weights need."""

    source: str
    name: str  # the library's model name: efficientnet_b1, tf_efficientnet_b1, efficientnet-b0
    tag: str  # the library's weights tag ("" where the source has none)
    default: bool  # the library's default weights for ``name``
    variant: str
    phi: int
    padding: str  # "same" (TensorFlow SAME) or "symmetric" (PyTorch k//2)
    bn_eps: float
    resolution: int | None  # None: effdeploy's coefficient table
    resize: int | None  # shorter side before the center crop (None: effdeploy's default rule)
    crop_pct: float | None  # timm's crop_pct (resize = floor(resolution / crop_pct))
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET[0]  # 0-1 scale, as the libraries write it
    std: tuple[float, float, float] = IMAGENET[1]
    num_classes: int = 1000
    released: bool = True  # False: the library has no weights for this tag ("untrained")
    crop_mode: str = "center"
    cite: str = ""

    @property
    def key(self) -> str:
        return f"{self.source}:{self.name}" + (f".{self.tag}" if self.tag else "")

    def preprocessing(self, resolution: int) -> Preprocessing:
        """This entry's preprocessing at ``resolution`` (its own resize when the resolution is its own,
        else the same crop fraction); effdeploy's default rule where the source gives none."""
        if self.resize is None:
            return Preprocessing.for_weights(resolution, self.variant, self.source)
        if self.crop_pct is not None:
            resize = math.floor(resolution / self.crop_pct + 1e-9)  # timm: floor(img_size / crop_pct)
        elif resolution == self.resolution:
            resize = self.resize
        else:
            resize = math.floor(resolution * self.resize / self.resolution + 1e-9)
        return Preprocessing(resolution=resolution, resize=resize, interpolation=self.interpolation,
                             mean=tuple(255.0 * m for m in self.mean),  # type: ignore[arg-type]
                             std=tuple(255.0 * s for s in self.std))  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "source": self.source, "name": self.name, "tag": self.tag,
                "default": self.default, "padding": self.padding, "bn_eps": self.bn_eps, "cite": self.cite}


def _name_phi(name: str) -> tuple[str, int]:
    base = name.removeprefix("tf_").removeprefix("efficientnet").lstrip("_-")
    variant = "lite" if base.startswith("lite") else "b"
    return variant, int(base.removeprefix("lite").removeprefix("b"))


def _timm(name: str, tag: str, resolution: int, crop_pct: float, interpolation: str,
          norm: tuple[tuple[float, float, float], tuple[float, float, float]], default: bool = False,
          num_classes: int = 1000, released: bool = True, crop_mode: str = "center") -> WeightsArch:
    tf = name.startswith("tf_")
    variant, phi = _name_phi(name)
    fn = ("sets bn_eps=BN_EPS_TF_DEFAULT (1e-3) and pad_type='same'" if tf
          else "keeps nn.BatchNorm2d's eps (1e-5) and symmetric padding")
    return WeightsArch(
        source="timm", name=name, tag=tag, default=default, variant=variant, phi=phi,
        padding="same" if tf else "symmetric", bn_eps=1e-3 if tf else 1e-5, resolution=resolution,
        resize=math.floor(resolution / crop_pct + 1e-9), crop_pct=crop_pct, interpolation=interpolation,
        mean=norm[0], std=norm[1], num_classes=num_classes, released=released, crop_mode=crop_mode,
        cite=f"{TIMM}: default_cfgs['{name}.{tag}'] (input_size, crop_pct, interpolation, mean, std); "
             f"{name}() {fn}",
    )


def _tv(name: str, tag: str, crop: int, resize: int, interpolation: str, default: bool = False) -> WeightsArch:
    variant, phi = _name_phi(name)
    eps = 1e-3 if phi >= 5 else 1e-5
    norm = "norm_layer=partial(nn.BatchNorm2d, eps=0.001)" if phi >= 5 else "nn.BatchNorm2d (eps 1e-5)"
    return WeightsArch(
        source="torchvision", name=name, tag=tag, default=default, variant=variant, phi=phi,
        padding="symmetric", bn_eps=eps, resolution=crop, resize=resize, crop_pct=None,
        interpolation=interpolation,
        cite=f"{TORCHVISION}: EfficientNet_B{phi}_Weights.{tag} transforms=ImageClassification(crop_size={crop}, "
             f"resize_size={resize}, interpolation={interpolation.upper()}; ImageNet mean/std); {name}() {norm}",
    )


def _effdeploy(source: str, name: str) -> WeightsArch:
    variant, phi = _name_phi(name)
    what = {"lukemelas": "efficientnet_pytorch / efficientnet_lite_pytorch (TF ports: SAME padding, BatchNorm eps 1e-3)",
            "native": "effdeploy's own modules (SAME padding, BatchNorm eps 1e-3)"}[source]
    return WeightsArch(
        source=source, name=name, tag="", default=True, variant=variant, phi=phi, padding="same", bn_eps=1e-3,
        resolution=None, resize=None, crop_pct=None,
        cite=f"{what}; preprocessing: effdeploy's default (shorter side to resolution / 0.875, bicubic; "
             "ImageNet mean/std for B, (x - 127) / 128 for Lite)",
    )


KNOWN: tuple[WeightsArch, ...] = (
    _timm("efficientnet_b0", "ra_in1k", 224, 0.875, "bicubic", IMAGENET, default=True),
    _timm("efficientnet_b0", "ra4_e3600_r224_in1k", 224, 0.9, "bicubic", HALF),
    _timm("efficientnet_b1", "ra4_e3600_r240_in1k", 240, 0.9, "bicubic", HALF, default=True),
    _timm("efficientnet_b1", "ft_in1k", 224, 0.875, "bicubic", IMAGENET),
    _timm("efficientnet_b2", "ra_in1k", 256, 0.875, "bicubic", IMAGENET, default=True),
    _timm("efficientnet_b3", "ra2_in1k", 288, 0.875, "bicubic", IMAGENET, default=True),
    _timm("efficientnet_b4", "ra2_in1k", 320, 0.875, "bicubic", IMAGENET, default=True),
    _timm("efficientnet_b5", "sw_in12k_ft_in1k", 448, 1.0, "bicubic", IMAGENET, default=True, crop_mode="squash"),
    _timm("efficientnet_b5", "sw_in12k", 416, 0.95, "bicubic", IMAGENET, num_classes=11821),
    _timm("efficientnet_b6", "untrained", 528, 0.942, "bicubic", IMAGENET, default=True, released=False),
    _timm("efficientnet_b7", "untrained", 600, 0.949, "bicubic", IMAGENET, default=True, released=False),
    _timm("efficientnet_lite0", "ra_in1k", 224, 0.875, "bicubic", IMAGENET, default=True),
    _timm("efficientnet_lite1", "untrained", 240, 0.882, "bicubic", IMAGENET, default=True, released=False),
    _timm("efficientnet_lite2", "untrained", 260, 0.89, "bicubic", IMAGENET, default=True, released=False),
    _timm("efficientnet_lite3", "untrained", 300, 0.904, "bicubic", IMAGENET, default=True, released=False),
    _timm("efficientnet_lite4", "untrained", 380, 0.922, "bicubic", IMAGENET, default=True, released=False),
    _timm("tf_efficientnet_b0", "ns_jft_in1k", 224, 0.875, "bicubic", IMAGENET, default=True),
    _timm("tf_efficientnet_b0", "ap_in1k", 224, 0.875, "bicubic", HALF),
    _timm("tf_efficientnet_b0", "aa_in1k", 224, 0.875, "bicubic", IMAGENET),
    _timm("tf_efficientnet_b0", "in1k", 224, 0.875, "bicubic", IMAGENET),
    _timm("tf_efficientnet_b1", "ns_jft_in1k", 240, 0.882, "bicubic", IMAGENET, default=True),
    _timm("tf_efficientnet_b1", "ap_in1k", 240, 0.882, "bicubic", HALF),
    _timm("tf_efficientnet_b1", "aa_in1k", 240, 0.882, "bicubic", IMAGENET),
    _timm("tf_efficientnet_b1", "in1k", 240, 0.882, "bicubic", IMAGENET),
    _timm("tf_efficientnet_b2", "ns_jft_in1k", 260, 0.89, "bicubic", IMAGENET, default=True),
    _timm("tf_efficientnet_b2", "ap_in1k", 260, 0.89, "bicubic", HALF),
    _timm("tf_efficientnet_b2", "aa_in1k", 260, 0.89, "bicubic", IMAGENET),
    _timm("tf_efficientnet_b2", "in1k", 260, 0.89, "bicubic", IMAGENET),
    _timm("tf_efficientnet_b3", "ns_jft_in1k", 300, 0.904, "bicubic", IMAGENET, default=True),
    _timm("tf_efficientnet_b3", "ap_in1k", 300, 0.904, "bicubic", HALF),
    _timm("tf_efficientnet_b3", "aa_in1k", 300, 0.904, "bicubic", IMAGENET),
    _timm("tf_efficientnet_b3", "in1k", 300, 0.904, "bicubic", IMAGENET),
    _timm("tf_efficientnet_b4", "ns_jft_in1k", 380, 0.922, "bicubic", IMAGENET, default=True),
    _timm("tf_efficientnet_b4", "ap_in1k", 380, 0.922, "bicubic", HALF),
    _timm("tf_efficientnet_b4", "aa_in1k", 380, 0.922, "bicubic", IMAGENET),
    _timm("tf_efficientnet_b4", "in1k", 380, 0.922, "bicubic", IMAGENET),
    _timm("tf_efficientnet_b5", "ns_jft_in1k", 456, 0.934, "bicubic", IMAGENET, default=True),
    _timm("tf_efficientnet_b5", "ap_in1k", 456, 0.934, "bicubic", HALF),
    _timm("tf_efficientnet_b5", "ra_in1k", 456, 0.934, "bicubic", IMAGENET),
    _timm("tf_efficientnet_b5", "aa_in1k", 456, 0.934, "bicubic", IMAGENET),
    _timm("tf_efficientnet_b5", "in1k", 456, 0.934, "bicubic", IMAGENET),
    _timm("tf_efficientnet_b6", "ns_jft_in1k", 528, 0.942, "bicubic", IMAGENET, default=True),
    _timm("tf_efficientnet_b6", "ap_in1k", 528, 0.942, "bicubic", HALF),
    _timm("tf_efficientnet_b6", "aa_in1k", 528, 0.942, "bicubic", IMAGENET),
    _timm("tf_efficientnet_b7", "ns_jft_in1k", 600, 0.949, "bicubic", IMAGENET, default=True),
    _timm("tf_efficientnet_b7", "ap_in1k", 600, 0.949, "bicubic", HALF),
    _timm("tf_efficientnet_b7", "ra_in1k", 600, 0.949, "bicubic", IMAGENET),
    _timm("tf_efficientnet_b7", "aa_in1k", 600, 0.949, "bicubic", IMAGENET),
    # timm's own comment: "should be bilinear but bicubic better match for TF bilinear at low res"
    _timm("tf_efficientnet_lite0", "in1k", 224, 0.875, "bicubic", HALF, default=True),
    _timm("tf_efficientnet_lite1", "in1k", 240, 0.882, "bicubic", HALF, default=True),
    _timm("tf_efficientnet_lite2", "in1k", 260, 0.89, "bicubic", HALF, default=True),
    _timm("tf_efficientnet_lite3", "in1k", 300, 0.904, "bilinear", HALF, default=True),
    _timm("tf_efficientnet_lite4", "in1k", 380, 0.92, "bilinear", HALF, default=True),
    _tv("efficientnet_b0", "IMAGENET1K_V1", 224, 256, "bicubic", default=True),
    _tv("efficientnet_b1", "IMAGENET1K_V1", 240, 256, "bicubic"),
    _tv("efficientnet_b1", "IMAGENET1K_V2", 240, 255, "bilinear", default=True),
    _tv("efficientnet_b2", "IMAGENET1K_V1", 288, 288, "bicubic", default=True),
    _tv("efficientnet_b3", "IMAGENET1K_V1", 300, 320, "bicubic", default=True),
    _tv("efficientnet_b4", "IMAGENET1K_V1", 380, 384, "bicubic", default=True),
    _tv("efficientnet_b5", "IMAGENET1K_V1", 456, 456, "bicubic", default=True),
    _tv("efficientnet_b6", "IMAGENET1K_V1", 528, 528, "bicubic", default=True),
    _tv("efficientnet_b7", "IMAGENET1K_V1", 600, 600, "bicubic", default=True),
    *(_effdeploy(s, f"efficientnet-{v}{n}") for s in ("lukemelas", "native")
      for v, top in (("b", 7), ("lite", 4)) for n in range(top + 1)),
)


def names(source: str) -> list[str]:
    seen: dict[str, None] = {}
    for a in KNOWN:
        if a.source == source:
            seen.setdefault(a.name, None)
    return list(seen)


def _name_list(source: str) -> str:
    """timm's 26 names as four ranges, torchvision's eight as one."""
    groups: dict[str, list[int]] = {}
    for n in names(source):
        v, phi = _name_phi(n)
        groups.setdefault(n[: len(n) - len(str(phi))], []).append(phi)
    return ", ".join(f"{p}{min(r)}..{max(r)}" for p, r in groups.items())


def describe(a: WeightsArch) -> str:
    """'TensorFlow SAME padding, BatchNorm eps 1e-3' for messages and tables."""
    pad = "TensorFlow SAME padding" if a.padding == "same" else "symmetric padding"
    return f"{pad}, BatchNorm eps {_eps(a.bn_eps)}"


def _eps(x: float) -> str:
    return f"1e{round(math.log10(x))}"


def choices_for(source: str, variant: str, phi: float) -> list[WeightsArch]:
    """The default entries of ``source`` for this variant and phi (the candidates a layout leaves open)."""
    return [a for a in KNOWN if a.source == source and a.default and a.variant == variant and a.phi == phi]


def parse_weights_arch(text: str) -> WeightsArch:
    """``SOURCE:NAME[.TAG]`` -> the table entry; without a tag, the library's default weights for NAME.

    torchvision's ``DEFAULT`` is accepted as a tag. Anything not in the table is refused with the
    names (or tags) that are, never approximated.
    """
    source, sep, rest = str(text).partition(":")
    if not sep or source not in SOURCES or not rest:
        raise EffdeployError(
            f"--weights-arch takes SOURCE:NAME[.TAG] with SOURCE one of {', '.join(SOURCES)} "
            f"(got {text!r}); e.g. timm:tf_efficientnet_b1 or torchvision:efficientnet_b1.IMAGENET1K_V2"
        )
    name, _, tag = rest.partition(".")
    rows = [a for a in KNOWN if a.source == source and a.name == name]
    if not rows:
        raise EffdeployError(f"--weights-arch {text}: {name!r} is not a known {source} EfficientNet name; "
                             f"known: {_name_list(source)} (docs/weights.md)")
    if not tag or (source == "torchvision" and tag == "DEFAULT"):
        entry = next(a for a in rows if a.default)
    else:
        match = [a for a in rows if a.tag == tag]
        if not match:
            tags = ", ".join(a.tag + (" (default)" if a.default else "") for a in rows if a.tag) or "none"
            raise EffdeployError(f"--weights-arch {text}: {source} {name} has no weights tag {tag!r}; its tags: {tags}")
        entry = match[0]
    if entry.crop_mode != "center":
        raise EffdeployError(
            f"--weights-arch {entry.key}: its preprocessing resizes without keeping the aspect ratio "
            f"(timm crop_mode {entry.crop_mode!r}), which effdeploy does not implement; pass "
            "--crop-pct/--resize to choose a center crop knowingly, with another tag of the same name"
        )
    return entry


def arch_for_layout(layout: str, variant: str, phi: float) -> WeightsArch | None:
    """The entry a checkpoint's key layout implies when no --weights-arch was given.

    torchvision's layout names one function per phi (its default weights' preprocessing is used and
    recorded); lukemelas and native have one each; timm's keys fit both ``efficientnet_*`` and
    ``tf_efficientnet_*``, which compute different functions, so timm is refused with the choices.
    """
    if layout == "timm":
        fam = f"{'lite' if variant == 'lite' else 'b'}{int(phi) if float(phi).is_integer() else phi}"
        opts = choices_for("timm", variant, phi)
        listed = " or ".join(f"--weights-arch {a.key.split('.')[0]} ({describe(a)})" for a in opts)
        raise EffdeployError(
            f"timm's key layout cannot tell efficientnet_{fam} from tf_efficientnet_{fam}, which compute different "
            "functions; pass "
            + (listed if opts else f"--weights-arch timm:NAME (known: {_name_list('timm')})")
        )
    match = choices_for(layout, variant, phi)
    return match[0] if match else None


def check_arch_fits(arch: WeightsArch, variant: str, phi: float, layout: str | None) -> None:
    """--weights-arch must name the model --phi/--variant build and the layout the checkpoint has."""
    if arch.variant != variant or float(arch.phi) != float(phi):
        want = f"--variant {arch.variant} --phi {arch.phi}"
        raise EffdeployError(f"--weights-arch {arch.key} is efficientnet-{arch.variant}{arch.phi}, but --variant "
                             f"{variant} --phi {phi:g} was given; pass {want}")
    if layout is not None and layout != arch.source:
        raise EffdeployError(f"--weights-arch {arch.key} says {arch.source}, but the checkpoint's keys are in "
                             f"{layout}'s layout; pass --weights-arch {layout}:NAME")


def apply_overrides(pre: Preprocessing, overrides: Mapping[str, Any]) -> Preprocessing:
    """The user's --resize/--crop-pct/--interpolation/--mean/--std over an entry's preprocessing
    (mean/std on the 0-1 scale, as torchvision and timm write them)."""
    from dataclasses import replace

    o = dict(overrides)
    if "resize" in o and "crop_pct" in o:
        raise EffdeployError("--resize and --crop-pct both set the resize; pass one of them")
    changes: dict[str, Any] = {}
    if "crop_pct" in o:
        pct = float(o["crop_pct"])
        if not 0 < pct <= 1:
            raise EffdeployError(f"--crop-pct is the crop's share of the resized image in (0, 1] (got {pct:g}); e.g. 0.875")
        changes["resize"] = math.floor(pre.resolution / pct + 1e-9)
    if "resize" in o:
        if int(o["resize"]) < pre.resolution:
            raise EffdeployError(f"--resize {o['resize']} is smaller than the {pre.resolution} px crop; "
                                 f"pass at least {pre.resolution}")
        changes["resize"] = int(o["resize"])
    if "interpolation" in o:
        changes["interpolation"] = str(o["interpolation"])
    for k in ("mean", "std"):
        if k in o:
            vals = tuple(float(x) for x in o[k])
            if len(vals) != 3 or not all(0 <= v <= 1 for v in vals) or (k == "std" and min(vals) <= 0):
                raise EffdeployError(f"--{k} takes three numbers on the 0-1 scale, as torchvision and timm write "
                                     f"them (got {', '.join(map(str, o[k]))}); e.g. --{k} "
                                     + ("0.485,0.456,0.406" if k == "mean" else "0.229,0.224,0.225"))
            changes[k] = tuple(255.0 * v for v in vals)
    return replace(pre, **changes)


def markdown_table() -> str:
    """The torchvision and timm rows as the Markdown table of docs/weights.md."""
    head = ("| --weights-arch | default | padding | BN eps | resolution | resize (crop_pct) | interpolation | "
            "mean / std | source |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    lines = [head]
    for a in KNOWN:
        if a.source not in ("torchvision", "timm"):
            continue
        norm = "ImageNet" if (a.mean, a.std) == IMAGENET else "0.5 / 0.5"
        crop = f"{a.resize} ({a.crop_pct:g})" if a.crop_pct is not None else f"{a.resize}"
        notes = [x for x in (("no released weights" if not a.released else ""),
                             (f"{a.num_classes} classes" if a.num_classes != 1000 else ""),
                             (f"crop mode {a.crop_mode}: refused" if a.crop_mode != "center" else "")) if x]
        lines.append(f"| `{a.key}` | {'yes' if a.default else ''} | {a.padding} | {_eps(a.bn_eps)} | {a.resolution} | "
                     f"{crop} | {a.interpolation} | {norm}{' (' + ', '.join(notes) + ')' if notes else ''} | {a.cite} |")
    return "\n".join(lines) + "\n"
