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

from ..errors import EffdeployError


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
