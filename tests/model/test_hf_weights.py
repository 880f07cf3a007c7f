"""Weights as people have them: a ``.safetensors`` file (no pickle) and a Hugging Face folder
written by timm's own ``save_for_hf`` (../shared/data/checkpoints/hf, with timm's logits for a
given input). The folder says which function its weights belong to, its class count and its
preprocessing; effdeploy must reproduce timm's logits from it with nothing else said."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SHARED, read_manifest, run_cli
from effdeploy import build_model
from effdeploy.errors import EffdeployError

HF = SHARED / "checkpoints" / "hf" / "timm-efficientnet_b0-10class"


@pytest.fixture(scope="module")
def hf() -> tuple[Path, np.ndarray, np.ndarray]:
    if not (HF / "config.json").is_file():
        pytest.skip(f"needs the timm-written Hugging Face folder {HF} (present in CI, absent in a fresh clone)")
    return HF, np.load(HF / "input.npy"), np.load(HF / "logits.npy")


def _relative(model, x: np.ndarray, ref: np.ndarray) -> float:
    with torch.no_grad():
        ours = model(torch.from_numpy(x)).numpy()
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def test_folder_alone_gives_timms_function(hf):
    folder, x, ref = hf
    m = build_model(0, "b", weights=str(folder))
    assert ref.shape == (2, 10) and m.spec.num_classes == 10  # from config.json, not --num-classes
    assert _relative(m, x, ref) <= 1e-4
    info = m.weights_info
    assert info["arch"]["key"] == "timm:efficientnet_b0.ra_in1k" and info["format"] == "timm"
    assert info["path"].endswith("model.safetensors") and info["folder"]["config"] == "config.json"
    # timm's pretrained_cfg for this folder: 224 px, crop_pct 0.875 (resize 256), bicubic, ImageNet mean/std
    pre = m.spec.preprocessing
    assert (pre.resolution, pre.resize, pre.interpolation) == (224, 256, "bicubic")
    assert pre.mean == pytest.approx((123.675, 116.28, 103.53)) and info["preprocessing"]["from_folder"] == {}


def test_safetensors_file_reads_without_pickle(hf):
    folder, x, ref = hf
    m = build_model(0, "b", weights=str(folder / "model.safetensors"), weights_arch="timm:efficientnet_b0",
                    num_classes=10)
    assert _relative(m, x, ref) <= 1e-4
    with pytest.raises(EffdeployError, match="--weights-arch timm:efficientnet_b0 .* or --weights-arch timm:tf_"):
        build_model(0, "b", weights=str(folder / "model.safetensors"), num_classes=10)  # timm keys fit two functions


def test_a_fine_tuned_folder_keeps_its_own_preprocessing(hf, tmp_path):
    """A pretrained_cfg that differs from the release (crop, normalisation) is applied and recorded."""
    folder, _, _ = hf
    mine = tmp_path / "mine"
    shutil.copytree(folder, mine)
    cfg = json.loads((mine / "config.json").read_text())
    cfg["pretrained_cfg"].update(crop_pct=1.0, mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5], tag="my_finetune")
    (mine / "config.json").write_text(json.dumps(cfg))
    m = build_model(0, "b", weights=str(mine))
    pre = m.spec.preprocessing
    assert (pre.resize, pre.mean, pre.std) == (224, (127.5,) * 3, (127.5,) * 3)
    assert m.weights_info["arch"]["key"] == "timm:efficientnet_b0.ra_in1k"  # untagged: timm's default entry
    assert m.weights_info["preprocessing"]["from_folder"] == {"crop_pct": 1.0, "mean": [0.5] * 3, "std": [0.5] * 3}
    ours = build_model(0, "b", weights=str(mine), preprocessing={"crop_pct": 0.9})  # what is passed wins
    assert ours.spec.preprocessing.resize == 248


def test_folder_refusals_are_one_line(hf, tmp_path):
    folder, _, _ = hf
    with pytest.raises(EffdeployError, match="contradicts .*config.json"):
        build_model(0, "b", weights=str(folder), weights_arch="timm:tf_efficientnet_b0")
    transformers = tmp_path / "hf-transformers"
    transformers.mkdir()
    (transformers / "config.json").write_text(json.dumps({"architectures": ["EfficientNetForImageClassification"]}))
    with pytest.raises(EffdeployError, match="transformers config, not a timm model folder"):
        build_model(0, "b", weights=str(transformers))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EffdeployError, match="directory without config.json"):
        build_model(0, "b", weights=str(empty))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes((folder / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(EffdeployError, match="not a safetensors file"):
        build_model(0, "b", weights=str(bad), weights_arch="timm:efficientnet_b0", num_classes=10)


@pytest.mark.slow
def test_build_from_the_folder_records_it(hf, tmp_path):
    """effdeploy build --weights FOLDER: the bundle's ONNX gives timm's logits, the manifest says
    the folder gave the function, the classes and the preprocessing."""
    import onnxruntime as ort

    folder, x, ref = hf
    out = tmp_path / "b"
    # this random (untrained) backbone reaches logits of ~1e2 on the natural verification images, where
    # float32 differences of 0.07 are ~5e-4 of the scale: the default 1e-3 is for trained logits
    proc = run_cli("build", "--phi", "0", "--weights", str(folder), "--out", str(out), "--json", "--max-abs", "0.2")
    assert proc.returncode == 0, proc.stderr
    m = read_manifest(out)
    assert m["model"]["num_classes"] == 10 and m["weights"]["folder"]["config_sha256"]
    assert m["weights"]["arch"]["key"] == "timm:efficientnet_b0.ra_in1k"
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    ours = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert float(np.abs(ours - ref).max() / np.abs(ref).max()) <= 1e-4
