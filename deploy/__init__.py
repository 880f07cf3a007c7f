"""effdeploy: compound-scaled EfficientNets from PyTorch to verified ONNX bundles and engines.

The package is laid out as the pipeline runs (docs/architecture.md): ``data`` (images, frames,
preprocessing, labels) -> ``model`` -> ``export`` -> ``calibration`` / ``precision`` -> ``verify``
-> ``bundle`` -> ``backends`` (compile) -> ``runtime``, with ``commands`` and ``pipeline`` on top.

The package root imports nothing heavy: ``import effdeploy.runtime`` on a device must not pull in
torch, so the build-side API is resolved lazily. Module paths from before the stage subpackages
(``effdeploy.preprocess``, ``effdeploy.precision`` ...) keep working through :class:`_MovedModules`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from typing import Any, Callable, Mapping, Sequence

__version__ = "0.1.0"

_LAZY = {
    "build_model": ("effdeploy.model.network", "build_model"),
    "model_spec": ("effdeploy.model.spec", "model_spec"),
    "EffdeployError": ("effdeploy.errors", "EffdeployError"),
    "Runner": ("effdeploy.runtime.runner", "Runner"),
    "build": ("effdeploy.pipeline", "build"),
    "load": ("effdeploy.pipeline", "load"),
    "Bundle": ("effdeploy.pipeline", "Bundle"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'effdeploy' has no attribute {name!r}")


def lazy_exports(package: str, table: Mapping[str, Sequence[str]]) -> Callable[[str], Any]:
    """A subpackage's ``__getattr__`` (PEP 562): ``{submodule: names}`` imported on first use, so
    naming the API in ``__init__`` costs no import (torch stays out of the device side)."""
    where = {name: sub for sub, names in table.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name in where:
            return getattr(importlib.import_module(f"{package}.{where[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


# Where each module of the flat layout went (a split module: every module its names went to).
_MOVED: dict[str, tuple[str, ...]] = {
    "effdeploy.archs": ("effdeploy.model.archs",),
    "effdeploy.spec": ("effdeploy.model.spec", "effdeploy.data.preprocess"),
    "effdeploy.weights": ("effdeploy.model.weights",),
    "effdeploy.preprocess": ("effdeploy.data.preprocess",),
    "effdeploy.labels": ("effdeploy.data.labels",),
    "effdeploy.datasets": ("effdeploy.data.datasets",),
    "effdeploy.logits": ("effdeploy.export.logits",),
    "effdeploy.framegraph": ("effdeploy.export.frames", "effdeploy.data.frames", "effdeploy.verify.frames",
                             "effdeploy.runtime.frames", "effdeploy.backends.onnxrt", "effdeploy.backends.tensorrt.build"),
    "effdeploy.quantize_stage": ("effdeploy.precision.int8_stage",),
    "effdeploy.reconstruct": ("effdeploy.precision.reconstruct",),
    "effdeploy.int8": ("effdeploy.precision",),
    "effdeploy.int8.transforms": ("effdeploy.precision.transforms",),
    "effdeploy.repair": ("effdeploy.verify.repair",),
    "effdeploy.benchmark": ("effdeploy.backends.timing", "effdeploy.runtime.benchmark", "effdeploy.model.eager"),
    "effdeploy.profile": ("effdeploy.profiles",),
    "effdeploy.doctor": ("effdeploy.runtime.doctor",),
    "effdeploy.ort_safety": ("effdeploy.backends.ort_safety",),
    "effdeploy.cli": ("effdeploy.commands",),
}


class _MovedModule(types.ModuleType):
    """An old module path: attributes come from the module(s) that hold them now."""

    def __getattr__(self, name: str) -> Any:
        for target in _MOVED[self.__name__]:
            module = importlib.import_module(target)
            if hasattr(module, name):
                return getattr(module, name)
        raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the old module paths (and only those): user code written against the flat layout
    keeps importing. A finder rather than stub files, so the package root lists only the stages."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        return importlib.machinery.ModuleSpec(fullname, self) if fullname in _MOVED else None

    def create_module(self, spec: Any) -> types.ModuleType:
        return _MovedModule(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        module.__path__ = []  # type: ignore[attr-defined]  # a package too: effdeploy.int8.transforms


if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
    sys.meta_path.append(_MovedModules())

__all__ = ["__version__", *_LAZY]
