"""effdeploy.backends.tensorrt.runner without TensorRT: what it reads from engine.json, and that the
plan's hash is checked before TensorRT is needed. Real inference is in test_on_gpu.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_bundle import engine_manifest

from effdeploy.backends.tensorrt.compat import import_tensorrt
from effdeploy.errors import EffdeployError

HAS_TRT = import_tensorrt() is not None

def test_runtime_dla_core_comes_from_engine_json(tmp_path: Path):
    """IRuntime.DLA_core defaults to -1; the runner sets the core the engine was built for (item 5)."""
    from effdeploy.backends.tensorrt.runner import runtime_dla_core

    _, dla = engine_manifest(tmp_path, dla_core=1)
    assert runtime_dla_core(dla) == 1
    _, gpu = engine_manifest(tmp_path, dla_core=None)
    assert runtime_dla_core(gpu) is None


@pytest.mark.skipif(HAS_TRT, reason="checks the no-TensorRT path; TensorRT is installed here")
def test_runner_checks_the_hash_before_needing_tensorrt(tmp_path: Path):
    from effdeploy.backends.tensorrt.runner import TensorRTRunner

    plan, _ = engine_manifest(tmp_path)
    with pytest.raises(EffdeployError, match="TensorRT is not installed here"):
        TensorRTRunner.open(plan)
    plan.write_bytes(plan.read_bytes()[:10])
    with pytest.raises(EffdeployError, match="truncated"):
        TensorRTRunner.open(plan)
