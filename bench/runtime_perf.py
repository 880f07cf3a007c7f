#!/usr/bin/env python3
"""Issue 5 performance targets, measured in one run and printed as three ratios with pass/fail.

    python bench/runtime_perf.py                      # builds bundles/efficientnet-b0-fp32-cpu once
    python bench/runtime_perf.py --bundle DIR --json  # an existing B0 FP32 bundle; JSON on stdout
    python bench/runtime_perf.py --cpu-backends --fp32 LITE0_FP32 --int8 LITE0_INT8 --fp32 B0_FP32 --int8 B0_INT8

1. Runner end-to-end latency on a 1920x1080 RGB frame (``runner.classify``: preprocessing,
   inference, top-5) over its engine-only latency (``runner.infer`` on a ready batch):
   B0, FP32, ONNX Runtime, batch 1. Target <= 1.10. Before each end-to-end call the next frame is
   written into the frame buffer, untimed, as a camera decoder would.
2. Eager PyTorch latency over ONNX Runtime latency for the same FP32 model and weights, batch 1,
   2 threads each. Target >= 3.
3. Preprocessing of a 1080p frame on one core (a child process pinned to one CPU) over 2 ms.
   Target <= 1.

4. Issue 15: frame-in end-to-end (a uint8 1080p frame into the bundle's frame-in graph, top-5 out,
   ``runner.classify``) over the model-only compute latency (the plain graph on a ready tensor),
   batch 1. Target <= 1.10. Timed for each ``--frame-bundle`` (default: a B0 FP32 bundle built once
   with ``--frame 1920x1080``), interleaved with today's CPU path and the frame graph's
   preprocessing part alone, so the figure says where the frame-in time goes. Where OpenVINO is
   installed, the same two graphs run by OpenVINO too (issue 23, informational), and how far its
   frame-in logits are from ONNX Runtime's.

5. Issue 23 (``--cpu-backends --fp32 FP32_BUNDLE --int8 INT8_BUNDLE [...]``, this part alone):
   ONNX Runtime against OpenVINO (f32) on the same graphs, batch 1, and what ``backend="auto"``
   chose: ``auto / faster`` per bundle (target <= 1.05), and per network (pairs matched by order)
   INT8 over FP32 on auto's choices and on each runtime (target >= 1.3 on a VNNI/AMX CPU; on an
   AVX2-only CPU the ratio is reported). Each runtime is timed with only its own runner open (ONNX
   Runtime's spinning threads would steal the other's cores); every (bundle, runtime) is timed once
   per round in turn, ``--rounds`` times, and the best round's medians are compared.

Each group is timed interleaved (A, B, A, B, ...) and compared on medians, so a machine that gets
busier during the run moves both sides alike. With the shared ImageNet sample present it also
prints how far the fast preprocessing is from the Pillow reference (max/mean abs, 0-255 levels).
Exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "imagenet-sample"
DEFAULT_BUNDLE = REPO / "bundles" / "efficientnet-b0-fp32-cpu"
DEFAULT_FRAME_BUNDLE = REPO / "bundles" / "efficientnet-b0-fp32-cpu-frame-1920x1080"

TARGET_E2E = 1.10
TARGET_EAGER = 3.0
TARGET_PRE_MS = 2.0

# Runs in a child pinned to one CPU before numpy/OpenCV start their thread pools.
_ONE_CORE = r"""
import json, os, sys
os.sched_setaffinity(0, {int(sys.argv[1])})
from effdeploy.backends.timing import TimingPlan, summarize, time_callable
from effdeploy.runtime.benchmark import synthetic_frame
from effdeploy.bundle import load_bundle
import effdeploy.data.preprocess as P
from effdeploy.data.preprocess import preprocess
P.REDUCING_GAP = float(sys.argv[4])
spec = load_bundle(sys.argv[2]).manifest.preprocessing
frame = synthetic_frame(1920, 1080)
stats = summarize(time_callable(lambda: preprocess(frame, spec), TimingPlan(warmup=20, iterations=int(sys.argv[3]))))
print(json.dumps(stats.to_dict()))
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ensure_bundle(path: Path | None) -> Path:
    """An existing verified B0 FP32 bundle, or build one (random weights: speed does not depend on them)."""
    from effdeploy.bundle import is_bundle, load_bundle

    target = path or DEFAULT_BUNDLE
    if is_bundle(target):
        m = load_bundle(target).manifest
        if m.model.name != "efficientnet-b0" or m.precision != "fp32" or m.model.resolution != 224:
            sys.exit(f"runtime_perf: {target} is {m.model.name} {m.precision} {m.model.resolution}px; "
                     "the targets are for B0 FP32 at 224 px")
        return target
    if path is not None:
        sys.exit(f"runtime_perf: {path} is not a bundle")
    from effdeploy.pipeline import BuildRequest, build_bundle
    from effdeploy.profiles import load_profile

    log(f"building {target} (B0, FP32, cpu profile) ...")
    build_bundle(BuildRequest(phi=0, profile=load_profile("cpu"), out=target))
    return target


def ensure_frame_bundle(path: Path) -> Path:
    """A bundle with a 1920x1080 frame-in graph; the default one (B0 FP32, random weights) is built once."""
    from effdeploy.bundle import is_bundle

    if is_bundle(path) or path.resolve() != DEFAULT_FRAME_BUNDLE:
        return path
    from effdeploy.data.frames import FrameInput
    from effdeploy.pipeline import BuildRequest, build_bundle
    from effdeploy.profiles import load_profile

    log(f"building {path} (B0, FP32, cpu profile, --frame 1920x1080) ...")
    build_bundle(BuildRequest(phi=0, profile=load_profile("cpu"), out=path, frames=(FrameInput(1920, 1080),)))
    return path


def frame_in(bundle: Path, plan: Any, threads: int, spin: bool, stat: str) -> dict[str, Any]:
    """Frame-in end-to-end vs model-only compute vs today's CPU path, and the preprocessing part alone."""
    from effdeploy.runtime.benchmark import FrameSource
    from effdeploy.backends.timing import summarize, time_interleaved, ratio
    from effdeploy.backends.onnxrt import FrameSession
    from effdeploy.data.frames import FrameInput
    from effdeploy.export.frames import preprocessing_model
    from effdeploy.runtime.runner import Runner

    with Runner.open(bundle, threads=threads, spin=spin, force=True) as runner:  # latency only: any status
        entry = next((f for f in runner.artifact.manifest.frames if (f["width"], f["height"]) == (1920, 1080)), None)
        if entry is None or not entry.get("verified"):
            sys.exit(f"runtime_perf: {bundle} has no verified 1920x1080 frame-in graph; build it with --frame 1920x1080")
        frame = FrameInput(1920, 1080, entry["channel_order"])
        bgr = frame.channel_order == "bgr"
        source = FrameSource(1920, 1080)
        batch = runner.preprocess(source.frame, bgr=bgr)
        pre = FrameSession(preprocessing_model(frame, runner.preprocessing, batch=1, block=entry["block"],
                                               pixels_output=False, cast_first=entry.get("cast_first", False)),
                           threads=threads, session_config={"session.intra_op.allow_spinning": "1" if spin else "0"})
        t = time_interleaved({"model_only": lambda: runner.infer(batch),
                              "frame_in": lambda: runner.classify(source.frame, top_k=5, bgr=bgr),
                              "cpu_path": lambda: runner.classify(source.frame, top_k=5, bgr=bgr, frame_graph=False),
                              "frame_preprocessing": lambda: pre.infer(source.frame[None])}, plan,
                             setup={"frame_in": source.next, "cpu_path": source.next, "frame_preprocessing": source.next})
        pre.close()
        s = {k: summarize(v) for k, v in t.items()}
        m = runner.artifact.manifest
        return {"bundle": str(bundle), "model": m.model.name, "precision": m.precision, "status": m.status,
                "dialect": (m.quantization or {}).get("dialect"), "frame": str(frame),
                **{f"{k}_ms": v.to_dict() for k, v in s.items()},
                "ratio": ratio(s["frame_in"], s["model_only"], stat), "ratio_min": ratio(s["frame_in"], s["model_only"], "min_ms"),
                "vs_cpu_path": ratio(s["frame_in"], s["cpu_path"], stat),
                "cpu_path_ratio": ratio(s["cpu_path"], s["model_only"], stat),
                "preprocessing_share": getattr(s["frame_preprocessing"], stat) / getattr(s["frame_in"], stat),
                "target": TARGET_E2E}


def frame_in_openvino(bundle: Path, plan: Any, threads: int, stat: str) -> dict[str, Any] | None:
    """Issue 23: the same frame-in graph and model graph run by OpenVINO (f32 pinned), timed
    interleaved with only OpenVINO's requests open, and how far its frame-in logits are from ONNX
    Runtime's on the same frames. None where OpenVINO is not installed."""
    import numpy as np

    from effdeploy.backends.onnxrt import FrameSession, manifest_optimize
    from effdeploy.backends.openvino import OpenVinoFrameRunner, OpenVinoRunner, import_openvino
    from effdeploy.backends.timing import ratio, summarize, time_interleaved
    from effdeploy.bundle import load_bundle
    from effdeploy.runtime.benchmark import FrameSource

    if import_openvino() is None:
        return None
    b = load_bundle(bundle)
    entry = next(f for f in b.manifest.frames if (f["width"], f["height"]) == (1920, 1080))
    graph = b.path / entry["file"]
    source = FrameSource(1920, 1080)
    frames = [source.next()[0][None].copy() for _ in range(8)]
    ort = FrameSession(graph, threads=threads, optimize=manifest_optimize(b.manifest),
                       session_config={"session.intra_op.allow_spinning": "0"})
    ort_logits = [ort.infer(f) for f in frames]
    ort.close()
    model, frame_graph = OpenVinoRunner(b.model_path, threads=threads), OpenVinoFrameRunner(graph, threads=threads)
    try:
        ov_logits = [frame_graph.infer(f) for f in frames]
        res = b.manifest.preprocessing.resolution
        batch = np.random.default_rng(0).standard_normal((1, 3, res, res)).astype(np.float32)
        t = time_interleaved({"model_only": lambda: model.infer(batch),
                              "frame_in": lambda: frame_graph.infer(source.frame[None])}, plan,
                             setup={"frame_in": source.next})
    finally:
        model.close(), frame_graph.close()
    s = {k: summarize(v) for k, v in t.items()}
    diff = max(float(np.abs(a - o).max()) for a, o in zip(ort_logits, ov_logits))
    same = sum(int(a.argmax() == o.argmax()) for a, o in zip(ort_logits, ov_logits))
    return {"bundle": str(bundle), "model": b.manifest.model.name, "precision": b.manifest.precision,
            **{f"{k}_ms": v.to_dict() for k, v in s.items()}, "ratio": ratio(s["frame_in"], s["model_only"], stat),
            "ratio_min": ratio(s["frame_in"], s["model_only"], "min_ms"), "logits_max_abs_vs_onnxruntime": diff,
            "top1_same_as_onnxruntime": f"{same}/{len(frames)}", "target": TARGET_E2E}


def frame_in_openvino_line(f: dict[str, Any]) -> str:
    return (f"  frame-in on OpenVINO (f32), {f['model']} {f['precision']}: model-only {f['model_only_ms']['p50_ms']:.2f} ms, "
            f"frame-in {f['frame_in_ms']['p50_ms']:.2f} ms = {f['ratio']:.3f}x model-only [min {f['ratio_min']:.3f}x]; "
            f"its logits vs ONNX Runtime's frame-in graph on 8 frames: max abs {f['logits_max_abs_vs_onnxruntime']:.2e}, "
            f"top-1 same {f['top1_same_as_onnxruntime']}")


def time_runner(open_runner: Any, x: Any, iterations: int) -> float:
    import numpy as np

    from effdeploy.backends.timing import TimingPlan, time_callable

    runner = open_runner()
    try:
        return 1e3 * float(np.median(time_callable(lambda: runner.infer(x), TimingPlan(warmup=10, iterations=iterations))))
    finally:
        runner.close()


def cpu_backend_rows(bundles: list[Path], threads: int, rounds: int, iterations: int) -> dict[Path, dict[str, Any]]:
    """Each bundle on ONNX Runtime and OpenVINO (f32), each runner alone, every (bundle, runtime)
    once per round in turn, so a machine that gets busier moves all of them alike; best of
    ``rounds``. Then what ``auto`` chose for each."""
    import numpy as np

    from effdeploy.backends.onnxrt import OnnxRuntimeRunner, manifest_optimize
    from effdeploy.backends.openvino import OpenVinoRunner
    from effdeploy.bundle import load_bundle
    from effdeploy.runtime.runner import open_backend, resolve_artifact

    loaded = {p: load_bundle(p) for p in dict.fromkeys(bundles)}
    best: dict[Path, dict[str, float]] = {p: {} for p in loaded}
    for _ in range(rounds):
        for path, b in loaded.items():
            res = b.manifest.preprocessing.resolution
            x = np.random.default_rng(0).standard_normal((1, 3, res, res)).astype(np.float32)
            opens = {"onnxruntime": lambda: OnnxRuntimeRunner(b.model_path, threads=threads,
                                                              optimize=manifest_optimize(b.manifest)),
                     "openvino": lambda: OpenVinoRunner(b.model_path, threads=threads, precision="f32")}
            for name, opener in opens.items():
                ms = time_runner(opener, x, iterations)
                best[path][name] = min(best[path].get(name, ms), ms)
    rows = {}
    for path, b in loaded.items():
        auto = open_backend(resolve_artifact(path), threads=threads, backend="auto")
        choice = auto.choice
        auto.close()
        chosen = choice["choice"]
        rows[path] = {"bundle": str(path), "model": b.manifest.model.name, "precision": b.manifest.precision,
                      "dialect": (b.manifest.quantization or {}).get("dialect"), "p50_ms": best[path], "auto": chosen,
                      "auto_over_faster": best[path][chosen] / min(best[path].values()), "auto_timed": choice.get("p50_ms")}
    return rows


def cpu_int8_isa() -> str:
    """Which INT8 target applies here: VNNI/AMX CPUs (>= 1.3x) or AVX2-only ones (reported)."""
    from effdeploy.backends.cpu_features import cpu_flags, vnni_flags

    flags = cpu_flags()
    if flags is None:
        return "unknown"
    found = vnni_flags(flags)
    return ",".join(found) if found else "avx2-only" if "avx2" in flags else "no-avx2"


def cpu_backends(args: argparse.Namespace) -> int:
    """Issue 23's ratios (section 5 of the module docstring)."""
    from effdeploy.backends.openvino import MISSING_OPENVINO, import_openvino
    from effdeploy.backends.timing import machine_info

    if len(args.fp32) != len(args.int8) or not args.fp32:
        sys.exit("runtime_perf: --cpu-backends takes --fp32 and --int8 bundles in pairs")
    if import_openvino() is None:
        sys.exit(f"runtime_perf: --cpu-backends: {MISSING_OPENVINO}")
    log(f"timing {len(set(args.fp32 + args.int8))} bundles on both runtimes, {args.rounds} rounds ...")
    timed = cpu_backend_rows([Path(p) for p in args.fp32 + args.int8], args.threads, args.rounds, args.iterations)
    rows, pairs = list(timed.values()), []
    for f, i in zip(args.fp32, args.int8):
        fp32, int8 = timed[Path(f)], timed[Path(i)]
        pairs.append({"model": fp32["model"], "int8_dialect": int8["dialect"], "fp32_backend": fp32["auto"], "int8_backend": int8["auto"],
                      "int8_speedup": fp32["p50_ms"][fp32["auto"]] / int8["p50_ms"][int8["auto"]],
                      "int8_speedup_by_runtime": {k: fp32["p50_ms"][k] / int8["p50_ms"][k] for k in fp32["p50_ms"]}})
    isa = cpu_int8_isa()
    vnni = isa not in ("avx2-only", "no-avx2", "unknown")
    out = {"machine": machine_info(), "int8_isa": isa, "threads": args.threads, "rows": rows, "pairs": pairs}
    auto_ok = all(r["auto_over_faster"] <= 1.05 for r in rows)
    int8_ok = all(p["int8_speedup"] >= 1.3 for p in pairs) or not vnni
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"machine: {out['machine']['cpu']} ({isa}), {args.threads} threads, batch 1 "
              f"(median ms, best of {args.rounds} alternating rounds)")
        print(f"{'model':20} {'precision':9} {'dialect':9} {'onnxruntime':>11} {'openvino f32':>12}  auto         "
              "auto/faster (<= 1.05)")
        for r in rows:
            print(f"{r['model']:20} {r['precision']:9} {r['dialect'] or '-':9} {r['p50_ms']['onnxruntime']:11.2f} "
                  f"{r['p50_ms']['openvino']:12.2f}"
                  f"  {r['auto']:12} {r['auto_over_faster']:.3f}  {'PASS' if r['auto_over_faster'] <= 1.05 else 'FAIL'}")
        for p in pairs:
            each = ", ".join(f"{k} {v:.2f}x" for k, v in p["int8_speedup_by_runtime"].items())
            verdict = ("PASS" if p["int8_speedup"] >= 1.3 else "FAIL") if vnni else "reported (AVX2-only CPU)"
            print(f"{p['model']} ({p['int8_dialect']} dialect): INT8 over FP32 on auto's choices ({p['int8_backend']} / {p['fp32_backend']}) "
                  f"{p['int8_speedup']:.2f}x (target >= 1.3 on VNNI/AMX) {verdict}; on each runtime: {each}")
    return 0 if auto_ok and int8_ok else 1


def one_core_preprocessing(bundle: Path, iterations: int, gap: float) -> dict[str, Any]:
    cpu = sorted(os.sched_getaffinity(0))[-1]
    out = subprocess.run([sys.executable, "-c", _ONE_CORE, str(cpu), str(bundle), str(iterations), str(gap)],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"runtime_perf: the one-core preprocessing child failed:\n{out.stderr}")
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "cpu": cpu}


def fidelity(spec: Any, limit: int) -> dict[str, Any] | None:
    """Fast preprocessing vs the Pillow reference on the shared sample, native and at 1080p."""
    if not SAMPLE.is_dir() or limit < 1:
        return None
    import numpy as np
    from PIL import Image

    from effdeploy.data.preprocess import load_image, resize_crop, resize_crop_pil

    paths = sorted(SAMPLE.glob("*.JPEG"))[:limit]
    out: dict[str, Any] = {}
    for name, scale_to in (("native", None), ("1080p", 1080)):
        worst, means = 0, []
        for p in paths:
            img = load_image(p)
            if scale_to:
                h, w = img.shape[:2]
                s = scale_to / min(h, w)
                img = np.asarray(Image.fromarray(img).resize((round(w * s), round(h * s)), Image.Resampling.BICUBIC))
            d = np.abs(resize_crop(img, spec).astype(np.int16) - resize_crop_pil(img, spec).astype(np.int16))
            worst = max(worst, int(d.max()))
            means.append(float(d.mean()))
        out[name] = {"images": len(paths), "max_abs": worst, "mean_abs": float(np.mean(means))}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=None, help=f"B0 FP32 bundle [{DEFAULT_BUNDLE.relative_to(REPO)}]")
    ap.add_argument("--iterations", type=int, default=100, help="timed rounds per pair [100]")
    ap.add_argument("--threads", type=int, default=2, help="threads for ONNX Runtime and PyTorch [2]")
    ap.add_argument("--fidelity-images", type=int, default=500, help="sample images for the Pillow comparison [500]")
    ap.add_argument("--stat", choices=("p50_ms", "mean_ms", "min_ms"), default="p50_ms",
                    help="statistic the ratios compare [p50_ms]; min_ms is the least disturbed by a busy machine")
    ap.add_argument("--no-spin", dest="spin", action="store_false",
                    help="ONNX Runtime's threads sleep between calls (for a machine shared with busy processes)")
    ap.add_argument("--reducing-gap", type=float, default=None,
                    help="EXPERIMENT: override effdeploy.data.preprocess.REDUCING_GAP (this changes the preprocessing "
                         "definition; the Pillow comparison shows by how much)")
    ap.add_argument("--frame-bundle", type=Path, action="append", default=None,
                    help="bundle with a 1920x1080 frame-in graph for the frame-in ratio (repeatable) "
                         f"[{DEFAULT_FRAME_BUNDLE.relative_to(REPO)}, built once]")
    ap.add_argument("--only-frame-in", action="store_true", help="time only the frame-in ratio (4)")
    ap.add_argument("--cpu-backends", action="store_true",
                    help="time only issue 23's runtime ratios (5) on the --fp32/--int8 bundle pairs")
    ap.add_argument("--fp32", action="append", default=[], help="(5) an FP32 bundle, one per network")
    ap.add_argument("--int8", action="append", default=[], help="(5) the INT8 bundle of the same network")
    ap.add_argument("--rounds", type=int, default=3, help="(5) alternating rounds per runtime [3]")
    ap.add_argument("--json", action="store_true", help="results as JSON on stdout")
    args = ap.parse_args(argv)
    if args.cpu_backends:
        return cpu_backends(args)

    import numpy as np

    from effdeploy.runtime.benchmark import FrameSource
    from effdeploy.backends.timing import TimingPlan, machine_info, ratio, summarize, time_interleaved
    from effdeploy.model.eager import eager_model, eager_runner
    from effdeploy.bundle import load_bundle
    from effdeploy.runtime.runner import Runner

    import effdeploy.data.preprocess as P

    if args.reducing_gap is not None:
        if args.reducing_gap < 1:
            sys.exit("runtime_perf: --reducing-gap must be >= 1")
        P.REDUCING_GAP = args.reducing_gap
        P.resample_plan.cache_clear()
    if not args.only_frame_in:
        bundle = ensure_bundle(args.bundle)
        manifest = load_bundle(bundle).manifest
    plan = TimingPlan(warmup=10, iterations=args.iterations)
    frame_bundles = args.frame_bundle or [DEFAULT_FRAME_BUNDLE]
    if args.only_frame_in:
        rows = [frame_in(ensure_frame_bundle(b), plan, args.threads, args.spin, args.stat) for b in frame_bundles]
        ov = [r for r in (frame_in_openvino(Path(f["bundle"]), plan, args.threads, args.stat) for f in rows) if r]
        return print_frame_in(rows, ov, args)
    source = FrameSource(1920, 1080)
    frame = source.frame
    results: dict[str, Any] = {"bundle": str(bundle), "threads": args.threads, "spin": args.spin,
                               "reducing_gap": P.REDUCING_GAP,
                               "iterations": args.iterations,
                               "machine": machine_info(), "load_before": os.getloadavg()[0]}

    with Runner.open(bundle, threads=args.threads, spin=args.spin) as runner:
        batch = runner.preprocess(frame)
        log("1/3 Runner end-to-end vs engine-only (interleaved) ...")
        t = time_interleaved({"engine": lambda: runner.infer(batch),
                              "end_to_end": lambda: runner.classify(frame, top_k=5)}, plan,
                             setup={"end_to_end": source.next})
        engine, e2e = summarize(t["engine"]), summarize(t["end_to_end"])
        results["end_to_end"] = {"engine_ms": engine.to_dict(), "end_to_end_ms": e2e.to_dict(),
                                 "ratio": ratio(e2e, engine, args.stat), "ratio_min": ratio(e2e, engine, "min_ms"),
                                 "target": TARGET_E2E}

        # Informational: in a video loop Runner.stream overlaps preprocessing with inference.
        n = max(30, args.iterations)

        def decoded() -> Any:
            for _ in range(n):
                yield source.next()[0].copy()  # a decoder hands out a new buffer per frame

        list(runner.stream(decoded(), bgr=False))  # warm-up
        t0 = time.perf_counter()
        count = sum(1 for _ in runner.stream(decoded(), bgr=False))
        per_frame_ms = 1000 * (time.perf_counter() - t0) / count
        results["stream"] = {"frames": count, "ms_per_frame": per_frame_ms,
                             "over_engine_p50": per_frame_ms / engine.p50_ms}

        log("2/3 ONNX Runtime vs eager PyTorch (interleaved) ...")
        eager = eager_runner(eager_model(manifest), args.threads)
        max_abs = float(np.abs(eager(batch) - runner.infer(batch)).max())
        if max_abs > 1e-3:
            log(f"note: the eager model differs from the bundle by {max_abs:.2g} (a random-init bundle's BatchNorm "
                "statistics come from preprocessed images; rebuild the bundle with this effdeploy)")
        rounds = TimingPlan(warmup=2, iterations=max(2, args.iterations // 10))
        t = time_interleaved({"onnxruntime": lambda: runner.infer(batch), "eager": lambda: eager(batch)}, rounds,
                             block=10)
        ort_s, eager_s = summarize(t["onnxruntime"]), summarize(t["eager"])
        results["vs_eager"] = {"onnxruntime_ms": ort_s.to_dict(), "eager_ms": eager_s.to_dict(),
                               "ratio": ratio(eager_s, ort_s, args.stat), "ratio_min": ratio(eager_s, ort_s, "min_ms"),
                               "target": TARGET_EAGER, "parity_max_abs": max_abs}

    log("3/3 preprocessing of a 1080p frame on one core ...")
    pre = one_core_preprocessing(bundle, max(args.iterations, 100), P.REDUCING_GAP)
    results["preprocess"] = {"ms": pre, "ratio": pre[args.stat] / TARGET_PRE_MS, "ratio_min": pre["min_ms"] / TARGET_PRE_MS,
                             "target": 1.0}
    fid = fidelity(manifest.preprocessing, args.fidelity_images)
    if fid is not None:
        results["preprocess"]["vs_pillow"] = fid

    log("4/4 frame-in end-to-end vs model-only compute (interleaved) ...")
    results["frame_in"] = [frame_in(ensure_frame_bundle(b), plan, args.threads, args.spin, args.stat)
                           for b in frame_bundles]
    ov = [frame_in_openvino(Path(f["bundle"]), plan, args.threads, args.stat) for f in results["frame_in"]]
    results["frame_in_openvino"] = [r for r in ov if r]  # why a Runner on OpenVINO takes the CPU path
    results["load_after"] = os.getloadavg()[0]
    busy = max(results["load_before"], results["load_after"]) > 0.5 * results["machine"]["cores"]
    checks = [
        ("Runner end-to-end (1080p) / engine-only, B0 FP32 ORT batch 1", results["end_to_end"]["ratio"], "<=", TARGET_E2E),
        (f"eager PyTorch / ONNX Runtime, batch 1, {args.threads} threads", results["vs_eager"]["ratio"], ">=", TARGET_EAGER),
        ("1080p preprocessing on one core / 2 ms", results["preprocess"]["ratio"], "<=", 1.0),
        *[(f"frame-in end-to-end (1080p) / model-only, {f['model']} {f['precision']}", f["ratio"], "<=", TARGET_E2E)
          for f in results["frame_in"]],
    ]
    passed = [v <= t if op == "<=" else v >= t for _, v, op, t in checks]
    results["checks"] = [{"name": n, "ratio": v, "target": f"{op} {t}", "pass": ok}
                         for (n, v, op, t), ok in zip(checks, passed)]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        m = results["machine"]
        print(f"machine: {m['cpu']}, {m['cores']} cores; onnxruntime {m['onnxruntime']}; bundle {bundle}; "
              f"load average {results['load_before']:.2f} -> {results['load_after']:.2f}")
        if busy:
            print("warning: other processes were using the CPUs during the run; absolute times are inflated "
                  "and the ratios less reliable (rerun on an idle machine)")
        width = max(len(n) for n, *_ in checks)
        mins = [results[k]["ratio_min"] for k in ("end_to_end", "vs_eager", "preprocess")]
        mins += [f["ratio_min"] for f in results["frame_in"]]
        print(f"{'ratio'.rjust(width + 8)} (on {args.stat.replace('_ms', '')}; on min in brackets)")
        for (name, value, op, target), ok, low in zip(checks, passed, mins):
            print(f"{name.ljust(width)}  {value:6.3f}  [{low:6.3f}]  (target {op} {target})  {'PASS' if ok else 'FAIL'}")
        e, v = results["end_to_end"], results["vs_eager"]
        print(f"  engine {e['engine_ms']['p50_ms']:.2f} ms, end-to-end {e['end_to_end_ms']['p50_ms']:.2f} ms; "
              f"onnxruntime {v['onnxruntime_ms']['p50_ms']:.2f} ms, eager {v['eager_ms']['p50_ms']:.2f} ms "
              f"(parity max abs {v['parity_max_abs']:.1e}); preprocessing {pre['p50_ms']:.3f} ms on cpu {pre['cpu']} "
              f"(p50; medians of {args.threads}-thread inference)")
        st = results["stream"]
        print(f"  (not a target) Runner.stream on 1080p frames: {st['ms_per_frame']:.2f} ms per frame = "
              f"{st['over_engine_p50']:.3f}x engine-only, capture/preprocessing overlapped with inference")
        for name, f in (fid or {}).items():
            print(f"  preprocessing vs Pillow, {name}: max {f['max_abs']}, mean {f['mean_abs']:.4f} levels "
                  f"over {f['images']} images")
        for f in results["frame_in"]:
            print(frame_in_line(f))
        for f in results["frame_in_openvino"]:
            print(frame_in_openvino_line(f))
    return 0 if all(passed) else 1


def frame_in_line(f: dict[str, Any]) -> str:
    """Where the frame-in time goes, and how it compares with today's CPU path."""
    dialect = f" ({f['dialect']} dialect)" if f.get("dialect") else ""
    return (f"  frame-in {f['frame']} {f['model']} {f['precision']}{dialect}, {f['status']}: model-only {f['model_only_ms']['p50_ms']:.2f} ms, "
            f"frame-in {f['frame_in_ms']['p50_ms']:.2f} ms = {f['ratio']:.3f}x model-only [min {f['ratio_min']:.3f}x] "
            f"(target <= {f['target']}); its preprocessing part alone {f['frame_preprocessing_ms']['p50_ms']:.2f} ms "
            f"({100 * f['preprocessing_share']:.0f} % of it); today's CPU path {f['cpu_path_ms']['p50_ms']:.2f} ms = "
            f"{f['cpu_path_ratio']:.3f}x model-only, frame-in / CPU path {f['vs_cpu_path']:.3f}x (p50)")


def print_frame_in(rows: list[dict[str, Any]], ov: list[dict[str, Any]], args: argparse.Namespace) -> int:
    """``--only-frame-in``: just the frame-in figures."""
    from effdeploy.backends.timing import machine_info

    if args.json:
        print(json.dumps({"frame_in": rows, "frame_in_openvino": ov, "threads": args.threads,
                          "iterations": args.iterations, "machine": machine_info()}, indent=2))
    else:
        print(f"machine: {machine_info()['cpu']}")
        for f in rows:
            print(frame_in_line(f))
        for f in ov:
            print(frame_in_openvino_line(f))
    return 0 if all(f["ratio"] <= f["target"] for f in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
