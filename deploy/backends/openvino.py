"""OpenVINO on the CPU: the same ONNX graph a bundle holds, run by Intel's CPU plugin, which on many
x86 CPUs is faster than ONNX Runtime. Torch-free; ``openvino`` is imported when a runner is opened.

The inference precision is always explicit: OpenVINO's CPU plugin runs FP32 models in bf16 by
default where the CPU has AMX or AVX-512 BF16 (``INFERENCE_PRECISION_HINT``), which is not the
function a bundle was verified as. ``precision="f32"`` (the default) pins FP32; ``"bf16"`` must be
asked for and judged (``effdeploy verify --backend openvino --ov-precision bf16``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from . import Runner
from ..errors import EffdeployError, first_line

MISSING_OPENVINO = "OpenVINO is not installed: pip install 'effdeploy[openvino]'"
PRECISIONS = ("f32", "bf16")


def import_openvino() -> Any:
    """The ``openvino`` module, or None where it is not installed."""
    try:
        import openvino
    except ImportError:
        return None
    return openvino


class OpenVinoRunner(Runner):
    """A bundle's ONNX graph compiled by OpenVINO for the CPU, latency-oriented (one request)."""

    name = "openvino"

    def __init__(self, model_path: str | Path, threads: int | None = None, precision: str = "f32"):
        ov = import_openvino()
        if ov is None:
            raise EffdeployError(MISSING_OPENVINO)
        if precision not in PRECISIONS:
            raise EffdeployError(f"OpenVINO precision must be one of {', '.join(PRECISIONS)} (got {precision!r})")
        path = Path(model_path)
        if not path.is_file():
            raise EffdeployError(f"ONNX model {path} does not exist")
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            core = ov.Core()
            self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        except Exception as e:  # OpenVINO raises RuntimeError subclasses of its own
            raise EffdeployError(f"OpenVINO cannot load {path}: {first_line(e)}") from None
        self.request = self.compiled.create_infer_request()
        inp = self.compiled.inputs[0]
        self.input_name = inp.get_any_name()
        self.input_shape = tuple(d.get_length() if d.is_static else -1 for d in inp.get_partial_shape())
        self.output_names = [o.get_any_name() for o in self.compiled.outputs]
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")  # read back: what the plugin really uses
        self.precision = hint.to_string() if hasattr(hint, "to_string") else str(hint)
        if precision == "bf16" and self.precision != "bf16":  # a CPU without bf16 (AVX2): the plugin runs f32
            import warnings

            warnings.warn(f"this CPU has no bf16 support; OpenVINO runs {path.name} in {self.precision} (what "
                          "--ov-precision f32, the default, runs)", stacklevel=2)
        self.threads = threads or os.cpu_count()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        result = self.request.infer({0: batch})
        return np.asarray(result[self.compiled.outputs[0]])

    def close(self) -> None:
        self.request = None
        self.compiled = None


class OpenVinoFrameRunner(OpenVinoRunner):
    """A bundle's frame-in graph on OpenVINO: ``infer(frames NHWC uint8) -> logits``, the frames
    handed over as they are (the float cast of :meth:`OpenVinoRunner.infer` would be wrong for them)."""

    def infer(self, frames: np.ndarray) -> np.ndarray:
        result = self.request.infer({0: np.ascontiguousarray(frames)})
        return np.asarray(result[self.compiled.outputs[0]])
