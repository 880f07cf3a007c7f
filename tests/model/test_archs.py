"""--weights-arch: checkpoints reproduce the function and preprocessing their library runs.

The B0 checkpoints in ../shared/data/checkpoints were written by torchvision and timm themselves,
each with an input and the library's own logits; tests that need them skip in a fresh clone. When
timm or torchvision is installed, the table is also compared with their own definitions and B1/B3
checkpoints are written by the library here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, SHARED, read_manifest, run_cli
from effdeploy import build_model
from effdeploy.model.archs import KNOWN, markdown_table, parse_weights_arch
from effdeploy.errors import EffdeployError

CHECKPOINTS = SHARED / "checkpoints"
# (checkpoint stem, --weights-arch needed to reproduce it)
SHARED_CASES = [("tv_efficientnet_b0", None), ("timm_efficientnet_b0", "timm:efficientnet_b0"),
                ("timm_tf_efficientnet_b0", "timm:tf_efficientnet_b0")]


def _checkpoint(stem: str) -> tuple[Path, np.ndarray, np.ndarray]:
    path = CHECKPOINTS / f"{stem}.pth"
    if not path.is_file():
        pytest.skip(f"needs the library-written checkpoints in {CHECKPOINTS} (present in CI, absent in a fresh clone)")
    return path, np.load(CHECKPOINTS / f"{stem}.input.npy"), np.load(CHECKPOINTS / f"{stem}.logits.npy")


def _relative(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


# --- the table ------------------------------------------------------------------------------------

def test_table_has_the_issue_facts():
    """The preprocessing each library documents, which the old one-rule-for-all got wrong."""
    tv_b1_v1 = parse_weights_arch("torchvision:efficientnet_b1.IMAGENET1K_V1")
    assert (tv_b1_v1.resize, tv_b1_v1.interpolation) == (256, "bicubic")
    tv_b1 = parse_weights_arch("torchvision:efficientnet_b1")  # DEFAULT is V2
    assert (tv_b1.tag, tv_b1.resize, tv_b1.interpolation) == ("IMAGENET1K_V2", 255, "bilinear")
    assert parse_weights_arch("torchvision:efficientnet_b1.DEFAULT") == tv_b1
    assert parse_weights_arch("torchvision:efficientnet_b3").resize == 320
    tf_b1 = parse_weights_arch("timm:tf_efficientnet_b1")
    assert (tf_b1.tag, tf_b1.crop_pct, tf_b1.resize, tf_b1.padding, tf_b1.bn_eps) == ("ns_jft_in1k", 0.882, 272, "same", 1e-3)
    timm_b1 = parse_weights_arch("timm:efficientnet_b1")
    assert (timm_b1.crop_pct, timm_b1.mean, timm_b1.padding, timm_b1.bn_eps) == (0.9, (0.5,) * 3, "symmetric", 1e-5)
    assert parse_weights_arch("timm:tf_efficientnet_b3.ap_in1k").std == (0.5,) * 3
    assert parse_weights_arch("torchvision:efficientnet_b5").bn_eps == 1e-3  # torchvision's TF ports
    assert parse_weights_arch("timm:tf_efficientnet_lite0").mean == (0.5,) * 3


def test_table_is_consistent_and_cited():
    keys = [a.key for a in KNOWN]
    assert len(keys) == len(set(keys))
    for name in {(a.source, a.name) for a in KNOWN}:
        assert sum(a.default for a in KNOWN if (a.source, a.name) == name) == 1, name
    # The function each library builds, read from its source: timm registers every tf_* model with
    # pad_type='same' and bn_eps=BN_EPS_TF_DEFAULT (1e-3), the others with symmetric padding and
    # BatchNorm2d's 1e-5; torchvision pads symmetrically and passes eps=1e-3 for B5-B7 only; the
    # TF ports (lukemelas) and effdeploy's own modules are TensorFlow's SAME padding with 1e-3.
    timm_tf = {f"tf_efficientnet_b{i}" for i in range(8)} | {f"tf_efficientnet_lite{i}" for i in range(5)}
    torchvision_eps_1e3 = {"efficientnet_b5", "efficientnet_b6", "efficientnet_b7"}
    for a in KNOWN:
        if a.source == "timm":
            want = ("same", 1e-3) if a.name in timm_tf else ("symmetric", 1e-5)
        elif a.source == "torchvision":
            want = ("symmetric", 1e-3 if a.name in torchvision_eps_1e3 else 1e-5)
        else:
            want = ("same", 1e-3)
        assert (a.padding, a.bn_eps) == want, a.key
    # timm resizes to floor(img_size / crop_pct) before the centre crop; worked by hand
    by_key = {a.key: a for a in KNOWN}
    for key, resize in (("timm:efficientnet_b0.ra_in1k", 256), ("timm:efficientnet_b0.ra4_e3600_r224_in1k", 248),
                        ("timm:efficientnet_b3.ra2_in1k", 329), ("timm:tf_efficientnet_b3.in1k", 331),
                        ("timm:tf_efficientnet_b7.ns_jft_in1k", 632), ("timm:tf_efficientnet_lite0.in1k", 256)):
        assert by_key[key].resize == resize, key
    assert {a.name for a in KNOWN if a.source == "timm"} >= {f"{p}efficientnet_{v}{n}" for p in ("", "tf_")
                                                               for v, top in (("b", 7), ("lite", 4))
                                                               for n in range(top + 1)}


def test_docs_table_is_the_code_table():
    assert markdown_table() in (REPO / "docs" / "weights.md").read_text()


@pytest.mark.parametrize("text, match", [
    ("timm", "SOURCE:NAME"), ("tensorflow:efficientnet_b0", "SOURCE one of"),
    ("timm:efficientnet_b8", "not a known timm EfficientNet name; known: efficientnet_b0..7"),
    ("timm:tf_efficientnet_b1.jft", r"has no weights tag 'jft'; its tags: ns_jft_in1k \(default\)"),
    ("torchvision:efficientnet_b1.IMAGENET1K_V3", "IMAGENET1K_V1, IMAGENET1K_V2 \\(default\\)"),
    ("timm:efficientnet_b5", "does not implement"),  # default tag squashes the aspect ratio
])
def test_bad_weights_arch(text, match):
    with pytest.raises(EffdeployError, match=match):
        parse_weights_arch(text)


def test_arch_must_fit_phi_and_layout(tmp_path):
    with pytest.raises(EffdeployError, match="is efficientnet-b1, but --variant b --phi 0 was given; pass --variant b --phi 1"):
        build_model(0, "b", weights_arch="timm:tf_efficientnet_b1")
    path = tmp_path / "native.pth"
    torch.save(build_model(0, "b", resolution=64).state_dict(), path)
    with pytest.raises(EffdeployError, match="keys are in native's layout"):
        build_model(0, "b", weights=str(path), weights_arch="timm:efficientnet_b0", resolution=64)


def test_arch_sets_function_and_preprocessing_without_weights():
    m = build_model(1, "b", weights_arch="timm:tf_efficientnet_b1.ap_in1k", seed=0)
    s = m.spec
    assert (s.padding, s.bn_eps, s.resolution) == ("same", 1e-3, 240)
    assert s.preprocessing.resize == 272 and s.preprocessing.mean == (127.5,) * 3
    assert m.weights_info["arch"]["key"] == "timm:tf_efficientnet_b1.ap_in1k"
    assert m.weights_info["preprocessing"] == {"from": "timm:tf_efficientnet_b1.ap_in1k", "overrides": {}}


def test_preprocessing_overrides():
    m = build_model(0, "b", weights_arch="torchvision:efficientnet_b0", resolution=64,
                    preprocessing={"crop_pct": 0.5, "interpolation": "bilinear", "mean": (0.5, 0.5, 0.5)})
    p = m.spec.preprocessing
    assert (p.resize, p.interpolation, p.mean) == (128, "bilinear", (127.5,) * 3)
    assert p.std == pytest.approx((0.229 * 255, 0.224 * 255, 0.225 * 255))
    assert m.weights_info["preprocessing"]["overrides"] == {"crop_pct": 0.5, "interpolation": "bilinear",
                                                            "mean": [0.5, 0.5, 0.5]}
    with pytest.raises(EffdeployError, match="pass one of them"):
        build_model(0, "b", resolution=64, preprocessing={"crop_pct": 0.9, "resize": 80})
    with pytest.raises(EffdeployError, match="smaller than the 64 px crop"):
        build_model(0, "b", resolution=64, preprocessing={"resize": 60})
    with pytest.raises(EffdeployError, match="0-1 scale"):
        build_model(0, "b", resolution=64, preprocessing={"mean": (123.7, 116.3, 103.5)})


# --- the shared library-written checkpoints -------------------------------------------------------

@pytest.mark.parametrize("stem, arch", SHARED_CASES)
def test_shared_checkpoint_reproduces_library_logits(stem, arch):
    path, x, ref = _checkpoint(stem)
    m = build_model(0, "b", weights=str(path), weights_arch=arch)
    with torch.no_grad():
        ours = m(torch.from_numpy(x)).numpy()
    assert _relative(ours, ref) <= 1e-4
    assert m.weights_info["arch"]["key"].startswith(arch or "torchvision:efficientnet_b0")


def test_tf_checkpoint_is_refused_without_weights_arch():
    path, x, ref = _checkpoint("timm_tf_efficientnet_b0")
    with pytest.raises(EffdeployError, match="--weights-arch timm:efficientnet_b0 .* or --weights-arch timm:tf_efficientnet_b0"):
        build_model(0, "b", weights=str(path))
    wrong = build_model(0, "b", weights=str(path), weights_arch="timm:efficientnet_b0")  # loads, wrong function
    with torch.no_grad():
        assert _relative(wrong(torch.from_numpy(x)).numpy(), ref) > 0.1


def test_tf_checkpoint_refusal_is_one_line(tmp_path):
    path, _, _ = _checkpoint("timm_tf_efficientnet_b0")
    proc = run_cli("build", "--phi", "0", "--weights", str(path), "--out", str(tmp_path / "b"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("effdeploy: ")]
    assert len(lines) == 1 and "timm:tf_efficientnet_b0" in lines[0] and "timm:efficientnet_b0" in lines[0]
    assert proc.stderr.strip().splitlines()[-1] == lines[0]  # after the progress line, nothing but the refusal
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
@pytest.mark.parametrize("stem, arch", SHARED_CASES)
def test_shared_checkpoint_reproduces_through_a_bundle(tmp_path, stem, arch):
    """The bundle's ONNX on ONNX Runtime gives the library's logits, and the manifest says whose
    function and preprocessing it is (overrides recorded as such)."""
    from effdeploy.bundle import load_bundle
    from effdeploy.backends.onnxrt import bundle_runner

    path, x, ref = _checkpoint(stem)
    out = tmp_path / stem
    args = ["build", "--phi", "0", "--weights", str(path), "--out", str(out), "--json"]
    args += ["--weights-arch", arch] if arch else ["--resize", "250", "--mean", "0.5,0.5,0.5"]
    # These random library networks reach logits of 100-240 on the natural verification images, where
    # float32 differences of ~1e-2 are 1e-4 of the scale: the default absolute 1e-3 is for trained logits.
    args += ["--max-abs", "0.05"]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["status"] == "verified"
    runner = bundle_runner(load_bundle(out))
    try:
        ours = np.asarray(runner.infer(x))
    finally:
        runner.close()
    assert _relative(ours, ref) <= 1e-4
    m = read_manifest(out)
    pre, weights = m["model"]["preprocessing"], m["weights"]
    if arch:
        # What timm 1.0's default tags say (pretrained_cfg: efficientnet_b0.ra_in1k and
        # tf_efficientnet_b0.ns_jft_in1k, both input 224, crop_pct 0.875 -> resize 256, bicubic; the tf_
        # model is built with pad_type='same' and BN_EPS_TF_DEFAULT 1e-3), not this project's table.
        key, padding, eps = {"timm:efficientnet_b0": ("timm:efficientnet_b0.ra_in1k", "symmetric", 1e-5),
                             "timm:tf_efficientnet_b0": ("timm:tf_efficientnet_b0.ns_jft_in1k", "same", 1e-3)}[arch]
        assert weights["arch"]["key"] == key and weights["arch"]["inferred"] is False
        assert (pre["resize"], pre["interpolation"]) == (256, "bicubic")
        assert weights["preprocessing"] == {"from": key, "overrides": {}}
        assert m["model"]["padding"] == padding and m["model"]["bn_eps"] == eps
    else:  # torchvision, inferred from the keys; the overrides are recorded as overrides
        assert weights["arch"]["key"] == "torchvision:efficientnet_b0.IMAGENET1K_V1" and weights["arch"]["inferred"]
        assert pre["resize"] == 250 and pre["mean"] == [127.5] * 3
        assert weights["preprocessing"]["overrides"] == {"resize": 250, "mean": [0.5, 0.5, 0.5]}
        assert summary["weights_arch"] == "torchvision:efficientnet_b0.IMAGENET1K_V1"


# --- with the libraries themselves (skipped where they are not installed) --------------------------

def _library_model(source: str, name: str):
    if source == "timm":
        timm = pytest.importorskip("timm", reason="timm is not installed (pip install timm)")
        return timm.create_model(name)
    tvm = pytest.importorskip("torchvision.models", reason="torchvision is not installed")
    return getattr(tvm, name)()


def _nondegenerate(model, res: int, seed: int):
    """Random gammas and betas, then BatchNorm statistics from a noise batch in order, so the
    outputs depend on the input (random BatchNorm networks otherwise collapse to one logit vector)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.weight.copy_(torch.rand(mod.num_features, generator=g) * 0.5 + 0.5)
                mod.bias.copy_(torch.randn(mod.num_features, generator=g) * 0.1)
    model.eval()

    def stats(bn, inputs):
        bn.running_mean.copy_(inputs[0].mean((0, 2, 3)))
        bn.running_var.copy_(inputs[0].var((0, 2, 3)) + 0.1)

    hooks = [m.register_forward_pre_hook(stats) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        model(torch.randn(4, 3, res, res, generator=g))
    for h in hooks:
        h.remove()
    return model


@pytest.mark.parametrize("arch", ["timm:tf_efficientnet_b1", "timm:efficientnet_b1", "torchvision:efficientnet_b1",
                                  "timm:tf_efficientnet_b3", "torchvision:efficientnet_b3", "timm:tf_efficientnet_lite0"])
def test_library_written_checkpoint_reproduces(tmp_path, arch):
    source, name = arch.split(":")
    entry = parse_weights_arch(arch)
    lib = _nondegenerate(_library_model(source, name), entry.resolution, entry.phi)
    path = tmp_path / "lib.pth"
    torch.save(lib.state_dict(), path)
    x = torch.randn(2, 3, entry.resolution, entry.resolution, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = lib(x).numpy()
        ours = build_model(entry.phi, entry.variant, weights=str(path), weights_arch=arch)(x).numpy()
    assert ref.std(1).min() > 1e-3 * np.abs(ref).max()  # the check is not on a constant
    assert _relative(ours, ref) <= 1e-4


def test_table_matches_timm_definitions():
    pytest.importorskip("timm", reason="timm is not installed (pip install timm)")
    from timm.models import _registry

    for a in (a for a in KNOWN if a.source == "timm"):
        cfgs = _registry._model_default_cfgs[a.name]
        c = cfgs.cfgs[a.tag]
        assert (c.input_size[1], c.crop_pct, c.interpolation) == (a.resolution, a.crop_pct, a.interpolation), a.key
        assert (tuple(c.mean), tuple(c.std), c.num_classes, c.crop_mode) == (a.mean, a.std, a.num_classes, a.crop_mode)
        assert (cfgs.tags[0] == a.tag) == a.default, a.key
    for name in sorted({a.name for a in KNOWN if a.source == "timm"}):  # the function, from the model itself
        import timm

        m = timm.create_model(name, pretrained=False)
        a = next(x for x in KNOWN if x.source == "timm" and x.name == name)  # every tag of a name: one function
        assert m.bn1.eps == a.bn_eps and isinstance(m.conv_stem, timm.layers.Conv2dSame) == (a.padding == "same"), name


def test_table_matches_torchvision_definitions():
    tve = pytest.importorskip("torchvision.models.efficientnet", reason="torchvision is not installed")
    for a in (a for a in KNOWN if a.source == "torchvision"):
        enum = getattr(tve, f"EfficientNet_B{a.phi}_Weights")
        w = enum[a.tag]
        t = w.transforms()
        assert (t.crop_size[0], t.resize_size[0], t.interpolation.value) == (a.resolution, a.resize, a.interpolation)
        assert (tuple(t.mean), tuple(t.std)) == (a.mean, a.std) and (w is enum.DEFAULT) == a.default
    import torchvision.models as tvm

    for name in sorted({a.name for a in KNOWN if a.source == "torchvision"}):  # the function itself
        stem = getattr(tvm, name)(weights=None).features[0]
        a = next(x for x in KNOWN if x.source == "torchvision" and x.name == name)
        assert stem[1].eps == a.bn_eps and stem[0].padding == (1, 1) and a.padding == "symmetric", name
