#!/usr/bin/env python3
"""Issue 23's CPU targets, measured in one run: ONNX Runtime against OpenVINO (f32) on the same
graphs, batch 1, 2 threads, and what ``backend="auto"`` chose.

    python bench/cpu_backends.py --fp32 FP32_BUNDLE --int8 INT8_BUNDLE [--fp32 ... --int8 ...] [--json]

Pairs are matched by order (the FP32 and INT8 bundles of one network). Each runtime is timed with
only its own runner open (ONNX Runtime's spinning threads would steal the other's cores), in
alternating blocks repeated ``--rounds`` times; medians of the best round are compared. Printed:
per bundle the two latencies and auto's choice with ``auto / faster`` (target <= 1.05), and per
network the INT8 speedup over FP32, each on the backend auto chose for it (target >= 1.3 on a VNNI/AMX CPU; on an
AVX2-only CPU the ratio is reported). The CPU model is printed beside every figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def time_runner(open_runner, x: np.ndarray, iterations: int) -> float:
    from effdeploy.backends.timing import TimingPlan, time_callable

    runner = open_runner()
    try:
        return 1e3 * float(np.median(time_callable(lambda: runner.infer(x), TimingPlan(warmup=10, iterations=iterations))))
    finally:
        runner.close()


def measure(bundle: Path, threads: int, rounds: int, iterations: int) -> dict:
    from effdeploy.backends.onnxrt import OnnxRuntimeRunner, manifest_optimize
    from effdeploy.backends.openvino import OpenVinoRunner
    from effdeploy.bundle import load_bundle
    from effdeploy.runtime.runner import open_backend, resolve_artifact

    b = load_bundle(bundle)
    res = b.manifest.preprocessing.resolution
    x = np.random.default_rng(0).standard_normal((1, 3, res, res)).astype(np.float32)
    opens = {"onnxruntime": lambda: OnnxRuntimeRunner(b.model_path, threads=threads, optimize=manifest_optimize(b.manifest)),
             "openvino": lambda: OpenVinoRunner(b.model_path, threads=threads, precision="f32")}
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, opener in opens.items():
            ms = time_runner(opener, x, iterations)
            best[name] = min(best.get(name, ms), ms)
    auto = open_backend(resolve_artifact(bundle), threads=threads, backend="auto")
    choice = auto.choice
    auto.close()
    chosen = choice["choice"]
    return {"bundle": str(bundle), "model": b.manifest.model.name, "precision": b.manifest.precision,
            "p50_ms": best, "auto": chosen, "auto_over_faster": best[chosen] / min(best.values()),
            "auto_timed": choice.get("p50_ms")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fp32", action="append", default=[], help="an FP32 bundle (one per network)")
    ap.add_argument("--int8", action="append", default=[], help="the INT8 bundle of the same network")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if len(args.fp32) != len(args.int8) or not args.fp32:
        ap.error("give --fp32 and --int8 bundles in pairs")
    from effdeploy.backends.timing import cpu_model

    t0 = time.time()
    rows, pairs = [], []
    for f, i in zip(args.fp32, args.int8):
        fp32, int8 = (measure(Path(p), args.threads, args.rounds, args.iterations) for p in (f, i))
        rows += [fp32, int8]
        pairs.append({"model": fp32["model"], "fp32_backend": fp32["auto"], "int8_backend": int8["auto"],
                      "int8_speedup": fp32["p50_ms"][fp32["auto"]] / int8["p50_ms"][int8["auto"]]})
    out = {"cpu": cpu_model(), "threads": args.threads, "rows": rows, "pairs": pairs, "seconds": time.time() - t0}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{out['cpu']}, {args.threads} threads, batch 1 (median ms, best of {args.rounds} alternating rounds)")
        print(f"{'model':20} {'precision':9} {'onnxruntime':>11} {'openvino f32':>12}  auto         auto/faster (<= 1.05)")
        for r in rows:
            print(f"{r['model']:20} {r['precision']:9} {r['p50_ms']['onnxruntime']:11.2f} {r['p50_ms']['openvino']:12.2f}"
                  f"  {r['auto']:12} {r['auto_over_faster']:.3f}")
        for p in pairs:
            print(f"{p['model']}: INT8 ({p['int8_backend']}) over FP32 ({p['fp32_backend']}), each on auto's choice: "
                  f"{p['int8_speedup']:.2f}x (target >= 1.3 on VNNI/AMX)")
    missed = [r for r in rows if r["auto_over_faster"] > 1.05]
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
