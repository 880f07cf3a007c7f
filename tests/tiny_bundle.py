"""What the TensorRT-free tests share: a tiny, real bundle (ONNX written with onnx.helper, manifest
via effdeploy.bundle), plans made from it, and an engine manifest over opaque plan bytes.
Imported by the test modules beside it (pytest puts this folder on sys.path)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from effdeploy.backends.tensorrt.manifest import EngineManifest, GpuInfo, write_engine_manifest
from effdeploy.backends.tensorrt.plan import CompileOptions, make_plan
from effdeploy.bundle import STATUS_VERIFIED, Manifest, load_bundle, write_manifest
from effdeploy.errors import EffdeployError
from effdeploy.profiles import load_profile
from effdeploy.model.spec import ModelSpec
from effdeploy.data.preprocess import Preprocessing

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


def make_int8_bundle(directory: Path, res: int = 16, images: int = 32) -> Path:
    """The tiny bundle quantized by effdeploy's own tensorrt dialect (Q/DQ at Conv/Gemm inputs,
    per-channel INT8 weights, the rest FP16): the strongly typed INT8 graph TensorRT builds, made
    without torch. Ranges: max calibration on seeded normal inputs."""
    from effdeploy.calibration import collect_statistics, ranges_from_statistics
    from effdeploy.precision.qdq import calibration_tensors, config_for, quantize

    b = make_bundle(directory, profile="jetson-orin", precision="int8", res=res)
    model = onnx.load(str(b / "model.onnx"))
    cfg = config_for(True, method="max")
    x = np.random.default_rng(0).standard_normal((images, 3, res, res)).astype(np.float32)
    ranges = ranges_from_statistics(collect_statistics(model, calibration_tensors(model, cfg), x), "max").ranges
    onnx.save(quantize(model, ranges, cfg), str(b / "model.onnx"))
    write_manifest(b, load_bundle(b, check=False).manifest)
    return b
