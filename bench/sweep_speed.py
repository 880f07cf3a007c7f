"""Sweep speed: `effdeploy sweep` against the same `build` + `bench` commands run by hand, each from
a cold cache, then the same sweep again (everything cached). Prints the two ratios the sweep issue
targets: sweep / by hand <= 1.3, second sweep / first <= 0.10.

    python bench/sweep_speed.py [--shared ../shared/data/imagenet-sample] [--phi 0:2] [--precision fp32,int8] [--keep DIR]

Default: Lite0..Lite2 x fp32,int8 on the cpu profile with pretrained weights. --keep leaves the
sweep folder (sweep.csv/json/png) there.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(args: list[str], cache: Path) -> float:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "effdeploy", *args], capture_output=True, text=True,
                          env={**os.environ, "EFFDEPLOY_CACHE_DIR": str(cache)})
    if proc.returncode not in (0, 3):
        print(proc.stderr, file=sys.stderr)
        raise SystemExit(f"failed: effdeploy {' '.join(args)}")
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=str(REPO.parent / "shared" / "data" / "imagenet-sample"))
    ap.add_argument("--phi", default="0:2")
    ap.add_argument("--precision", default="fp32,int8")
    ap.add_argument("--keep", type=Path, default=None)
    args = ap.parse_args()
    from effdeploy.backends.timing import cpu_model
    from effdeploy.sweep.points import parse_phis

    common = ["--variant", "lite", "--weights", "pretrained", "--profile", "cpu", "--calib-data", args.shared]
    with tempfile.TemporaryDirectory(prefix="effdeploy-sweep-speed-") as tmp:
        root = Path(tmp)
        by_hand = 0.0
        for phi in parse_phis(args.phi):
            for precision in args.precision.split(","):
                out = root / "manual" / f"phi{phi:g}-{precision}"
                by_hand += run(["build", "--phi", f"{phi:g}", "--precision", precision, *common, "--out", str(out),
                                "--allow-parity-failure", "--json"], root / "cache-manual")
                by_hand += run(["bench", str(out), "--batch", "1", "-n", "100", "--json"], root / "cache-manual")
        folder = root / "sweep"
        sweep = ["sweep", "--phi", args.phi, "--precision", args.precision, *common, "--out", str(folder), "-n", "100"]
        first = run(sweep, root / "cache-sweep")
        second = run(sweep, root / "cache-sweep")
        if args.keep:
            shutil.copytree(folder, args.keep, dirs_exist_ok=True)
    print(f"{cpu_model()}: by hand {by_hand:.1f} s, sweep {first:.1f} s, same sweep again {second:.1f} s")
    print(f"sweep / by hand: {first / by_hand:.2f} (target <= 1.3): {'met' if first / by_hand <= 1.3 else 'MISSED'}")
    print(f"second / first sweep: {second / first:.3f} (target <= 0.10): {'met' if second / first <= 0.10 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
