"""Accuracy benchmark: INT8 against eager on images that neither the network nor the build ever saw.

The 500 shared ImageNet images are split into two seeded halves. Every row is built (or, for the
anchors, quantized) on one half and judged on the other; then the halves swap. So each figure
covers all 500 images and none of them was chosen on. Models: pretrained EfficientNet-Lite0, and the
distilled-b B0 of ../shared/models (trained on *other* ImageNet images; its accuracy is never B0's).

Rows per model:
  fp16                     FP16 (jetson-orin)
  trt-int8 / trt-default   the tensorrt dialect (jetson-orin), all-INT8 (--no-repair) / the default build
                           (the default float parts: SE; for the B family also its depthwise convs)
  cpu-int8 / cpu-default   the same for the cpu dialect (the B family's stem and depthwise convs in float)
  vnni-int8 / vnni-default the cpu dialect with 8-bit weights (cpu-vnni), ovv-int8 / ovv-default the openvino
                           dialect with them (cpu-openvino-vnni); the build refuses CPUs without VNNI/AMX, so on
                           those the rows fail with that one line. Not run by default.
  ov-int8 / ov-default     the same for the openvino dialect (cpu-openvino: the tensorrt placement in FP32); judge
                           them as OpenVINO runs them with --openvino (the @openvino rows)
  trt-blocks / cpu-blocks  the default build with the conv fallback off (the block repair alone)
  cpu-int8-stem            cpu all-INT8 with only SE in float (--int8-float se: stem and depthwise convs INT8)
  {trt,cpu}-dwq[-default]  the model's default float parts with the depthwise convs in INT8 (the B family's
                           default before 2026-12-03), all-INT8 / default build; -dwf: with them in float
                           (the B family's default since; for Lite the alternative). Not run by default.
  {trt,cpu}-{int8,default}-{thorough,bias}  all-INT8 / default build with --reconstruct thorough or bias (the
                           plain rows take the default, auto: thorough for Lite, bias for B). Not run by default.
  ort-minmax / ort-pct     anchors: ONNX Runtime quantize_static, S8S8 per-channel, MinMax / Percentile
  nncf / nncf-mixed        anchors: NNCF (pip install -c constraints.txt -e ".[bench]"), default / MIXED preset

With ``--openvino`` every effdeploy row's bundle is also run by OpenVINO (f32 pinned, the CPU plugin's
own fusions) on the same images and printed as a second row, ``ROW@openvino``, with a check that its
agreement lies in the ONNX Runtime row's interval (the anchors run on ONNX Runtime only).

Columns: top-1 agreement with eager (the FP32 graph, eager's function by export parity) with its
Wilson 95 % interval, top-1 drop against the labels, and the two low-variance measures techniques
are compared by: the mean KL divergence of the softmax from FP32, and the logit relative MSE.

    python bench/accuracy.py [--models lite0,b0] [--rows trt-int8,trt-default,...] [--openvino] [--json]
                             [--save rows.jsonl]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DISTILLED_B = REPO.parent / "shared" / "models" / "efficientnet-b0-distilled-b.pth"
# the model's default float parts with the depthwise convs in INT8 (dwq: the B family's default
# before 2026-12-03) or in float (dwf: the B family's default since; Lite's alternative)
DW_ROWS = {f"{d}-dw{k}{suffix}": ("int8", profile, bool(suffix), f"{'-' if k == 'q' else '+'}dw")
           for d, profile in (("trt", "jetson-orin"), ("cpu", "cpu")) for k in "qf" for suffix in ("", "-default")}
# the same builds with --reconstruct thorough (learned rounding of the project convs) or bias (the
# sequential bias correction); the plain rows take the default (auto: thorough for Lite, bias for B)
RECONSTRUCT_ROWS = {f"{d}-{kind}-{mode}": (d, kind, mode) for d in ("trt", "cpu") for kind in ("int8", "default")
                 for mode in ("thorough", "bias")}
ROWS = ("fp16", "trt-int8", "trt-blocks", "trt-default", "cpu-int8", "cpu-int8-stem", "cpu-blocks", "cpu-default",
        "ov-int8", "ov-default", "vnni-int8", "vnni-default", "ovv-int8", "ovv-default",
        *DW_ROWS, *RECONSTRUCT_ROWS, "ort-minmax", "ort-pct", "nncf", "nncf-mixed")
BUILD_ROWS = {  # row -> (precision, profile, repair, --int8-float parts; None: the default)
    "fp16": ("fp16", "jetson-orin", False, None), "trt-int8": ("int8", "jetson-orin", False, None),
    "trt-default": ("int8", "jetson-orin", True, None), "cpu-int8": ("int8", "cpu", False, None),
    "cpu-int8-stem": ("int8", "cpu", False, ("se",)), "cpu-default": ("int8", "cpu", True, None),
    "trt-blocks": ("int8", "jetson-orin", True, None), "cpu-blocks": ("int8", "cpu", True, None),
    "ov-int8": ("int8", "cpu-openvino", False, None), "ov-default": ("int8", "cpu-openvino", True, None),
    "vnni-int8": ("int8", "cpu-vnni", False, None), "vnni-default": ("int8", "cpu-vnni", True, None),
    "ovv-int8": ("int8", "cpu-openvino-vnni", False, None), "ovv-default": ("int8", "cpu-openvino-vnni", True, None),
    **DW_ROWS,
}
BUILD_ROWS.update({row: BUILD_ROWS[f"{d}-{kind}"] for row, (d, kind, _) in RECONSTRUCT_ROWS.items()})
NO_CONV_FALLBACK = ("trt-blocks", "cpu-blocks")  # the default build with the block repair alone
# targets of the INT8 issue for the default builds, judged by the two folds on the 500 images
TARGET_AGREEMENT, TARGET_DROP_PT = 0.98, 0.5


@dataclass(frozen=True)
class Fold:
    calib: Path  # folder of the half the row is built on
    judge: Path  # folder of the other half
    judge_names: tuple[str, ...]


def folds(data: Path, root: Path, seed: int = 0) -> list[Fold]:
    """Two seeded halves of ``data`` as folders of links, each once the calibration half."""
    names = sorted(p.name for p in data.iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    order = np.random.default_rng(seed).permutation(len(names))
    halves = [sorted(names[i] for i in order[: len(names) // 2]), sorted(names[i] for i in order[len(names) // 2:])]
    dirs = []
    for k, half in enumerate(halves):
        d = root / f"half{k}"
        d.mkdir(parents=True)
        for n in half:
            os.symlink(data.resolve() / n, d / n)
        dirs.append(d)
    return [Fold(dirs[0], dirs[1], tuple(halves[1])), Fold(dirs[1], dirs[0], tuple(halves[0]))]


def model_for(name: str):
    from effdeploy.model.network import build_model

    if name == "lite0":
        return build_model(0, "lite", weights="pretrained"), {"variant": "lite", "weights": "pretrained"}
    return build_model(0, "b", weights=str(DISTILLED_B)), {"variant": "b", "weights": str(DISTILLED_B)}


def build_row(row: str, fold: Fold, flags: dict, x_judge: np.ndarray, out: Path,
              openvino: bool = False) -> tuple[dict[str, np.ndarray], dict]:
    """One effdeploy build on the calibration half; its deployed graph's logits on the judging half,
    per runtime (ONNX Runtime as the bundle was verified; OpenVINO too where asked)."""
    from effdeploy.backends.onnxrt import manifest_optimize
    from effdeploy.export.logits import ort_logits
    from effdeploy.pipeline import BuildRequest, build_bundle
    from effdeploy.profiles import load_profile

    precision, profile, repair, parts = BUILD_ROWS[row]
    n = len(list(fold.calib.iterdir()))
    if isinstance(parts, str):  # "+dw"/"-dw": the model's default parts with/without the depthwise convs
        from effdeploy.precision.qdq import default_float_parts

        from effdeploy.precision.qdq import RUNTIME_DIALECTS

        dialect = RUNTIME_DIALECTS[load_profile(profile).target_runtime]
        default = [p for p in default_float_parts(flags["variant"], dialect) if p != "dw"]
        parts = tuple(default + ["dw"] if parts == "+dw" else default)
    extra = {} if parts is None else {"int8_float_parts": parts}
    if row in NO_CONV_FALLBACK:
        extra["conv_fallback"] = False
    if row in RECONSTRUCT_ROWS:
        extra["reconstruct_mode"] = RECONSTRUCT_ROWS[row][2]
    req = BuildRequest(**extra, phi=0, variant=flags["variant"], weights=flags["weights"], precision=precision,
                       profile=load_profile(profile), out=out, repair=repair, calib_data=str(fold.calib),
                       calib_images=n, verify_data=str(fold.judge), verify_images=len(fold.judge_names),
                       allow_parity_failure=True, quiet=True)
    bundle = build_bundle(req).bundle
    m = bundle.manifest
    q = m.quantization or {}
    repair_rec = q.get("repair") or {}
    fallback = q.get("fallback") or {}
    info = {"status": m.status, "method": q.get("method"), "kept_blocks": repair_rec.get("kept_blocks", []),
            "kept_convs": fallback.get("kept_nodes", []), "repair_evidence": repair_rec.get("evidence"),
            "fallback_evidence": fallback.get("evidence"),
            "shifted_inputs": (q.get("precision_summary") or {}).get("shifted_inputs"),
            "strength": (q.get("reconstruction") or {}).get("strength")}
    logits = {"onnxruntime": ort_logits(bundle.model_path, x_judge, optimize=manifest_optimize(m))}
    if openvino:
        from effdeploy.backends.cpu_features import describe_int8_dot, saturates

        if saturates(m, "openvino"):  # 8-bit weights (trt-*, ovv-*) on a CPU without VNNI: garbage, not a figure
            print(f"{row}: not run on OpenVINO: its 8-bit weights saturate on this CPU ({describe_int8_dot()})",
                  file=sys.stderr, flush=True)
        else:
            logits["openvino"] = openvino_logits(bundle.model_path, x_judge)
    return logits, info


def openvino_logits(path: Path, x: np.ndarray, batch: int = 25) -> np.ndarray:
    """The graph as OpenVINO's CPU plugin runs it, FP32 pinned (not its bf16 default on AMX CPUs)."""
    from effdeploy.backends import infer_in_batches_of
    from effdeploy.backends.openvino import OpenVinoRunner

    runner = OpenVinoRunner(path, precision="f32")
    try:
        return np.concatenate([infer_in_batches_of(runner, x[i:i + batch]) for i in range(0, len(x), batch)])
    finally:
        runner.close()


def anchor_row(row: str, fp32_path: Path, x_calib: np.ndarray, x_judge: np.ndarray, tmp: Path) -> np.ndarray | None:
    """ONNX Runtime's or NNCF's own post-training quantization of the same FP32 graph on the same
    calibration half, run by ONNX Runtime unoptimised (as the issue's anchor rows were measured)."""
    import onnx

    from effdeploy.export.logits import ort_logits

    if row.startswith("ort-"):
        model = _ort_quantize(fp32_path, x_calib, "minmax" if row == "ort-minmax" else "percentile", tmp)
    else:
        try:
            import nncf
        except ImportError:
            return None
        data = nncf.Dataset(list(x_calib), lambda x: {"input": x[None]})
        preset = nncf.QuantizationPreset.MIXED if row == "nncf-mixed" else None
        model = nncf.quantize(onnx.load(str(fp32_path)), data, subset_size=len(x_calib),
                              **({"preset": preset} if preset else {}))
    return ort_logits(model, x_judge, optimize=False)


def _ort_quantize(fp32_path: Path, x_calib: np.ndarray, method: str, tmp: Path):
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            # batches (one image a call is several times slower) of equal size: ORT's percentile
            # calibrator stacks them and fails on a shorter last one
            b = max(d for d in range(1, 17) if len(x_calib) % d == 0)
            self.it = iter(x_calib[i:i + b] for i in range(0, len(x_calib), b))

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"input": x}

    out = tmp / f"ort-{method}.onnx"
    quantize_static(str(fp32_path), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax if method == "minmax" else CalibrationMethod.Percentile)
    return onnx.load(str(out))


def measures(ref: np.ndarray, cand: np.ndarray, labels: np.ndarray) -> dict:
    from effdeploy.verify.repair import per_image_kl
    from effdeploy.verify.gate import wilson_interval

    agree = ref.argmax(1) == cand.argmax(1)
    r64 = ref.astype(np.float64)
    return {"images": len(ref), "agreement": float(agree.mean()),
            "agreement_ci95": wilson_interval(int(agree.sum()), len(ref)),
            "eager_top1": float((ref.argmax(1) == labels).mean()), "top1": float((cand.argmax(1) == labels).mean()),
            "drop_pt": float(100 * ((ref.argmax(1) == labels).mean() - (cand.argmax(1) == labels).mean())),
            "kl": float(per_image_kl(ref, cand).mean()),
            "rel_mse": float(((cand - r64) ** 2).mean() / (r64 ** 2).mean())}


def bench_model(name: str, rows: list[str], data: Path, tmp: Path, save: Path | None = None,
                openvino: bool = False) -> list[dict]:
    """Every row of one model over both folds, pooled over the 500 images."""
    import onnx

    from effdeploy.data.datasets import labelled_images
    from effdeploy.export.exporter import cached_export
    from effdeploy.export.logits import ort_logits
    from effdeploy.data.preprocess import preprocess_files

    model, flags = model_for(name)
    fp32, _ = cached_export(model, model.spec.resolution)
    fp32_path = tmp / f"{name}-fp32.onnx"
    onnx.save(fp32, str(fp32_path))
    labels_of = {i.path.name: i.label for i in labelled_images(str(data))}
    prepared = []
    for fold in folds(data, tmp / f"{name}-folds"):
        x_judge = preprocess_files([fold.judge / n for n in fold.judge_names], model.spec.preprocessing)
        x_calib = preprocess_files(sorted(fold.calib.iterdir()), model.spec.preprocessing)
        labels = np.array([labels_of[n] for n in fold.judge_names])
        prepared.append((fold, x_calib, x_judge, labels, ort_logits(fp32, x_judge)))
    out = []
    for row in rows:
        t = time.perf_counter()
        logits, refs, labels, infos = [], [], [], []
        try:
            for k, (fold, x_calib, x_judge, y, ref) in enumerate(prepared):
                if row in BUILD_ROWS:
                    lg, info = build_row(row, fold, flags, x_judge, tmp / f"{name}-{row}-{k}", openvino)
                else:
                    lg = anchor_row(row, fp32_path, x_calib, x_judge, tmp)
                    lg, info = (None if lg is None else {"onnxruntime": lg}), {}
                if lg is None:
                    break
                logits.append(lg), refs.append(ref), labels.append(y), infos.append(info)
        except Exception as e:  # an anchor library failing must not lose the other rows
            print(f"{name} {row} failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}", file=sys.stderr)
            continue
        if len(logits) != len(prepared):
            print(f"{name} {row}: skipped (its library is not installed)", file=sys.stderr, flush=True)
            continue
        seconds = round(time.perf_counter() - t, 1)
        for runtime in logits[0]:  # onnxruntime first, then openvino where run
            m = measures(np.concatenate(refs), np.concatenate([lg[runtime] for lg in logits]), np.concatenate(labels))
            label = row if runtime == "onnxruntime" else f"{row}@{runtime}"
            out.append({"model": name, "row": label, "runtime": runtime, **m, "folds": infos, "seconds": seconds})
            if runtime != "onnxruntime":  # images whose top-1 the two runtimes disagree on
                out[-1]["flips_vs_onnxruntime"] = int(sum((lg[runtime].argmax(1) != lg["onnxruntime"].argmax(1)).sum()
                                                          for lg in logits))
            lo, hi = m["agreement_ci95"]
            print(f"done {name} {label}: agreement {100 * m['agreement']:.2f} % ({100 * lo:.1f}-{100 * hi:.1f}), KL "
                  f"{m['kl']:.4f}, rel. MSE {m['rel_mse']:.2e}, drop {m['drop_pt']:.2f} pt ({seconds} s)",
                  file=sys.stderr, flush=True)
            if save is not None:  # a long run keeps what it finished
                with save.open("a") as f:
                    f.write(json.dumps(out[-1]) + "\n")
    return out


def show(results: list[dict]) -> None:
    from effdeploy.report import table

    def ci(r):
        lo, hi = r["agreement_ci95"]
        return f"{100 * lo:.1f}-{100 * hi:.1f}"

    def kept(r):
        ks = [(len(f.get("kept_blocks") or []), len(f.get("kept_convs") or [])) for f in r["folds"]]
        return "/".join(f"{b}+{c}" for b, c in ks) if any(b or c for b, c in ks) else "-"

    print(table([(r["model"], r["row"], r["images"], f"{100 * r['eager_top1']:.1f}", f"{100 * r['top1']:.1f}",
                  f"{r['drop_pt']:.2f}", f"{100 * r['agreement']:.2f}", ci(r), f"{r['kl']:.4f}", f"{r['rel_mse']:.2e}",
                  kept(r), r["seconds"]) for r in results],
                ["model", "row", "images", "eager top-1 %", "top-1 %", "drop pt", "agreement %", "95 % CI",
                 "KL (nats)", "logit rel. MSE", "kept blocks+convs (fold 1/2)", "s (both folds)"]))
    by_row = {(r["model"], r["row"]): r for r in results}
    for r in results:
        base = by_row.get((r["model"], r["row"].split("@")[0]))
        if r.get("runtime", "onnxruntime") != "onnxruntime" and base is not None:
            lo, hi = base["agreement_ci95"]
            ok = lo <= r["agreement"] <= hi
            print(f"check {r['model']} {r['row']}: agreement {100 * r['agreement']:.2f} % against ONNX Runtime's "
                  f"{100 * base['agreement']:.2f} % ({100 * lo:.1f}-{100 * hi:.1f}); same-image flips "
                  f"{r.get('flips_vs_onnxruntime', '?')}: {'WITHIN' if ok else 'OUTSIDE'} its interval")
    for r in results:
        if r["row"].split("@")[0] in ("trt-default", "cpu-default", "ov-default", "vnni-default", "ovv-default"):
            ok = r["agreement"] >= TARGET_AGREEMENT and r["drop_pt"] <= TARGET_DROP_PT
            print(f"target {r['model']} {r['row']}: agreement {100 * r['agreement']:.2f} % (>= {100 * TARGET_AGREEMENT:g}), "
                  f"drop {r['drop_pt']:.2f} pt (<= {TARGET_DROP_PT}) on {r['images']} images: {'MET' if ok else 'MISSED'}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=str(REPO.parent / "shared" / "data" / "imagenet-sample"))
    ap.add_argument("--models", default="lite0,b0")
    ap.add_argument("--rows", default=",".join(r for r in ROWS if r not in DW_ROWS and r not in RECONSTRUCT_ROWS
                                               and not r.startswith(("vnni-", "ovv-"))),
                    help="rows to run (default: all but the -dwq/-dwf, -thorough, -bias, vnni- and ovv- variants)")
    ap.add_argument("--openvino", action="store_true",
                    help="also run every effdeploy row's bundle by OpenVINO (pip install 'effdeploy[openvino]')")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--save", type=Path, help="Append each finished row to this file as a JSON line.")
    args = ap.parse_args()
    data = Path(args.shared)
    if not data.is_dir():
        print(f"needs the ImageNet sample at {data} (--shared DIR)", file=sys.stderr)
        return 2
    rows = [r for r in args.rows.split(",") if r]
    if bad := [r for r in rows if r not in ROWS]:
        print(f"unknown rows {bad}; choose from {', '.join(ROWS)}", file=sys.stderr)
        return 2
    models = [m for m in args.models.split(",") if m]
    if args.openvino:
        from effdeploy.backends.openvino import MISSING_OPENVINO, import_openvino

        if import_openvino() is None:
            print(f"--openvino: {MISSING_OPENVINO}", file=sys.stderr)
            return 2
    if "b0" in models and not DISTILLED_B.is_file():
        print(f"skipping b0: needs {DISTILLED_B}", file=sys.stderr)
        models.remove("b0")
    results = []
    with tempfile.TemporaryDirectory(prefix="effdeploy-accuracy-") as tmp:
        for name in models:
            results += bench_model(name, rows, data, Path(tmp), args.save, args.openvino)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        show(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
