"""The built-in target profiles: every file loads, states its facts with a source, and the facts
that drive compile refusals (precisions, DLA, TensorRT releases) say what the hardware can do."""

from __future__ import annotations

from pathlib import Path

import pytest

from effdeploy.backends.tensorrt.plan import refuse_release_table
from effdeploy.profiles import PRECISIONS, builtin_profile_names, load_profile
from effdeploy.backends.tensorrt.compat import TrtVersion, dla_supported, strongly_typed_supported

PROFILES_DIR = Path(__file__).resolve().parents[2] / "profiles"
NEW = ("jetson-orin-nx", "jetson-orin-nano", "jetson-xavier-nx", "jetson-nano", "t4", "a100")
GPU = tuple(n for n in builtin_profile_names() if load_profile(n).is_gpu)


def test_every_target_has_a_profile():
    names = set(builtin_profile_names())
    assert {"cpu", "jetson-orin", *NEW} <= names


@pytest.mark.parametrize("name", GPU)
def test_gpu_profile_states_its_facts_with_sources(name: str):
    p = load_profile(name)
    text = (PROFILES_DIR / f"{name}.toml").read_text()
    assert p.name == name
    assert p.architecture and p.compute_capability and p.memory_gb and p.memory_gb > 0
    assert p.source, "target.source names the documents the facts come from"
    assert "# Source:" in text, "the TOML explains where its facts come from"
    assert set(p.precisions) <= set(PRECISIONS) and p.default_precision in p.precisions
    assert p.tensorrt, "every GPU target lists the TensorRT releases that exist for it"
    assert 1 <= p.batch_min <= p.batch_opt <= p.batch_max
    assert p.workspace_mb >= 256 and 0 <= p.builder_optimization_level <= 5
    if p.dla_cores:
        assert p.dla_precisions and "fp32" not in p.dla_precisions  # DLA runs FP16/INT8 only
        assert set(p.dla_precisions) <= set(p.precisions)
    else:
        assert not p.dla_precisions


@pytest.mark.parametrize(
    "name, cc, arch",
    [("jetson-orin", "8.7", "Ampere"), ("jetson-orin-nx", "8.7", "Ampere"), ("jetson-orin-nano", "8.7", "Ampere"),
     ("jetson-xavier-nx", "7.2", "Volta"), ("jetson-nano", "5.3", "Maxwell"), ("t4", "7.5", "Turing"),
     ("a100", "8.0", "Ampere")],
)
def test_compute_capability_and_architecture(name: str, cc: str, arch: str):
    p = load_profile(name)
    assert (p.compute_capability, p.architecture) == (cc, arch)


def test_dla_cores():
    assert load_profile("jetson-orin").dla_cores == 2
    assert load_profile("jetson-orin-nx").dla_cores >= 1
    assert load_profile("jetson-xavier-nx").dla_cores == 2
    for name in ("jetson-orin-nano", "jetson-nano", "t4", "a100"):
        assert load_profile(name).dla_cores == 0, name


def test_jetson_nano_is_fp16_only():
    p = load_profile("jetson-nano")
    assert "int8" not in p.precisions and "fp16" in p.precisions and p.default_precision == "fp16"


def test_targets_stuck_on_tensorrt8_say_so():
    for name in ("jetson-nano", "jetson-xavier-nx"):
        p = load_profile(name)
        assert all(not strongly_typed_supported(r.min_version) for r in p.tensorrt)
        assert "TensorRT 8" in p.description
        assert "strongly typed" in refuse_release_table(p)  # compile refuses with one clear line
    for name in set(GPU) - {"jetson-nano", "jetson-xavier-nx"}:
        p = load_profile(name)
        assert any(strongly_typed_supported(r.min_version) for r in p.tensorrt), name


def test_jetpack6_targets_stay_on_tensorrt_10_3():
    for name in ("jetson-orin", "jetson-orin-nx", "jetson-orin-nano"):
        p = load_profile(name)
        assert p.tensorrt[0].platform.startswith("JetPack 6") and p.tensorrt[0].contains("10.3.0")
        assert not any(r.contains("11.0") or r.contains("11.3.1") for r in p.tensorrt)
    orin = load_profile("jetson-orin")
    assert any(r.contains("11.4.1") and r.dla for r in orin.tensorrt)  # JetPack 7.2.2+
    for name in ("jetson-orin-nx", "jetson-orin-nano"):  # TensorRT 11.4.1 names only AGX Orin among Orins
        assert not any(TrtVersion.parse(r.min_version).major >= 11 for r in load_profile(name).tensorrt)


def test_dla_flag_matches_the_release_table():
    """A release marked dla=true must be one in which TensorRT can build DLA engines."""
    for name in GPU:
        for r in load_profile(name).tensorrt:
            if r.dla and strongly_typed_supported(r.min_version):
                assert dla_supported(r.min_version), (name, r)


def test_data_centre_profiles():
    t4, a100 = load_profile("t4"), load_profile("a100")
    assert {"fp16", "int8"} <= set(t4.precisions) and {"fp16", "int8"} <= set(a100.precisions)
    assert t4.hardware_compatibility == "none"  # Ampere-and-newer compatibility is impossible on Turing
    assert a100.memory_gb >= 40 and a100.batch_max >= t4.batch_max
    for p in (t4, a100):
        assert any(r.contains("10.13") for r in p.tensorrt) and any(r.contains("11.4.1") for r in p.tensorrt)


def test_a_cpu_profile_names_its_runtime_and_the_runtime_picks_the_int8_dialect(tmp_path):
    from effdeploy.errors import EffdeployError
    from effdeploy.precision.qdq import RUNTIME_DIALECTS

    runtimes = {n: load_profile(n).target_runtime for n in ("cpu", "cpu-openvino", "jetson-orin")}
    assert runtimes == {"cpu": "onnxruntime", "cpu-openvino": "openvino", "jetson-orin": "tensorrt"}
    assert [RUNTIME_DIALECTS[r] for r in runtimes.values()] == ["ort-cpu", "openvino", "tensorrt"]
    text = (PROFILES_DIR / "cpu.toml").read_text()
    for device, runtime in (("cpu", "tensorrt"), ("cpu", "onnx"), ("gpu", "openvino")):
        bad = tmp_path / f"{device}-{runtime}.toml"
        body = text.replace('device = "cpu"', f'device = "{device}"\nruntime = "{runtime}"')
        bad.write_text(body + ('\n[gpu]\ncompute_capability = "8.7"\n' if device == "gpu" else ""))
        with pytest.raises(EffdeployError, match=f"target.runtime of a {device} profile must be one of"):
            load_profile(bad)
