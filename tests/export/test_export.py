import numpy as np
import onnx
import pytest

from effdeploy import build_model
from effdeploy.data.datasets import builtin_image_paths
from effdeploy.verify.parity import check_parity
from effdeploy.export.exporter import count_macs, export_onnx, graph_summary, simplify
from effdeploy.data.preprocess import preprocess_files
from effdeploy.backends.onnxrt import OnnxRuntimeRunner


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = build_model(0, "b", resolution=64)
    proto = simplify(export_onnx(model, 64))
    path = tmp_path_factory.mktemp("onnx") / "m.onnx"
    onnx.save(proto, str(path))
    return model, proto, path


def test_parity_on_random_and_real_inputs(exported):
    model, _, path = exported
    real = preprocess_files(builtin_image_paths()[:6], model.spec.preprocessing)
    rnd = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    result = check_parity(model, path, [("random", rnd), ("images", real)])
    assert result["passed"] and result["max_abs"] <= 1e-4
    assert result["inputs"]["images"]["top1_agreement"] == 1.0


def test_graph_is_portable_and_named_by_module(exported):
    _, proto, path = exported
    assert not any(i.data_location == onnx.TensorProto.EXTERNAL for i in proto.graph.initializer)
    assert len(list(path.parent.iterdir())) == 1  # a single file, no external data
    assert graph_summary(proto)["opset"] >= 18
    names = [n.name for n in proto.graph.node]
    assert any(n.startswith("/blocks.5.2.") for n in names)
    assert len(set(names)) == len(names)
    assert not any(n.metadata_props for n in proto.graph.node)  # no local stack traces shipped


def test_dynamic_batch(exported):
    _, proto, path = exported
    assert graph_summary(proto)["inputs"][0]["shape"][0] == "batch"
    runner = OnnxRuntimeRunner(path)
    for b in (1, 3):
        assert runner.infer(np.zeros((b, 3, 64, 64), np.float32)).shape == (b, 1000)


def test_macs_scale_with_resolution(exported):
    _, proto, _ = exported
    macs64 = count_macs(proto)
    # B0 is 0.39 GMACs at 224 px; convolution cost scales with the pixel count
    assert 0.39e9 * (64 / 224) ** 2 * 0.8 < macs64 < 0.39e9 * (64 / 224) ** 2 * 1.3
