"""Soak: a camera app's hours in minutes. `Runner.stream` over a synthetic camera (OpenCV-drawn
frames: 640x480 into the bundle's frame-in graph, 1280x720 through preprocess(), now and then a
frame of another size mid-stream, and one stall of the source), for a fixed number of frames.

Prints the process's resident memory (RSS) after warm-up, in the middle and at the end, p50/p99
capture-to-prediction latency per quarter of the run, and frames dropped; against the targets:
RSS growth after warm-up <= 5 %, p99 of the last quarter <= 1.2 x the first quarter's.

    python bench/soak.py [--frames 20000] [--bundle DIR] [--drop-frames] [--json]

Without --bundle it builds one: EfficientNet-Lite0 at 224 px, random weights (latency only),
cpu profile, with a 640x480 frame-in graph.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np

SIZES = ((480, 640), (720, 1280))  # (height, width): the frame-in graph's size, and one through preprocess()
ODD = (600, 800)  # a size that arrives now and then
WARMUP = 200


def rss_bytes() -> int:
    """Resident set size from /proc (psutil is not a dependency; Linux is where the soak runs)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def camera_pool(seed: int = 0) -> dict[tuple[int, int], list[np.ndarray]]:
    """A few OpenCV-drawn frames per size (gradient, moving shapes, text), BGR uint8."""
    import cv2

    rng = np.random.default_rng(seed)
    pool = {}
    for h, w in (*SIZES, ODD):
        frames = []
        for i in range(6):
            img = np.zeros((h, w, 3), np.uint8)
            img[:] = np.linspace(0, 255, w, dtype=np.uint8)[None, :, None]
            c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.circle(img, c, int(min(h, w) * 0.2), tuple(int(v) for v in rng.integers(0, 255, 3)), -1)
            cv2.rectangle(img, (w // 8, h // 8), (w // 3, h // 2), (0, 255, 0), 4)
            cv2.putText(img, f"frame {i}", (20, h - 30), cv2.FONT_HERSHEY_SIMPLEX, 1.5, (255, 255, 255), 3)
            frames.append(img)
        pool[(h, w)] = frames
    return pool


def camera(n: int, pool: dict, stall_at: int, stall_s: float) -> Iterator[np.ndarray]:
    """``n`` frames alternating the two sizes (a copy each, as a decoder hands out fresh buffers),
    an odd-sized one every 997th, and one stall of ``stall_s`` before frame ``stall_at``."""
    for i in range(n):
        if i == stall_at:
            time.sleep(stall_s)
        size = ODD if i % 997 == 996 else SIZES[i % 2]
        frames = pool[size]
        yield frames[i % len(frames)].copy()


def build_default(out: Path) -> Path:
    from effdeploy.data.frames import parse_frames
    from effdeploy.pipeline import BuildRequest, build_bundle
    from effdeploy.profiles import load_profile

    build_bundle(BuildRequest(phi=0, variant="lite", profile=load_profile("cpu"), out=out, quiet=True,
                              frames=parse_frames("640x480")))
    return out


def soak(bundle: Path, frames: int, drop_frames: bool = False, stall_s: float = 0.5) -> dict:
    import warnings

    from effdeploy.runtime.runner import Runner

    pool = camera_pool()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: benchmark-only
        runner = Runner.open(bundle, threads=2)
    lat: list[float] = []
    paths: dict[str, int] = {}
    rss: dict[str, int] = {}
    dropped = 0
    t0 = time.perf_counter()
    with runner:
        for r in runner.stream(camera(frames, pool, frames // 2, stall_s), drop_frames=drop_frames):
            lat.append(r.latency_s)
            paths[r.path] = paths.get(r.path, 0) + 1
            dropped = r.dropped
            if len(lat) == min(WARMUP, frames // 4):
                rss["after_warmup"] = rss_bytes()
            elif len(lat) == frames // 2:
                rss["middle"] = rss_bytes()
        rss["end"] = rss_bytes()
    wall = time.perf_counter() - t0
    arr = np.array(lat) * 1e3
    quarters = [arr[i * len(arr) // 4:(i + 1) * len(arr) // 4] for i in range(4)]
    q = [{"p50_ms": float(np.percentile(x, 50)), "p99_ms": float(np.percentile(x, 99))} for x in quarters]
    growth = rss["end"] / rss["after_warmup"] - 1
    return {"frames": frames, "classified": len(lat), "dropped": dropped, "paths": paths, "seconds": round(wall, 1),
            "rss_bytes": rss, "rss_growth": growth, "quarters": q, "p99_last_over_first": q[3]["p99_ms"] / q[0]["p99_ms"],
            "stall_s": stall_s, "targets": {"rss_growth_max": 0.05, "p99_ratio_max": 1.2}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=20000)
    ap.add_argument("--bundle", type=Path)
    ap.add_argument("--drop-frames", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="effdeploy-soak-") as tmp:
        bundle = args.bundle or build_default(Path(tmp) / "lite0")
        r = soak(bundle, args.frames, args.drop_frames)
    import platform

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    r["cpu"] = cpu
    ok = r["rss_growth"] <= 0.05 and r["p99_last_over_first"] <= 1.2 and r["classified"] + r["dropped"] == r["frames"]
    r["met"] = ok
    if args.json:
        print(json.dumps(r))
        return 0 if ok else 1
    from effdeploy.report import table

    mb = {k: f"{v / 2 ** 20:.1f}" for k, v in r["rss_bytes"].items()}
    print(f"{r['classified']} of {r['frames']} frames classified ({r['dropped']} dropped) in {r['seconds']} s on {cpu}; "
          f"paths {r['paths']}; one {r['stall_s']} s stall of the source at the middle")
    print(table([("RSS after warm-up / middle / end (MiB)", f"{mb['after_warmup']} / {mb['middle']} / {mb['end']}"),
                 ("RSS growth after warm-up", f"{100 * r['rss_growth']:+.2f} % (target <= 5 %)")]
                + [(f"quarter {i + 1} latency p50 / p99 (ms)", f"{x['p50_ms']:.2f} / {x['p99_ms']:.2f}")
                   for i, x in enumerate(r["quarters"])]
                + [("p99 last / first quarter", f"{r['p99_last_over_first']:.2f} (target <= 1.2)")],
                ["measure", "value"]))
    print("targets met" if ok else "targets MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
