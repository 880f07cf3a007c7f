"""Running a sweep: each point is a normal bundle build (same cache, gate and statuses) and a latency
measurement on the profile's runtime; points are written as soon as they are measured, so a killed
sweep resumes; a failed point is a row with its error. ``find_phi`` searches the compound rule for
the largest model that fits a latency budget."""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..errors import EffdeployError, first_line
from ..report import info
from .points import Point, append_point, read_points


@dataclass(frozen=True)
class SweepSettings:
    """What makes a point what it is; an earlier run's points are reused only under the same settings."""

    variant: str
    weights: str | None
    profile: str
    calib_data: str | None = None
    calib_images: int = 256
    batch: int = 1
    threads: int | None = None
    iterations: int = 100
    resolution: int | None = None  # one resolution for every point; None: each phi's own

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _gpu_reason(profile: Any) -> str | None:
    """Why a GPU profile's point cannot be timed here (None: a CPU profile, or TensorRT is here)."""
    from ..backends.tensorrt.compat import import_tensorrt

    if not profile.is_gpu:
        return None
    if import_tensorrt() is None:
        return f"not timed: {profile.name} is a GPU target and TensorRT is not installed here"
    return None


def compile_for(path: Path, profile: Any, batch: int) -> Path:
    """A GPU profile's point is its engine: ``effdeploy compile`` here (TensorRT and the GPU refuse
    in one line what they cannot build), for batch 1..``batch``."""
    from ..backends.tensorrt.build import compile_bundle
    from ..backends.tensorrt.plan import CompileOptions

    result = compile_bundle(path, profile, CompileOptions(batch=(1, batch, batch)), quiet=True)
    return Path(result.plan.plan_path)


@contextmanager
def timing_runner(path: Path, batch: int, threads: int | None, profile: Any = None) -> Iterator[tuple[Any, Callable[[], Any]]]:
    """The runtime `bench` uses for the bundle (its graph on the CPU for CPU profiles, the compiled
    engine for GPU profiles), and one call of it on a random batch of ``batch``."""
    import warnings

    from ..runtime.runner import Runner

    target = compile_for(path, profile, batch) if profile is not None and profile.is_gpu else path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # benchmark-only and checked bundles warn once; the table says it
        runner = Runner.open(target, threads=threads)
    with runner:
        r = runner.artifact.preprocessing.resolution
        x = np.random.default_rng(0).standard_normal((batch, 3, r, r)).astype(np.float32)
        yield runner, lambda: runner.infer(x)


def time_bundle(path: Path, batch: int, threads: int | None, iterations: int, profile: Any = None) -> tuple[Any, str]:
    """Latency statistics at batch ``batch`` and the runtime that measured them."""
    from ..backends.timing import TimingPlan, summarize, time_callable

    with timing_runner(path, batch, threads, profile) as (runner, call):
        return summarize(time_callable(call, TimingPlan(warmup=10, iterations=iterations)), batch), runner.backend_name


def layer_breakdown(path: Path, manifest: Any, settings: SweepSettings) -> dict[str, dict[str, float]]:
    """Where the point's CPU latency goes, by kind of layer (ONNX Runtime's profiler, the graph as
    `bench` runs it); see :mod:`effdeploy.sweep.breakdown`."""
    from ..backends.onnxrt import manifest_optimize
    from ..bundle import MODEL
    from .breakdown import profile_breakdown

    return profile_breakdown(path / MODEL, manifest_optimize(manifest), settings.batch, settings.threads)


def measure_point(settings: SweepSettings, profile: Any, phi: float, precision: str, folder: Path) -> Point:
    """Build one point's bundle and time it; any refusal or failure becomes the point's error."""
    from ..bundle import MODEL
    from ..pipeline import BuildRequest, build_bundle

    point = Point(phi=phi, precision=precision)
    out = folder / "bundles" / point.key
    # FP32/FP16 points are judged on the same image folder the INT8 points calibrate on (INT8 on
    # its images calibration did not use), so every point has a top-1 on labelled images
    judge = settings.calib_data if precision != "int8" and settings.calib_data and Path(settings.calib_data).is_dir() else None
    t = time.perf_counter()
    try:
        result = build_bundle(BuildRequest(
            phi=phi, variant=settings.variant, weights=settings.weights, precision=precision, profile=profile, out=out,
            resolution=settings.resolution, verify_data=judge,
            calib_data=settings.calib_data, calib_images=settings.calib_images, allow_parity_failure=True, quiet=True))
        build_s = time.perf_counter() - t
        m = result.bundle.manifest
        comparison = (m.parity.get("verify") or {}).get("comparison") or {}
        q = m.quantization or {}
        labelled = comparison.get("labelled")
        point = Point(
            phi=phi, precision=precision, depth=m.model.depth, width=m.model.width, resolution=m.model.resolution,
            parameters=m.model.parameters, macs=m.graph.get("macs"), status=m.status, model_bytes=m.artifacts[MODEL]["bytes"],
            top1_agreement=comparison.get("top1_agreement"),
            top1_agreement_ci95=tuple(comparison["top1_agreement_ci95"]) if comparison.get("top1_agreement_ci95") else None,
            top1_accuracy=comparison.get("candidate_top1") if labelled else None, build_s=round(build_s, 2),
            cache_hits={"export": bool((m.parity.get("export") or {}).get("export_cache_hit")),
                        "calibration": bool((q.get("calibration") or {}).get("cache_hit"))},
            bundle=str(out))
        reason = _gpu_reason(profile)
        if reason:  # timed on nothing rather than on the CPU under the GPU's name
            return replace(point, timed_on=reason)
        stats, runtime = time_bundle(out, settings.batch, settings.threads, settings.iterations, profile)
        point = replace(point, latency_p50_ms=stats.p50_ms, latency_p90_ms=stats.p90_ms, throughput_ips=stats.throughput,
                        timed_on=f"{runtime} on the GPU" if profile.is_gpu else f"{runtime} on the CPU")
    except EffdeployError as e:
        return Point(phi=phi, precision=precision, error=first_line(e, 300), build_s=round(time.perf_counter() - t, 2))
    except Exception as e:  # a bug, not bad input: still a row, never the end of the sweep
        return Point(phi=phi, precision=precision, error=f"internal error: {type(e).__name__}: {first_line(e, 200)}",
                     build_s=round(time.perf_counter() - t, 2))
    if profile.is_gpu or profile.target_runtime != "onnxruntime":  # the breakdown is ONNX Runtime's profiler:
        return point  # it would explain a latency that was not measured
    try:  # the breakdown explains the latency; a failure there must not lose the measured point
        return replace(point, breakdown=layer_breakdown(out, result.bundle.manifest, settings))
    except Exception as e:
        info(f"note: phi {phi:g} {precision}: no per-layer breakdown ({type(e).__name__}: {first_line(e, 160)})")
        return point


def run_sweep(settings: SweepSettings, profile: Any, phis: tuple[float, ...], precisions: tuple[str, ...],
              folder: Path, quiet: bool = False,
              measure: Callable[..., Point] = measure_point) -> tuple[list[Point], int]:
    """Every (phi, precision), reusing the points an interrupted run of the same sweep finished.
    Returns the points in sweep order and how many were reused."""
    done = read_points(folder, settings.to_dict())
    todo = [(phi, prec) for phi in phis for prec in precisions]
    points, reused, spent, measured = [], 0, 0.0, 0
    for i, (phi, prec) in enumerate(todo):
        key = Point(phi=phi, precision=prec).key
        if key in done:
            points.append(done[key])
            reused += 1
            continue
        t = time.perf_counter()
        p = measure(settings, profile, phi, prec, folder)
        append_point(folder, settings.to_dict(), p)
        spent, measured = spent + time.perf_counter() - t, measured + 1
        left = len(todo) - i - 1 - sum(1 for ph, pr in todo[i + 1:] if Point(phi=ph, precision=pr).key in done)
        eta = f", ETA {spent / measured * left:.0f} s" if left else ""
        what = p.error or (f"p50 {p.latency_p50_ms:.2f} ms" if p.latency_p50_ms is not None else p.timed_on or "")
        info(f"[{i + 1}/{len(todo)}] phi {phi:g} {prec}: {p.status or 'failed'}, {what} ({time.perf_counter() - t:.0f} s{eta})",
             quiet)
        points.append(p)
    return points, reused


MAX_PHI = 8.0  # --find-phi searches up to this phi (B7 is 6; beyond 8 the memory check refuses most machines)


def median_ci(samples_ms: np.ndarray) -> tuple[float, float]:
    """A distribution-free 95 % interval of the median (order statistics n/2 +- 0.98 sqrt(n))."""
    s = np.sort(samples_ms)
    n = len(s)
    half = 0.98 * math.sqrt(n)
    return float(s[max(0, int(n / 2 - half))]), float(s[min(n - 1, int(math.ceil(n / 2 + half)))])


def find_phi(settings: SweepSettings, profile: Any, precision: str, budget_ms: float, folder: Path,
             max_candidates: int = 8, quiet: bool = False,
             latency: Callable[[float], tuple[float, tuple[float, float], Any]] | None = None) -> dict[str, Any]:
    """The largest phi whose measured p50 fits ``budget_ms``: bracket, then interpolate log-latency
    between the bracket's ends (regula falsi), aiming 5 % under the budget; each candidate is timed
    until its p50's interval is narrower than 5 % of the budget (or 800 calls)."""
    measure = latency or (lambda phi: _timed_candidate(settings, profile, precision, phi, folder, budget_ms))
    tried: list[dict[str, Any]] = []

    def probe(phi: float) -> float:
        try:
            p50, ci, spec = measure(phi)
        except EffdeployError as e:  # refused (e.g. does not fit in memory): the bracket's upper end
            tried.append({"phi": round(phi, 3), "latency_p50_ms": math.inf, "error": first_line(e, 200)})
            info(f"  candidate {len(tried)}: phi {phi:.3f}: refused ({first_line(e, 120)})", quiet)
            return math.inf
        tried.append({"phi": round(phi, 3), "latency_p50_ms": p50, "p50_ci95_ms": list(ci), **(spec or {})})
        info(f"  candidate {len(tried)}: phi {phi:.3f}: p50 {p50:.2f} ms (95 % CI {ci[0]:.2f}-{ci[1]:.2f}), "
             f"{'fits' if p50 <= budget_ms else 'over'} {budget_ms:g} ms", quiet)
        return p50

    lo, hi = 0.0, None
    lo_ms = probe(lo)
    if lo_ms > budget_ms:
        return {"found": False, "why": f"phi 0 already takes {lo_ms:.2f} ms > {budget_ms:g} ms", "tried": tried}
    step = 1.0
    while hi is None and len(tried) < max_candidates:
        if lo >= MAX_PHI:
            break
        ms = probe(min(lo + step, MAX_PHI))
        if ms > budget_ms:
            hi, hi_ms = min(lo + step, MAX_PHI), ms
        else:
            lo, lo_ms = min(lo + step, MAX_PHI), ms
            step *= 2
    while hi is not None and len(tried) < max_candidates and lo_ms < 0.9 * budget_ms and hi - lo > 0.02:
        target = math.log(0.95 * budget_ms)
        frac = 0.5 if math.isinf(hi_ms) else (target - math.log(lo_ms)) / (math.log(hi_ms) - math.log(lo_ms))
        phi = lo + min(max(frac, 0.1), 0.9) * (hi - lo)
        ms = probe(phi)
        if ms > budget_ms:
            hi, hi_ms = phi, ms
        else:
            lo, lo_ms = phi, ms
    best = max((t for t in tried if t["latency_p50_ms"] <= budget_ms), key=lambda t: t["phi"])
    return {"found": True, "phi": best["phi"], "latency_p50_ms": best["latency_p50_ms"],
            "within_10pct_under": best["latency_p50_ms"] >= 0.9 * budget_ms, "candidates": len(tried),
            "spec": {k: best.get(k) for k in ("depth", "width", "resolution", "parameters", "macs")}, "tried": tried}


def _timed_candidate(settings: SweepSettings, profile: Any, precision: str, phi: float, folder: Path,
                     budget_ms: float) -> tuple[float, tuple[float, float], dict[str, Any]]:
    """Build phi with random weights (benchmark-only) and time it until its p50 is known to 5 % of the budget."""
    from ..backends.timing import TimingPlan, time_callable
    from ..pipeline import BuildRequest, build_bundle

    if _gpu_reason(profile):
        raise EffdeployError(f"--find-phi needs the target's runtime: {_gpu_reason(profile)}")
    out = folder / "find-phi" / f"phi{phi:.3f}-{precision}"
    m = build_bundle(BuildRequest(phi=round(phi, 3), variant=settings.variant, weights=None, precision=precision,
                                  profile=profile, out=out, quiet=True, allow_parity_failure=True,
                                  resolution=settings.resolution)).bundle.manifest
    with timing_runner(out, settings.batch, settings.threads, profile) as (_, call):
        samples = np.array(time_callable(call, TimingPlan(warmup=10, iterations=50))) * 1e3
        while True:
            lo, hi = median_ci(samples)
            if hi - lo <= 0.05 * budget_ms or len(samples) >= 800:
                break
            more = time_callable(call, TimingPlan(warmup=0, iterations=len(samples)))
            samples = np.concatenate([samples, np.array(more) * 1e3])
    spec = {"depth": m.model.depth, "width": m.model.width, "resolution": m.model.resolution, "parameters": m.model.parameters,
            "macs": m.graph.get("macs")}
    return float(np.median(samples)), (lo, hi), spec
