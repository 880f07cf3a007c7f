"""effdeploy.backends.tensorrt.manifest: engine.json and its load-time checks, and the device facts
(compute capability, L4T release). Nothing here imports or imitates TensorRT."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from tiny_bundle import engine_manifest

from effdeploy.backends.tensorrt.manifest import (
    GpuInfo, L4tRelease, check_engine_runs_here, compat_problems, engine_manifest_path, load_engine_manifest,
    normalize_cc, parse_l4t,
)
from effdeploy.errors import EffdeployError

def test_parse_l4t():
    rel = parse_l4t("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8")
    assert rel == L4tRelease(36, "4.3") and rel.jetpack == "6"
    assert parse_l4t("# R35 (release), REVISION: 5.0").jetpack == "5"
    assert parse_l4t("not a tegra file") is None


def test_normalize_cc():
    assert normalize_cc("8.7") == normalize_cc(8.7) == normalize_cc("sm_87") == normalize_cc("87") == "8.7"
    with pytest.raises(EffdeployError):
        normalize_cc("eight")


def test_jetpack_release_from_l4t():
    assert str(L4tRelease(36, "3.0")) == "L4T R36.3.0 (JetPack 6.0)"
    assert L4tRelease(36, "4.3").jetpack_release == "6.1+" and L4tRelease(36, "4.3").jetpack == "6"
    assert L4tRelease(32, "6.1").jetpack_release == "4.6" and L4tRelease(32, "7.1").jetpack_release == "4.6.1+"


# --- engine manifest -----------------------------------------------------------------------------


def test_engine_manifest_round_trip(tmp_path: Path):
    plan, written = engine_manifest(tmp_path)
    assert engine_manifest_path(plan) == tmp_path / "engine.json"
    loaded = load_engine_manifest(plan)
    assert loaded == written
    assert loaded.plan_sha256 == hashlib.sha256(plan.read_bytes()).hexdigest() and loaded.plan_bytes == plan.stat().st_size
    assert [t["name"] for t in loaded.inputs] == ["input"] and [t["name"] for t in loaded.outputs] == ["logits"]
    raw = json.loads((tmp_path / "engine.json").read_text())
    for key in ("tensorrt_version", "gpu", "profile", "precision", "onnx_sha256", "calibration_sha256", "io",
                "preprocessing", "plan_sha256"):
        assert key in raw
    assert raw["gpu"] == {"name": "Orin", "compute_capability": "8.7", "index": 0}


def test_truncated_plan_is_detected_before_tensorrt(tmp_path: Path):
    plan, _ = engine_manifest(tmp_path)
    plan.write_bytes(plan.read_bytes()[:1000])
    with pytest.raises(EffdeployError, match=r"truncated \(1000 of 4096 bytes\).*effdeploy compile /data/bundles/b0"):
        load_engine_manifest(plan)


def test_corrupt_plan_is_detected(tmp_path: Path):
    plan, _ = engine_manifest(tmp_path)
    data = bytearray(plan.read_bytes())
    data[100] ^= 0xFF
    plan.write_bytes(bytes(data))
    with pytest.raises(EffdeployError, match="does not match the sha256"):
        load_engine_manifest(plan)
    assert load_engine_manifest(plan, verify=False).plan_bytes == 4096


def test_missing_or_broken_engine_manifest(tmp_path: Path):
    with pytest.raises(EffdeployError, match="does not exist"):
        load_engine_manifest(tmp_path / "nope.plan")
    plan, _ = engine_manifest(tmp_path)
    (tmp_path / "engine.json").write_text("{not json")
    with pytest.raises(EffdeployError, match="not a valid engine manifest"):
        load_engine_manifest(plan)
    (tmp_path / "engine.json").unlink()
    with pytest.raises(EffdeployError, match="no engine.json beside it"):
        load_engine_manifest(plan)
    _, m = engine_manifest(tmp_path)
    (tmp_path / "engine.json").write_text(json.dumps({**m.to_dict(), "format_version": 99}))
    with pytest.raises(EffdeployError, match="newer than this effdeploy"):
        load_engine_manifest(plan)


def test_engine_from_another_trt_or_gpu_says_how_to_rebuild(tmp_path: Path):
    plan, m = engine_manifest(tmp_path)
    orin = GpuInfo("Orin", "8.7")
    assert compat_problems(m, "10.3.0.30", orin) == ([], [])  # JetPack reports 10.3.0, pip 10.3.0.30
    with pytest.raises(EffdeployError) as e:
        check_engine_runs_here(m, plan, "11.4.1", orin)
    msg = str(e.value)
    assert "built by TensorRT 10.3.0 and this machine has TensorRT 11.4.1" in msg
    assert f"effdeploy compile /data/bundles/b0 --profile jetson-orin --out {plan}" in msg and "\n" not in msg
    with pytest.raises(EffdeployError, match=r"built for Orin \(compute capability 8.7\).*NVIDIA A100"):
        check_engine_runs_here(m, plan, "10.3.0", GpuInfo("NVIDIA A100", "8.0"))
    errors, warnings = compat_problems(m, "10.3.0", GpuInfo("Orin NX", "8.7"))
    assert errors == [] and "same compute capability" in warnings[0]


def test_compatible_engines_relax_the_rules(tmp_path: Path):
    _, vc = engine_manifest(tmp_path, version_compatible=True)
    assert compat_problems(vc, "10.7", None)[0] == [] and compat_problems(vc, "11.4.1", None)[0] == []
    assert compat_problems(vc, "10.2", None)[0]
    _, hw = engine_manifest(tmp_path, hardware_compat="ampere_plus")
    assert compat_problems(hw, "10.3.0", GpuInfo("NVIDIA H100", "9.0"))[0] == []
    assert compat_problems(hw, "10.3.0", GpuInfo("Tesla T4", "7.5"))[0]
