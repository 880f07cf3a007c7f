"""INT8 reconstruction: the torch interpreter is the deployed graph's function, and the sequential
bias correction lowers the error on images it did not measure on."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from effdeploy.export.logits import ort_logits, relative_mse, run_outputs
from effdeploy.precision.qdq import apply_initializers, config_for, quantize
from effdeploy.precision.reconstruct import GraphModule, Recipe, correct_biases, learned_initializers

RES = 96


@pytest.fixture(scope="module")
def lite0():
    """Pretrained Lite0 at 96 px, its FP32 graph, max ranges from 12 built-in images, and 20 images."""
    from effdeploy.calibration import plan_calibration, run_calibrations
    from effdeploy.data.datasets import builtin_image_paths
    from effdeploy.export.exporter import cached_export
    from effdeploy.model.network import build_model
    from effdeploy.precision.qdq import calibration_tensors
    from effdeploy.data.preprocess import preprocess_files

    model = build_model(0, "lite", weights="pretrained", resolution=RES)
    fp32, _ = cached_export(model, RES)
    pre = model.spec.preprocessing
    images = preprocess_files(builtin_image_paths(), pre)
    ranges = {}
    for gpu in (True, False):
        cfg = config_for(gpu)
        plan = plan_calibration(None, 12, 0)
        out = run_calibrations(fp32, calibration_tensors(fp32, cfg), plan, pre, methods=("max",), quiet=True)
        ranges[cfg.dialect] = out["max"].artifact.ranges
    return fp32, ranges, images


def _twin(lite0, gpu: bool):
    fp32, ranges, _ = lite0
    cfg = replace(config_for(gpu, method="max"), fp16_rest=False)
    return quantize(fp32, ranges[cfg.dialect], cfg), cfg


def _node_by_node(twin, x) -> dict[str, int]:
    """Each op, fed ONNX Runtime's own inputs, against ONNX Runtime's output; the op kinds checked."""
    g = GraphModule(twin)
    names = [o for op in g.ops for o in op.outputs]
    ort = run_outputs(twin, names, x, optimize=False)
    ort[g.input_name] = x
    checked: dict[str, int] = {}
    for op in g.ops:
        env = {t: torch.from_numpy(ort[t]) for t in op.inputs if t in ort}
        with torch.no_grad():
            out = g.run(env, [op])[op.outputs[0]].numpy()
        want = ort[op.outputs[0]]
        scale = max(float(np.abs(want).max()), 1e-6)
        if op.kind == "FakeQuant":
            step = op.attrs["_q"][0]
            # one code may sit on a float tie (torch multiplies by 1/scale where ONNX divides)
            assert int((np.abs(out - want) > step / 2).sum()) <= max(1, 1e-4 * out.size), op.name
        else:
            assert np.abs(out - want).max() <= 1e-4 * scale, op.name
        checked[op.kind] = checked.get(op.kind, 0) + 1
    return checked


@pytest.mark.parametrize("gpu", [True, False], ids=["tensorrt", "ort-cpu"])
def test_interpreter_is_the_graph_node_by_node(lite0, gpu):
    """Each op, fed ONNX Runtime's own inputs, gives ONNX Runtime's output (unoptimised, the
    graph as written); quantizers agree on every integer code but float ties."""
    twin, _ = _twin(lite0, gpu)
    checked = _node_by_node(twin, lite0[2][:4])
    assert checked["FakeQuant"] > 30 and checked["Conv"] == 49


@pytest.mark.parametrize("gpu", [True, False], ids=["tensorrt", "ort-cpu"])
def test_interpreter_is_the_b_graph_node_by_node(gpu):
    """The same for the B family's graph: SE (ReduceMean, Sigmoid, Mul), swish (ort-cpu: QuickGelu
    after a DequantizeLinear) and TF SAME padding (asymmetric Conv pads), with the SE path in float as the default build keeps it (16 SE
    ReduceMeans and the head's pooling)."""
    from effdeploy.calibration import plan_calibration, run_calibrations
    from effdeploy.data.datasets import builtin_image_paths
    from effdeploy.export.exporter import cached_export
    from effdeploy.model.network import build_model
    from effdeploy.precision.qdq import calibration_tensors
    from effdeploy.data.preprocess import preprocess_files

    model = build_model(0, "b", resolution=64)
    fp32, _ = cached_export(model, 64)
    pre = model.spec.preprocessing
    cfg = replace(config_for(gpu, method="max"), fp16_rest=False, quantize_se=False)
    out = run_calibrations(fp32, calibration_tensors(fp32, cfg), plan_calibration(None, 8, 0), pre,
                           methods=("max",), quiet=True)
    twin = quantize(fp32, out["max"].artifact.ranges, cfg)
    checked = _node_by_node(twin, preprocess_files(builtin_image_paths()[:4], pre))
    assert checked["Conv"] == 81 and checked["ReduceMean"] == 17 and checked["Sigmoid"] + checked.get("QuickGelu", 0) >= 64
    assert (checked.get("QuickGelu", 0) > 0) == (not gpu)  # ort-cpu writes the swish after a DequantizeLinear fused
    assert any(pads[:2] != pads[2:] for pads in (op.attrs.get("pads", [0] * 4) for op in GraphModule(twin).ops
                                                  if op.kind == "Conv"))  # SAME: asymmetric


def test_interpreter_runs_the_fp32_graph_like_onnxruntime(lite0):
    fp32, _, images = lite0
    x = images[:4]
    want = ort_logits(fp32, x, optimize=False)
    got = GraphModule(fp32)(torch.from_numpy(x)).numpy()
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


@pytest.mark.parametrize("gpu", [True, False], ids=["tensorrt", "ort-cpu"])
def test_bias_correction_helps_on_images_it_did_not_measure(lite0, gpu):
    fp32, ranges, images = lite0
    twin, cfg = _twin(lite0, gpu)
    fit, held = images[:10], images[10:]
    q, layers = correct_biases(twin, fp32, fit)
    assert len(layers) == 50  # every Conv (49) and the classifier Gemm, each still INT8
    assert all(r.relative_error_after <= r.relative_error_before + 1e-6 for r in layers)
    assert layers[0].unit == "stem" and layers[-1].unit == "head"
    corrected = apply_initializers(twin, learned_initializers(q))
    ref = ort_logits(fp32, held, optimize=False)
    before = relative_mse(ref, ort_logits(twin, held, optimize=False))
    after = relative_mse(ref, ort_logits(corrected, held, optimize=False))
    assert after < before
    # the interpreter reads the corrected biases back (end to end it agrees with ORT only up to the
    # graph's own sensitivity: a quantized network amplifies float-rounding ties)
    got = GraphModule(corrected)(torch.from_numpy(held[:2])).numpy()
    want = ort_logits(corrected, held[:2], optimize=False)
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.99


def test_deployed_graph_carries_the_corrected_biases(lite0):
    """quantize(..., initializers=) writes the corrections into the FP16 tensorrt graph: weights stay
    the quantizer's INT8 integers, biases are the corrected ones (as FP16)."""
    fp32, ranges, images = lite0
    twin, cfg = _twin(lite0, True)
    q, _ = correct_biases(twin, fp32, images[:6], fp16_scales=True)
    values = learned_initializers(q)
    deployed = quantize(fp32, ranges["tensorrt"], replace(cfg, fp16_rest=True), initializers=values)
    plain = quantize(fp32, ranges["tensorrt"], replace(cfg, fp16_rest=True))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in deployed.graph.initializer}
    plain_inits = {i.name: onnx.numpy_helper.to_array(i) for i in plain.graph.initializer}
    biases = [k for k in values if k in inits]
    assert len(biases) >= 49
    for k in biases:
        assert inits[k].dtype == np.float16
        np.testing.assert_allclose(inits[k].astype(np.float32), values[k], rtol=2e-3, atol=1e-4)
    weights = [k for k, v in inits.items() if v.dtype == np.int8 and v.ndim > 1]
    assert len(weights) == 50 and all(np.array_equal(inits[k], plain_inits[k]) for k in weights)
    assert any(not np.array_equal(inits[k], plain_inits[k]) for k in biases)


def test_recipe_is_recorded():
    assert Recipe(images=16).to_dict() == {"name": "sequential bias correction", "mode": "bias", "images": 16,
                                           "device": "cpu"}
    assert Recipe(mode="thorough", steps=300).to_dict()["steps"] == 300


@pytest.mark.parametrize("gpu", [True, False], ids=["tensorrt", "ort-cpu"])
def test_learned_rounding_writes_what_it_learned(lite0, gpu):
    """--reconstruct thorough: only the convs with a linear output (Lite0's 16 project convs; the
    cpu dialect's ReLU6 lives in its U8 quantizers) learn their rounding; every learned integer is the quantizer's or its neighbour, inside the dialect's
    range (7-bit weights on ort-cpu); the graph carries them (ONNX Runtime computes what the
    interpreter learned), and on images it did not fit on the logits move closer to FP32."""
    from effdeploy.precision.reconstruct import learn_rounding

    fp32, ranges, images = lite0
    twin, cfg = _twin(lite0, gpu)
    fit, held = images[:10], images[10:]
    q, layers = learn_rounding(twin, fp32, fit, steps=150)
    assert [r.layer for r in layers if "project" not in r.layer] == ["/classifier/Gemm"] and len(layers) == 17
    assert all(r.relative_error_after <= r.relative_error_before + 1e-6 for r in layers)
    # the classifier sees 10 rows for 1281 features: left as the quantizer rounded it
    assert layers[-1].bias_shift == 0 and layers[-1].relative_error_after == layers[-1].relative_error_before
    values = learned_initializers(q)
    plain = {i.name: numpy_helper.to_array(i) for i in twin.graph.initializer}
    ints = {k: v for k, v in values.items() if v.dtype == np.int8}
    assert len(ints) >= 4  # at 96 px the last stages have too few positions (3x3 x 10 images) to choose on
    limit = 64 if not gpu else 127
    for k, v in ints.items():
        assert v.shape == plain[k].shape and int(np.abs(v.astype(int) - plain[k]).max()) <= 1
        assert int(np.abs(v.astype(int)).max()) <= limit
    assert sum(int((v != plain[k]).sum()) for k, v in ints.items()) > 50
    learned = apply_initializers(twin, values)
    got = q(torch.from_numpy(held[:2])).numpy()
    want = ort_logits(learned, held[:2], optimize=False)
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.99
    ref = ort_logits(fp32, held, optimize=False)
    assert relative_mse(ref, ort_logits(learned, held, optimize=False)) < relative_mse(ref, ort_logits(twin, held, optimize=False))


def test_corrections_at_a_strength():
    from effdeploy.precision.reconstruct import at_strength

    plain = {"f": np.array([1.0, 2.0], np.float32), "i": np.array([10, -4], np.int32)}
    full = {"f": np.array([3.0, 0.0], np.float32), "i": np.array([13, -9], np.int32)}
    half = at_strength(plain, full, 0.5)
    np.testing.assert_array_equal(half["f"], [2.0, 1.0])
    assert half["i"].dtype == np.int32 and half["i"].tolist() == [12, -6]  # 11.5 and -6.5 to even
    for k in full:
        np.testing.assert_array_equal(at_strength(plain, full, 1.0)[k], full[k])
        np.testing.assert_array_equal(at_strength(plain, full, 0.0)[k], plain[k])


def test_device_auto_picks_what_torch_sees():
    from effdeploy.errors import EffdeployError
    from effdeploy.precision.reconstruct import resolve_device

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(EffdeployError, match="--device 'tpu'"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="torch sees a CUDA GPU here, so --device cuda is valid")
def test_device_cuda_without_a_gpu_is_refused_in_one_line(tmp_path):
    from cli_errors import assert_one_line_error
    from conftest import run_cli

    out = tmp_path / "b"
    line = assert_one_line_error(run_cli("build", "--phi", "0", "--variant", "lite", "--weights", "pretrained",
                                         "--precision", "int8", "--device", "cuda", "--out", str(out)),
                                 "--device cuda", "no CUDA GPU")
    assert "--device cpu" in line and not out.exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU that torch can see (none on this machine)")
@pytest.mark.parametrize("gpu", [True, False], ids=["tensorrt", "ort-cpu"])
def test_correction_on_cuda_matches_the_cpu(lite0, gpu):
    """The same corrections on the GPU (TF32 off while they run) as on the CPU, up to float sums.

    The tensorrt twin quantizes only the inputs of Conv/Gemm/Add, and its corrections agree to 4e-6. The ort-cpu
    twin also quantizes every conv output to U8: a sum rounded one ulp apart on the GPU flips a code
    sitting on a tie, and the sequential correction carries the flips on. On an H200 (2026-12-04)
    the layers' errors first parted by 1.1e-3 at the 13th of 50 layers (2 % by the 40th), and the
    INT32 biases by up to 35 % (the classifier's: the mean logit error of 8 images, on a scale of
    s_in * s_w), with or without cuDNN. So there the test holds what the corrections do: the share
    of each layer's error its correction removes within 2 points, and the corrected graphs' logit
    error on images neither fitted on within 10 % of each other's, both below the uncorrected one's."""
    fp32, _, images = lite0
    twin, _ = _twin(lite0, gpu)
    tf32 = torch.backends.cudnn.allow_tf32
    q_cpu, r_cpu = correct_biases(twin, fp32, images[:8], fp16_scales=gpu)
    q_gpu, r_gpu = correct_biases(twin, fp32, images[:8], fp16_scales=gpu, device="cuda")
    assert torch.backends.cudnn.allow_tf32 == tf32  # restored
    a, b = learned_initializers(q_cpu), learned_initializers(q_gpu)
    assert a.keys() == b.keys() and len(a) == 50 and len(r_cpu) == len(r_gpu) == 50
    if gpu:
        for u, v in zip(r_cpu, r_gpu):
            assert abs(u.relative_error_after - v.relative_error_after) <= 1e-3 * max(u.relative_error_after, 1e-3)
        for k in a:
            x, y = a[k].astype(np.float64), b[k].astype(np.float64)
            assert np.linalg.norm(x - y) <= 1e-3 * max(np.linalg.norm(x), 1.0), k
        return
    for u, v in zip(r_cpu, r_gpu):  # what each correction removed of the error it found
        gain_cpu = u.relative_error_after / max(u.relative_error_before, 1e-12)
        gain_gpu = v.relative_error_after / max(v.relative_error_before, 1e-12)
        assert abs(gain_cpu - gain_gpu) <= 0.02, (u.layer, gain_cpu, gain_gpu)
    held = images[8:]
    ref = ort_logits(fp32, held)
    plain = relative_mse(ref, ort_logits(twin, held, optimize=False))
    on_cpu = relative_mse(ref, ort_logits(apply_initializers(twin, a), held, optimize=False))
    on_gpu = relative_mse(ref, ort_logits(apply_initializers(twin, b), held, optimize=False))
    assert max(on_cpu, on_gpu) < plain and abs(on_gpu - on_cpu) <= 0.1 * on_cpu, (plain, on_cpu, on_gpu)


def test_quantizer_output_and_drift_are_cached(lite0, tmp_path, monkeypatch):
    """The same graph, ranges and config give ORT's quantizer output from the cache (byte for byte),
    another config runs the quantizer; the same two graphs on the same pixels give the cached drift."""
    import effdeploy.precision.qdq as precision
    import effdeploy.verify.repair as repair

    monkeypatch.setenv("EFFDEPLOY_CACHE_DIR", str(tmp_path))
    fp32, ranges, images = lite0
    cfg = replace(config_for(True, method="max"), fp16_rest=False)
    first = quantize(fp32, ranges["tensorrt"], cfg)
    calls = []
    real = precision._quantize_static
    monkeypatch.setattr(precision, "_quantize_static", lambda *a: calls.append(1) or real(*a))
    again = quantize(fp32, ranges["tensorrt"], cfg)
    assert calls == [] and again.SerializeToString(deterministic=True) == first.SerializeToString(deterministic=True)
    kept = quantize(fp32, ranges["tensorrt"], replace(cfg, keep_blocks=("blocks.0.0",)))
    assert calls == [1] and len(kept.graph.node) != len(first.graph.node)
    rows = repair.drift_report(fp32, first, images[:4])
    real_rows = repair._drift_rows
    monkeypatch.setattr(repair, "_drift_rows", lambda *a: pytest.fail("drift measured again"))
    assert repair.drift_report(fp32, first, images[:4]) == rows and len(rows) == 16
    # corrupt entries are misses: computed again, never loaded, never a crash
    for entry in (tmp_path / "quantized").glob("*.onnx"):
        entry.write_bytes(b"\x0a\xff not a model")
    again = quantize(fp32, ranges["tensorrt"], cfg)
    assert calls == [1, 1] and again.SerializeToString(deterministic=True) == first.SerializeToString(deterministic=True)
    for entry in (tmp_path / "drift").glob("*.json"):
        entry.write_text('[{"block": "blocks.0.0", "relative_error":')
    monkeypatch.setattr(repair, "_drift_rows", real_rows)
    assert repair.drift_report(fp32, first, images[:4]) == rows


class _Recomputed(Exception):
    """Raised instead of recomputing: the cache missed."""


def test_reconstruction_cache_hit_miss_and_corruption(lite0, tmp_path, monkeypatch):
    """Same inputs give the stored corrections back; a change to any part of the key (either graph,
    one pixel, the recipe, the FP16 scales) recomputes; a corrupt entry is recomputed and rewritten."""
    import effdeploy.precision.reconstruct as R

    monkeypatch.setenv("EFFDEPLOY_CACHE_DIR", str(tmp_path))
    fp32, ranges, images = lite0
    twin, _ = _twin(lite0, True)
    recipe = Recipe(images=4, device="cpu")
    first = R.cached_reconstruction(twin, fp32, images, recipe, quiet=True)
    again = R.cached_reconstruction(twin, fp32, images, recipe, quiet=True)
    assert not first.cache_hit and again.cache_hit
    assert first.initializers.keys() == again.initializers.keys() and first.layers == again.layers
    assert all(np.array_equal(first.initializers[k], again.initializers[k]) for k in first.initializers)

    real = R.correct_biases
    def recompute(*args, **kwargs):
        raise _Recomputed()

    monkeypatch.setattr(R, "correct_biases", recompute)
    monkeypatch.setattr(R, "learn_rounding", recompute)
    other_pixels = images.copy()
    other_pixels[0, 0, 0, 0] += 1e-3
    other_twin = quantize(fp32, ranges["tensorrt"], replace(config_for(True, method="max"), fp16_rest=False,
                                                            quantize_classifier=False))
    other_fp32 = onnx.ModelProto()
    other_fp32.CopyFrom(fp32)
    w = other_fp32.graph.initializer[0]
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) + np.float32(1e-3), w.name))  # one weight
    for args, kw in [((other_twin, fp32, images, recipe), {}), ((twin, other_fp32, images, recipe), {}),
                     ((twin, fp32, other_pixels, recipe), {}), ((twin, fp32, images, replace(recipe, images=3)), {}),
                     ((twin, fp32, images, replace(recipe, mode="thorough")), {}),
                     ((twin, fp32, images, recipe), {"fp16_scales": True})]:
        with pytest.raises(_Recomputed):
            R.cached_reconstruction(*args, quiet=True, **kw)
    assert R.cached_reconstruction(twin, fp32, images, recipe, quiet=True).cache_hit  # nothing above stored

    entries = list((tmp_path / "reconstruction").glob("*.npz"))
    assert len(entries) == 1
    entries[0].write_bytes(entries[0].read_bytes()[:200])
    with pytest.raises(_Recomputed):
        R.cached_reconstruction(twin, fp32, images, recipe, quiet=True)
    monkeypatch.setattr(R, "correct_biases", real)
    redone = R.cached_reconstruction(twin, fp32, images, recipe, quiet=True)
    assert not redone.cache_hit and all(np.array_equal(redone.initializers[k], first.initializers[k])
                                        for k in first.initializers)
    assert R.cached_reconstruction(twin, fp32, images, recipe, quiet=True).cache_hit


def _plain_ort(model: onnx.ModelProto, x: np.ndarray, optimize: bool = True) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_method_selection_cache_hit_miss_and_corruption(lite0, tmp_path, monkeypatch):
    """The method choice is measured once per calibration and config; another config, another
    calibration or a corrupt record measures again (the images are only loaded when it does)."""
    from effdeploy.calibration import plan_calibration, run_calibrations
    from effdeploy.model.network import build_model
    from effdeploy.precision.qdq import calibration_tensors
    from effdeploy.precision.int8_stage import _selection_path, choose_method

    monkeypatch.setenv("EFFDEPLOY_CACHE_DIR", str(tmp_path))
    fp32, _, images = lite0
    cfg = config_for(True)
    pre = build_model(0, "lite", resolution=RES).spec.preprocessing
    outcomes = run_calibrations(fp32, calibration_tensors(fp32, cfg), plan_calibration(None, 12, 0), pre,
                                methods=("max", "percentile"), quiet=True)
    loads = []

    def data():
        loads.append(1)
        return images[:4]

    chosen, scores = choose_method(fp32, outcomes, cfg, data, quiet=True)
    # The scores recomputed here from the logits themselves (plain ONNX Runtime sessions, the error
    # written out), so a choice by the wrong measure or the wrong end of it fails.
    ref = _plain_ort(fp32, images[:4]).astype(np.float64)
    ours = {}
    for m, outcome in outcomes.items():
        twin = quantize(fp32, outcome.artifact.ranges, replace(cfg, method=m, fp16_rest=False))
        diff = _plain_ort(twin, images[:4], optimize=False).astype(np.float64) - ref
        ours[m] = float(np.sum(diff * diff) / np.sum(ref * ref))
    assert loads == [1] and set(scores) == {"max", "percentile"}
    assert all(scores[m] == pytest.approx(ours[m], rel=1e-6) for m in ours)
    assert chosen == sorted(ours, key=lambda m: ours[m])[0]
    assert choose_method(fp32, outcomes, cfg, data, quiet=True) == (chosen, scores) and loads == [1]
    choose_method(fp32, outcomes, replace(cfg, quantize_stem=False), data, quiet=True)
    assert loads == [1, 1]
    fewer = {"max": outcomes["max"], "entropy": outcomes["percentile"]}  # another set of methods
    choose_method(fp32, fewer, cfg, data, quiet=True)
    assert loads == [1, 1, 1]
    _selection_path(outcomes, cfg).write_text("{not json")
    assert choose_method(fp32, outcomes, cfg, data, quiet=True) == (chosen, scores) and loads == [1, 1, 1, 1]


def test_cpu_dialect_timing_cache_hit_miss_and_corruption(tmp_path, monkeypatch):
    """The activation forms' timings taken before for the same ranges on this machine are reused;
    other ranges, another config, or a corrupt, incomplete or foreign record are misses (timed again,
    never a crash). A record of the old shape (with the form chosen then) still gives its timings:
    the form is chosen again from them."""
    from effdeploy.precision.int8_stage import _dialect_path, _load_dialect, _store_dialect, _write_json

    monkeypatch.setenv("EFFDEPLOY_CACHE_DIR", str(tmp_path))
    cfg = replace(config_for(False), activations="uint8")
    _store_dialect("ranges-a", cfg, {"U8S8": 3.0, "S8S8": 4.0, "fp32": 5.0})
    assert _load_dialect("ranges-a", cfg) == {"U8S8": 3.0, "S8S8": 4.0, "fp32": 5.0}
    assert _load_dialect("ranges-b", cfg) is None
    assert _load_dialect("ranges-a", replace(cfg, quantize_stem=False)) is None
    assert _load_dialect("ranges-a", replace(cfg, activations="int8")) is not None  # the form is the answer, not the key
    path = _dialect_path("ranges-a", cfg)
    _write_json(path, {"timings_ms": {"U8S8": 3.1, "S8S8": 3.0, "fp32": 5.0}, "activations": "int8"})
    assert _load_dialect("ranges-a", cfg) == {"U8S8": 3.1, "S8S8": 3.0, "fp32": 5.0}
    for bad in ({"timings_ms": {"U8S8": "fast", "S8S8": 1.0, "fp32": 2.0}}, {"timings_ms": {"U8S8": 1.0, "fp32": 2.0}},
                {"timings_ms": {"U8S8": 1.0, "S8S8": 0.0, "fp32": 2.0}}, {"timings_ms": {"U8S8": 1.0, "S8S8": float("nan"),
                                                                                     "fp32": 2.0}}, [], None):
        _write_json(path, bad)
        assert _load_dialect("ranges-a", cfg) is None, bad
    path.write_text("{not json")  # behind the cache's back: a torn or foreign file
    assert _load_dialect("ranges-a", cfg) is None


@pytest.mark.parametrize("u8s8, s8s8, chosen", [
    (5.0, 5.0, "uint8"), (5.0, 4.6, "uint8"), (4.6, 5.0, "uint8"),  # within the margin: the more accurate form
    (5.0, 4.5, "int8"), (5.0, 2.0, "int8"),  # S8S8 clearly faster: taken
])
def test_activation_form_needs_a_clear_lead_to_leave_the_preferred_one(u8s8, s8s8, chosen):
    """U8S8 (ort-cpu's preferred, more accurate form) stays unless S8S8 timed at least 10 % faster:
    a near tie flipped between builds on one machine and with it the build's accuracy."""
    from effdeploy.precision.int8_stage import pick_activations

    assert pick_activations({"U8S8": u8s8, "S8S8": s8s8, "fp32": 6.0}, ("uint8", "int8")) == chosen
