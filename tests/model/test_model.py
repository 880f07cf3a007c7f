
import pytest
import torch

from effdeploy import build_model
from effdeploy.errors import EffdeployError
from effdeploy.model.network import EfficientNet, block_plan, head_channels, stem_channels
from effdeploy.model.spec import model_spec, round_channels

B_PARAMS = [5_288_548, 7_794_184, 9_109_994, 12_233_232, 19_341_616, 30_389_784, 43_040_704, 66_347_960]


@pytest.mark.parametrize("phi", range(8))
def test_b_family_parameter_counts_match_reference(phi):
    model = EfficientNet(model_spec(phi, "b", resolution=32))
    assert model.spec.parameters == B_PARAMS[phi]


def test_lite0_parameter_count():
    assert EfficientNet(model_spec(0, "lite", resolution=32)).spec.parameters == 4_652_008


@pytest.mark.parametrize("phi", range(5))
def test_lite_family_matches_efficientnet_lite_pytorch(phi):
    ref_mod = pytest.importorskip("efficientnet_lite_pytorch")
    ref = ref_mod.EfficientNet.from_name(f"efficientnet-lite{phi}")
    ours = EfficientNet(model_spec(phi, "lite", resolution=32))
    assert ours.spec.parameters == sum(p.numel() for p in ref.parameters())


def test_released_table_and_resolution():
    s = model_spec(1, "b")
    assert (s.width, s.depth, s.resolution, s.dropout) == (1.0, 1.1, 240, 0.2)
    s = model_spec(2, "lite")
    assert (s.width, s.depth, s.resolution) == (1.1, 1.2, 260)
    assert model_spec(1, "b", resolution=128).resolution == 128
    assert model_spec("1", "b").phi == 1.0


def test_fractional_phi_uses_compound_rule():
    s = model_spec(1.5, "b")
    assert s.width == pytest.approx(1.1 ** 1.5, rel=1e-5)
    assert s.depth == pytest.approx(1.2 ** 1.5, rel=1e-5)
    assert s.resolution % 8 == 0 and abs(s.resolution - 224 * 1.15 ** 1.5) <= 4
    plans = block_plan(s)
    for p in plans:
        assert p.out_channels % 8 == 0
    # repeats rounded up: ceil(1.3145 * [1,2,2,3,3,4,1]), worked by hand
    repeats = [sum(1 for p in plans if p.stage == k) for k in range(7)]
    assert repeats == [2, 3, 3, 4, 4, 6, 2]
    # phi beyond the table (8) also follows the rule, and the model is bigger than B7
    s8 = model_spec(8, "b", resolution=32)
    assert s8.width == pytest.approx(1.1 ** 8, rel=1e-5)
    assert EfficientNet(s8).spec.parameters > B_PARAMS[7]


def test_channel_rounding_never_below_90_percent():
    for c in (16, 24, 40, 80, 112, 192, 320, 1280):
        for w in (0.5, 0.75, 1.1, 1.33, 1.7, 2.2):
            r = round_channels(c, w)
            assert r % 8 == 0 and r >= 0.9 * c * w


def test_lite_rules():
    s = model_spec(4, "lite", resolution=32)
    model = EfficientNet(s)
    assert stem_channels(s) == 32 and head_channels(s) == 1280
    plans = block_plan(s)
    assert sum(1 for p in plans if p.stage == 0) == 1 and sum(1 for p in plans if p.stage == 6) == 1
    assert all(p.se_channels == 0 for p in plans)
    assert any(isinstance(m, torch.nn.ReLU6) for m in model.modules())
    assert not any(isinstance(m, torch.nn.SiLU) for m in model.modules())
    b = model_spec(4, "b", resolution=32)
    assert stem_channels(b) == 48 and head_channels(b) == 1792


def test_se_width_is_quarter_of_block_input():
    s = model_spec(0, "b", resolution=32)
    # torchvision's B0: squeeze channels = max(1, block input // 4), block by block
    assert [p.se_channels for p in block_plan(s)] == [8, 4, 6, 6, 10, 10, 20, 20, 20, 28, 28, 28, 48, 48, 48, 48]


@pytest.mark.parametrize("variant,phi", [("b", 0), ("lite", 1), ("b", 1.5)])
def test_output_shapes_and_spec(variant, phi):
    model = build_model(phi, variant, resolution=64, num_classes=10)
    assert not model.training
    with torch.no_grad():
        y = model(torch.randn(2, 3, 64, 64))
    assert y.shape == (2, 10)
    assert torch.isfinite(y).all()
    spec = model.spec
    assert spec.variant == variant and spec.resolution == 64 and spec.parameters > 0
    assert spec.preprocessing.resolution == 64
    assert model.weights_info["source"] == "random"


def test_drop_connect_only_in_training():
    model = build_model(0, "b", resolution=64)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        model.train()
        torch.manual_seed(0)
        a = model(x)
        torch.manual_seed(1)
        b = model(x)
    assert not torch.equal(a, b)


@pytest.mark.parametrize("bad", ["-1", "abc", "nan", "-0.5"])
def test_bad_phi_is_refused(bad):
    with pytest.raises(EffdeployError, match="--phi"):
        model_spec(bad)


def test_preprocessing_per_family():
    assert model_spec(0, "lite").preprocessing.mean == (127.0, 127.0, 127.0)
    assert model_spec(0, "lite").preprocessing.std == (128.0, 128.0, 128.0)
    assert model_spec(0, "b").preprocessing.mean[0] == pytest.approx(0.485 * 255)
    assert model_spec(1, "b").preprocessing.resize == 274  # floor(240 / 0.875)
