import json

import pytest

from effdeploy.bundle import Manifest, load_bundle, staging_dir, write_manifest
from effdeploy.errors import EffdeployError
from effdeploy.profiles import load_profile
from effdeploy.model.spec import model_spec


def test_manifest_round_trip(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    m = bundle.manifest
    again = Manifest.from_dict(json.loads(json.dumps(m.to_dict())))
    assert again == m
    assert m.status == "benchmark-only"  # random weights: numerical checks only
    assert m.model.parameters == 5_288_548
    assert m.preprocessing.resolution == 64
    assert m.artifacts["model.onnx"]["sha256"]
    for key in ("torch", "onnx", "onnxruntime", "effdeploy"):
        assert m.versions[key]
    assert m.parity["export"]["max_abs"] <= 1e-4
    assert m.weights["source"] == "random"


def test_corrupt_artifact_is_detected(tiny_bundle, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_bundle, copy)
    with open(copy / "model.onnx", "r+b") as f:
        f.seek(1000)
        f.write(b"\xff\xff\xff\xff")
    with pytest.raises(EffdeployError, match="sha256"):
        load_bundle(copy)
    (copy / "model.onnx").unlink()
    with pytest.raises(EffdeployError, match="missing"):
        load_bundle(copy)


def test_failed_staging_leaves_nothing(tmp_path):
    out = tmp_path / "bundle"
    with pytest.raises(RuntimeError):
        with staging_dir(out) as tmp:
            (tmp / "model.onnx").write_bytes(b"partial")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_existing_bundle_replaced_only_when_complete(tmp_path):
    out = tmp_path / "bundle"
    spec = model_spec(0, "b", resolution=64)
    manifest = Manifest(model=spec, precision="fp32", profile=load_profile("cpu").to_dict(), weights={"source": "random"})
    with staging_dir(out) as tmp:
        (tmp / "model.onnx").write_bytes(b"v1")
        write_manifest(tmp, manifest)
    with pytest.raises(KeyboardInterrupt):
        with staging_dir(out) as tmp:
            (tmp / "model.onnx").write_bytes(b"v2")
            raise KeyboardInterrupt
    assert (out / "model.onnx").read_bytes() == b"v1"
    assert load_bundle(out, check=False).manifest.artifacts["model.onnx"]["bytes"] == 2  # (not real ONNX)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_not_a_bundle(tmp_path):
    with pytest.raises(EffdeployError, match="not a bundle"):
        load_bundle(tmp_path)
    with pytest.raises(EffdeployError, match="does not exist"):
        load_bundle(tmp_path / "nope")
