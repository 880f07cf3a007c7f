"""What a rebuild reuses (export, CPU dialect timing, reference logits) and that reuse never
hides a change: a different weight, a corrupt entry or different pixels miss the cache."""


import numpy as np
import onnx
import pytest
import torch

from conftest import read_manifest, run_cli
from effdeploy import build_model
from effdeploy.export.exporter import cached_export, export_cache_dir, export_key
from effdeploy.verify.gate import logit_margin
from effdeploy.export.logits import reference_logits

LITE = ["--phi", "0", "--variant", "lite", "--weights", "pretrained", "--resolution", "128"]


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFDEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_export_cache_hit_miss_and_corruption(cache):
    model = build_model(0, "b", resolution=64)
    first, hit = cached_export(model, 64)
    assert not hit and len(list(export_cache_dir().glob("*.onnx"))) == 1
    again, hit = cached_export(model, 64)
    assert hit and again.SerializeToString() == first.SerializeToString()
    # any weight change is a different key, so a stale graph is never reused
    key = export_key(model, 64)
    with torch.no_grad():
        model.classifier.bias[0] += 1e-3
    assert export_key(model, 64) != key
    _, hit = cached_export(model, 64)
    assert not hit
    # a truncated entry is re-exported, not loaded
    entry = export_cache_dir() / f"{export_key(model, 64)}.onnx"
    entry.write_bytes(entry.read_bytes()[:1000])
    proto, hit = cached_export(model, 64)
    assert not hit
    onnx.checker.check_model(proto)
    assert entry.stat().st_size > 1000


def test_export_cache_is_bounded(cache, monkeypatch):
    import effdeploy.export.exporter as E

    monkeypatch.setattr(E, "EXPORT_CACHE_ENTRIES", 1)  # three exports show it (each takes seconds)
    for seed in range(2):
        cached_export(build_model(0, "b", resolution=32, seed=seed), 32)
    assert len(list(export_cache_dir().glob("*.onnx"))) == 1
    _, hit = cached_export(build_model(0, "b", resolution=32, seed=1), 32)  # newest kept
    assert hit
    _, hit = cached_export(build_model(0, "b", resolution=32, seed=0), 32)  # oldest pruned
    assert not hit


def test_reference_logits_cache(cache):
    model = build_model(0, "b", resolution=64)
    proto, _ = cached_export(model, 64)
    x = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    first, hit = reference_logits(proto, x)
    assert not hit
    again, hit = reference_logits(proto, x)
    assert hit and np.array_equal(first, again)
    import onnxruntime as ort  # a plain session: nothing of effdeploy's between the graph and the logits

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(again, session.run(None, {session.get_inputs()[0].name: x})[0], atol=1e-5)
    other, hit = reference_logits(proto, x + 0.5)  # different pixels: measured again
    assert not hit and not np.allclose(other, first)


def test_logit_margin_separates_trained_from_near_tied():
    rng = np.random.default_rng(0)
    tied = rng.standard_normal((200, 1000))
    confident = tied.copy()
    confident[np.arange(200), rng.integers(0, 1000, 200)] += 8.0
    assert logit_margin(tied) < 0.6 < 3.0 < logit_margin(confident)


def test_rebuild_reuses_export_and_dialect_timing(tmp_path):
    args = ["build", *LITE, "--precision", "int8", "--profile", "cpu", "--calib-images", "12", "--calib-method",
            "max", "--json", "--allow-parity-failure", "--no-repair"]
    env = {"EFFDEPLOY_CACHE_DIR": str(tmp_path / "cache")}
    first = run_cli(*args, "--out", str(tmp_path / "a"), env=env)
    assert first.returncode == 0, first.stderr
    second = run_cli(*args, "--out", str(tmp_path / "b"), env=env)
    assert second.returncode == 0, second.stderr
    a, b = read_manifest(tmp_path / "a"), read_manifest(tmp_path / "b")
    assert a["parity"]["export"]["export_cache_hit"] is False and b["parity"]["export"]["export_cache_hit"] is True
    assert b["parity"]["export"]["passed"]  # eager parity is checked again on the reused graph
    assert a["quantization"]["cpu_dialect_timed_before"] is False
    assert b["quantization"]["cpu_dialect_timed_before"] is True
    assert a["quantization"]["activations"] == b["quantization"]["activations"]
    assert b["parity"]["verify"]["reference_logits_cached"] is True
    assert a["parity"]["verify"]["comparison"] == b["parity"]["verify"]["comparison"]
    assert (tmp_path / "a" / "model.onnx").read_bytes() == (tmp_path / "b" / "model.onnx").read_bytes()


def test_random_weights_int8_is_benchmark_only(tmp_path):
    """Random weights make no accuracy claim: agreement of near-tied logits is reported, not gated;
    the build ends benchmark-only with exit 0 and one warning line, and verify says why it cannot."""

    out = tmp_path / "b0"
    proc = run_cli("build", "--phi", "0", "--resolution", "96", "--precision", "int8", "--profile", "jetson-orin",
                   "--calib-images", "8", "--calib-method", "max", "--no-repair", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert [l for l in proc.stderr.splitlines() if "warning: status" in l] == ["warning: status benchmark-only: random weights or an untrained head; latency figures only, no accuracy claim"]
    assert "INT8 of random weights" not in proc.stderr  # no second warning about the same thing
    m = read_manifest(out)
    v = m["parity"]["verify"]
    assert m["status"] == "benchmark-only" and not v["misses"]
    assert v["budget"] == {"max_abs": None, "top1_agreement": None, "accuracy_drop_pt": None, "min_cosine": 0.5}
    assert 0.5 <= v["comparison"]["cosine_mean"] < 1 and 0 < v["comparison"]["relative_error"] < 1
    assert 0 < v["reference_logit_margin"] < 1.0  # near-tied: why agreement would measure nothing
    assert any("random weights: no accuracy claim" in n for n in m["notes"])
    proc = run_cli("verify", str(out))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "random weights (status benchmark-only): there is no accuracy to verify" in proc.stderr


def test_benchmark_only_build_still_fails_a_numerical_budget(tmp_path, imagenet_sample):
    """A numerical budget (--max-abs) still gates random weights; the failure says what is gated."""
    out = tmp_path / "b0r"
    proc = run_cli("build", "--phi", "0", "--resolution", "96", "--precision", "int8", "--profile", "jetson-orin",
                   "--calib-data", str(imagenet_sample), "--calib-images", "16", "--verify-images", "60",
                   "--calib-method", "max", "--max-abs", "1e-9", "--max-kept-macs", "10", "--out", str(out))
    assert proc.returncode == 3 and "Traceback" not in proc.stderr
    m = read_manifest(out)
    assert m["status"] == "failed-parity" and m["quantization"]["repair"]["tried"]
    last = proc.stderr.strip().splitlines()[-1]
    assert "with random weights there is no accuracy claim, so only numerical budgets gate this build" in last
    assert f"{m['parity']['verify']['reference_logit_margin']:.2f}" in last
