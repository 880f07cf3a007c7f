"""Export parity: the exported FP32 graph on ONNX Runtime against the eager model on the same
inputs, before anything else is judged against that graph.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..model.eager import run_eager


def check_parity(model: Any, onnx_path: Path, inputs: Sequence[np.ndarray], tolerance: float = 1e-4) -> dict[str, Any]:
    """Eager vs ONNX Runtime on each named input set; fail when max abs diff exceeds ``tolerance``
    times the logit scale (the largest |eager logit|, at least 1): float32 rounding grows with the
    values, and a network whose logits reach the hundreds differs by more than 1e-4 in absolute terms
    without any exporter fault."""
    from ..backends.onnxrt import OnnxRuntimeRunner
    from ..export.logits import run_batched
    from .gate import compare

    runner = OnnxRuntimeRunner(onnx_path)
    figures = {}
    scale = 1.0
    try:
        for name, batch in inputs:
            eager = run_eager(model, batch)
            scale = max(scale, float(np.abs(eager).max()))
            c = compare(eager, run_batched(runner.infer, batch))
            figures[name] = {"max_abs": c.max_abs, "mean_abs": c.mean_abs,
                             "top1_agreement": c.top1_agreement, "samples": c.samples}
    finally:
        runner.close()
    worst = max(f["max_abs"] for f in figures.values())
    result = {"tolerance": tolerance, "logit_scale": scale, "max_abs": worst, "inputs": figures,
              "passed": worst <= tolerance * scale}
    return result
