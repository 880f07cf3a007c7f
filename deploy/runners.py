"""Runners: one small interface per inference backend (Polygraphy-style).

A runner takes a preprocessed NCHW float32 batch and returns logits. Verification, benchmarking
and the runtime only see this interface, so an ``engine.plan`` and a bundle are interchangeable
wherever TensorRT exists. Torch-free.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from .errors import EffdeployError


@runtime_checkable
class InferenceRunner(Protocol):
    name: str
    input_name: str
    input_shape: tuple  # (batch or -1, C, H, W)

    def infer(self, batch: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


class OnnxRuntimeRunner:
    """ONNX Runtime on the CPU: the reference backend that every bundle is verified with."""

    name = "onnxruntime"

    def __init__(self, model_path: "str | Path | Any", threads: int | None = None,
                 providers: Sequence[str] | None = None, optimize: bool = True,
                 session_config: Mapping[str, str] | None = None):
        """``model_path``: a file, or an in-memory ``onnx.ModelProto`` (build stages, no temp files)."""
        import onnxruntime as ort

        if hasattr(model_path, "SerializeToString"):
            source: str | bytes = model_path.SerializeToString()
            path = Path("<in-memory model>")
        else:
            path = Path(model_path)
            if not path.is_file():
                raise EffdeployError(f"ONNX model {path} does not exist")
            source = str(path)
        opts = ort.SessionOptions()
        # optimize=False for graphs ORT's CPU optimiser rewrites wrongly (FP16 Q/DQ graphs made for
        # TensorRT, see effdeploy.precision.needs_unoptimized_ort); the manifest says which.
        opts.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        )
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        for key, value in (session_config or {}).items():
            opts.add_session_config_entry(key, value)
        try:
            self.session = ort.InferenceSession(
                source, sess_options=opts, providers=list(providers or ["CPUExecutionProvider"])
            )
        except Exception as e:  # ORT raises its own Fail/InvalidGraph types
            raise EffdeployError(f"ONNX Runtime cannot load {path}: {str(e).splitlines()[0]}") from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_shape = tuple(d if isinstance(d, int) else -1 for d in inp.shape)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.threads = threads or os.cpu_count()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        return self.session.run(self.output_names[:1], {self.input_name: batch})[0]

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]

    def __enter__(self) -> "OnnxRuntimeRunner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def manifest_optimize(manifest: Any) -> bool:
    """Graph optimisation as the bundle was verified (off for graphs ORT's CPU optimiser rewrites
    wrongly; see effdeploy.precision.needs_unoptimized_ort)."""
    quant = getattr(manifest, "quantization", None) or {}
    return quant.get("ort_graph_optimization", "all") != "disabled"


def bundle_runner(bundle: "Any", threads: int | None = None,
                  session_config: Mapping[str, str] | None = None) -> OnnxRuntimeRunner:
    """The ONNX Runtime runner for a bundle's model, with the settings its manifest asks for."""
    return OnnxRuntimeRunner(bundle.model_path, threads=threads, optimize=manifest_optimize(bundle.manifest),
                             session_config=session_config)
