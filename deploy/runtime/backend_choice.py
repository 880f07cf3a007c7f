"""Which CPU runtime runs a bundle: ONNX Runtime (what every bundle is verified with) or OpenVINO,
by name, or ``auto``: the faster of those installed, timed here once per graph, CPU, library
versions and thread count and cached (like the INT8 dialect timing), because the winner depends
on the CPU (AVX2, VNNI, AMX) and the graph."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from ..errors import EffdeployError
from ..report import info

CPU_BACKENDS = ("onnxruntime", "openvino")
TIMING = "3x40 random"  # how time_backends measures; part of the cache key, so a choice timed otherwise is timed again
CHOICES = (*CPU_BACKENDS, "auto")


def _versions() -> dict[str, str]:
    from ..backends.openvino import import_openvino

    import onnxruntime

    ov = import_openvino()
    return {"onnxruntime": onnxruntime.__version__, "openvino": ov.__version__ if ov is not None else "absent"}


def choice_key(model_path: Path, threads: int | None, precision: str) -> str:
    from ..backends.timing import cpu_model
    from ..files import sha256_file, sha256_json

    return sha256_json({"graph": sha256_file(model_path), "cpu": cpu_model(), "versions": _versions(),
                        "threads": threads, "openvino_precision": precision, "timing": TIMING})


def _load(path: Path) -> dict[str, Any] | None:
    from ..cache import load

    try:
        record = json.loads(load(path) or b"null")
        return record if record.get("choice") in CPU_BACKENDS else None
    except (OSError, ValueError, AttributeError):
        return None  # absent, corrupt or foreign: timed again


def time_backends(open_runner: Callable[[str], Any], rounds: int = 3) -> dict[str, float]:
    """Median batch-1 latency (ms) of each runtime, each timed with only its own runner open
    (ONNX Runtime's spinning threads would otherwise steal the other's cores), alternating over
    ``rounds`` so both see the same machine; the best round of each counts."""
    import numpy as np

    from ..backends.timing import TimingPlan, time_callable

    best: dict[str, float] = {}
    for _ in range(rounds):
        for name in CPU_BACKENDS:
            runner = open_runner(name)
            try:
                # image-like values, not zeros: a constant input can take faster paths in the
                # quantized kernels and chose ONNX Runtime for a graph OpenVINO ran faster on noise
                x = np.random.default_rng(0).standard_normal([d if d > 0 else 1 for d in runner.input_shape]).astype(np.float32)
                ms = 1e3 * float(np.median(time_callable(lambda: runner.infer(x), TimingPlan(warmup=5, iterations=40))))
            finally:
                runner.close()
            best[name] = min(best.get(name, ms), ms)
    return best


def choose_backend(model_path: Path, threads: int | None, precision: str,
                   open_runner: Callable[[str], Any], quiet: bool = True) -> tuple[str, dict[str, Any]]:
    """``auto``: (backend name, the record of the timing); a single installed runtime is chosen
    without timing. The record is cached under the ``backend`` kind."""
    from ..backends.openvino import import_openvino
    from ..cache import cache_folder, store

    if import_openvino() is None:
        return "onnxruntime", {"choice": "onnxruntime", "reason": "the only CPU runtime installed"}
    path = cache_folder("backend") / f"{choice_key(model_path, threads, precision)}.json"
    record = _load(path)
    if record is not None:
        return record["choice"], {**record, "cached": True}
    ms = time_backends(open_runner)
    choice = min(ms, key=ms.get)
    record = {"choice": choice, "p50_ms": ms, "threads": threads, "openvino_precision": precision}
    store(path, json.dumps(record))
    info(f"backend auto: {choice} ({', '.join(f'{k} {v:.2f} ms' for k, v in ms.items())} at batch 1)", quiet)
    return choice, {**record, "cached": False}


def check_backend_name(backend: str | None) -> None:
    if backend is not None and backend not in CHOICES:
        raise EffdeployError(f"backend must be one of {', '.join(CHOICES)} (got {backend!r})")
