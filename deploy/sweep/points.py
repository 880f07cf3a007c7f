"""The sweep's arithmetic, pure: which phis, which points are on the Pareto front, which point a
latency budget recommends, how latency grows with multiply-adds, and the points file a sweep
resumes from. No builds and no timing here (:mod:`effdeploy.sweep.run` does those)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..errors import EffdeployError

POINTS_FILE = "points.jsonl"
MAX_POINTS = 64


def parse_phis(text: str) -> tuple[float, ...]:
    """``0,1,2`` (a list), ``0:4`` (0..4 step 1, both ends in) or ``0:2:0.5``; one line when malformed."""
    text = str(text).strip()
    try:
        if ":" in text:
            parts = [float(p) for p in text.split(":")]
            if len(parts) not in (2, 3):
                raise ValueError
            start, stop, step = parts[0], parts[1], parts[2] if len(parts) == 3 else 1.0
            if not step > 0 or not stop >= start:
                raise ValueError
            n = int(math.floor((stop - start) / step + 1e-9)) + 1
            if n > MAX_POINTS:
                raise EffdeployError(f"--phi {text} gives {n} values; a sweep takes at most {MAX_POINTS}")
            phis = tuple(round(start + i * step, 6) for i in range(n))
        else:
            phis = tuple(float(p) for p in text.split(",") if p.strip())
    except (ValueError, OverflowError):
        raise EffdeployError(f"--phi takes a list (0,1,2) or a range START:STOP[:STEP] (0:4, 0:2:0.5); got {text!r}") from None
    if not phis or any(p < 0 or not math.isfinite(p) for p in phis):
        raise EffdeployError(f"--phi values must be numbers >= 0 (got {text!r})")
    if len(phis) > MAX_POINTS:
        raise EffdeployError(f"--phi {text} gives {len(phis)} values; a sweep takes at most {MAX_POINTS}")
    return tuple(dict.fromkeys(phis))  # in order, no repeats


def parse_latency(text: str | None) -> float | None:
    """``5ms``, ``5`` (ms), ``0.005s`` -> milliseconds."""
    if text is None:
        return None
    t = str(text).strip().lower()
    scale = 1000.0 if t.endswith("s") and not t.endswith("ms") else 1.0
    try:
        value = float(t.removesuffix("ms").removesuffix("s")) * scale
    except ValueError:
        raise EffdeployError(f"--latency-budget takes a time like 5ms or 0.005s (got {text!r})") from None
    if value <= 0 or not math.isfinite(value):
        raise EffdeployError(f"--latency-budget must be > 0 (got {text!r})")
    return value


@dataclass(frozen=True)
class Point:
    """One (phi, precision) of a sweep: what was built and what it measured (None: not measured)."""

    phi: float
    precision: str
    depth: float | None = None
    width: float | None = None
    resolution: int | None = None
    parameters: int | None = None
    macs: int | None = None
    status: str | None = None
    latency_p50_ms: float | None = None
    latency_p90_ms: float | None = None
    throughput_ips: float | None = None
    timed_on: str | None = None  # the runtime that timed it, or why nothing did
    top1_agreement: float | None = None
    top1_agreement_ci95: tuple[float, float] | None = None
    top1_accuracy: float | None = None
    model_bytes: int | None = None
    build_s: float | None = None
    cache_hits: Mapping[str, bool] = field(default_factory=dict)
    # per kind of layer: ms per call and multiply-adds, from ONNX Runtime's profiler (CPU points)
    breakdown: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    bundle: str | None = None
    error: str | None = None
    pareto: bool = False

    @property
    def key(self) -> str:
        return f"phi{self.phi:g}-{self.precision}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["top1_agreement_ci95"] = list(self.top1_agreement_ci95) if self.top1_agreement_ci95 else None
        d["cache_hits"] = dict(self.cache_hits)
        d["breakdown"] = {k: dict(v) for k, v in self.breakdown.items()}
        return d

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "Point":
        d = {k: v for k, v in d.items() if k in Point.__dataclass_fields__}
        if d.get("top1_agreement_ci95"):
            d["top1_agreement_ci95"] = tuple(d["top1_agreement_ci95"])
        return Point(**d)


def quality_measure(points: Sequence[Point]) -> str:
    """One measure for the whole table: accuracy only if every timed point has it."""
    timed = [p for p in points if p.latency_p50_ms is not None]
    return "top-1 accuracy" if timed and all(p.top1_accuracy is not None for p in timed) else "multiply-adds (proxy)"


def pareto(points: Sequence[Point]) -> list[Point]:
    """The points with ``pareto`` set: measured, and no other point both at most as slow and at
    least as good with one of the two strictly better."""
    measure = quality_measure(points)

    def q(p: Point) -> float | None:
        if measure == "top-1 accuracy":
            return p.top1_accuracy
        return float(p.macs) if p.macs is not None else None

    out = []
    for p in points:
        lat, qual = p.latency_p50_ms, q(p)
        front = lat is not None and qual is not None and p.error is None and not any(
            o is not p and o.error is None and o.latency_p50_ms is not None and q(o) is not None
            and o.latency_p50_ms <= lat and q(o) >= qual and (o.latency_p50_ms < lat or q(o) > qual)
            for o in points)
        out.append(replace(p, pareto=front))
    return out


def recommend(points: Sequence[Point], budget_ms: float) -> dict[str, dict[str, Any]]:
    """Per precision, the largest phi whose p50 fits the budget, with the line saying why."""
    out: dict[str, dict[str, Any]] = {}
    for precision in dict.fromkeys(p.precision for p in points):
        mine = [p for p in points if p.precision == precision and p.error is None and p.latency_p50_ms is not None]
        fits = [p for p in mine if p.latency_p50_ms <= budget_ms]
        if fits:
            best = max(fits, key=lambda p: (p.phi, -p.latency_p50_ms))
            over = [p for p in mine if p.phi > best.phi]
            why = (f"phi {best.phi:g} is the largest that fits: p50 {best.latency_p50_ms:.2f} ms <= {budget_ms:g} ms"
                   + (f"; phi {min(over, key=lambda p: p.phi).phi:g} takes "
                      f"{min(over, key=lambda p: p.phi).latency_p50_ms:.2f} ms" if over else "; the largest phi swept"))
            out[precision] = {"point": best.key, "phi": best.phi, "latency_p50_ms": best.latency_p50_ms, "why": why}
        elif mine:
            fastest = min(mine, key=lambda p: p.latency_p50_ms)
            out[precision] = {"point": None, "why": f"nothing fits {budget_ms:g} ms: the fastest, phi {fastest.phi:g}, "
                                                    f"takes {fastest.latency_p50_ms:.2f} ms"}
    return out


def latency_exponent(points: Sequence[Point]) -> dict[str, dict[str, float]]:
    """Per precision, the least-squares slope of log(latency) on log(MACs): 1 means latency grows
    like the multiply-adds (the paper's FLOPs rule, about 2^phi); below 1, bigger models use the
    target better; above 1, they cost more than their arithmetic (memory-bound layers)."""
    out = {}
    for precision in dict.fromkeys(p.precision for p in points):
        xy = [(math.log(p.macs), math.log(p.latency_p50_ms)) for p in points
              if p.precision == precision and p.macs and p.latency_p50_ms and p.error is None]
        if len(xy) < 2 or len({x for x, _ in xy}) < 2:
            continue
        mx, my = sum(x for x, _ in xy) / len(xy), sum(y for _, y in xy) / len(xy)
        slope = sum((x - mx) * (y - my) for x, y in xy) / sum((x - mx) ** 2 for x, _ in xy)
        out[precision] = {"exponent": slope, "points": len(xy)}
    return out


# --- the points file: a sweep's progress, one line per finished point ----------------------------


def read_points(folder: Path, settings: Mapping[str, Any]) -> dict[str, Point]:
    """The points an earlier run of the same sweep finished (same settings), by key; a line cut
    short by a kill is ignored (it is measured again)."""
    path = folder / POINTS_FILE
    done: dict[str, Point] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return done
    for line in lines:
        try:
            d = json.loads(line)
            if d.get("settings") != dict(settings):
                continue
            p = Point.from_dict(d["point"])
        except (ValueError, KeyError, TypeError, AttributeError):  # a line cut short, or not ours
            continue
        if p.error is None and (p.latency_p50_ms is not None or p.timed_on):  # failed points are tried again
            done[p.key] = p
    return done


def append_point(folder: Path, settings: Mapping[str, Any], point: Point) -> None:
    """One line per finished point, flushed and synced before the next point starts."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / POINTS_FILE
    with open(path, "a+b") as f:  # a line a kill cut short gets its own line end first
        if f.tell() and (f.seek(-1, os.SEEK_END), f.read(1))[1] != b"\n":
            f.write(b"\n")
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"settings": dict(settings), "point": point.to_dict()}) + "\n")
        f.flush()
        os.fsync(f.fileno())


def csv_rows(points: Iterable[Point]) -> list[list[Any]]:
    cols = ["phi", "precision", "depth", "width", "resolution", "parameters", "macs", "status", "latency_p50_ms",
            "latency_p90_ms", "throughput_ips", "timed_on", "top1_agreement", "top1_accuracy", "model_bytes", "build_s",
            "pareto", "error"]
    return [cols] + [[getattr(p, c) if getattr(p, c) is not None else "" for c in cols] for p in points]
