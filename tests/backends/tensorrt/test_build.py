"""effdeploy.backends.tensorrt.build without TensorRT: the timing-cache lock and what ``effdeploy
build`` learns from compile_after_build. Real compiles are in test_on_gpu.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tiny_bundle import bundle  # noqa: F401  (fixture)

from effdeploy.backends.tensorrt.build import compile_after_build
from effdeploy.backends.tensorrt.compat import MISSING_TENSORRT, import_tensorrt
from effdeploy.backends.tensorrt.plan import compile_hint
from effdeploy.profiles import load_profile

HAS_TRT = import_tensorrt() is not None

def test_timing_cache_lock_is_exclusive(tmp_path: Path):
    """Two compiles into one folder take turns merging the timing cache (item 7)."""
    from effdeploy.backends.tensorrt.build import timing_cache_lock

    cache = tmp_path / "timing.cache"
    probe = ("import fcntl, sys; f = open(sys.argv[1], 'a+b')\n"
             "try:\n    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB); print('free')\n"
             "except BlockingIOError:\n    print('held')")
    with timing_cache_lock(cache):
        held = subprocess.run([sys.executable, "-c", probe, str(cache) + ".lock"], capture_output=True, text=True)
    free = subprocess.run([sys.executable, "-c", probe, str(cache) + ".lock"], capture_output=True, text=True)
    assert held.stdout.strip() == "held" and free.stdout.strip() == "free", (held.stderr, free.stderr)


def test_compile_after_build_cpu_profile(bundle: Path):
    r = compile_after_build(bundle, load_profile("cpu"))
    assert r.engine is None and r.hint is None and "CPU target" in r.reason


@pytest.mark.skipif(HAS_TRT, reason="checks the no-TensorRT path; TensorRT is installed here")
def test_compile_after_build_without_tensorrt_returns_the_hint(bundle: Path):
    orin = load_profile("jetson-orin")
    r = compile_after_build(bundle, orin)
    assert r.engine is None and r.hint == compile_hint(bundle, orin) and r.reason == MISSING_TENSORRT
