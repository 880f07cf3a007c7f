"""Calibrators on tiny real ONNX models, checked against numpy on the very same activations."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from effdeploy.calibration import (
    METHODS, calibrate, calibrate_with_ort, collect_statistics, entropy_amax, mse_amax,
    per_channel_weight_scales, ranges_from_statistics, to_tensors_data,
)
from effdeploy.calibration.calibrators import STORE_BINS
from effdeploy.errors import EffdeployError

TENSORS = ["input", "conv1", "relu1", "conv2", "sig"]


def tiny_model(opset: int = 18, batch: int | str = "N", size: int = 12) -> onnx.ModelProto:
    """input -> Conv(3->8) -> Relu -> Conv(8->4) -> Sigmoid -> GlobalAveragePool."""
    rng = np.random.default_rng(42)
    w1 = numpy_helper.from_array(rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.normal(0, 0.2, (8,)).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.4, (4, 8, 3, 3)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["conv1"], pads=[1, 1, 1, 1], name="c1"),
        helper.make_node("Relu", ["conv1"], ["relu1"], name="r1"),
        helper.make_node("Conv", ["relu1", "w2"], ["conv2"], pads=[1, 1, 1, 1], name="c2"),
        helper.make_node("Sigmoid", ["conv2"], ["sig"], name="s"),
        helper.make_node("GlobalAveragePool", ["sig"], ["out"], name="gap"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch, 4, 1, 1])],
        initializer=[w1, b1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def activations(model: onnx.ModelProto, data: np.ndarray, names=TENSORS) -> dict[str, np.ndarray]:
    """The reference: every tensor of the original model on the same data, through ORT."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.output[:]
    for n in names:
        m.graph.output.append(helper.make_tensor_value_info(n, TensorProto.FLOAT, None))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = sess.run(list(names), {"input": data})
    return dict(zip(names, outs))


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((24, 3, 12, 12)).astype(np.float32)
    x[5, 1, 3, 3] = 9.0  # a rare outlier the percentile/entropy methods should clip
    return x


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return tiny_model()


@pytest.fixture(scope="module")
def ref(model: onnx.ModelProto, data: np.ndarray) -> dict[str, np.ndarray]:
    return activations(model, data)


@pytest.fixture(scope="module")
def full_stats(model, data):
    return collect_statistics(model, TENSORS, data, batch_size=5, samples_per_image=None)


# --- reference implementations (loops, as written in NVIDIA's pytorch-quantization) -----------


def ref_entropy_kl(hist: np.ndarray, num_quantized_bins: int = 128, start_bin: int = 128) -> np.ndarray:
    """KL divergence per candidate i (= start_bin .. len(hist)), the loop version."""
    bins = hist.astype(np.float64).copy()
    bins[0] = bins[1]
    divergences = []
    for i in range(start_bin, len(bins) + 1):
        space = np.linspace(0, i, num=num_quantized_bins + 1)
        digitized = np.digitize(np.arange(i), space) - 1
        digitized[bins[:i] == 0] = -1
        sums = np.zeros(num_quantized_bins)
        keep = digitized != -1
        np.add.at(sums, digitized[keep], bins[:i][keep])
        counts = Counter(digitized[keep].tolist())
        for k, v in counts.items():
            sums[k] /= v
        q = np.where(keep, sums[np.maximum(digitized, 0)], 0.0)
        p = bins[:i].copy()
        p[-1] += bins[i:].sum()
        p, q = p / p.sum(), q / q.sum()
        if np.any((p > 0) & (q == 0)):
            divergences.append(np.inf)
            continue
        nz = p > 0
        divergences.append(float(np.sum(p[nz] * np.log(p[nz] / q[nz]))))
    return np.array(divergences)


def ref_entropy_amax(hist: np.ndarray, edges: np.ndarray) -> tuple[float, np.ndarray]:
    kl = ref_entropy_kl(hist)
    last = len(kl) - 1 - int(np.argmin(kl[::-1]))
    return float(edges[last + 128]), kl


def ref_mse(hist: np.ndarray, edges: np.ndarray, start_bin: int = 128) -> np.ndarray:
    centers = 0.5 * (edges[1:] + edges[:-1])
    out = []
    for i in range(start_bin, len(centers)):
        scale = 127.0 / centers[i]
        q = np.clip(np.round(centers * scale), -127, 127) / scale
        out.append(float(((q - centers) ** 2 * hist).sum()))
    return np.array(out)


# --- the calibrators ---------------------------------------------------------------------------


@pytest.mark.parametrize("samples_per_image", [None, 37])
def test_min_max_are_exact_even_when_sampling(model, data, ref, samples_per_image) -> None:
    stats = collect_statistics(model, TENSORS, data, batch_size=7, samples_per_image=samples_per_image)
    result = ranges_from_statistics(stats, "max")
    for t in TENSORS:
        r = result.ranges[t]
        assert r.min == float(ref[t].min()) and r.max == float(ref[t].max())
        assert r.amax == float(np.abs(ref[t]).max())
    assert result.image_count == 24 and result.method == "max"
    per_image = {t: ref[t][0].size for t in TENSORS}
    for t in TENSORS:
        expected = 24 * per_image[t] if samples_per_image is None or per_image[t] <= 37 else None
        if expected is not None:
            assert stats.tensors[t].samples == expected
        else:  # strided: about 37 per image, never more than asked
            assert 24 * 37 * 0.8 <= stats.tensors[t].samples <= 24 * 38


def test_histogram_is_the_numpy_histogram(full_stats, ref) -> None:
    for t in ("conv1", "relu1", "sig"):
        ts = full_stats.tensors[t]
        x = ref[t].ravel().astype(np.float64)
        assert ts.samples == x.size
        # the stored signed histogram: floor(x / w) over [-range, range)
        w = ts.bin_width
        idx = np.clip(np.floor(x / w).astype(np.int64), -STORE_BINS, STORE_BINS - 1)
        expected = np.bincount(idx + STORE_BINS, minlength=2 * STORE_BINS)
        got = np.concatenate((ts.negative[::-1], ts.positive))
        assert np.abs(got - expected).sum() <= 0.005 * x.size  # float32 rounding at bin edges only
        counts, edges = ts.abs_histogram(2048)
        direct, _ = np.histogram(np.abs(x), bins=2048, range=(0, ts.amax))
        assert counts.sum() == pytest.approx(x.size)
        # re-binned from the >= 2x finer stored grid, splitting a stored bin proportionally at each
        # edge: the cumulative counts differ by at most one stored bin's count
        finest = (ts.positive + ts.negative).max()
        assert np.abs(np.cumsum(counts) - np.cumsum(direct)).max() <= finest + 1e-6


def test_percentile_matches_numpy(full_stats, ref) -> None:
    result = ranges_from_statistics(full_stats, "percentile", 99.9)
    assert result.parameters == {"percentile": 99.9, "samples_per_image": None}
    for t in TENSORS:
        x = ref[t].ravel().astype(np.float64)
        ts = full_stats.tensors[t]
        w = ts.bin_width
        r = result.ranges[t]
        # a histogram quantile lands between the order statistics around rank q * n
        ordered = np.sort(np.abs(x))
        k = 0.999 * x.size
        assert ordered[int(np.floor(k)) - 1] - w <= r.amax <= ordered[min(int(np.ceil(k)), x.size - 1)] + w
        assert r.amax == pytest.approx(np.percentile(np.abs(x), 99.9), rel=0.02)
        # the clipped range: the data's own end where it lies inside +-amax, else the clip
        assert r.min == (x.min() if x.min() >= -r.amax else -r.amax)
        assert r.max == (x.max() if x.max() <= r.amax else r.amax)
    assert result.ranges["input"].max == result.ranges["input"].amax < 4.5 < 9.0  # the injected outlier is clipped


def test_entropy_on_a_model_matches_the_loop_reference(full_stats, ref) -> None:
    result = ranges_from_statistics(full_stats, "entropy")
    for t in ("input", "conv1", "conv2"):
        x = np.abs(ref[t].ravel().astype(np.float64))
        hist, edges = np.histogram(x, bins=2048, range=(0, x.max()))
        amax, kl = ref_entropy_amax(hist, edges)
        got = result.ranges[t].amax
        # same algorithm on a histogram re-binned from the finer stored one: the chosen threshold
        # sits where the reference KL is within 2 % of its minimum (the KL curve is flat there)
        k = int(round(got / edges[1])) - 128
        assert kl[k] <= kl.min() * 1.02 + 1e-9, (t, got, amax)
        r = result.ranges[t]
        lo, hi = float(ref[t].min()), float(ref[t].max())
        assert r.min == (lo if lo >= -got else -got) and r.max == (hi if hi <= got else got)
    assert result.ranges["input"].amax < 8.0  # the lone 9.0 does not set the range


def test_mse_on_a_model_matches_the_exhaustive_reference(full_stats, ref) -> None:
    result = ranges_from_statistics(full_stats, "mse")
    for t in ("input", "relu1", "conv2"):
        x = np.abs(ref[t].ravel().astype(np.float64))
        hist, edges = np.histogram(x, bins=2048, range=(0, x.max()))
        errs = ref_mse(hist, edges)
        centers = 0.5 * (edges[1:] + edges[:-1])
        got = result.ranges[t].amax
        k = int(np.argmin(np.abs(centers - got))) - 128
        assert errs[k] <= errs.min() * 1.02, t


def _histograms() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    gauss = np.histogram(np.abs(rng.standard_normal(200_000)), 2048)[0]
    laplace = np.histogram(np.abs(rng.laplace(size=200_000)), 2048)[0]
    relu = np.histogram(np.maximum(rng.standard_normal(100_000), 0), 2048)[0]  # spike at 0
    sparse = np.histogram(np.abs(rng.standard_normal(3000)) ** 3, 2048)[0]  # many empty bins
    bimodal = np.histogram(np.abs(np.concatenate([rng.normal(0, 1, 50_000), rng.normal(6, 0.5, 2000)])), 2048)[0]
    small = np.histogram(np.abs(rng.standard_normal(5000)), 300)[0]
    return [gauss, laplace, relu, sparse, bimodal, small]


@pytest.mark.parametrize("case", range(6))
def test_entropy_amax_is_the_loop_reference(case: int) -> None:
    hist = _histograms()[case]
    edges = np.linspace(0, 3.0, hist.size + 1)
    expected, kl = ref_entropy_amax(hist, edges)
    got = entropy_amax(hist, edges)
    k = int(round(got / edges[1])) - 128
    assert kl[k] == pytest.approx(kl.min(), rel=1e-9, abs=1e-12)  # the same minimum
    assert got == expected or np.isclose(kl[k], kl[int(round(expected / edges[1])) - 128], rel=1e-9)


@pytest.mark.parametrize("case", range(6))
def test_mse_amax_is_near_the_exhaustive_optimum(case: int) -> None:
    hist = _histograms()[case]
    edges = np.linspace(0, 3.0, hist.size + 1)
    errs = ref_mse(hist, edges)
    centers = 0.5 * (edges[1:] + edges[:-1])
    got = mse_amax(hist, edges)
    k = int(np.argmin(np.abs(centers - got))) - 128
    assert errs[k] <= errs.min() * 1.01


def test_histogram_range_grows_with_later_batches(model) -> None:
    """Later images 16x larger: the histogram doubles its range and still matches numpy."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((16, 3, 12, 12)).astype(np.float32)
    x *= np.geomspace(1, 16, 16, dtype=np.float32)[:, None, None, None]
    stats = collect_statistics(model, ["input", "conv1"], x, batch_size=2, samples_per_image=None)
    ref = activations(model, x, ["input", "conv1"])
    for t in ("input", "conv1"):
        ts = stats.tensors[t]
        assert ts.samples == ref[t].size == int(ts.positive.sum() + ts.negative.sum())
        assert ts.bin_width * STORE_BINS >= ts.amax > ts.bin_width * STORE_BINS / 2
        r = ranges_from_statistics(stats, "percentile", 99.0).ranges[t]
        assert r.amax == pytest.approx(np.percentile(np.abs(ref[t]), 99.0), rel=0.01)


def test_fixed_batch_model_pads_and_drops(data) -> None:
    model = tiny_model(batch=4)
    stats = collect_statistics(model, TENSORS, data[:10], samples_per_image=None)
    ref = activations(tiny_model(), data[:10])
    for t in TENSORS:
        ts = stats.tensors[t]
        assert ts.min == float(ref[t].min()) and ts.max == float(ref[t].max())
        assert ts.samples == ref[t].size  # the two padding images are not counted
    assert stats.image_count == 10


def test_opset13_graph_gives_the_same_statistics(model, data, full_stats) -> None:
    stats = collect_statistics(tiny_model(opset=13), TENSORS, data, batch_size=5, samples_per_image=None)
    for t in TENSORS:
        a, b = stats.tensors[t], full_stats.tensors[t]
        assert (a.min, a.max) == (b.min, b.max)
        np.testing.assert_array_equal(a.positive, b.positive)


def test_model_path_and_calibrate_wrapper(tmp_path, model, data, ref) -> None:
    path = tmp_path / "tiny.onnx"
    onnx.save(model, str(path))
    result = calibrate(path, ["relu1", "sig"], data, method="entropy", quiet=True)
    assert set(result.ranges) == {"relu1", "sig"}
    assert result.ranges["relu1"].min == 0.0  # post-ReLU stays non-negative for uint8
    assert 0 <= result.ranges["sig"].min <= result.ranges["sig"].max <= 1.0
    assert result.parameters == {"num_bins": 2048, "num_quantized_bins": 128, "start_bin": 128,
                                 "samples_per_image": 32768}  # TensorRT's entropy settings, and our sampling


def test_every_method_gives_consistent_ranges(full_stats) -> None:
    for method in METHODS:
        result = ranges_from_statistics(full_stats, method)
        for t, r in result.ranges.items():
            ts = full_stats.tensors[t]
            assert ts.min <= r.min <= r.max <= ts.max
            assert 0 < r.amax <= ts.amax
            assert r.amax >= max(-r.min, r.max) - 1e-6


def test_agrees_with_onnxruntime_calibrators(tmp_path, model, data, ref) -> None:
    path = tmp_path / "tiny.onnx"
    onnx.save(model, str(path))
    ours = collect_statistics(path, TENSORS, data, samples_per_image=None)
    theirs = calibrate_with_ort(path, TENSORS, data, "max", workdir=tmp_path)
    mine = ranges_from_statistics(ours, "max")
    for t in ("conv1", "relu1", "conv2", "sig"):  # ORT calibrates node inputs/outputs
        assert (mine.ranges[t].min, mine.ranges[t].max) == pytest.approx(
            (theirs.ranges[t].min, theirs.ranges[t].max), rel=1e-6
        )
    pct = calibrate_with_ort(path, TENSORS, data, "percentile", percentile=99.9, workdir=tmp_path)
    mine = ranges_from_statistics(ours, "percentile", 99.9)
    for t in ("conv1", "relu1", "conv2"):
        # ORT reports the lower edge of its 2048-bin histogram's bin: one bin of slack
        assert mine.ranges[t].amax == pytest.approx(pct.ranges[t].amax, rel=0.01, abs=ours.tensors[t].amax / 1000)
    with pytest.raises(EffdeployError, match="no mse"):
        calibrate_with_ort(path, TENSORS, data, "mse")


def test_nan_activations_are_reported() -> None:
    graph = helper.make_graph(
        [helper.make_node("Sqrt", ["input"], ["root"]), helper.make_node("Relu", ["root"], ["out"])],
        "nan",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3, 4, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    x = -np.ones((2, 3, 4, 4), np.float32)
    with pytest.raises(EffdeployError, match="NaN or infinite"):
        collect_statistics(model, ["root"], x)


def test_bad_inputs_are_one_line_errors(model, data) -> None:
    with pytest.raises(EffdeployError, match="not in the model"):
        collect_statistics(model, ["conv1", "nope"], data)
    with pytest.raises(EffdeployError, match="initializer"):
        collect_statistics(model, ["w1"], data)
    with pytest.raises(EffdeployError, match="calibration images are 3x16x16 but the model input is 3x12x12"):
        collect_statistics(model, ["conv1"], np.zeros((2, 3, 16, 16), np.float32))
    with pytest.raises(EffdeployError, match="method must be one of"):
        calibrate(model, ["conv1"], data, method="kl")
    with pytest.raises(EffdeployError, match="percentile"):
        calibrate(model, ["conv1"], data, method="percentile", percentile=101)
    with pytest.raises(EffdeployError, match="no tensors"):
        collect_statistics(model, [], data)
    with pytest.raises(EffdeployError, match="non-empty"):
        collect_statistics(model, ["conv1"], np.zeros((0, 3, 12, 12), np.float32))
    with pytest.raises(EffdeployError, match="does not exist"):
        collect_statistics("/nonexistent/model.onnx", ["conv1"], data)
    shaped = onnx.ModelProto()
    shaped.CopyFrom(model)
    shaped.graph.node.append(helper.make_node("Shape", ["relu1"], ["shape1"]))
    with pytest.raises(EffdeployError, match="shape1 is a int64 tensor, not a float activation"):
        collect_statistics(shaped, ["conv1", "shape1"], data)


def test_per_channel_weight_scales() -> None:
    """Symmetric INT8 per output channel: the largest magnitude maps to 127; an all-zero channel
    gets scale 1 (any scale quantizes it exactly, and 0 would divide by zero)."""
    rng = np.random.default_rng(1)
    w = rng.uniform(-0.5, 0.5, (3, 2, 3, 3)).astype(np.float32)
    w[0, 1, 2, 0], w[1], w[2, 0, 0, 0] = 1.27, 0.0, -2.54  # channel maxima 1.27, 0, 2.54 by construction
    s = per_channel_weight_scales(w)
    np.testing.assert_allclose(s, [0.01, 1.0, 0.02], rtol=1e-6)
    assert s.dtype == np.float32 and s.shape == (3,)
    gemm = rng.uniform(-0.5, 0.5, (4, 2)).astype(np.float32)  # MatMul weights: per output column
    gemm[3, 0], gemm[1, 1] = -0.635, 3.81
    np.testing.assert_allclose(per_channel_weight_scales(gemm, axis=1), [0.005, 0.03], rtol=1e-6)
    q = np.round(w / s[:, None, None, None])
    assert (q[0, 1, 2, 0], q[2, 0, 0, 0]) == (127, -127) and np.abs(q).max() == 127


def test_to_tensors_data_dialects(full_stats) -> None:
    result = ranges_from_statistics(full_stats, "entropy")
    cpu = to_tensors_data(result, "cpu")
    gpu = to_tensors_data(result, "gpu")
    r = result.ranges["conv1"]
    assert tuple(float(v) for v in cpu["conv1"].range_value) == pytest.approx((r.min, r.max))
    assert tuple(float(v) for v in gpu["conv1"].range_value) == pytest.approx((-r.amax, r.amax))
    with pytest.raises(EffdeployError):
        to_tensors_data(result, "npu")
