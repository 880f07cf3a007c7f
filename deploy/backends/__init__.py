"""Inference backends, one module or subpackage each (Polygraphy-style ``backend/{onnxrt,trt}``).

* :mod:`effdeploy.backends.onnxrt`: ONNX Runtime on the CPU, the reference every bundle is
  verified with.
* :mod:`effdeploy.backends.tensorrt`: ``compat`` (what differs between TensorRT 10 and 11),
  ``plan`` (options -> compile plan, and every refusal), ``build`` (network, config, engine),
  ``runner`` and ``manifest`` (``engine.json`` and GPU detection).

Importing this package imports no backend: each backend imports its library (``onnxruntime``,
``tensorrt``, cuda-python) only when a runner is opened or an engine compiled, so the runtime side
stays torch-free and TensorRT-free until it is asked for TensorRT.

Every runner has the interface of :class:`Runner`: verification, benchmarking and the runtime see
only that, so an ``engine.plan`` and a bundle are interchangeable wherever TensorRT exists.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np

_R = TypeVar("_R", bound="Runner")


class Runner:
    """One backend's model, loaded: ``infer(NCHW float32 batch) -> logits`` (the first output).

    Subclasses set ``name``, ``input_name``, ``input_shape`` ((batch or -1, C, H, W)) and
    ``output_names``; ``with`` closes the runner.
    """

    name: str = "runner"
    input_name: str
    input_shape: tuple
    output_names: list[str]

    def infer(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _R) -> _R:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
