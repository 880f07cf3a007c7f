"""ONNX Runtime on the CPU: the reference backend every bundle is verified with.

A runner takes a preprocessed NCHW float32 batch and returns logits (:meth:`infer`), or every
output of the graph by name (:meth:`run_all`), so build stages and calibration can use the same
session settings instead of building sessions of their own. Torch-free; ``onnxruntime`` is
imported when a runner is opened.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from . import Runner
from .ort_safety import DISABLED_OPTIMIZERS
from ..errors import EffdeployError, first_line


class OnnxRuntimeRunner(Runner):
    """ONNX Runtime on the CPU: the reference backend that every bundle is verified with."""

    name = "onnxruntime"

    def __init__(self, model_path: "str | Path | Any", threads: int | None = None,
                 providers: Sequence[str] | None = None, optimize: bool = True,
                 session_config: Mapping[str, str] | None = None, profile_dir: Path | None = None):
        """``model_path``: a file, or an in-memory ``onnx.ModelProto`` (build stages, no temp files).
        ``profile_dir``: ONNX Runtime's per-node profiler on, its optimised graph saved there as
        ``optimized.onnx`` (the sweep's per-layer breakdown; ``session.end_profiling()`` gives the file)."""
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
        # TensorRT, see effdeploy.precision.qdq.needs_unoptimized_ort); the manifest says which.
        opts.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        )
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        for key, value in (session_config or {}).items():
            opts.add_session_config_entry(key, value)
        if profile_dir is not None:
            opts.enable_profiling, opts.profile_file_prefix = True, str(Path(profile_dir) / "profile")
            opts.optimized_model_filepath = str(Path(profile_dir) / "optimized.onnx")
        # the graph decides each conv's precision; ORT must not quantize float convs itself (ort_safety)
        try:
            self.session = ort.InferenceSession(
                source, sess_options=opts, providers=list(providers or ["CPUExecutionProvider"]),
                disabled_optimizers=list(DISABLED_OPTIMIZERS) if optimize else None,
            )
        except Exception as e:  # ORT raises its own Fail/InvalidGraph types
            raise EffdeployError(f"ONNX Runtime cannot load {path}: {first_line(e)}") from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_shape = tuple(d if isinstance(d, int) else -1 for d in inp.shape)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.threads = threads or os.cpu_count()

    @property
    def graph_optimization(self) -> str:
        """What the session was opened with, read back from it: "enabled" or "disabled"."""
        import onnxruntime as ort

        level = self.session.get_session_options().graph_optimization_level
        return "disabled" if level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL else "enabled"

    def infer(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        return self.session.run(self.output_names[:1], {self.input_name: batch})[0]

    def run_all(self, batch: np.ndarray, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Every output (or those in ``names``) by name, from one run of the session."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        wanted = list(names) if names is not None else list(self.output_names)
        return dict(zip(wanted, self.session.run(wanted, {self.input_name: batch})))

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]


def manifest_optimize(manifest: Any) -> bool:
    """Graph optimisation as the bundle was verified (off for graphs ORT's CPU optimiser rewrites
    wrongly; see effdeploy.precision.qdq.needs_unoptimized_ort)."""
    quant = getattr(manifest, "quantization", None) or {}
    return quant.get("ort_graph_optimization", "all") != "disabled"


def bundle_runner(bundle: "Any", threads: int | None = None,
                  session_config: Mapping[str, str] | None = None) -> OnnxRuntimeRunner:
    """The ONNX Runtime runner for a bundle's model, with the settings its manifest asks for (refused
    where this CPU would saturate its INT8 weights)."""
    from .cpu_features import check_int8_dot

    check_int8_dot(bundle.manifest, bundle.path, "onnxruntime")
    return OnnxRuntimeRunner(bundle.model_path, threads=threads, optimize=manifest_optimize(bundle.manifest),
                             session_config=session_config)


# --- running a frame graph with ONNX Runtime -------------------------------------------------------


class FrameSession(OnnxRuntimeRunner):
    """A frame-in ONNX graph on ONNX Runtime: ``infer(frames NHWC uint8) -> logits``, the frames
    handed over as they are (the runner's float cast would be wrong for them)."""

    def infer(self, frames: np.ndarray, outputs: Sequence[str] | None = None) -> Any:  # type: ignore[override]
        out = self.session.run(list(outputs or self.output_names[:1]), {self.input_name: frames})
        return out[0] if outputs is None else out
