"""calibration.json, the calibration cache (keys, hits, atomicity) and TensorRT's cache file."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

import effdeploy.calibration.artifact as artifact_mod
from effdeploy.calibration.artifact import cache_store
from effdeploy.calibration import (
    CACHE_ENV, CalibrationArtifact, TensorRange, cache_lookup, calibration_key, default_cache_dir,
    load_calibration_set, model_sha256, plan_calibration, read_calibration_json, read_trt_calibration_cache,
    run_calibration, run_calibrations, trt_cache_header, trt_scale_hex, trt_version_code,
    write_calibration_json, write_trt_calibration_cache,
)
from effdeploy.errors import EffdeployError
from effdeploy.data.preprocess import Preprocessing

SPEC = Preprocessing(resolution=16, resize=18)
TENSORS = ["input", "conv1", "relu1"]


def tiny_model(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32), "w1")
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["conv1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv1"], ["relu1"]),
        helper.make_node("GlobalAveragePool", ["relu1"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4, 1, 1])],
        initializer=[w1],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    return model


@pytest.fixture()
def model_path(tmp_path: Path) -> Path:
    p = tmp_path / "model.onnx"
    onnx.save(tiny_model(), str(p))
    return p


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    d = tmp_path / "images"
    d.mkdir()
    rng = np.random.default_rng(5)
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(d / f"im{i}.png")
    return d


@pytest.fixture()
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def _artifact(**changes) -> CalibrationArtifact:
    base = dict(
        method="entropy",
        parameters={"num_bins": 2048, "samples_per_image": 8192},
        ranges={"input": TensorRange(-2.5, 2.75, 2.75), "relu1": TensorRange(0.0, 6.0, 6.0)},
        image_count=2,
        model_sha256="m" * 64,
        preprocessing_sha256="p" * 64,
        images_sha256="i" * 64,
        selection_sha256="s" * 64,
        images=("a.jpg", "b.jpg"),
        source="/data",
        builtin=False,
        key="k" * 64,
    )
    base.update(changes)
    return CalibrationArtifact(**base)


def test_calibration_json_round_trip(tmp_path: Path) -> None:
    a = _artifact(warnings=("only 2 usable",), skipped=1)
    path = write_calibration_json(tmp_path / "calibration.json", a)
    d = json.loads(path.read_text())
    assert d["tensors"]["relu1"] == {"min": 0.0, "max": 6.0, "amax": 6.0}
    assert d["method"] == "entropy" and d["image_count"] == 2 and d["model_sha256"] == "m" * 64
    assert {"preprocessing_sha256", "images_sha256", "parameters", "key"} <= set(d)
    back = read_calibration_json(path)
    assert back == a and back.tensors == ("input", "relu1")
    assert back.manifest_entry()["warnings"] == ["only 2 usable"]
    assert [p.name for p in tmp_path.iterdir()] == ["calibration.json"]  # no temp file left


def test_invalid_calibration_json_is_one_line(tmp_path: Path) -> None:
    p = tmp_path / "calibration.json"
    p.write_text("{not json")
    with pytest.raises(EffdeployError, match="not a valid calibration.json"):
        read_calibration_json(p)
    p.write_text(json.dumps({"method": "max"}))
    with pytest.raises(EffdeployError, match="not a valid calibration.json"):
        read_calibration_json(p)
    p.write_text(json.dumps({**_artifact().to_dict(), "format_version": 99}))
    with pytest.raises(EffdeployError, match="newer than this effdeploy"):
        read_calibration_json(p)
    with pytest.raises(EffdeployError, match="does not exist"):
        read_calibration_json(tmp_path / "missing.json")


def test_cache_dir_parameter_env_and_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "effdeploy" / "calibration"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "envcache"))
    assert default_cache_dir() == tmp_path / "envcache" / "calibration"
    assert default_cache_dir(tmp_path / "param") == tmp_path / "param"


def test_key_covers_every_input() -> None:
    base = ("m", "p", "s", "entropy", {"num_bins": 2048}, ["a", "b"])
    k = calibration_key(*base)
    assert calibration_key("m", "p", "s", "entropy", {"num_bins": 2048}, ["b", "a"]) == k  # order-free
    for i, changed in enumerate(["m2", "p2", "s2", "mse", {"num_bins": 1024}, ["a"]]):
        args = list(base)
        args[i] = changed
        assert calibration_key(*args) != k


def test_rebuild_with_same_inputs_hits_the_cache(
    model_path: Path, images: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = plan_calibration(images, 8, seed=0)
    first = run_calibration(model_path, TENSORS, plan, SPEC, cache_dir=cache, quiet=True)
    assert not first.cache_hit and first.cache_path is not None and first.cache_path.is_file()
    assert len(first.ids) == 8 and first.artifact.image_count == 8
    assert first.artifact.model_sha256 == hashlib.sha256(model_path.read_bytes()).hexdigest()
    assert first.artifact.images == tuple(Path(i).name for i in first.ids)
    # all four methods were cached from the one pass
    assert len(list(cache.glob("*.json"))) == 4

    # a hit never decodes an image nor runs the model
    def boom(*a, **k):
        raise AssertionError("calibration ran on a cache hit")

    monkeypatch.setattr(artifact_mod, "load_plan", boom)
    monkeypatch.setattr(artifact_mod, "collect_statistics", boom)
    second = run_calibration(model_path, TENSORS, plan_calibration(images, 8, seed=0), SPEC, cache_dir=cache, quiet=True)
    assert second.cache_hit and second.artifact == first.artifact and second.ids == first.ids
    other_method = run_calibration(model_path, TENSORS, plan, SPEC, method="percentile", cache_dir=cache, quiet=True)
    assert other_method.cache_hit and other_method.artifact.method == "percentile"
    # the verification split built from a hit's ids is disjoint from calibration
    verify = load_calibration_set(images, 10, SPEC, exclude=second.ids, quiet=True)
    assert len(verify) == 2 and set(verify.ids).isdisjoint(second.ids)


@pytest.mark.parametrize("change", ["percentile", "tensors", "image", "spec", "model", "count", "seed"])
def test_any_changed_input_misses(model_path: Path, images: Path, cache: Path, tmp_path: Path, change: str) -> None:
    kwargs = dict(method="percentile", percentile=99.9, cache_dir=cache, quiet=True)
    run_calibration(model_path, TENSORS, plan_calibration(images, 6, seed=0), SPEC, **kwargs)
    tensors, spec, model, count, seed = TENSORS, SPEC, model_path, 6, 0
    if change == "percentile":
        kwargs["percentile"] = 99.0
    elif change == "tensors":
        tensors = ["conv1", "relu1"]
    elif change == "image":
        Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(images / "im3.png")
    elif change == "spec":
        spec = Preprocessing(resolution=16, resize=20)
    elif change == "model":
        model = tmp_path / "other.onnx"
        onnx.save(tiny_model(seed=1), str(model))
    elif change == "count":
        count = 7
    else:
        seed = 1
    again = run_calibration(model, tensors, plan_calibration(images, count, seed=seed), spec, **kwargs)
    assert not again.cache_hit


def test_interrupted_calibration_leaves_no_cache_entry(
    model_path: Path, images: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(artifact_mod, "collect_statistics", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_calibration(model_path, TENSORS, plan_calibration(images, 4), SPEC, cache_dir=cache, quiet=True)
    assert not cache.exists() or not any(cache.iterdir())


def test_interrupted_write_leaves_neither_entry_nor_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_replace(src, dst):
        raise KeyboardInterrupt

    import effdeploy.files as bundle_mod  # the one atomic writer calibration.json goes through

    monkeypatch.setattr(bundle_mod.os, "replace", failing_replace)
    with pytest.raises(KeyboardInterrupt):
        write_calibration_json(tmp_path / "c" / "calibration.json", _artifact())
    assert list((tmp_path / "c").iterdir()) == []


def test_corrupt_or_foreign_cache_entries_are_misses(cache: Path) -> None:
    a = _artifact()
    cache.mkdir()
    (cache / f"{a.key}.json").write_text("{truncated")
    assert cache_lookup(a.key, cache) is None
    write_calibration_json(cache / f"{a.key}.json", a)  # a calibration.json without the entry's own checksum
    assert cache_lookup(a.key, cache) is None
    foreign = _artifact(key="x" * 64)
    cache_store(foreign, cache)
    (cache / f"{foreign.key}.json").rename(cache / f"{a.key}.json")  # a whole entry under the wrong name
    assert cache_lookup(a.key, cache) is None
    path = cache_store(a, cache)
    assert path is not None and cache_lookup(a.key, cache) == a
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0x04  # one bit flipped on disk after the write: a different number, still valid JSON
    path.write_bytes(bytes(raw))
    assert cache_lookup(a.key, cache) is None and not path.exists()  # discarded, recomputed next time


def test_unwritable_cache_does_not_fail_the_build(model_path: Path, images: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache directory should be")
    out = run_calibration(model_path, TENSORS, plan_calibration(images, 4), SPEC, cache_dir=blocker, quiet=True)
    assert not out.cache_hit and out.cache_path is None and out.artifact.image_count == 4


def test_no_cache_mode_computes_only_the_method(model_path: Path, images: Path, cache: Path) -> None:
    out = run_calibration(model_path, TENSORS, plan_calibration(images, 4), SPEC, method="max", cache_dir=cache,
                          use_cache=False, quiet=True)
    assert out.artifact.method == "max" and not cache.exists()


def test_several_methods_cost_one_pass_even_without_cache(
    model_path: Path, images: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = artifact_mod.collect_statistics

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(artifact_mod, "collect_statistics", counting)
    plan = plan_calibration(images, 5)
    out = run_calibrations(model_path, TENSORS, plan, SPEC, use_cache=False, quiet=True)
    assert list(out) == ["max", "percentile", "entropy", "mse"] and len(calls) == 1
    assert all(not o.cache_hit for o in out.values()) and not cache.exists()
    maxed = out["max"].artifact.ranges["relu1"]
    assert all(o.artifact.ranges["relu1"].amax <= maxed.amax for o in out.values())
    # with a cache: one pass for the first call, none for the next, whatever the methods
    first = run_calibrations(model_path, TENSORS, plan, SPEC, ("mse", "max"), cache_dir=cache, quiet=True)
    again = run_calibrations(model_path, TENSORS, plan, SPEC, cache_dir=cache, quiet=True)
    assert len(calls) == 2 and not first["mse"].cache_hit and all(o.cache_hit for o in again.values())
    assert again["mse"].artifact == first["mse"].artifact
    with pytest.raises(EffdeployError, match="method must be one of"):
        run_calibrations(model_path, TENSORS, plan, SPEC, ("max", "kl"), cache_dir=cache)


def test_external_data_is_part_of_the_model_hash(tmp_path: Path) -> None:
    p = tmp_path / "ext.onnx"
    onnx.save(tiny_model(), str(p), save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.onnx.data", size_threshold=0)
    h1 = model_sha256(p)
    data = tmp_path / "ext.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[0] ^= 1
    data.write_bytes(bytes(raw))
    assert model_sha256(p) != h1
    assert model_sha256(tiny_model()) == model_sha256(tiny_model())
    with pytest.raises(EffdeployError, match="does not exist"):
        model_sha256(tmp_path / "missing.onnx")


def test_trt_header_and_scale_encoding() -> None:
    assert trt_version_code("10.3.0") == 100300
    assert trt_version_code("8.6.1") == 8601
    assert trt_version_code("10.14.1") == 101401
    assert trt_cache_header() == "TRT-100300-EntropyCalibration2"
    assert trt_cache_header("8.6.1") == "TRT-8601-EntropyCalibration2"
    assert trt_cache_header("10.3", "MinMaxCalibration") == "TRT-100300-MinMaxCalibration"
    with pytest.raises(EffdeployError):
        trt_cache_header("ten")
    with pytest.raises(EffdeployError):
        trt_cache_header("10.3.0", "Percentile")
    assert trt_scale_hex(1.0) == "3f800000"
    assert trt_scale_hex(1.0 / 127) == "3c010204"  # amax 1: the scale TensorRT writes for inputs in [-1, 1]
    assert trt_scale_hex(0.0) == "0"


def ieee754_as_onnxruntime_reads_it(bits: int) -> float:
    """ONNX Runtime's TensorRT execution provider reads TensorRT's calibration table line by line:
    ``name: <hex>``, the hex a 32-bit IEEE 754 single, decoded bit by bit
    (ConvertSinglePrecisionIEEE754ToFloat in its tensorrt_execution_provider_utils.h), then x 127.
    Transcribed here so the writer is checked against a reader that is not ours."""
    s = (bits >> 31) & 1
    e = ((bits & 0x7F800000) >> 23) - 127
    m = sum(((bits >> (23 - i - 1)) & 1) * 2.0 ** -(i + 1) for i in range(23))
    return (-1 if s else 1) * 2.0 ** e * (m + 1.0)


# Caches TensorRT itself wrote, as published (an NVDLA MNIST walk-through, TensorRT 7.2; a SegFormer
# build, TensorRT 8.4, whose unnamed layers have spaces, brackets and a zero scale).
TRT_WRITTEN = {
    "TRT-7202-EntropyCalibration2": "data: 3c008912\nconv1: 3c60dd38\npool1: 3c60dd38\nconv2: 3d895e44\n"
                                    "(Unnamed Layer* 4) [Fully Connected]_output: 3d65992f\nprob: 3c083ffd\n",
    "TRT-8401-EntropyCalibration2": "input: 3caa54fc\n371: 3caa54fc\n(Unnamed Layer* 64) [Shuffle]_output: 0\n"
                                    "(Unnamed Layer* 82) [Shuffle]_output: 3c56713e\n",
}


@pytest.mark.parametrize("header", sorted(TRT_WRITTEN))
def test_reads_caches_tensorrt_wrote(header: str, tmp_path: Path) -> None:
    path = tmp_path / "calibration.cache"
    path.write_text(f"{header}\n{TRT_WRITTEN[header]}")
    got_header, scales = read_trt_calibration_cache(path)
    want = {}
    for line in TRT_WRITTEN[header].splitlines():
        name, _, hexa = line.rpartition(": ")
        want[name] = ieee754_as_onnxruntime_reads_it(int(hexa, 16)) if hexa != "0" else 0.0
    assert got_header == header and list(scales) == list(want)
    assert all(scales[k] == pytest.approx(v, rel=1e-7) for k, v in want.items())
    # the MNIST input is [0, 1] pixels: TensorRT's scale gives a range of about 1
    assert 0.99 < scales.get("data", 1 / 127) * 127 < 1.01
    # and ours writes those very lines back from the ranges
    ranges = {k: TensorRange(-127 * v, 127 * v, 127 * v) for k, v in scales.items()}
    version = {"TRT-7202-EntropyCalibration2": "7.2.2", "TRT-8401-EntropyCalibration2": "8.4.1"}[header]
    again = write_trt_calibration_cache(tmp_path / "ours.cache", ranges, trt_version=version)
    assert again.read_text() == path.read_text()


def test_trt_calibration_cache_file(tmp_path: Path) -> None:
    ranges = {
        "input": TensorRange(-2.5, 2.75, 2.75),
        "/blocks.0/act/Mul_output_0": TensorRange(-0.28, 6.0, 6.0),
        "input_1:0": TensorRange(-1.0, 1.0, 1.0),  # TensorFlow-style names keep their colon
    }
    path = write_trt_calibration_cache(tmp_path / "calibration.cache", _artifact(ranges=ranges), trt_version="8.6.1")
    lines = path.read_text().splitlines()
    assert lines[0] == "TRT-8601-EntropyCalibration2"
    name, hexa = lines[1].rsplit(": ", 1)
    assert name == "input" and ieee754_as_onnxruntime_reads_it(int(hexa, 16)) == pytest.approx(2.75 / 127, rel=1e-7)
    assert lines[3] == "input_1:0: 3c010204"
    header, scales = read_trt_calibration_cache(path)
    assert header == lines[0] and list(scales) == list(ranges)
    for name, r in ranges.items():
        assert scales[name] * 127 == pytest.approx(r.amax, rel=1e-6)
    (tmp_path / "bad.cache").write_text("input: 3f800000\n")
    with pytest.raises(EffdeployError, match="not a TensorRT calibration cache"):
        read_trt_calibration_cache(tmp_path / "bad.cache")
    with pytest.raises(EffdeployError):
        write_trt_calibration_cache(tmp_path / "x.cache", {"a\nb": TensorRange(0, 1, 1)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.cache", "calibration.cache"]
    assert not os.path.exists(tmp_path / "x.cache")
