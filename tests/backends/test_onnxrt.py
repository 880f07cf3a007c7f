"""effdeploy.backends.onnxrt: the ONNX Runtime runner behind the one runner interface, returning
the logits (``infer``) or every output by name (``run_all``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from tiny_bundle import tiny_onnx

from effdeploy.backends import Runner
from effdeploy.backends.onnxrt import OnnxRuntimeRunner
from effdeploy.errors import EffdeployError


def two_output_model() -> onnx.ModelProto:
    """input -> Relu -> "pos" and input -> Neg -> "neg": two outputs, in that order."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["pos"]), helper.make_node("Neg", ["input"], ["neg"])], "two",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("pos", TensorProto.FLOAT, ["N", 3, 4, 4]),
         helper.make_tensor_value_info("neg", TensorProto.FLOAT, ["N", 3, 4, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_runner_interface_and_logits(tmp_path: Path):
    path = tiny_onnx(tmp_path / "model.onnx")
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    with OnnxRuntimeRunner(path, threads=1) as r:
        assert isinstance(r, Runner) and r.name == "onnxruntime"
        assert r.input_name == "input" and r.input_shape == (-1, 3, 16, 16) and r.output_names == ["logits"]
        logits = r.infer(x)
        assert logits.shape == (2, 10) and logits.dtype == np.float32
        np.testing.assert_array_equal(r.run_all(x)["logits"], logits)
    assert r.session is None  # the context manager closed it


def test_run_all_returns_every_output_by_name():
    x = np.random.default_rng(1).standard_normal((1, 3, 4, 4)).astype(np.float32)
    r = OnnxRuntimeRunner(two_output_model())
    out = r.run_all(x)
    assert list(out) == ["pos", "neg"]
    np.testing.assert_array_equal(out["pos"], np.maximum(x, 0))
    np.testing.assert_array_equal(out["neg"], -x)
    np.testing.assert_array_equal(r.infer(x), out["pos"])  # infer: the first output
    assert list(r.run_all(x, names=["neg"])) == ["neg"]
    r.close()


def test_missing_model_is_one_line(tmp_path: Path):
    with pytest.raises(EffdeployError, match="does not exist"):
        OnnxRuntimeRunner(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model\nsecond line")
    with pytest.raises(EffdeployError) as e:
        OnnxRuntimeRunner(bad)
    assert "ONNX Runtime cannot load" in str(e.value) and "\n" not in str(e.value)


def test_convs_kept_in_float_stay_float_under_the_optimiser(tmp_path: Path):
    """A cpu-dialect bundle with convs kept in float inside its Q/DQ graph (Lite0's depthwise convs,
    --int8-float se,dw): ONNX Runtime's WeightBiasQuantization would quantize their weights behind
    the graph's back. effdeploy's runner runs without it, so its optimised session computes what the
    graph says (the unoptimised one), and the manifest and `inspect` tell other ONNX Runtime users."""
    import onnxruntime as ort

    from conftest import read_manifest, run_cli
    from effdeploy.data.datasets import builtin_image_paths
    from effdeploy.data.preprocess import preprocess_files
    from effdeploy.bundle import load_bundle

    out = tmp_path / "lite0-dw"
    proc = run_cli("build", "--phi", "0", "--variant", "lite", "--weights", "pretrained", "--resolution", "128",
                   "--precision", "int8", "--profile", "cpu", "--calib-images", "12", "--calib-method", "max",
                   "--int8-float", "se,dw", "--no-repair", "--no-reconstruct", "--allow-parity-failure",
                   "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    m = read_manifest(out)
    assert m["quantization"]["ort_graph_optimization"] == "all"
    assert m["quantization"]["precision_summary"]["float_convs_between_qdq"] == 16  # Lite0's depthwise convs
    assert "disabled_optimizers=['WeightBiasQuantization']" in run_cli("inspect", str(out)).stdout
    bundle = load_bundle(out)
    x = preprocess_files(builtin_image_paths(), bundle.manifest.preprocessing)
    ours = OnnxRuntimeRunner(bundle.model_path, optimize=True).infer(x)
    written = OnnxRuntimeRunner(bundle.model_path, optimize=False).infer(x)
    plain = ort.InferenceSession(str(bundle.model_path), providers=["CPUExecutionProvider"])
    theirs = plain.run(None, {plain.get_inputs()[0].name: x})[0]
    scale = np.abs(written).max()
    assert np.abs(ours - written).max() <= 0.05 * scale  # quantizer ties only
    assert np.abs(theirs - written).max() > 4 * np.abs(ours - written).max()  # the transform's damage, told apart
