"""bench/soak.py in its short form: Runner.stream over the synthetic camera (mixed sizes, an odd
size mid-stream, a stall of the source) classifies every frame in order and its memory stays flat."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_a_short_soak_classifies_every_frame_with_flat_memory(tiny_bundle):
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import soak
    finally:
        sys.path.pop(0)
    r = soak.soak(tiny_bundle, frames=1200, stall_s=0.3)
    assert r["classified"] == 1200 and r["dropped"] == 0 and r["paths"] == {"cpu": 1200}
    assert len(r["quarters"]) == 4 and all(q["p99_ms"] >= q["p50_ms"] > 0 for q in r["quarters"])
    # 1,200 frames is too short for the script's 5 % target to mean much on a shared CI machine, but a
    # leak of a frame per call (640x480x3 B) would be ~1 GB here
    assert r["rss_growth"] < 0.25, r["rss_bytes"]
