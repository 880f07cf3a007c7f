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


def infer_in_batches_of(backend: Runner, x: np.ndarray) -> np.ndarray:
    """``backend.infer`` over ``x`` in the batch size its engine was built for (a fixed first input
    dimension; the last chunk padded with zeros and its padding dropped); one call when dynamic."""
    fixed = backend.input_shape[0] if backend.input_shape else -1
    if fixed is None or fixed <= 0 or fixed == len(x):
        return np.asarray(backend.infer(x), dtype=np.float32)
    parts = []
    for i in range(0, len(x), fixed):
        chunk = x[i:i + fixed]
        n = len(chunk)
        if n < fixed:
            chunk = np.concatenate([chunk, np.zeros((fixed - n, *chunk.shape[1:]), chunk.dtype)])
        parts.append(np.asarray(backend.infer(chunk), dtype=np.float32)[:n])
    return np.concatenate(parts)
