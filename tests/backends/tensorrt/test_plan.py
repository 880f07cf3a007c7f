"""The TensorRT-free half of the TensorRT backend: version rules, profile -> build plan, refusals,
the compile hint, the engine manifest and its load-time checks, and the CLI's one-line errors.

Nothing here imports or imitates TensorRT; the GPU/TensorRT half is in test_tensorrt.py.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from effdeploy.bundle import STATUS_UNVERIFIED, STATUS_VERIFIED, Manifest, load_bundle, sha256_file, write_manifest
from effdeploy.compile import (
    CompileOptions,
    L4tRelease,
    check_installed,
    compile_after_build,
    compile_hint,
    gpu_matches,
    local_gpu_matches,
    make_plan,
    parse_batch,
    parse_l4t,
    refuse_release_table,
)
from effdeploy.engine import (
    EngineManifest,
    GpuInfo,
    check_engine_runs_here,
    compat_problems,
    engine_manifest_path,
    load_engine_manifest,
    normalize_cc,
    write_engine_manifest,
)
from effdeploy.errors import EffdeployError
from effdeploy.profile import load_profile
from effdeploy.spec import ModelSpec, Preprocessing
from effdeploy.trt_compat import (
    MISSING_TENSORRT,
    TrtVersion,
    dla_supported,
    import_tensorrt,
    same_cc_hw_compat_supported,
    strongly_typed_supported,
    version_compatible_runs,
)

HAS_TRT = import_tensorrt() is not None

# --- a tiny, real bundle (ONNX written with onnx.helper; manifest via effdeploy.bundle) -------------


def tiny_onnx(path: Path, batch: int | str = "N", res: int = 16, classes: int = 10, seed: int = 0) -> Path:
    """Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm: a real NCHW classifier TensorRT can parse."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.2, "conv_w")
    b = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "conv_b")
    fw = numpy_helper.from_array(rng.standard_normal((classes, 8)).astype(np.float32) * 0.3, "fc_w")
    fb = numpy_helper.from_array(rng.standard_normal(classes).astype(np.float32) * 0.1, "fc_b")
    nodes = [
        helper.make_node("Conv", ["input", "conv_w", "conv_b"], ["c"], pads=[1, 1, 1, 1], name="stem/conv"),
        helper.make_node("Relu", ["c"], ["r"], name="stem/act"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="head/pool"),
        helper.make_node("Flatten", ["p"], ["f"], axis=1, name="head/flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], transB=1, name="head/fc"),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, res, res])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])],
        initializer=[w, b, fw, fb],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="effdeploy-tests")
    model.ir_version = 8  # readable by the ONNX parsers of TensorRT 10.3 (JetPack 6) and 11.x
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def make_bundle(directory: Path, precision: str = "fp32", profile: str = "jetson-orin", status: str = STATUS_VERIFIED,
                batch: int | str = "N", res: int = 16, calibration: bool = False) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    tiny_onnx(directory / "model.onnx", batch=batch, res=res)
    if calibration:
        (directory / "calibration.json").write_text(json.dumps({"method": "max", "images": 8}))
    spec = ModelSpec(variant="b", phi=0, width=1.0, depth=1.0, resolution=res, dropout=0.2, num_classes=10,
                     preprocessing=Preprocessing.for_weights(res, "b", "native"))
    manifest = Manifest(model=spec, precision=precision, profile=load_profile(profile).to_dict(),
                        weights={"source": "random"}, status=status)
    write_manifest(directory, manifest)
    return directory


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return make_bundle(tmp_path / "b0")


def plan_of(path: Path, profile: str, **opts):
    return make_plan(load_bundle(path), load_profile(profile), CompileOptions(**opts))


def refusal(path: Path, profile: str, **opts) -> str:
    with pytest.raises(EffdeployError) as e:
        plan_of(path, profile, **opts)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# --- versions ------------------------------------------------------------------------------------


def test_trt_version_parse_and_order():
    assert str(TrtVersion.parse("11.4.0.106")) == "11.4.0.106"
    assert str(TrtVersion.parse("10.3")) == "10.3.0"
    assert TrtVersion.parse("10.3.0") < TrtVersion.parse("10.3.0.30") < TrtVersion.parse("10.13") < TrtVersion.parse("11.0")
    assert TrtVersion.parse("10.3.0").same_build_as("10.3.0.30")  # JetPack bindings omit the build number
    assert not TrtVersion.parse("10.3.0.30").same_build_as("10.3.0.26")
    assert TrtVersion.parse("11.4.1").in_range("11.4.1", None) and not TrtVersion.parse("11.4.0").in_range("11.4.1", None)
    for bad in ("", "ten", "10..3", "latest"):
        with pytest.raises(EffdeployError, match="not a TensorRT version"):
            TrtVersion.parse(bad)


@pytest.mark.parametrize("version, ok", [("8.6", False), ("9.3", False), ("10.0", True), ("10.3", True), ("11.4.1", True)])
def test_strongly_typed_floor(version, ok):
    assert strongly_typed_supported(version) is ok


@pytest.mark.parametrize(
    "version, ok",
    [("10.3", True), ("10.7.0", True), ("10.8", False), ("10.13.3", False), ("11.0", False), ("11.3.9", False),
     ("11.4.0", False), ("11.4.1", True), ("11.5", True), ("8.5.2", False)],
)
def test_dla_version_table(version, ok):
    assert dla_supported(version) is ok


def test_version_compatible_and_same_cc_tables():
    assert version_compatible_runs("10.3", "10.13") and version_compatible_runs("10.3", "11.4.1")
    assert not version_compatible_runs("10.13", "10.3")  # never backwards
    assert not version_compatible_runs("11.0", "12.0") and not version_compatible_runs("8.6", "11.0")
    assert not same_cc_hw_compat_supported("10.3") and same_cc_hw_compat_supported("10.9")


def test_parse_batch():
    assert parse_batch("1,4,8") == (1, 4, 8)
    assert parse_batch(" 2 ") == (2, 2, 2)
    for bad in ("8,4,1", "0,1,2", "1,2", "a,b,c", "1,2,3,4"):
        with pytest.raises(EffdeployError, match="--batch"):
            parse_batch(bad)


def test_parse_l4t():
    rel = parse_l4t("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8")
    assert rel == L4tRelease(36, "4.3") and rel.jetpack == "6"
    assert parse_l4t("# R35 (release), REVISION: 5.0").jetpack == "5"
    assert parse_l4t("not a tegra file") is None


def test_normalize_cc():
    assert normalize_cc("8.7") == normalize_cc(8.7) == normalize_cc("sm_87") == normalize_cc("87") == "8.7"
    with pytest.raises(EffdeployError):
        normalize_cc("eight")


# --- profile + bundle + flags -> plan --------------------------------------------------------------


def test_plan_from_profile_defaults(bundle: Path):
    plan = plan_of(bundle, "jetson-orin")
    prof = load_profile("jetson-orin")
    assert (plan.batch_min, plan.batch_opt, plan.batch_max) == (prof.batch_min, prof.batch_opt, prof.batch_max)
    assert plan.workspace_mb == prof.workspace_mb == 4096
    assert plan.opt_level == prof.builder_optimization_level
    assert plan.input_name == "input" and plan.input_chw == (3, 16, 16)
    assert plan.shapes == ((1, 3, 16, 16), (1, 3, 16, 16), (8, 3, 16, 16))
    assert Path(plan.plan_path) == bundle / "engine.plan"
    assert Path(plan.timing_cache_path) == bundle / "timing.cache"  # persisted beside the engine
    assert plan.onnx_sha256 == sha256_file(bundle / "model.onnx")
    assert plan.calibration_sha256 is None and plan.dla_core is None and not plan.gpu_fallback
    assert plan.hardware_compat == "none" and plan.version_compatible is False
    assert plan.trt_version is None
    assert plan.preprocessing["resolution"] == 16


def test_plan_flags_override_profile(tmp_path: Path):
    fp16 = make_bundle(tmp_path / "fp16", precision="fp16")  # DLA runs fp16/int8
    plan = plan_of(fp16, "jetson-orin", batch=(2, 4, 16), workspace_mb=512, opt_level=5,
                   out=tmp_path / "x" / "orin.plan", timing_cache=tmp_path / "tc.bin", trt_version="10.3")
    assert (plan.batch_min, plan.batch_opt, plan.batch_max) == (2, 4, 16)
    assert plan.workspace_mb == 512 and plan.opt_level == 5
    assert plan.dla_core is None and not plan.gpu_fallback
    assert plan.plan_path == str(tmp_path / "x" / "orin.plan")
    assert plan.timing_cache_path == str(tmp_path / "tc.bin")
    assert plan.trt_version == "10.3.0"
    settings = plan.build_settings()
    assert settings["batch"] == [2, 4, 16] and settings["dla_core"] is None and settings["strongly_typed"] is True
    dla = plan_of(fp16, "jetson-orin", batch=(4, 4, 4), dla_core=1, trt_version="10.3", gpu_fallback=True)
    assert dla.dla_core == 1 and dla.gpu_fallback and dla.build_settings()["batch"] == [4, 4, 4]


def test_plan_records_calibration_hash(tmp_path: Path):
    b = make_bundle(tmp_path / "int8", precision="int8", calibration=True)
    plan = plan_of(b, "jetson-orin")
    assert plan.calibration_sha256 == sha256_file(b / "calibration.json")
    assert plan.precision == "int8"


def test_static_batch_graph(tmp_path: Path):
    b = make_bundle(tmp_path / "static", batch=1)
    plan = plan_of(b, "jetson-orin")
    assert (plan.batch_min, plan.batch_opt, plan.batch_max) == (1, 1, 1)
    assert any("fixed batch" in n for n in plan.notes)
    msg = refusal(b, "jetson-orin", batch=(1, 2, 4))
    assert "fixed batch of 1" in msg and "--batch 1" in msg


def test_data_centre_compat_options(bundle: Path):
    plan = plan_of(bundle, "a100", hardware_compat="ampere_plus", version_compatible=True)
    assert plan.hardware_compat == "ampere_plus" and plan.version_compatible
    assert plan_of(bundle, "a100", hardware_compat="same_compute_capability", trt_version="10.9").hardware_compat \
        == "same_compute_capability"


# --- refusals: one clear line each ---------------------------------------------------------------


def test_refuse_int8_on_jetson_nano(tmp_path: Path):
    b = make_bundle(tmp_path / "int8", precision="int8")
    msg = refusal(b, "jetson-nano")
    assert "jetson-nano" in msg and "no INT8 kernels" in msg and "--precision fp16" in msg


def test_refuse_dla_on_trt_11_0_to_11_3(tmp_path: Path):
    int8 = make_bundle(tmp_path / "int8", precision="int8")
    for v in ("11.0", "11.2.1", "11.3"):
        msg = refusal(int8, "jetson-orin", dla_core=0, trt_version=v)
        assert "DLA is unavailable in TensorRT 11.0-11.3" in msg and "drop --dla-core" in msg
    assert "Windows on ARM" in refusal(int8, "jetson-orin", dla_core=0, trt_version="11.4.0")
    assert "10.7 was the last" in refusal(int8, "jetson-orin", dla_core=0, trt_version="10.13")
    assert plan_of(int8, "jetson-orin", dla_core=0, trt_version="11.4.1").dla_core == 0
    assert plan_of(int8, "jetson-orin", dla_core=1, trt_version="10.3").dla_core == 1


# --- DLA: one fixed batch, no silent GPU fallback, what is known about Q/DQ on DLA (items 1, 3) ------


def test_dla_forces_one_batch_size(tmp_path: Path):
    """DLA has no dynamic shapes (min = opt = max): the profile range collapses to its opt, a range is refused."""
    fp16 = make_bundle(tmp_path / "fp16", precision="fp16")
    gpu = plan_of(fp16, "jetson-orin")
    assert (gpu.batch_min, gpu.batch_opt, gpu.batch_max) == (1, 1, 8)  # the GPU keeps the range
    plan = plan_of(fp16, "jetson-orin", dla_core=0, trt_version="10.3")
    prof = load_profile("jetson-orin")
    assert plan.shapes == ((prof.batch_opt, 3, 16, 16),) * 3
    assert any("one fixed batch" in n for n in plan.notes)
    msg = refusal(fp16, "jetson-orin", dla_core=0, batch=(1, 4, 8))
    assert "min = opt = max" in msg and "--batch 4" in msg
    assert plan_of(fp16, "jetson-orin", dla_core=0, batch=(4, 4, 4)).shapes[2] == (4, 3, 16, 16)


def test_dla_builds_without_gpu_fallback_unless_asked(tmp_path: Path):
    fp16 = make_bundle(tmp_path / "fp16", precision="fp16")
    plan = plan_of(fp16, "jetson-orin", dla_core=0, trt_version="10.3")
    assert plan.gpu_fallback is False and plan.build_settings()["gpu_fallback"] is False
    assert any("without GPU fallback" in n and "--gpu-fallback" in n for n in plan.notes)
    fallback = plan_of(fp16, "jetson-orin", dla_core=0, trt_version="10.3", gpu_fallback=True)
    assert fallback.gpu_fallback is True and any("silently" in n for n in fallback.notes)
    assert plan_of(fp16, "jetson-orin", gpu_fallback=True).gpu_fallback is False  # meaningless without DLA


def qdq_onnx(path: Path, scale_type: int) -> Path:
    """Conv fed by a Q/DQ pair whose scale has ``scale_type``: the explicit-quantization pattern of an INT8 bundle."""
    rng = np.random.default_rng(2)
    ftype = TensorProto.FLOAT16 if scale_type == TensorProto.FLOAT16 else TensorProto.FLOAT
    np_f = np.float16 if ftype == TensorProto.FLOAT16 else np.float32
    inits = [
        helper.make_tensor("s", scale_type, [], [0.05]),
        helper.make_tensor("zp", TensorProto.INT8, [], [0]),
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np_f), "w"),
        numpy_helper.from_array(rng.standard_normal((10, 8)).astype(np_f), "fc_w"),
    ]
    nodes = [
        helper.make_node("Cast", ["input"], ["xc"], to=ftype),
        helper.make_node("QuantizeLinear", ["xc", "s", "zp"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"]),
        helper.make_node("Conv", ["xd", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fc_w"], ["lh"], transB=1),
        helper.make_node("Cast", ["lh"], ["logits"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def test_dla_int8_notes_say_what_is_documented(tmp_path: Path):
    int8 = make_bundle(tmp_path / "int8", precision="int8")
    qdq_onnx(int8 / "model.onnx", TensorProto.FLOAT16)
    write_manifest(int8, load_bundle(int8, check=False).manifest)
    on_10 = plan_of(int8, "jetson-orin", dla_core=0, trt_version="10.3").notes
    assert any("not documented for TensorRT 10.x" in n for n in on_10)
    on_11 = plan_of(int8, "jetson-orin", dla_core=0, trt_version="11.4.1").notes
    assert any("FP16 Q/DQ scales" in n and "FP32 scales" in n for n in on_11)
    assert not any("not documented" in n for n in on_11)
    qdq_onnx(int8 / "model.onnx", TensorProto.FLOAT)
    write_manifest(int8, load_bundle(int8, check=False).manifest)
    assert not any("FP16 Q/DQ scales" in n for n in plan_of(int8, "jetson-orin", dla_core=0, trt_version="11.4.1").notes)
    assert not any("Q/DQ" in n for n in plan_of(int8, "jetson-orin", trt_version="10.3").notes)  # GPU: nothing to say


# --- JetPack releases and their TensorRT (item 11) --------------------------------------------------


def test_jetpack_release_from_l4t():
    assert str(L4tRelease(36, "3.0")) == "L4T R36.3.0 (JetPack 6.0)"
    assert L4tRelease(36, "4.3").jetpack_release == "6.1+" and L4tRelease(36, "4.3").jetpack == "6"
    assert L4tRelease(32, "6.1").jetpack_release == "4.6" and L4tRelease(32, "7.1").jetpack_release == "4.6.1+"


def test_jetpack6_0_device_says_upgrade_to_6_1(bundle: Path):
    """JetPack 6.0 (L4T R36.3) ships TensorRT 8.6.2: no strongly typed networks; 6.1+ has 10.3."""
    plan = plan_of(bundle, "jetson-orin")
    orin = GpuInfo("Orin", "8.7")
    with pytest.raises(EffdeployError, match=r"JetPack 6\.0.*upgrade the device to JetPack 6\.1\+"):
        check_installed(plan, "8.6.2", None, orin, L4tRelease(36, "3.0"))
    with pytest.raises(EffdeployError, match="JetPack 6.1\\+ stays on TensorRT 10.3-10.7"):
        check_installed(plan, "11.4.1", None, orin, L4tRelease(36, "4.3"))


def test_jetpack6_tensorrt_10_4_to_10_7_builds_are_targets(bundle: Path, tmp_path: Path):
    for v in ("10.3", "10.4", "10.7.0"):
        assert plan_of(bundle, "jetson-orin", trt_version=v).trt_version.startswith(v.rstrip(".0"))
    msg = refusal(bundle, "jetson-orin", trt_version="10.8")  # no JetPack build of 10.8 (NVIDIA/TensorRT#4347)
    assert "not a release for jetson-orin" in msg and "10.3-<10.8" in msg
    fp16 = make_bundle(tmp_path / "fp16", precision="fp16")
    assert plan_of(fp16, "jetson-orin", dla_core=0, trt_version="10.7").dla_core == 0


def test_jetson_nano_jetpack_4_6_and_4_6_1_releases():
    nano = load_profile("jetson-nano")
    by_platform = {r.platform: r for r in nano.tensorrt}
    assert by_platform["JetPack 4.6 (L4T R32.6.1)"].contains("8.0.1")
    assert by_platform["JetPack 4.6.1-4.6.6 (L4T R32.7)"].contains("8.2.1")
    assert "TensorRT 8.2" in refuse_release_table(nano)


def test_refuse_trt11_on_jetpack6(bundle: Path):
    msg = refusal(bundle, "jetson-orin", trt_version="11.2")
    assert "JetPack 6" in msg and "10.3" in msg and "11.4.1" in msg
    msg = refusal(bundle, "jetson-orin-nx", trt_version="11.4.1")  # Orin NX has no TensorRT 11 JetPack
    assert "JetPack 6" in msg and "--trt-version 10.3" in msg
    assert plan_of(bundle, "jetson-orin", trt_version="11.4.1").trt_version == "11.4.1"  # JetPack 7.2.2+


def test_refuse_trt11_on_a_jetpack6_device(bundle: Path):
    """On the device the L4T release says JetPack 6 even when the profile allows TensorRT 11."""
    plan = plan_of(bundle, "jetson-orin")
    orin = GpuInfo("Orin", "8.7")
    with pytest.raises(EffdeployError, match="does not run on JetPack 6"):
        check_installed(plan, "11.4.1", None, orin, L4tRelease(36, "4.3"))
    assert check_installed(plan, "10.3.0", None, orin, L4tRelease(36, "4.3")).trt_version == "10.3.0"
    assert check_installed(plan, "11.4.1", None, orin, L4tRelease(39, "2.2")).trt_version == "11.4.1"


def test_refuse_dla_precision_and_missing_dla(bundle: Path, tmp_path: Path):
    msg = refusal(bundle, "jetson-orin", dla_core=0)  # fp32 bundle
    assert "DLA has no FP32 kernels" in msg and "--precision fp16" in msg
    fp16 = make_bundle(tmp_path / "fp16", precision="fp16")
    assert "has no DLA" in refusal(fp16, "jetson-orin-nano", dla_core=0)
    assert "DLA core(s)" in refusal(fp16, "jetson-orin", dla_core=2)
    assert "DLA core(s)" in refusal(fp16, "jetson-orin-nx", dla_core=1)


def test_refuse_unverified_bundle(tmp_path: Path):
    b = make_bundle(tmp_path / "u", status=STATUS_UNVERIFIED)
    msg = refusal(b, "jetson-orin")
    assert "not verified" in msg and "effdeploy build" in msg


def test_checked_and_benchmark_only_bundles_compile_with_a_note(tmp_path: Path):
    from effdeploy.bundle import STATUS_BENCHMARK_ONLY, STATUS_CHECKED

    for status in (STATUS_CHECKED, STATUS_BENCHMARK_ONLY):
        b = make_bundle(tmp_path / status, status=status)
        plan = plan_of(b, "jetson-orin")
        assert any(f"status {status}" in n for n in plan.notes)


def test_refuse_targets_stuck_on_trt8(tmp_path: Path):
    fp16 = make_bundle(tmp_path / "fp16", precision="fp16")
    for name, old in (("jetson-nano", "8.2"), ("jetson-xavier-nx", "8.5")):
        msg = refusal(fp16, name)
        assert f"TensorRT {old}" in msg and "strongly typed" in msg and "ONNX Runtime" in msg
        msg = refusal(fp16, name, trt_version="10.3")  # the table refusal comes first: nothing to try
        assert "strongly typed" in msg
    assert "need TensorRT >= 10.0 (got 8.6.0)" in refusal(fp16, "jetson-orin", trt_version="8.6")


def test_refuse_cpu_profile_and_bad_knobs(bundle: Path):
    assert "CPU target" in refusal(bundle, "cpu")
    assert "--opt-level" in refusal(bundle, "jetson-orin", opt_level=6)
    assert "--workspace-mb" in refusal(bundle, "jetson-orin", workspace_mb=0)
    assert "Ampere or later" in refusal(bundle, "t4", hardware_compat="ampere_plus")
    assert ">= 10.9" in refusal(bundle, "a100", hardware_compat="same_compute_capability", trt_version="10.3")


def test_refuse_an_out_path_that_cannot_be_a_plan(bundle: Path, tmp_path: Path):
    assert "is a directory" in refusal(bundle, "jetson-orin", out=tmp_path)
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        assert "not writable" in refusal(bundle, "jetson-orin", out=ro / "e.plan")


def test_local_gpu_rules(bundle: Path):
    plan = plan_of(bundle, "jetson-orin")
    h100 = GpuInfo("NVIDIA H100 80GB HBM3", "9.0")
    with pytest.raises(EffdeployError, match="compute capability 9.0.*--force"):
        check_installed(plan, "10.3.0", None, h100, None)
    forced = plan_of(bundle, "jetson-orin", force=True)
    assert check_installed(forced, "10.3.0", None, h100, None).force
    with pytest.raises(EffdeployError, match="no CUDA GPU"):
        check_installed(plan, "10.3.0", None, None, None)
    with pytest.raises(EffdeployError, match="differs from the installed TensorRT"):
        check_installed(plan, "10.3.0", "11.4.1", GpuInfo("Orin", "8.7"), None)
    with pytest.raises(EffdeployError, match="DLA is unavailable"):
        check_installed(plan_of(make_bundle(bundle.parent / "h", precision="fp16"), "jetson-orin", dla_core=0),
                        "11.1.0", None, GpuInfo("Orin", "8.7"), None)


def test_a_cuda_error_is_said_instead_of_no_gpu(bundle: Path):
    """cuda-python 13 on JetPack 6 fails with cudaErrorInsufficientDriver: compile says so (item 2)."""
    plan = plan_of(bundle, "jetson-orin")
    problem = "CUDA reports cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version"
    with pytest.raises(EffdeployError, match="cuda-python cannot use a GPU here: CUDA reports cudaErrorInsufficientDriver"):
        check_installed(plan, "10.3.0", None, None, None, problem)


def test_timing_cache_lock_is_exclusive(tmp_path: Path):
    """Two compiles into one folder take turns merging the timing cache (item 7)."""
    from effdeploy.trt_build import timing_cache_lock

    cache = tmp_path / "timing.cache"
    probe = ("import fcntl, sys; f = open(sys.argv[1], 'a+b')\n"
             "try:\n    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB); print('free')\n"
             "except BlockingIOError:\n    print('held')")
    with timing_cache_lock(cache):
        held = subprocess.run([sys.executable, "-c", probe, str(cache) + ".lock"], capture_output=True, text=True)
    free = subprocess.run([sys.executable, "-c", probe, str(cache) + ".lock"], capture_output=True, text=True)
    assert held.stdout.strip() == "held" and free.stdout.strip() == "free", (held.stderr, free.stderr)


def test_one_logger_routes_tensorrt_messages_to_the_active_build():
    """TensorRT keeps one logger per process (item 4): effdeploy's single logger forwards each message
    to the captures listening now; a DLA build's [DlaLayer]/[GpuLayer] INFO lines become lists."""
    from effdeploy.trt_compat import LogCapture, capture_log, dispatch_log

    with capture_log(LogCapture()) as outer:
        with capture_log(LogCapture()) as build:
            dispatch_log("ERROR", "  [network.cpp::validate] Error Code 4: bad input  ")
            dispatch_log("INFO", "--------------- Layers running on DLA:")
            dispatch_log("INFO", "[DlaLayer] {ForeignNode[/stem/conv/Conv...Relu]},")
            dispatch_log("INFO", "[GpuLayer] SHUFFLE: /head/flatten")
            dispatch_log("VERBOSE", "[DlaLayer] not at INFO: ignored")
        dispatch_log("ERROR", "after the build")
    assert build.errors == ["[network.cpp::validate] Error Code 4: bad input"]
    assert build.dla_layers == ["{ForeignNode[/stem/conv/Conv...Relu]}"] and build.gpu_layers == ["SHUFFLE: /head/flatten"]
    assert outer.errors[-1] == "after the build" and len(outer.errors) == 2


def test_runtime_dla_core_comes_from_engine_json(tmp_path: Path):
    """IRuntime.DLA_core defaults to -1; the runner sets the core the engine was built for (item 5)."""
    from effdeploy.trt_runner import runtime_dla_core

    _, dla = engine_manifest(tmp_path, dla_core=1)
    assert runtime_dla_core(dla) == 1
    _, gpu = engine_manifest(tmp_path, dla_core=None)
    assert runtime_dla_core(gpu) is None


def test_gpu_matching():
    orin = load_profile("jetson-orin")
    assert gpu_matches(orin, GpuInfo("Orin", "8.7"))
    assert not gpu_matches(orin, GpuInfo("NVIDIA A100", "8.0"))
    assert not gpu_matches(orin, None)
    assert not gpu_matches(load_profile("cpu"), GpuInfo("Orin", "8.7"))
    assert local_gpu_matches(orin, detect=lambda: GpuInfo("Orin", "8.7"))
    assert not local_gpu_matches(orin, detect=lambda: None)


def test_release_table_rule_only_for_trt8_targets():
    for name in ("jetson-orin", "jetson-orin-nx", "jetson-orin-nano", "t4", "a100", "cpu"):
        assert refuse_release_table(load_profile(name)) is None, name
    for name in ("jetson-nano", "jetson-xavier-nx"):
        assert refuse_release_table(load_profile(name)) is not None, name


# --- the compile hint and what `build` calls -----------------------------------------------------


def test_compile_hint_is_one_runnable_command(tmp_path: Path):
    b = make_bundle(tmp_path / "my bundles" / "b0")
    hint = compile_hint(b, load_profile("jetson-orin"))
    argv = shlex.split(hint)
    assert argv[:3] == ["effdeploy", "compile", str(b)]
    assert argv[argv.index("--profile") + 1] == "jetson-orin"
    assert argv[argv.index("--out") + 1] == str(b / "engine.plan")
    # The same command, checked against the target's TensorRT from here, passes every rule.
    r = run_cli(*argv[1:], "--trt-version", "10.3", "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["build_plan"]["plan_path"] == str(b / "engine.plan")


def test_compile_hint_for_a_custom_profile_file(tmp_path: Path):
    src = Path(load_profile("jetson-orin-nano").path)  # built-in name, not a file
    assert not str(src).endswith(".toml")
    text = (Path(__file__).resolve().parents[1] / "profiles" / "jetson-orin-nano.toml").read_text()
    custom = tmp_path / "my-orin.toml"
    custom.write_text(text.replace('name = "jetson-orin-nano"', 'name = "my-orin"'))
    hint = compile_hint(tmp_path / "b", load_profile(custom))
    assert f"--profile {custom}" in hint


def test_compile_after_build_cpu_profile(bundle: Path):
    r = compile_after_build(bundle, load_profile("cpu"))
    assert r.engine is None and r.hint is None and "CPU target" in r.reason


@pytest.mark.skipif(HAS_TRT, reason="checks the no-TensorRT path; TensorRT is installed here")
def test_compile_after_build_without_tensorrt_returns_the_hint(bundle: Path):
    orin = load_profile("jetson-orin")
    r = compile_after_build(bundle, orin)
    assert r.engine is None and r.hint == compile_hint(bundle, orin) and r.reason == MISSING_TENSORRT


# --- engine manifest -----------------------------------------------------------------------------


def fake_plan_bytes(n: int = 4096) -> bytes:
    """Opaque bytes standing in for a serialized plan: the manifest checks never parse a plan."""
    return np.random.default_rng(1).integers(0, 256, n, dtype=np.uint8).tobytes()


def engine_manifest(tmp_path: Path, **build) -> tuple[Path, EngineManifest]:
    plan = tmp_path / "engine.plan"
    plan.write_bytes(fake_plan_bytes())
    m = EngineManifest(
        tensorrt_version="10.3.0", gpu=GpuInfo("Orin", "8.7").to_dict(), profile=load_profile("jetson-orin").to_dict(),
        precision="int8", onnx_sha256="ab" * 32, calibration_sha256="cd" * 32,
        io=({"name": "input", "mode": "input", "dtype": "float32", "shape": [-1, 3, 16, 16],
             "min": [1, 3, 16, 16], "opt": [1, 3, 16, 16], "max": [8, 3, 16, 16]},
            {"name": "logits", "mode": "output", "dtype": "float32", "shape": [-1, 10]}),
        preprocessing=Preprocessing.for_weights(16, "b", "native").to_dict(),
        build={"hardware_compat": "none", "version_compatible": False, **build},
        bundle={"path": "/data/bundles/b0", "model": "efficientnet-b0"},
    )
    return plan, write_engine_manifest(plan, m)


def test_engine_manifest_round_trip(tmp_path: Path):
    plan, written = engine_manifest(tmp_path)
    assert engine_manifest_path(plan) == tmp_path / "engine.json"
    loaded = load_engine_manifest(plan)
    assert loaded == written
    assert loaded.plan_sha256 == sha256_file(plan) and loaded.plan_bytes == plan.stat().st_size
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


@pytest.mark.skipif(HAS_TRT, reason="checks the no-TensorRT path; TensorRT is installed here")
def test_runner_checks_the_hash_before_needing_tensorrt(tmp_path: Path):
    from effdeploy.trt_runner import TensorRTRunner

    plan, _ = engine_manifest(tmp_path)
    with pytest.raises(EffdeployError, match="TensorRT is not installed here"):
        TensorRTRunner.open(plan)
    plan.write_bytes(plan.read_bytes()[:10])
    with pytest.raises(EffdeployError, match="truncated"):
        TensorRTRunner.open(plan)


# --- the command line: one line for every refusal ------------------------------------------------

CLI = "from effdeploy.cli import main; main()"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CLI, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


def assert_one_line_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("effdeploy: error: "), r.stderr
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def test_cli_refusals_are_one_line(tmp_path: Path):
    fp32 = make_bundle(tmp_path / "fp32")
    int8 = make_bundle(tmp_path / "int8", precision="int8")
    fp16 = make_bundle(tmp_path / "fp16", precision="fp16")
    unver = make_bundle(tmp_path / "unverified", status=STATUS_UNVERIFIED)
    assert_one_line_error(run_cli("compile", str(int8), "--profile", "jetson-nano"), "no INT8 kernels")
    assert_one_line_error(run_cli("compile", str(fp16), "--profile", "jetson-orin", "--dla-core", "0",
                                  "--trt-version", "11.2"), "DLA is unavailable in TensorRT 11.0-11.3")
    assert_one_line_error(run_cli("compile", str(fp32), "--profile", "jetson-orin", "--trt-version", "11.0"),
                          "JetPack 6")
    assert_one_line_error(run_cli("compile", str(fp32), "--profile", "jetson-orin", "--dla-core", "0",
                                  "--trt-version", "10.3"), "DLA has no FP32 kernels")
    assert_one_line_error(run_cli("compile", str(unver), "--profile", "jetson-orin", "--trt-version", "10.3"),
                          "not verified")
    assert_one_line_error(run_cli("compile", str(fp16), "--profile", "jetson-xavier-nx"), "TensorRT >= 10.0")
    assert_one_line_error(run_cli("compile", str(fp32), "--profile", "jetson-orin", "--batch", "8,1,1"), "--batch")
    assert_one_line_error(run_cli("compile", str(fp32), "--profile", "jetson-orin", "--trt-version", "ten"),
                          "not a TensorRT version")
    assert_one_line_error(run_cli("compile", str(tmp_path / "missing"), "--profile", "jetson-orin"), "does not exist")


@pytest.mark.skipif(HAS_TRT, reason="checks the no-TensorRT message; TensorRT is installed here")
def test_cli_without_tensorrt_prints_the_command_for_the_target(bundle: Path):
    line = assert_one_line_error(run_cli("compile", str(bundle), "--profile", "jetson-orin"), MISSING_TENSORRT)
    assert compile_hint(bundle, load_profile("jetson-orin")) in line
    # Refusals that need no TensorRT still come first.
    assert_one_line_error(run_cli("compile", str(bundle), "--profile", "jetson-orin", "--dla-core", "0"),
                          "DLA has no FP32 kernels")


def test_cli_dry_run_prints_the_plan(bundle: Path):
    r = run_cli("compile", str(bundle), "--profile", "jetson-orin", "--trt-version", "10.3", "--batch", "1,2,4",
                "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "4096 MiB" in r.stdout and "1 / 2 / 4" in r.stdout and "dry run" in r.stderr
    assert "workspace_mb" not in r.stdout and "None" not in r.stdout and "(3, " not in r.stdout  # no raw fields
    r = run_cli("compile", str(bundle), "--profile", "a100", "--trt-version", "11.4", "--hardware-compat",
                "--version-compatible", "--dry-run", "--json")
    plan = json.loads(r.stdout)["build_plan"]
    assert plan["hardware_compat"] == "ampere_plus" and plan["version_compatible"] is True
    assert plan["profile"] == "a100" and plan["trt_version"] == "11.4.0"


def test_cli_uses_the_bundles_profile_by_default(tmp_path: Path):
    b = make_bundle(tmp_path / "nx", precision="fp16", profile="jetson-orin-nx")
    r = run_cli("compile", str(b), "--trt-version", "10.3", "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["build_plan"]["profile"] == "jetson-orin-nx"


def test_device_side_modules_import_neither_torch_nor_tensorrt():
    code = (
        "import sys; import effdeploy.trt_runner, effdeploy.engine, effdeploy.compile, effdeploy.trt_build, "
        "effdeploy.trt_compat, effdeploy.commands.compile; "
        "bad = [m for m in ('torch', 'tensorrt') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
