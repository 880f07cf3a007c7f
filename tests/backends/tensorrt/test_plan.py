"""The TensorRT-free half of the TensorRT backend's plan: profile + bundle + flags -> compile plan,
every refusal, the JetPack/TensorRT release rules, the local-GPU rules and the compile hint.

Nothing here imports or imitates TensorRT; the GPU/TensorRT half is in test_on_gpu.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_errors import run_cli
from onnx import TensorProto, helper, numpy_helper
from tiny_bundle import bundle, make_bundle, plan_of, refusal  # noqa: F401  (bundle: a fixture)

from effdeploy.backends.tensorrt.manifest import GpuInfo, L4tRelease
from effdeploy.backends.tensorrt.plan import (
    check_installed, compile_hint, gpu_matches, local_gpu_matches, parse_batch, refuse_release_table,
)
from effdeploy.bundle import STATUS_UNVERIFIED, load_bundle, write_manifest
from effdeploy.errors import EffdeployError
from effdeploy.profiles import load_profile


def test_parse_batch():
    assert parse_batch("1,4,8") == (1, 4, 8)
    assert parse_batch(" 2 ") == (2, 2, 2)
    for bad in ("8,4,1", "0,1,2", "1,2", "a,b,c", "1,2,3,4"):
        with pytest.raises(EffdeployError, match="--batch"):
            parse_batch(bad)


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
    assert plan.onnx_sha256 == hashlib.sha256((bundle / "model.onnx").read_bytes()).hexdigest()
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
    settings = plan.compile_settings()
    assert settings["batch"] == [2, 4, 16] and settings["dla_core"] is None and settings["strongly_typed"] is True
    dla = plan_of(fp16, "jetson-orin", batch=(4, 4, 4), dla_core=1, trt_version="10.3", gpu_fallback=True)
    assert dla.dla_core == 1 and dla.gpu_fallback and dla.compile_settings()["batch"] == [4, 4, 4]


def test_plan_records_calibration_hash(tmp_path: Path):
    b = make_bundle(tmp_path / "int8", precision="int8", calibration=True)
    plan = plan_of(b, "jetson-orin")
    assert plan.calibration_sha256 == hashlib.sha256((b / "calibration.json").read_bytes()).hexdigest()
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
    assert plan.gpu_fallback is False and plan.compile_settings()["gpu_fallback"] is False
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
    # /proc refuses new files to root too (CI runs as root), so this branch runs everywhere
    assert "not writable" in refusal(bundle, "jetson-orin", out=Path("/proc/effdeploy-test/e.plan"))
    afile = tmp_path / "file"
    afile.write_text("x")
    assert "--out" in refusal(bundle, "jetson-orin", out=afile / "e.plan")  # a file where a folder must be


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
    text = (Path(__file__).resolve().parents[3] / "profiles" / "jetson-orin-nano.toml").read_text()
    custom = tmp_path / "my-orin.toml"
    custom.write_text(text.replace('name = "jetson-orin-nano"', 'name = "my-orin"'))
    hint = compile_hint(tmp_path / "b", load_profile(custom))
    assert f"--profile {custom}" in hint


def test_the_int8_bundle_the_gpu_tests_compile_is_a_qdq_graph(tmp_path: Path):
    """The INT8 bundle test_on_gpu.py compiles is made here without TensorRT: check what it is (Q/DQ
    with INT8 weights, FP16 elsewhere, runnable by ONNX Runtime unoptimised) and that it plans."""
    import onnx

    from effdeploy.export.logits import ort_logits
    from tiny_bundle import make_int8_bundle, tiny_onnx

    b = make_int8_bundle(tmp_path / "int8")
    m = onnx.load(str(b / "model.onnx"))
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("QuantizeLinear") >= 2 and ops.count("DequantizeLinear") >= 4  # 2 activations, 2 weights
    assert any(i.data_type == onnx.TensorProto.INT8 for i in m.graph.initializer)
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in m.graph.initializer)
    x = np.random.default_rng(1).standard_normal((4, 3, 16, 16)).astype(np.float32)
    fp32 = ort_logits(tiny_onnx(tmp_path / "fp32.onnx"), x)
    q = ort_logits(b / "model.onnx", x, optimize=False)
    assert np.abs(q - fp32).max() < 0.05 * np.abs(fp32).max()  # INT8 of the same function
    assert plan_of(b, "jetson-orin").precision == "int8"
