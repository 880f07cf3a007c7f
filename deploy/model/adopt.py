"""A model object from a notebook -> the function effdeploy rebuilds: which family, phi and library
function it is, and its weights. Only modules effdeploy reproduces exactly are adopted (effdeploy's
own, lukemelas' ``efficientnet_pytorch`` / ``efficientnet_lite_pytorch``, timm's and torchvision's
EfficientNet and EfficientNet-Lite); the rebuild is then checked against the given module itself
(:func:`module_parity`), so a module that only looks like one is refused, never re-implemented."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import EffdeployError

# effdeploy's rebuild must give the module's own logits to this share of their largest magnitude
MODULE_PARITY_RTOL = 1e-4


@dataclass(frozen=True)
class Adopted:
    """What a given module is, in effdeploy's terms (the build then runs as for a checkpoint)."""

    phi: float
    variant: str
    weights_arch: str | None  # "timm:efficientnet_b0.ra_in1k"; None for effdeploy's own module
    num_classes: int
    resolution: int | None
    origin: str  # "efficientnet_lite_pytorch.model.EfficientNet (efficientnet-lite0)"
    preprocessing: Mapping[str, Any]  # a timm module's pretrained_cfg preprocessing (0-1 mean/std)


def describe(module: Any) -> str:
    cls = type(module)
    return f"{cls.__module__}.{cls.__name__}"


def adopt(module: Any) -> Adopted:
    """Identify ``module``; one line naming what is not reproducible otherwise."""
    from .network import EfficientNet

    where = type(module).__module__
    if isinstance(module, EfficientNet):
        s = module.spec
        return Adopted(s.phi, s.variant, None, s.num_classes, s.resolution, f"{describe(module)} ({s.name})", {})
    if where.startswith(("efficientnet_pytorch", "efficientnet_lite_pytorch")):
        return _lukemelas(module, lite=where.startswith("efficientnet_lite_pytorch"))
    if where.startswith("timm.models"):
        return _timm(module)
    if where.startswith("torchvision.models.efficientnet"):
        return _torchvision(module)
    raise EffdeployError(
        f"effdeploy.build takes EfficientNet modules of effdeploy, timm, torchvision or lukemelas' efficientnet_pytorch "
        f"(got {describe(module)}); for another implementation save its state_dict and pass it as weights= with "
        "weights_arch=, or build by phi")


def _phi_of(width: float, depth: float, lite: bool, origin: str) -> float:
    from .spec import B_COEFFICIENTS, LITE_COEFFICIENTS

    table = LITE_COEFFICIENTS if lite else B_COEFFICIENTS
    for phi, (w, d, _, _) in table.items():
        if (w, d) == (width, depth):
            return float(phi)
    raise EffdeployError(f"{origin} has width {width:g} and depth {depth:g}, which no released "
                         f"efficientnet-{'lite' if lite else 'b'}N has; build it by phi instead")


def _lukemelas(module: Any, lite: bool) -> Adopted:
    gp = module._global_params
    origin = describe(module)
    phi = _phi_of(float(gp.width_coefficient), float(gp.depth_coefficient), lite, origin)
    variant = "lite" if lite else "b"
    name = f"efficientnet-{variant}{int(phi)}"
    return Adopted(phi, variant, f"lukemelas:{name}", int(gp.num_classes), int(gp.image_size) if gp.image_size else None,
                   f"{origin} ({name})", {})


def _timm(module: Any) -> Adopted:
    from .archs import KNOWN, parse_weights_arch

    cfg = dict(getattr(module, "pretrained_cfg", None) or {})
    arch, tag = cfg.get("architecture"), cfg.get("tag") or ""
    names = {a.name for a in KNOWN if a.source == "timm"}
    if arch not in names:
        raise EffdeployError(f"{describe(module)} is timm's {arch or 'unnamed model'}, not one of the EfficientNet / "
                             f"EfficientNet-Lite models effdeploy reproduces ({', '.join(sorted(names)[:4])}, ...)")
    known_tag = any(a.name == arch and a.tag == tag for a in KNOWN if a.source == "timm")
    entry = parse_weights_arch(f"timm:{arch}" + (f".{tag}" if known_tag else ""))
    size = cfg.get("input_size") or [None]
    pre = {k: (list(cfg[k]) if isinstance(cfg[k], (list, tuple)) else cfg[k])
           for k in ("crop_pct", "interpolation", "mean", "std") if cfg.get(k) is not None}
    return Adopted(float(entry.phi), entry.variant, entry.key, int(module.num_classes),
                   int(size[-1]) if size[-1] else None, f"{describe(module)} ({entry.key})", pre)


def _torchvision(module: Any) -> Adopted:
    """torchvision's module does not record its variant: B0..B7 differ in parameter count (with the
    module's class count), and V2 (Fused-MBConv) matches none."""
    from .spec import estimate_size, model_spec

    classes = int(module.classifier[-1].out_features)
    count = sum(int(p.numel()) for p in module.parameters())
    for phi in range(8):
        if estimate_size(model_spec(phi, "b", num_classes=classes)).parameters == count:
            return Adopted(float(phi), "b", f"torchvision:efficientnet_b{phi}", classes, None,
                           f"{describe(module)} (efficientnet_b{phi})", {})
    raise EffdeployError(f"{describe(module)} with {count:,} parameters is none of torchvision's efficientnet_b0..b7 "
                         "(EfficientNet V2 is not an EfficientNet-B); build it by phi instead")


def module_state_file(module: Any) -> Any:
    """The module's weights as a safetensors file in the cache (keyed by their content), so the
    build reads them like any checkpoint and ``effdeploy verify`` can rebuild the eager model later."""
    import hashlib

    import torch
    from safetensors.torch import save

    from ..cache import cache_folder
    from ..files import atomic_write, sha256_file

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()
               if isinstance(v, torch.Tensor)}
    data = save(tensors, metadata={"module": describe(module)})
    # A plain safetensors file (the weights loader reads it by path), named by its sha256: an entry
    # whose bytes no longer match its name (a bit flip, a truncation) is written again.
    digest = hashlib.sha256(data).hexdigest()
    path = cache_folder("modules") / f"{digest[:32]}.safetensors"
    try:
        if path.is_file() and sha256_file(path) == digest:
            return path
        atomic_write(path, data)
    except OSError:
        raise EffdeployError(f"cannot write the module's weights to the cache ({path.parent}); set EFFDEPLOY_CACHE_DIR "
                             "to a writable folder") from None
    return path


def module_parity(module: Any, ours: Any, x: Any) -> dict[str, Any]:
    """effdeploy's rebuild against the given module on the same inputs (both eval mode)."""
    import torch

    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            theirs = module(x).float()
            mine = ours(x).float()
    finally:
        module.train(was_training)
    if theirs.shape != mine.shape:
        raise EffdeployError(f"effdeploy's rebuild gives logits of shape {tuple(mine.shape)}, the module "
                             f"{tuple(theirs.shape)}: not adopted")
    scale = float(theirs.abs().max())
    err = float((theirs - mine).abs().max())
    rel = err / max(scale, 1e-12)
    if rel > MODULE_PARITY_RTOL:
        raise EffdeployError(f"effdeploy's rebuild of {describe(module)} differs from it (max |difference| {err:.3g}, "
                             f"{rel:.2e} of the logits' scale > {MODULE_PARITY_RTOL:g}): not adopted; save its "
                             "state_dict and report the module")
    return {"inputs": int(x.shape[0]), "max_abs": err, "relative": rel, "rtol": MODULE_PARITY_RTOL}
