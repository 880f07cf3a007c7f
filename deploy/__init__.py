"""effdeploy: compound-scaled EfficientNets from PyTorch to verified ONNX bundles and engines.

The package root imports nothing heavy: ``import effdeploy.runtime`` on a device must not pull in
torch, so the build-side API is resolved lazily.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "build_model": ("effdeploy.model", "build_model"),
    "model_spec": ("effdeploy.model", "model_spec"),
    "EffdeployError": ("effdeploy.errors", "EffdeployError"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'effdeploy' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
