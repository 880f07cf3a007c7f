"""The openvino dialect (the cpu-openvino profile): the tensorrt dialect's Q/DQ placement with FP32
everywhere else, which OpenVINO runs as INT8 convolutions; ONNX Runtime and OpenVINO compute the
same function from it, and a build for the profile opens on OpenVINO."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from conftest import read_manifest, run_cli
from effdeploy.export.logits import ort_logits
from effdeploy.precision.qdq import calibration_tensors, config_for, default_float_parts, quantize

RES = 96


@pytest.fixture(scope="module")
def b0():
    """B0 at 96 px (random weights: the placement is what is checked; B0 has swish, SE and TF SAME
    pads), its FP32 graph, max ranges from 12 built-in calibration views, and real photos."""
    from effdeploy.calibration import plan_calibration, run_calibrations
    from effdeploy.data.datasets import builtin_image_paths
    from effdeploy.export.exporter import cached_export
    from effdeploy.model.network import build_model
    from effdeploy.data.preprocess import preprocess_files

    model = build_model(0, "b", resolution=RES)
    fp32, _ = cached_export(model, RES)
    pre = model.spec.preprocessing
    cfg = config_for("openvino", method="max")
    out = run_calibrations(fp32, calibration_tensors(fp32, cfg), plan_calibration(None, 12, 0), pre,
                           methods=("max",), quiet=True)
    return fp32, out["max"].artifact.ranges, preprocess_files(builtin_image_paths(), pre)


def _quantized(model: onnx.ModelProto) -> tuple[set[tuple[str, str]], list[onnx.NodeProto]]:
    """(consumer op, consumer name) of every DequantizeLinear output, and the DequantizeLinear nodes."""
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    outs = {n.output[0] for n in dq}
    consumers = {(n.op_type, n.name) for n in model.graph.node for i in n.input if i in outs}
    return consumers, dq


def test_the_tensorrt_placement_in_fp32_with_7_bit_weights(b0):
    fp32, ranges, _ = b0
    parts = default_float_parts("b", "openvino")
    assert parts == default_float_parts("b", "tensorrt") == ("se", "dw")
    cfg = replace(config_for("openvino", method="max"), quantize_se=False, quantize_depthwise=False)
    ov = quantize(fp32, ranges, cfg)
    trt = quantize(fp32, ranges, replace(config_for("tensorrt", method="max"), quantize_se=False,
                                         quantize_depthwise=False, fp16_rest=False))
    consumers, dq = _quantized(ov)
    assert consumers == _quantized(trt)[0], "the same Q/DQ at the same inputs as the tensorrt dialect"
    assert {op for op, _ in consumers} <= {"Conv", "Gemm", "Add"}  # inputs only: nothing quantizes an output
    assert any(n.op_type == "Sub" and n.name.endswith("_shift") for n in ov.graph.node), "swish inputs shifted"
    elem = {t.type.tensor_type.elem_type for t in [*ov.graph.value_info, *ov.graph.output]}
    assert onnx.TensorProto.FLOAT16 not in elem and all(i.data_type != onnx.TensorProto.FLOAT16
                                                        for i in ov.graph.initializer)
    init = {i.name: numpy_helper.to_array(i) for i in ov.graph.initializer}
    weights = [init[n.input[0]] for n in dq if n.input[0] in init and init[n.input[0]].ndim == 4]
    assert weights and all(w.dtype == np.int8 for w in weights)
    assert max(int(np.abs(w).max()) for w in weights) == 64  # 7-bit, as the cpu dialect: no VNNI, no saturation
    zero_points = [init[n.input[2]] for n in dq if len(n.input) > 2 and n.input[0] not in init]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)  # symmetric S8


def test_onnxruntime_and_openvino_compute_the_same_function(b0, tmp_path):
    """ONNX Runtime runs the dialect as DequantizeLinear + float conv (the function the build
    verifies); OpenVINO as INT8 convolutions, whose requantization rounds its own way. On real
    photos OpenVINO's distance from ONNX Runtime's logits is a small part of the INT8 error itself
    (measured 0.09-0.18 of it here; on the distilled B0 0.005-0.01), so the build's verification
    speaks for it; bench/accuracy.py --openvino judges the trained networks on both. With 8-bit
    weights a CPU without VNNI (an AVX2 EPYC) saturated: OpenVINO's logits were 0.97 of their scale
    from ONNX Runtime's, 22x the INT8 error; hence the dialect's 7-bit weights, which this checks on
    whatever CPU runs it."""
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'effdeploy[openvino]')")
    from effdeploy.backends import infer_in_batches_of
    from effdeploy.backends.openvino import OpenVinoRunner

    from effdeploy.backends.cpu_features import vnni_flags

    fp32, ranges, images = b0
    reference = ort_logits(fp32, images)
    configs = [config_for("openvino", method="max"),
               replace(config_for("openvino", method="max"), quantize_se=False, quantize_depthwise=False)]
    if vnni_flags():  # the 8-bit weights of cpu-openvino-vnni, on the CPUs that profile is for
        configs.append(replace(configs[1], reduce_range=False))
    for cfg in configs:
        model = quantize(fp32, ranges, cfg)
        ort = ort_logits(model, images, optimize=False)
        onnx.save(model, str(tmp_path / "ov.onnx"))
        with OpenVinoRunner(tmp_path / "ov.onnx", threads=2) as r:
            ov = infer_in_batches_of(r, images)
        int8_error = float(((ort - reference) ** 2).mean() / (reference ** 2).mean())
        runtimes = float(((ov - ort) ** 2).mean() / (ort ** 2).mean())
        assert 0 < runtimes <= 0.3 * int8_error, (runtimes, int8_error)


def test_a_build_for_cpu_openvino_is_in_its_dialect_and_opens_on_openvino(tmp_path):
    out = tmp_path / "lite0-ov"
    proc = run_cli("build", "--phi", "0", "--variant", "lite", "--weights", "pretrained", "--resolution", "64",
                   "--precision", "int8", "--profile", "cpu-openvino", "--calib-images", "8", "--no-reconstruct",
                   "--no-repair", "--allow-parity-failure", "--out", str(out), "--json")
    assert proc.returncode in (0, 3), proc.stderr  # 64 px and 8 images: the dialect is checked, not the budget
    m = read_manifest(out)
    assert m["quantization"]["dialect"] == "openvino" and m["profile"]["runtime"] == "openvino"
    consumers, _ = _quantized(onnx.load(str(out / "model.onnx")))
    assert consumers and {op for op, _ in consumers} <= {"Conv", "Gemm", "Add"}
    from effdeploy.runtime.runner import Runner

    have_ov = __import__("importlib").util.find_spec("openvino") is not None
    timed = m["quantization"]["cpu_dialect_latency_ms"]  # INT8 on OpenVINO against FP32 on both runtimes
    assert (set(timed) == {"INT8 on OpenVINO", "FP32 on OpenVINO", "FP32 on ONNX Runtime"} and
            all(v > 0 for v in timed.values())) if have_ov else timed == {}
    with Runner.open(out, force=True) as r:
        assert r.backend_name == ("openvino" if have_ov else "onnxruntime")
    with Runner.open(out, force=True, backend="onnxruntime") as r:
        assert r.backend_name == "onnxruntime"


def test_without_openvino_a_cpu_openvino_bundle_runs_on_onnxruntime_and_says_so(tiny_bundle, monkeypatch):
    """profile_backend: a bundle built for an OpenVINO profile opens on ONNX Runtime where OpenVINO
    is missing, with a warning saying how to install it; other bundles open as before, silently."""
    import warnings

    import effdeploy.backends.openvino as ov
    from effdeploy.runtime.runner import profile_backend, resolve_artifact

    art = resolve_artifact(tiny_bundle)
    assert profile_backend(art) is None  # built for cpu: ONNX Runtime, no warning
    manifest = art.manifest
    ov_art = replace(art, manifest=replace(manifest, profile={**manifest.profile, "name": "cpu-openvino",
                                                              "runtime": "openvino"}))
    monkeypatch.setattr(ov, "import_openvino", lambda: None)
    with pytest.warns(UserWarning, match=r"built for OpenVINO \(cpu-openvino\); OpenVINO is not installed"):
        assert profile_backend(ov_art) is None
    monkeypatch.undo()
    if ov.import_openvino() is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert profile_backend(ov_art) == "openvino"


def test_the_build_says_where_fp32_is_faster_than_the_openvino_dialect():
    """The note compares INT8 as OpenVINO runs it with FP32 on the faster runtime (the distilled B0
    on an AVX2-only EPYC: INT8 12.45 ms on OpenVINO, FP32 11.45 ms on ONNX Runtime)."""
    from effdeploy.precision.int8_stage import fp32_faster_note

    cfg = config_for("openvino")
    slow = {"INT8 on OpenVINO": 12.45, "FP32 on OpenVINO": 13.09, "FP32 on ONNX Runtime": 11.45}
    note = fp32_faster_note(slow, cfg)
    assert note and "INT8 on OpenVINO 12.4 ms, FP32 on ONNX Runtime 11.4 ms" in note and "1.09x" in note
    assert fp32_faster_note({**slow, "INT8 on OpenVINO": 11.0}, cfg) is None
    assert fp32_faster_note({}, cfg) is None


def test_without_openvino_or_with_a_broken_one_the_build_times_nothing(monkeypatch):
    import effdeploy.backends.openvino as ov
    from effdeploy.precision import int8_stage

    fp32 = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    monkeypatch.setattr(ov, "import_openvino", lambda: None)
    assert int8_stage.openvino_timings(fp32, fp32, np.zeros((1, 3, 8, 8), np.float32)) == {}
    monkeypatch.setattr(ov, "import_openvino", lambda: object())  # "installed", but it cannot compile this graph
    with pytest.warns(UserWarning, match="OpenVINO could not time the INT8 graph"):
        assert int8_stage.openvino_timings(fp32, fp32, np.zeros((1, 3, 8, 8), np.float32)) == {}
