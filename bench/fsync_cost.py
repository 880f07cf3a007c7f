"""What durability costs a cold build: every os.fsync the build makes (bundle files, folders, cache
entries) is timed in-process during a build with a fresh cache, and its share of the build printed.

    python bench/fsync_cost.py [--phi 0] [--variant b] [--precision fp32] [--profile cpu]

Random weights (the cost is in the writes, not the accuracy). Run it on the disk the builds use.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phi", default="0")
    ap.add_argument("--variant", default="b")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--profile", default="cpu")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="effdeploy-fsync-", dir=Path.cwd()) as tmp:
        os.environ["EFFDEPLOY_CACHE_DIR"] = str(Path(tmp) / "cache")
        from effdeploy.pipeline import BuildRequest, build_bundle
        from effdeploy.profiles import load_profile

        calls, spent = [0], [0.0]
        real = os.fsync

        def timed(fd: int) -> None:
            t = time.perf_counter()
            try:
                real(fd)
            finally:
                spent[0] += time.perf_counter() - t
                calls[0] += 1

        os.fsync = timed
        t = time.perf_counter()
        build_bundle(BuildRequest(phi=args.phi, variant=args.variant, precision=args.precision,
                                  profile=load_profile(args.profile), out=Path(tmp) / "bundle", quiet=True))
        total = time.perf_counter() - t
        os.fsync = real
        size = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file())
    print(f"cold {args.variant}{args.phi} {args.precision} build for {args.profile}: {total:.1f} s; {calls[0]} fsync calls "
          f"took {spent[0] * 1e3:.0f} ms ({100 * spent[0] / total:.2f} % of the build) for {size / 2 ** 20:.0f} MiB written "
          f"(bundle and cache) in {Path.cwd()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
