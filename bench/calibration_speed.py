"""Our calibrator vs ONNX Runtime's on the same model, images and tensors: time and range agreement.

    python bench/calibration_speed.py                       # EfficientNet-B1 @ 240 (effdeploy export)
    python bench/calibration_speed.py --model lite0         # pretrained Lite0 @ 224
    python bench/calibration_speed.py --model path/to.onnx --resolution 224
    python bench/calibration_speed.py --full                # also: sampled vs every-element histograms

Tensors are the inputs and outputs of Conv/Gemm nodes (what ORT's calibrator picks for those op
types), so both sides calibrate exactly the same set. Agreement is |amax_ours - amax_ort| / amax_ort
per tensor (median / 90th percentile / max); ``max`` also checks min and max. ORT's entropy is its
own estimator (signed histogram, symmetric windows), not TensorRT's, so expect differences there;
mse has no ORT counterpart. Run on an otherwise idle machine: timings are wall clock.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_IMAGES = REPO.parent / "shared" / "data" / "imagenet-sample"


def export_model(which: str, resolution: int | None, workdir: Path) -> tuple[Path, object, float]:
    """(onnx path, Preprocessing, export seconds) for b<phi>, lite<phi> or an .onnx path."""
    from effdeploy.data.preprocess import Preprocessing

    if which.endswith(".onnx"):
        if resolution is None:
            sys.exit("--resolution is needed with an .onnx model")
        variant = "lite" if "lite" in Path(which).name else "b"
        return Path(which), Preprocessing.for_weights(resolution, variant, "native"), 0.0
    import onnx

    from effdeploy.export.exporter import export_onnx, simplify
    from effdeploy.model.network import build_model

    variant = "lite" if which.startswith("lite") else "b"
    phi = int(which[4:] if variant == "lite" else which[1:])
    t = time.perf_counter()
    weights = "pretrained" if variant == "lite" and phi <= 2 else None
    model = build_model(phi, variant, weights=weights, resolution=resolution)
    proto = simplify(export_onnx(model, model.spec.resolution))
    path = workdir / f"{which}.onnx"
    onnx.save(proto, str(path))
    return path, model.spec.preprocessing, time.perf_counter() - t


def ort_tensor_set(path: Path, op_types: tuple[str, ...]) -> list[str]:
    """The float activations ORT's calibrator selects for ``op_types`` (inputs and outputs)."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    infos = {vi.name: vi for vi in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    inits = {i.name for i in model.graph.initializer}
    out: list[str] = []
    for node in model.graph.node:
        if node.op_type in op_types:
            for t in [*node.input, *node.output]:
                vi = infos.get(t)
                if vi is not None and t not in inits and vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
                    out.append(t)
    return list(dict.fromkeys(out))


def ort_in_child(timeout: float, *args, **kwargs):
    """calibrate_with_ort in a forked child (ORT prints a lot; its entropy search can run for hours).

    Returns the CalibrationResult, or None when it did not finish within ``timeout`` seconds.
    """
    import contextlib
    import multiprocessing as mp

    from effdeploy.calibration import calibrate_with_ort

    def child(q) -> None:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            q.put(calibrate_with_ort(*args, **kwargs))

    ctx = mp.get_context("fork")
    q = ctx.Queue()
    proc = ctx.Process(target=child, args=(q,), daemon=True)
    proc.start()
    try:
        return q.get(timeout=timeout)
    except Exception:  # queue.Empty: out of time
        return None
    finally:
        proc.terminate()
        proc.join()


def agreement(ours, ref, key: str = "amax") -> str:
    common = [t for t in ref.ranges if t in ours.ranges]
    d = []
    for t in common:
        a, b = getattr(ours.ranges[t], key), getattr(ref.ranges[t], key)
        d.append(abs(a - b) / max(abs(b), 1e-12))
    if not d:
        return "n/a"
    d = np.array(d)
    return f"{np.median(d):.2%} / {np.percentile(d, 90):.2%} / {d.max():.2%} over {len(d)} tensors"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="b1", help="b<phi>, lite<phi> (effdeploy export) or a path to an .onnx")
    ap.add_argument("--resolution", type=int, default=None)
    ap.add_argument("--data", default=None, help="image folder (default: the shared ImageNet sample, else built-in)")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--samples", type=int, default=None, help="samples per image (default: the library default)")
    ap.add_argument("--ort-methods", default="max,percentile,entropy", help="comma list, or '' to skip ORT")
    ap.add_argument("--ort-timeout", type=float, default=900, help="seconds per ORT method before giving up")
    ap.add_argument("--full", action="store_true", help="also run ours on every element (sampling error)")
    args = ap.parse_args()

    import onnxruntime

    from effdeploy.calibration import (
        DEFAULT_SAMPLES_PER_IMAGE, METHODS, collect_statistics, load_calibration_set, ranges_from_statistics,
    )

    samples = args.samples or DEFAULT_SAMPLES_PER_IMAGE
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, python {platform.python_version()}, "
          f"numpy {np.__version__}, onnxruntime {onnxruntime.__version__}, load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        path, spec, export_s = export_model(args.model, args.resolution, Path(tmp))
        print(f"model: {args.model} at {spec.resolution} px ({path.stat().st_size / 1e6:.1f} MB), export {export_s:.1f} s")
        source = args.data or (str(SHARED_IMAGES) if SHARED_IMAGES.is_dir() else None)
        t = time.perf_counter()
        images = load_calibration_set(source, args.images, spec, seed=0, quiet=True)
        decode_s = time.perf_counter() - t
        print(f"images: {len(images)} from {images.source}, decode + preprocess {decode_s:.1f} s")
        tensors = ort_tensor_set(path, ("Conv", "Gemm"))
        print(f"tensors: {len(tensors)} (inputs and outputs of Conv/Gemm)\n")

        stats = collect_statistics(path, tensors, images, batch_size=args.batch, samples_per_image=samples)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        ours = {}
        derive = {}
        for m in METHODS:
            t = time.perf_counter()
            ours[m] = ranges_from_statistics(stats, m)
            derive[m] = time.perf_counter() - t
        print(f"ours: one pass {stats.seconds:.1f} s ({samples} samples/image/tensor, batch {args.batch}), "
              f"peak RSS so far {rss:.0f} MB")
        for m in METHODS:
            print(f"  {m:10s} derive {derive[m] * 1000:7.1f} ms   total {stats.seconds + derive[m]:6.1f} s")

        if args.full:
            full = collect_statistics(path, tensors, images, batch_size=args.batch, samples_per_image=None)
            print(f"\nours, every element: one pass {full.seconds:.1f} s; sampled vs every element, |d amax| "
                  "median / p90 / max:")
            for m in METHODS:
                print(f"  {m:10s} {agreement(ours[m], ranges_from_statistics(full, m))}")

        methods = [m for m in args.ort_methods.split(",") if m]
        if methods:
            print("\nONNX Runtime's calibrators (create_calibrator, same images, tensors and batch):")
        for m in methods:
            t = time.perf_counter()
            ref = ort_in_child(args.ort_timeout, path, tensors, images.data, m, batch_size=args.batch,
                               op_types=["Conv", "Gemm"], workdir=tmp)
            if ref is None:
                print(f"  {m:10s} did not finish in {time.perf_counter() - t:.0f} s (stopped)", flush=True)
                continue
            line = f"  {m:10s} {ref.seconds:6.1f} s  ({ref.seconds / (stats.seconds + derive[m]):5.1f}x ours)  "
            line += f"|d amax| median / p90 / max: {agreement(ours[m], ref)}"
            if m == "max":
                line += f"; |d min| {agreement(ours[m], ref, 'min')}; |d max| {agreement(ours[m], ref, 'max')}"
            print(line, flush=True)
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f} (1 min)")


if __name__ == "__main__":
    main()
