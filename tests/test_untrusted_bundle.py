"""A bundle is a file from somewhere else: whatever its manifest names or claims, opening it reads
nothing outside the bundle, sizes nothing absurdly, and ends in one line when it is refused."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from conftest import run_cli
from effdeploy.bundle import MAX_JSON_DEPTH, load_bundle, safe_artifact_name, write_manifest
from effdeploy.errors import EffdeployError


@pytest.fixture()
def bundle(tiny_bundle, tmp_path):
    """A copy of a real bundle inside ``tmp_path/site``, with a secret file beside it (outside)."""
    site = tmp_path / "site"
    site.mkdir()
    out = site / "b"
    shutil.copytree(tiny_bundle, out)
    (site / "outside.txt").write_text("secret\n")
    return out


def _manifest(b):
    return json.loads((b / "manifest.json").read_text())


def _write(b, m):
    (b / "manifest.json").write_text(json.dumps(m))


class _Reads:
    """Every file this process opens (Python's audit hook for ``open``), to prove what was read."""

    paths: list[str] = []
    installed = False

    @classmethod
    def start(cls):
        if not cls.installed:
            sys.addaudithook(lambda event, args: cls.paths.append(str(args[0])) if event == "open" and args and
                             isinstance(args[0], (str, bytes, os.PathLike)) else None)
            cls.installed = True
        cls.paths = []
        return cls


def _refused(b, match: str):
    reads = _Reads.start()
    with pytest.raises(EffdeployError, match=match) as info:
        load_bundle(b)
    assert "\n" not in str(info.value)
    assert not [p for p in reads.paths if "outside" in os.path.realpath(p)], reads.paths
    return info


@pytest.mark.parametrize("name", ["../outside.txt", "/etc/hostname", "sub/../../outside.txt", ".hidden", "a\\b",
                                  "..", "", "x" * 300])
def test_artifact_names_stay_plain_file_names_inside_the_bundle(bundle, name):
    m = _manifest(bundle)
    sha = __import__("hashlib").sha256(b"secret\n").hexdigest()
    m["artifacts"][name] = {"sha256": sha, "bytes": 7}  # the outside file's true hash: only the name tells
    _write(bundle, m)
    _refused(bundle, "not a plain file name inside the bundle")


def test_the_names_a_bundle_writes_are_plain():
    for name in ("model.onnx", "reference.onnx", "calibration.json", "labels.txt", "frame-1080x1920-bgr.onnx"):
        assert safe_artifact_name(name)
    for name in ("../x", "/x", "a/b", ".x", "..", None, 3):
        assert not safe_artifact_name(name)


def test_a_symlink_leaving_the_bundle_is_refused(bundle):
    (bundle / "labels.txt").symlink_to(bundle.parent / "outside.txt")
    m = _manifest(bundle)
    m["artifacts"]["labels.txt"] = {"sha256": __import__("hashlib").sha256(b"secret\n").hexdigest(), "bytes": 7}
    _write(bundle, m)
    _refused(bundle, "not a regular file")


def test_onnx_external_data_must_be_a_file_of_the_bundle(bundle):
    """The largest initializer's data moved to ``../outside.txt`` (manifest re-hashed, as an attacker
    would): refused before ONNX Runtime resolves it. The same layout with the data in a hashed
    file of the bundle (how ONNX stores models over 2 GB) opens and runs."""
    from effdeploy.runtime.runner import Runner

    model = onnx.load(str(bundle / "model.onnx"))
    big = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    data = numpy_helper.to_array(big)
    for location, ok in (("../outside.txt", False), ("weights.data", True)):
        m2 = onnx.ModelProto()
        m2.CopyFrom(model)
        t = next(i for i in m2.graph.initializer if i.name == big.name)
        t.ClearField("raw_data")
        t.ClearField("float_data")
        (bundle / "weights.data").write_bytes(data.tobytes())
        t.data_location = onnx.TensorProto.EXTERNAL
        for k, v in (("location", location), ("offset", "0"), ("length", str(data.nbytes))):
            e = t.external_data.add()
            e.key, e.value = k, v
        onnx.save(m2, str(bundle / "model.onnx"))
        manifest = load_bundle(bundle, check=False).manifest
        write_manifest(bundle, manifest)  # hashes model.onnx and weights.data as they now are
        if ok:
            runner = Runner.open(bundle)
            x = np.zeros((1, 3, 64, 64), np.float32)
            assert runner.infer(x).shape == (1, 1000)
        else:
            _refused(bundle, "keeps tensor data in '../outside.txt'")


@pytest.mark.parametrize("path,value,match", [
    (("model", "resolution"), 10 ** 9, "model.resolution"),
    (("model", "resolution"), "224", "model.resolution"),
    (("model", "num_classes"), -1, "model.num_classes"),
    (("model", "num_classes"), 10 ** 12, "model.num_classes"),
    (("model", "phi"), None, "model.phi"),
    (("model", "preprocessing", "resize"), 0, "resize"),
    (("frames",), [{"file": "../outside.txt", "width": 64, "height": 64}], "frame-in graph"),
    (("frames",), [{"file": "model.onnx", "width": 10 ** 6, "height": 64}], "frame-in graph"),
    (("labels",), "../outside.txt", "labels file"),
    (("notes",), ["x" * (1 << 17)], "string of"),
    (("artifacts",), [], "artifact list"),
    (("model",), "b0", "no model description"),
])
def test_manifest_values_have_sane_bounds(bundle, path, value, match):
    m = _manifest(bundle)
    d = m
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value
    _write(bundle, m)
    _refused(bundle, match)


def test_deep_huge_and_malformed_manifests_are_one_line(bundle):
    m = _manifest(bundle)
    deep: dict = {}
    cur = deep
    for _ in range(MAX_JSON_DEPTH + 5):
        cur["x"] = {}
        cur = cur["x"]
    m["notes"] = [deep]
    _write(bundle, m)
    _refused(bundle, "nested deeper")
    (bundle / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)  # beyond Python's JSON recursion
    _refused(bundle, "not a valid effdeploy manifest|not a manifest effdeploy can trust")
    (bundle / "manifest.json").write_bytes(b" " * (17 << 20))
    _refused(bundle, "larger than")
    (bundle / "manifest.json").write_bytes(b"\xff\xfe{")
    _refused(bundle, "not a valid effdeploy manifest")
    text = json.dumps(_manifest_ok := {"model": {}})
    (bundle / "manifest.json").write_text(text[: len(text) // 2])  # truncated
    _refused(bundle, "not a valid effdeploy manifest")


def test_the_cli_refuses_a_path_trick_in_one_line(bundle, tmp_path):
    m = _manifest(bundle)
    m["artifacts"]["../outside.txt"] = {"sha256": __import__("hashlib").sha256(b"secret\n").hexdigest(), "bytes": 7}
    _write(bundle, m)
    proc = run_cli("inspect", str(bundle))
    assert proc.returncode == 2 and proc.stderr.startswith("effdeploy: error:") and proc.stderr.count("\n") == 1, proc.stderr


def test_the_fuzz_script_is_green_in_its_short_form():
    """bench/fuzz_bundles.py with 60 seeded mutations (the README's figure is its full 200): every
    class ends in one-line refusals (or, where allowed, a normal run), nothing outside is opened."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    try:
        import fuzz_bundles
    finally:
        sys.path.pop(0)
    rows = fuzz_bundles.fuzz(60, seed=1, max_seconds=5.0, quiet=True)
    assert sum(r.n for r in rows) == 60 and len(rows) >= 15
    red = [(r.name, r.bad[:2], r.outside[:2], r.refused, r.n) for r in rows if not r.green(5.0)]
    assert not red, red


def test_model_onnx_must_be_a_listed_artifact(bundle):
    """Left out of the list, model.onnx would be opened unchecked (it could be a link to anything)."""
    m = _manifest(bundle)
    del m["artifacts"]["model.onnx"]
    (bundle / "model.onnx").unlink()
    (bundle / "model.onnx").symlink_to(bundle.parent / "outside.txt")
    _write(bundle, m)
    _refused(bundle, "does not list model.onnx")


def test_a_frame_graph_under_any_name_has_its_external_data_checked(bundle):
    """Frame-in graphs are opened by ONNX Runtime whatever their file name: a listed `frame.bin`
    keeping its weights in ../outside.txt is refused like model.onnx would be."""
    model = onnx.load(str(bundle / "model.onnx"))
    t = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    n = len(t.raw_data)
    t.ClearField("raw_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", "../outside.txt"), ("offset", "0"), ("length", str(n))):
        e = t.external_data.add()
        e.key, e.value = k, v
    onnx.save(model, str(bundle / "frame.bin"))
    manifest = load_bundle(bundle, check=False).manifest
    manifest = manifest.with_(frames=({"file": "frame.bin", "width": 64, "height": 48, "channel_order": "bgr"},))
    write_manifest(bundle, manifest)
    _refused(bundle, "keeps tensor data in '../outside.txt'")
