"""Where the INT8 error comes from: each activation quantizer alone, and each layer's weights alone.

The graph is the FP32-typed twin of the deployed Q/DQ graph (the dialect's Q/DQ placement, the
calibration the build would choose), run by effdeploy's torch interpreter with every quantizer but
one replaced by the identity. Each row is the logit error of that one quantizer on images the
calibration did not see (relative MSE and mean softmax KL against FP32), grouped by the role of
the tensor it quantizes (stem input, swish outputs into the depthwise convs, SE-gated project-conv
inputs, block outputs, residual adds, head and classifier inputs). ``--no-shift`` gives the table
without the tensorrt dialect's shift of lopsided inputs, for the before/after.

    python bench/int8_error_table.py [--model b0|lite0] [--dialect tensorrt|cpu] [--no-shift] [--images 64] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DISTILLED_B = REPO.parent / "shared" / "models" / "efficientnet-b0-distilled-b.pth"


def role(op, consumers) -> str:
    """What the quantized tensor is, read from the ops that consume it."""
    kinds = set()
    for u in consumers.get(op.outputs[0], []):
        if u.kind == "Add":
            kinds.add("residual add")
        elif u.kind == "Gemm":
            kinds.add("classifier input")
        elif u.kind == "Conv":
            name = u.name
            if name.startswith("/head"):
                kinds.add("head conv input")
            elif name.startswith("/stem"):
                kinds.add("stem input (image)")
            elif u.attrs.get("group", 1) > 1:
                kinds.add("depthwise input (swish output)")
            elif ".project" in name:
                kinds.add("project input (SE-gated)")
            else:
                kinds.add("expand input (block output)")
        elif u.kind in ("Sigmoid", "Mul", "QuickGelu"):
            kinds.add("conv output into swish (cpu dialect's output Q/DQ)")
    return " + ".join(sorted(kinds)) or "network output (cpu dialect's output Q/DQ)"


def setup(args):
    """FP32 graph, its twin in the dialect with the build's calibration, and images for judging."""
    from effdeploy.calibration import load_calibration_set, plan_calibration, run_calibrations
    from effdeploy.export.exporter import cached_export
    from effdeploy.model.network import build_model
    from effdeploy.precision.qdq import calibration_tensors, config_for, quantize
    from effdeploy.precision.int8_stage import choose_method

    if args.model == "lite0":
        model = build_model(0, "lite", weights="pretrained")
    else:
        model = build_model(0, "b", weights=str(DISTILLED_B))
    fp32, _ = cached_export(model, model.spec.resolution)
    pre = model.spec.preprocessing
    cfg = config_for(args.dialect == "tensorrt")
    cfg = replace(cfg, shift_skewed=cfg.shift_skewed and not args.no_shift)
    plan = plan_calibration(args.shared, args.calib_images, 0)
    outcomes = run_calibrations(fp32, calibration_tensors(fp32, cfg), plan, pre, quiet=True)
    sel = load_calibration_set(args.shared, 32, pre, seed=0, quiet=True).data  # the first 32 calibration images
    method, _ = choose_method(fp32, outcomes, cfg, lambda: sel, quiet=True)
    twin = quantize(fp32, outcomes[method].artifact.ranges, replace(cfg, method=method, fp16_rest=False))
    judge = load_calibration_set(args.shared, args.images, pre, seed=1, exclude=outcomes[method].ids, quiet=True)
    return fp32, twin, cfg, method, judge.data


def table_rows(fp32, twin, fp16_scales: bool, x: np.ndarray) -> tuple[list[dict], dict]:
    from effdeploy.export.logits import ort_logits, relative_mse
    from effdeploy.precision.sensitivity import Toggle
    from effdeploy.verify.repair import per_image_kl

    ref = ort_logits(fp32, x)
    t = Toggle(twin, fp32, fp16_scales)
    consumers: dict = defaultdict(list)
    for op in t.ops:
        for name in op.inputs:
            consumers[name].append(op)

    def run(acts: set, ws: set) -> dict:
        out = t.logits(x, acts, ws)
        return {"rel_mse": relative_mse(ref, out), "kl": float(per_image_kl(ref, out).mean()),
                "agreement": float((ref.argmax(1) == out.argmax(1)).mean())}

    fq = [op for op in t.ops if op.kind == "FakeQuant"]
    totals = {"everything": run(set(t.fake_quants), set(t.weights)), "activations only": run(set(t.fake_quants), set()),
              "weights only": run(set(), set(t.weights))}
    rows = [{"kind": "activation", "name": op.name.removesuffix("_DequantizeLinear"), "role": role(op, consumers),
             **run({op.name}, set())} for op in fq]
    rows += [{"kind": "weights", "name": w.int_name.removesuffix("_quantized"), "role": "weights", **run(set(), {k})}
             for k, w in t.weights.items()]
    return rows, totals


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=str(REPO.parent / "shared" / "data" / "imagenet-sample"))
    ap.add_argument("--model", choices=("b0", "lite0"), default="b0")
    ap.add_argument("--dialect", choices=("tensorrt", "cpu"), default="tensorrt")
    ap.add_argument("--no-shift", action="store_true", help="Without the shift of lopsided inputs (tensorrt).")
    ap.add_argument("--calib-images", type=int, default=256)
    ap.add_argument("--images", type=int, default=64, help="Judging images (not used by calibration).")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not Path(args.shared).is_dir() or (args.model == "b0" and not DISTILLED_B.is_file()):
        print(f"needs {args.shared} and, for b0, {DISTILLED_B}", file=sys.stderr)
        return 2
    fp32, twin, cfg, method, x = setup(args)
    rows, totals = table_rows(fp32, twin, cfg.fp16_rest, x)
    if args.json:
        print(json.dumps({"method": method, "config": cfg.to_dict(), "images": len(x), "totals": totals, "rows": rows}))
        return 0
    from effdeploy.report import table

    print(f"{args.model}, {cfg.dialect} dialect{'' if cfg.shift_skewed else ' (no shift)'}, {method} ranges, "
          f"{len(x)} images the calibration did not see; each row: that quantizer alone, all else FP32")
    print(table([(k, f"{v['rel_mse']:.2e}", f"{v['kl']:.4f}", f"{100 * v['agreement']:.1f}") for k, v in totals.items()],
                ["quantized", "logit rel. MSE", "KL (nats)", "agreement %"]))
    by_role: dict = defaultdict(lambda: [0, 0.0, 0.0])
    for r in rows:
        acc = by_role[r["role"]]
        acc[0] += 1
        acc[1] += r["rel_mse"]
        acc[2] += r["kl"]
    print(table([(k, n, f"{m:.2e}", f"{kl:.4f}") for k, (n, m, kl) in sorted(by_role.items(), key=lambda kv: -kv[1][1])],
                ["role", "quantizers", "sum of rel. MSE", "sum of KL"]))
    top = sorted(rows, key=lambda r: -r["rel_mse"])[: args.top]
    print(table([(r["name"], r["role"], f"{r['rel_mse']:.2e}", f"{r['kl']:.4f}") for r in top],
                ["quantizer", "role", "logit rel. MSE", "KL (nats)"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
