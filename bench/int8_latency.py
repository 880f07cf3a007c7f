"""INT8 cpu-dialect latency: the reconstructed bundle against an unreconstructed one at batch 1,
interleaved in one run (issue 10: the reconstruction must not make the cpu bundle slower). A second
session of the unreconstructed bundle runs in the same rotation as a control: the spread between
two sessions of the same graph is what "not slower" has to be read against.

    python bench/int8_latency.py [--shared ../shared/data/imagenet-sample] [--iterations 300] [--json]

Both bundles are pretrained Lite0, cpu profile, all-INT8 (no repair), calibrated on the same 256
shared images (the built-in photos when ../shared is absent).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 0.02  # ratios within 2 % of 1 count as "not slower" (beside the control's own spread)


def build(out: Path, reconstruct: bool, data: str | None) -> object:
    from effdeploy.pipeline import BuildRequest, build_bundle
    from effdeploy.profiles import load_profile

    req = BuildRequest(phi=0, variant="lite", weights="pretrained", precision="int8", profile=load_profile("cpu"),
                       out=out, calib_data=data, calib_images=256, reconstruct=reconstruct, repair=False,
                       allow_parity_failure=True, quiet=True)
    return build_bundle(req).bundle


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=str(REPO.parent / "shared" / "data" / "imagenet-sample"))
    ap.add_argument("--iterations", type=int, default=300, help="interleaved rounds (5 calls of each per round)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    from effdeploy.backends.onnxrt import bundle_runner
    from effdeploy.backends.timing import TimingPlan, machine_info, ratio, summarize, time_interleaved

    data = a.shared if Path(a.shared).is_dir() else None
    with tempfile.TemporaryDirectory() as tmp:
        plain = build(Path(tmp) / "plain", False, data)
        recon = build(Path(tmp) / "reconstructed", True, data)
        rec = recon.manifest.quantization.get("reconstruction") or {}
        if not rec.get("accepted"):
            print("int8_latency: the reconstruction was not accepted; both bundles are the same graph", file=sys.stderr)
        # Three sessions share the cores: with spinning thread pools each would burn the next one's time.
        cfg = {"session.intra_op.allow_spinning": "0"}
        runners = {name: bundle_runner(b, threads=a.threads, session_config=cfg)
                   for name, b in (("plain", plain), ("reconstructed", recon), ("plain (control)", plain))}
        x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
        samples = time_interleaved({k: (lambda r=r: r.infer(x)) for k, r in runners.items()},
                                   TimingPlan(warmup=20, iterations=a.iterations), block=5)
        for r in runners.values():
            r.close()
    stats = {k: summarize(v) for k, v in samples.items()}
    out = {"machine": machine_info(), "threads": a.threads, "calibration": data or "built-in",
           "dialect": recon.manifest.quantization.get("dialect"), "activations": recon.manifest.quantization.get("activations"),
           "stats": {k: s.to_dict() for k, s in stats.items()},
           "ratio_p50": ratio(stats["reconstructed"], stats["plain"]),
           "control_ratio_p50": ratio(stats["plain (control)"], stats["plain"])}
    out["not_slower"] = out["ratio_p50"] <= 1 + max(TOLERANCE, abs(out["control_ratio_p50"] - 1))
    if a.json:
        print(json.dumps(out, indent=2))
        return 0
    from effdeploy.report import table

    print(table([(k, f"{s.p50_ms:.2f}", f"{s.min_ms:.2f}", f"{s.mean_ms:.2f}", s.iterations) for k, s in stats.items()],
                ["Lite0 INT8 cpu bundle", "p50 ms", "min ms", "mean ms", "calls"]))
    print(f"reconstructed / plain (p50): {out['ratio_p50']:.3f}; control / plain: {out['control_ratio_p50']:.3f}; "
          f"target: not slower (<= 1 + max({TOLERANCE:g}, control spread)): {'MET' if out['not_slower'] else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
