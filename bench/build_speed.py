"""Build-speed benchmark: the INT8 build of pretrained Lite1 for jetson-orin with the reconstruction
(`effdeploy build --phi 1 --variant lite --weights pretrained --precision int8 --profile jetson-orin
--calib-data DIR --calib-images 256`) against 3 min, and a rebuild with the same inputs (every
cache hit) against 20 s, and the B family's: B1 INT8 for jetson-orin, cold, against 3 min, the
mission's command with random weights (no trained B1 exists here) and with the distilled-b B0 at
phi 0 (trained: its repair and conv fallback run), both on the same calibration images; measured in
one run on this machine.

    python bench/build_speed.py [--shared ../shared/data/imagenet-sample] [--profile jetson-orin]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(args: list[str], env: dict) -> tuple[float, dict]:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "effdeploy", *args, "--json"], capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t
    if proc.returncode not in (0, 3):
        print(proc.stderr, file=sys.stderr)
        raise SystemExit(proc.returncode)
    return dt, json.loads(proc.stdout) if proc.stdout.strip() else {}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=str(REPO.parent / "shared" / "data" / "imagenet-sample"))
    ap.add_argument("--profile", default="jetson-orin")
    a = ap.parse_args()
    if not Path(a.shared).is_dir():
        print(f"needs the ImageNet sample at {a.shared}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "EFFDEPLOY_CACHE_DIR": str(Path(tmp) / "cache")}
        common = ["build", "--phi", "1", "--variant", "lite", "--weights", "pretrained", "--precision", "int8",
                  "--profile", a.profile, "--calib-data", a.shared, "--calib-images", "256", "--allow-parity-failure"]
        cold, s1 = run([*common, "--out", str(Path(tmp) / "cold")], env)
        warm, s2 = run([*common, "--out", str(Path(tmp) / "warm")], env)
        b_family = {}
        distilled = REPO.parent / "shared" / "models" / "efficientnet-b0-distilled-b.pth"
        for label, phi, weights in (("B1, random weights", "1", None), ("B0, distilled-b", "0", distilled)):
            if weights is not None and not weights.is_file():
                continue
            env_b = {**os.environ, "EFFDEPLOY_CACHE_DIR": str(Path(tmp) / f"cache-{phi}")}  # cold
            args = ["build", "--phi", phi, "--variant", "b", "--precision", "int8", "--profile", a.profile,
                    "--calib-data", a.shared, "--calib-images", "256", "--allow-parity-failure",
                    "--out", str(Path(tmp) / f"b{phi}")] + (["--weights", str(weights)] if weights else [])
            b_family[label] = run(args, env_b)
    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} cores, load average {load:.2f} at the end")
    print(f"stages (cold): {s1.get('timings_s')}")
    print(f"stages (cache hit): {s2.get('timings_s')}")
    print(f"full INT8 build of Lite1 with reconstruction: {cold:.1f} s  (target 180 s: ratio {cold / 180:.2f}, "
          f"{'MET' if cold <= 180 else 'MISSED'})")
    print(f"cache-hit rebuild:     {warm:.1f} s  (target 20 s: ratio {warm / 20:.2f}, {'MET' if warm <= 20 else 'MISSED'})")
    for label, (seconds, s) in b_family.items():
        print(f"INT8 build of {label}, cold: {seconds:.1f} s  (target 180 s: ratio {seconds / 180:.2f}, "
              f"{'MET' if seconds <= 180 else 'MISSED'}; status {s.get('status')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
