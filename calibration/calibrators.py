"""Activation-range calibrators: max, percentile, entropy (TensorRT-style KL) and mse.

One ONNX Runtime pass collects, for every requested tensor, its exact min/max and a histogram;
all four methods are then derived from those statistics in milliseconds, so switching methods
(or caching all of them) never costs another pass.

Why not ONNX Runtime's calibrators (``onnxruntime.quantization.calibrate``)? They are several times
slower, and their entropy search does not finish within a build (``bench/calibration_speed.py``;
figures in docs/int8.md).

ORT's histogram calibrators run the augmented model with graph optimisations disabled, copy every
calibrated activation of every image out of the session and keep a whole data-reader pass of them
in memory, re-histogram with ``np.histogram`` and search the entropy threshold in Python loops
(over bins that keep growing). Here the augmented graph itself reduces each tensor to per-image
min/max (``ReduceMin``/``ReduceMax``, exact, multi-threaded inside ORT) plus a deterministic
strided sample (``Flatten`` + ``Slice`` with a prime step, so samples walk across channels and rows
without aliasing); only those small tensors leave the session, and ``np.bincount`` accumulates
them into a fixed-size signed histogram whose range doubles (an exact merge of bin pairs) when a
batch exceeds it. Memory is bounded by one batch. Agreement (|d amax| median / p90 / max, Lite0):
max identical to ORT's; percentile 0.05 % / 0.98 % / 2.75 %; ORT's entropy is a different estimator
(signed histogram, symmetric windows, 64 levels a side), so ours follows TensorRT's instead and is
tested against a loop transcription of NVIDIA's pytorch-quantization. ORT's calibrators remain the
reference the benchmark and tests compare against (:func:`calibrate_with_ort`), and
:func:`to_tensors_data` hands our ranges to ORT's quantizer.

Dialects: TensorRT (GPU) quantizes activations symmetric INT8, range ``[-amax, amax]``; the ORT
CPU dialect uses asymmetric uint8 activations, range ``[min, max]``. Every method returns all
three numbers per tensor.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from effdeploy.errors import EffdeployError, first_line
from effdeploy.report import progress
from effdeploy.request import CALIBRATION_METHODS

METHODS: tuple[str, ...] = CALIBRATION_METHODS  # listed where the CLI reads them without numpy
DEFAULT_METHOD = "entropy"
DEFAULT_PERCENTILE = 99.99
NUM_BINS = 2048  # TensorRT's histogram of |x| over [0, amax]
NUM_QUANTIZED_BINS = 128  # int8 levels on one side
START_BIN = 128  # smallest candidate threshold (in bins) for entropy and mse, as in TensorRT
STORE_BINS = 8192  # per sign; the stored histogram is >= 2x finer than the 2048-bin one
DEFAULT_BATCH_SIZE = 8  # as fast as 16-32 (docs/int8.md), half the activation memory
# Elements histogrammed per image and tensor (min/max always see every element): 32768 x 256
# images = 8.4M samples per tensor. Against histograms of every element (|d amax| p90 / max):
# Lite0 (pretrained) percentile 0.9 % / 2.8 %, entropy 0.6 % / 13 %, mse 0.6 % / 5.4 %, for a pass
# 2.9x faster (7.3 s vs 21.3 s); B1 (random weights, heavier tails) entropy 3.1 % / 18 %
# (8192 samples: 7.1 % / 32 %). The every-element mode (samples_per_image=None) remains available.
DEFAULT_SAMPLES_PER_IMAGE = 32768
_INT64_MAX = np.iinfo(np.int64).max


@dataclass(frozen=True)
class TensorRange:
    """A calibrated range: ``[min, max]`` for asymmetric uint8, ``amax`` for symmetric int8."""

    min: float
    max: float
    amax: float

    def to_dict(self) -> dict[str, float]:
        return {"min": self.min, "max": self.max, "amax": self.amax}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "TensorRange":
        return TensorRange(min=float(d["min"]), max=float(d["max"]), amax=float(d["amax"]))


@dataclass(frozen=True, eq=False)
class TensorStatistics:
    """Exact min/max of one tensor plus a signed histogram of (sampled) values.

    ``positive[k]`` counts samples x in [k*w, (k+1)*w), ``negative[k]`` those in
    [-(k+1)*w, -k*w), ``w = bin_width``; so ``positive + negative`` is a histogram of |x|.
    """

    name: str
    min: float
    max: float
    bin_width: float
    positive: np.ndarray
    negative: np.ndarray
    samples: int

    @property
    def amax(self) -> float:
        return max(abs(self.min), abs(self.max))

    def abs_histogram(self, num_bins: int = NUM_BINS) -> tuple[np.ndarray, np.ndarray]:
        """TensorRT's geometry: ``num_bins`` bins of |x| over [0, amax] (counts, edges).

        Re-binned from the finer stored histogram assuming values uniform within a stored bin.
        """
        amax = self.amax
        edges = np.linspace(0.0, amax, num_bins + 1)
        if amax <= 0 or self.samples == 0:
            counts = np.zeros(num_bins)
            counts[0] = float(self.samples)
            return counts, edges
        cum = np.concatenate(([0.0], np.cumsum(self.positive + self.negative, dtype=np.float64)))
        at = np.interp(edges / self.bin_width, np.arange(cum.size, dtype=np.float64), cum)
        at[-1] = cum[-1]  # every sample lies within [0, amax]
        return np.diff(at), edges


@dataclass(frozen=True, eq=False)
class ActivationStatistics:
    """What one calibration pass observed; every method is derived from it."""

    tensors: Mapping[str, TensorStatistics]
    image_count: int
    samples_per_image: int | None
    seconds: float = 0.0


@dataclass(frozen=True)
class CalibrationResult:
    """Per-tensor ranges from one method, with the parameters that produced them."""

    method: str
    parameters: Mapping[str, Any]
    ranges: Mapping[str, TensorRange]
    image_count: int
    seconds: float = field(default=0.0, compare=False)


# --- public API ------------------------------------------------------------------------------


def method_parameters(
    method: str,
    percentile: float = DEFAULT_PERCENTILE,
    samples_per_image: int | None = DEFAULT_SAMPLES_PER_IMAGE,
) -> dict[str, Any]:
    """The parameters that determine a method's result (recorded in calibration.json and the cache key)."""
    check_method(method, percentile)
    params: dict[str, Any] = {}
    if method == "percentile":
        params["percentile"] = float(percentile)
    if method in ("entropy", "mse"):
        params["num_bins"] = NUM_BINS
        params["num_quantized_bins"] = NUM_QUANTIZED_BINS
        params["start_bin"] = START_BIN
    if method != "max":
        params["samples_per_image"] = None if samples_per_image is None else int(samples_per_image)
    return params


def check_method(method: str, percentile: float = DEFAULT_PERCENTILE) -> None:
    if method not in METHODS:
        raise EffdeployError(f"calibration method must be one of {', '.join(METHODS)} (got {method!r})")
    if method == "percentile":
        try:
            p = float(percentile)
        except (TypeError, ValueError):
            raise EffdeployError(f"percentile must be a number in (50, 100] (got {percentile!r})") from None
        if not (50.0 < p <= 100.0):
            raise EffdeployError(f"percentile must be in (50, 100] (got {percentile!r}); e.g. 99.99")


def collect_statistics(
    model: Any,
    tensor_names: Sequence[str],
    data: Any,
    batch_size: int = DEFAULT_BATCH_SIZE,
    samples_per_image: int | None = DEFAULT_SAMPLES_PER_IMAGE,
    quiet: bool = True,
    threads: int | None = None,
) -> ActivationStatistics:
    """Run the calibration images through the model once; exact min/max and histograms per tensor.

    ``model``: an FP32 ONNX path or ``ModelProto``. ``data``: (N, C, H, W) float32 preprocessed
    images or a :class:`~effdeploy.calibration.sources.CalibrationSet`. ``samples_per_image=None``
    histograms every element (slower; min/max are exact either way).
    """
    import onnxruntime as ort

    start = time.perf_counter()
    images = _as_images(data)
    if not tensor_names:
        raise EffdeployError("no tensors to calibrate")
    names = list(dict.fromkeys(str(t) for t in tensor_names))
    proto = _load_model(model)
    input_name, input_shape = _single_input(proto)
    _check_images(images, input_shape)
    fixed_batch = input_shape[0] if isinstance(input_shape[0], int) and input_shape[0] > 0 else None
    if batch_size < 1:
        raise EffdeployError(f"calibration batch size must be >= 1 (got {batch_size})")
    step = fixed_batch or int(batch_size)
    if samples_per_image is not None and int(samples_per_image) < 1:
        raise EffdeployError(f"samples_per_image must be >= 1 or None (got {samples_per_image})")

    augmented, outputs = _augment(proto, names, samples_per_image)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = int(threads)
    try:
        session = ort.InferenceSession(
            augmented.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"]
        )
    except Exception as e:  # ORT raises its own Fail/InvalidGraph types
        raise EffdeployError(f"ONNX Runtime cannot run the model for calibration: {first_line(e)}") from None
    out_names = [o for t in names for o in outputs[t]]
    accs = {t: _Accumulator(t) for t in names}
    n = images.shape[0]
    starts = range(0, n, step)
    with progress(starts, length=len(starts), label="calibrating", quiet=quiet) as bar:
        for s in bar:
            batch = images[s : s + step]
            valid = batch.shape[0]
            if fixed_batch and valid < fixed_batch:  # pad with real images: min/max stay exact
                reps = np.resize(np.arange(valid), fixed_batch)
                batch = batch[reps]
            results = session.run(out_names, {input_name: np.ascontiguousarray(batch, dtype=np.float32)})
            for k, t in enumerate(names):
                mins, maxs, samples = results[3 * k], results[3 * k + 1], results[3 * k + 2]
                if mins.shape[0] == batch.shape[0] and valid < batch.shape[0]:
                    mins, maxs, samples = mins[:valid], maxs[:valid], samples[:valid]
                accs[t].add(mins, maxs, samples)
    tensors = {t: accs[t].finish() for t in names}
    return ActivationStatistics(
        tensors=tensors,
        image_count=int(n),
        samples_per_image=None if samples_per_image is None else int(samples_per_image),
        seconds=time.perf_counter() - start,
    )


def ranges_from_statistics(
    stats: ActivationStatistics, method: str = DEFAULT_METHOD, percentile: float = DEFAULT_PERCENTILE
) -> CalibrationResult:
    """Derive one method's per-tensor ranges from collected statistics (pure, fast)."""
    check_method(method, percentile)
    start = time.perf_counter()
    ranges = {name: tensor_range(ts, method, percentile) for name, ts in stats.tensors.items()}
    return CalibrationResult(
        method=method,
        parameters=method_parameters(method, percentile, stats.samples_per_image),
        ranges=ranges,
        image_count=stats.image_count,
        seconds=stats.seconds + time.perf_counter() - start,
    )


def calibrate(
    model: Any,
    tensor_names: Sequence[str],
    data: Any,
    method: str = DEFAULT_METHOD,
    percentile: float = DEFAULT_PERCENTILE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    samples_per_image: int | None = DEFAULT_SAMPLES_PER_IMAGE,
    quiet: bool = False,
) -> CalibrationResult:
    """Per-tensor activation ranges of ``model`` on ``data`` by ``method`` (one ORT pass)."""
    check_method(method, percentile)
    stats = collect_statistics(model, tensor_names, data, batch_size, samples_per_image, quiet=quiet)
    return ranges_from_statistics(stats, method, percentile)


def tensor_range(ts: TensorStatistics, method: str, percentile: float = DEFAULT_PERCENTILE) -> TensorRange:
    """One tensor's range by ``method``.

    ``max``: the observed min/max. The others choose ``amax`` (``percentile``: that percentile of
    |x|; ``entropy``/``mse``: from the 2048-bin |x| histogram) and report the observed range
    clipped to ``[-amax, amax]`` as min/max, so both dialects clip at the same place and a
    post-ReLU tensor keeps min 0.
    """
    lo, hi = float(ts.min), float(ts.max)
    amax = ts.amax
    if method == "max" or amax == 0.0 or ts.samples == 0:
        return TensorRange(lo, hi, amax)
    if method == "percentile":
        a = min(_abs_quantile(ts, float(percentile) / 100.0), amax)
        return TensorRange(max(lo, -a), min(hi, a), a)
    counts, edges = ts.abs_histogram(NUM_BINS)
    if method == "entropy":
        a = entropy_amax(counts, edges, NUM_QUANTIZED_BINS, START_BIN)
    elif method == "mse":
        a = mse_amax(counts, edges, NUM_QUANTIZED_BINS - 1, START_BIN)
    else:
        raise EffdeployError(f"unknown calibration method {method!r}")
    return TensorRange(max(lo, -a), min(hi, a), a)


def entropy_amax(
    counts: np.ndarray, edges: np.ndarray, num_quantized_bins: int = NUM_QUANTIZED_BINS, start_bin: int = START_BIN
) -> float:
    """TensorRT's entropy calibration (EntropyCalibration2) on a histogram of |x|.

    For each candidate threshold bin i >= ``start_bin``: P = counts[:i] with everything beyond
    folded into the last bin, Q = counts[:i] merged into ``num_quantized_bins`` levels and spread
    back over its non-empty bins; pick the i with the smallest KL(P || Q) (the last one on ties)
    and return ``edges[i]``. As in NVIDIA's pytorch-quantization reference, bin 0 (exact zeros,
    a spike after ReLU) is replaced by bin 1 first. Vectorised over all candidates with prefix
    sums: a few ms per tensor instead of a Python loop per candidate.
    """
    h = np.asarray(counts, dtype=np.float64).copy()
    n = h.size
    if n < 2 or h.sum() <= 0:
        return float(edges[-1])
    h[0] = h[1]
    total = h.sum()
    if n <= start_bin or total <= 0:
        return float(edges[-1])
    nonzero = h > 0
    c = np.concatenate(([0.0], np.cumsum(h)))
    nz = np.concatenate(([0], np.cumsum(nonzero)))
    hlogh = np.zeros_like(h)
    hlogh[nonzero] = h[nonzero] * np.log(h[nonzero])
    lsum = np.concatenate(([0.0], np.cumsum(hlogh)))

    i = np.arange(start_bin, n + 1)  # candidate thresholds (number of kept bins)
    g = np.arange(num_quantized_bins + 1)
    bounds = (g[None, :] * i[:, None] + num_quantized_bins - 1) // num_quantized_bins  # ceil(g*i/Q)
    s = c[bounds[:, 1:]] - c[bounds[:, :-1]]  # mass per quantized level
    z = nz[bounds[:, 1:]] - nz[bounds[:, :-1]]  # non-empty bins per level
    ci = c[i]
    with np.errstate(divide="ignore", invalid="ignore"):
        log_q = np.where(s > 0, np.log(s) - np.log(np.maximum(z, 1)) - np.log(ci)[:, None], 0.0)
        cross = (s * log_q).sum(axis=1)  # sum_j h_j log q_j over the kept, non-empty bins
        outliers = total - ci
        last = h[i - 1]
        p_last = last + outliers
        # sum_j p_j log p_j (p = h / total, last bin carrying the outliers)
        a_term = (lsum[i - 1] - c[i - 1] * math.log(total)) / total
        a_term += np.where(p_last > 0, (p_last / total) * np.log(np.maximum(p_last, 1e-300) / total), 0.0)
        b_term = (cross + outliers * log_q[:, -1]) / total
        kl = a_term - b_term
    kl = np.where((outliers > 0) & (last <= 0), np.inf, kl)
    kl = np.where(np.isfinite(kl), kl, np.inf)
    best = len(kl) - 1 - int(np.argmin(kl[::-1]))
    return float(edges[i[best]])


def mse_amax(
    counts: np.ndarray, edges: np.ndarray, max_level: int = NUM_QUANTIZED_BINS - 1, start_bin: int = START_BIN
) -> float:
    """The bin center that minimises the histogram-weighted MSE of symmetric fake quantization.

    Candidates are bin centers from ``start_bin`` on (as in pytorch-quantization's mse
    calibrator); searched on a stride-8 grid, then every candidate within 2 grid steps of the best.
    """
    h = np.asarray(counts, dtype=np.float64)
    centers = 0.5 * (edges[1:] + edges[:-1])
    n = centers.size
    if n <= start_bin or h.sum() <= 0:
        return float(centers[-1])
    mask = h > 0
    hc, cc = h[mask], centers[mask]

    def errors(cands: np.ndarray) -> np.ndarray:
        a = centers[cands][:, None]
        scale = max_level / a
        q = np.clip(np.round(cc[None, :] * scale), -max_level, max_level) / scale
        return ((q - cc[None, :]) ** 2 * hc[None, :]).sum(axis=1)

    coarse = np.arange(start_bin, n, 8)
    best = int(coarse[int(np.argmin(errors(coarse)))])
    fine = np.arange(max(start_bin, best - 16), min(n, best + 17))
    return float(centers[int(fine[int(np.argmin(errors(fine)))])])


def per_channel_weight_scales(w: np.ndarray, axis: int = 0, max_level: int = 127) -> np.ndarray:
    """Symmetric per-channel INT8 weight scales ``max|w| / 127`` along ``axis``.

    All-zero channels get scale 1 (any scale represents zero exactly; 0 would divide by zero).
    """
    w = np.asarray(w)
    if w.ndim == 0:
        raise EffdeployError("per-channel weight scales need a tensor with at least one axis")
    axis = axis % w.ndim
    amax = np.abs(w).max(axis=tuple(a for a in range(w.ndim) if a != axis)) if w.ndim > 1 else np.abs(w)
    scales = amax.astype(np.float32) / np.float32(max_level)
    scales[scales == 0] = 1.0
    return scales


def ranges_to_tensors_data(ranges: Mapping[str, Any], method: str, symmetric: bool):
    """ORT's ``TensorsData`` for its quantizer from our ranges: (-amax, amax) for symmetric
    activations, (min, max) for asymmetric ones; an empty range is widened so no scale is zero."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData

    ort_method = {
        "max": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
        "mse": CalibrationMethod.MinMax,
    }[method]
    data = {}
    for name, r in ranges.items():
        lo, hi = (-r.amax, r.amax) if symmetric else (r.min, r.max)
        if hi - lo <= 0:
            lo, hi = lo - 1e-3, hi + 1e-3
        data[name] = TensorData(lowest=np.array(lo, dtype=np.float32), highest=np.array(hi, dtype=np.float32))
    return TensorsData(ort_method, data)


def to_tensors_data(result: CalibrationResult, dialect: str = "cpu"):
    """:func:`ranges_to_tensors_data` of a result: (min, max) for the CPU dialect, (-amax, amax) for the GPU one."""
    if dialect not in ("cpu", "gpu"):
        raise EffdeployError(f"dialect must be 'cpu' or 'gpu' (got {dialect!r})")
    return ranges_to_tensors_data(result.ranges, result.method, symmetric=dialect == "gpu")


def calibrate_with_ort(
    model_path: str | Path,
    tensor_names: Sequence[str],
    data: Any,
    method: str = DEFAULT_METHOD,
    percentile: float = DEFAULT_PERCENTILE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    op_types: Sequence[str] | None = None,
    workdir: str | Path | None = None,
) -> CalibrationResult:
    """ONNX Runtime's own calibrator (``create_calibrator``), as the reference we are measured against.

    ORT picks its tensors by op type (``op_types``); the result keeps ``tensor_names``. Each
    ``collect_data`` call gets one batch: that bounds ORT's memory (it keeps every activation of
    every batch a reader yields) and avoids its failure on batches of unequal size. ``mse`` has
    no ORT counterpart.
    """
    import tempfile

    from onnxruntime.quantization.calibrate import CalibrationDataReader, CalibrationMethod, create_calibrator

    check_method(method, percentile)
    if method == "mse":
        raise EffdeployError("ONNX Runtime has no mse calibrator; compare mse against the numpy reference")
    images = _as_images(data)
    proto = _load_model(model_path)
    input_name, _ = _single_input(proto)
    ort_method, extra = {
        "max": (CalibrationMethod.MinMax, {"symmetric": False}),
        "percentile": (
            CalibrationMethod.Percentile,
            {"symmetric": True, "num_bins": NUM_BINS, "percentile": float(percentile)},
        ),
        "entropy": (
            CalibrationMethod.Entropy,
            {"symmetric": True, "num_bins": NUM_BINS, "num_quantized_bins": NUM_QUANTIZED_BINS},
        ),
    }[method]

    class _Reader(CalibrationDataReader):
        def __init__(self, batch: np.ndarray):
            self.batch: np.ndarray | None = batch

        def get_next(self):
            b, self.batch = self.batch, None
            return None if b is None else {input_name: np.ascontiguousarray(b, dtype=np.float32)}

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        calibrator = create_calibrator(
            Path(model_path),
            op_types_to_calibrate=list(op_types) if op_types else None,
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=ort_method,
            extra_options=extra,
        )
        for s in range(0, len(images), batch_size):
            calibrator.collect_data(_Reader(images[s : s + batch_size]))
        tensors_data = calibrator.compute_data()
    seconds = time.perf_counter() - start
    ranges = {}
    for name in tensor_names:
        if name not in tensors_data:
            continue
        lo, hi = (float(np.asarray(v).reshape(-1)[0]) for v in tensors_data[name].range_value)
        ranges[name] = TensorRange(lo, hi, max(abs(lo), abs(hi)))
    params = {"percentile": float(percentile)} if method == "percentile" else {}
    return CalibrationResult(
        method=method, parameters=params, ranges=ranges, image_count=int(len(images)), seconds=seconds
    )


# --- internals -------------------------------------------------------------------------------


class _Accumulator:
    """Running min/max and a fixed-size signed histogram whose range doubles as needed."""

    def __init__(self, name: str, bins: int = STORE_BINS):
        self.name = name
        self.bins = bins
        self.counts = np.zeros(2 * bins, dtype=np.int64)  # over [-range, range): [negative reversed | positive]
        self.range = 0.0  # histogram covers |x| < range; 0 until a non-zero value is seen
        self.min = math.inf
        self.max = -math.inf
        self.samples = 0

    def add(self, mins: np.ndarray, maxs: np.ndarray, samples: np.ndarray) -> None:
        if mins.size == 0:
            return
        lo, hi = float(np.min(mins)), float(np.max(maxs))
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise EffdeployError(
                f"tensor {self.name} has NaN or infinite values on the calibration images; "
                "the FP32 model itself is broken for these inputs"
            )
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        a = max(abs(lo), abs(hi))
        if a > self.range:
            self._grow(a)
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        self.samples += x.size
        if x.size == 0:
            return
        nb = self.bins
        # Signed histogram over [-range, range): bin = floor(x / w) + nb. Shifting before the
        # integer cast makes truncation a floor; clipping keeps x = +range in the last bin.
        v = x * np.float32(nb / self.range) if self.range > 0 else np.zeros_like(x)
        v += np.float32(nb)
        np.clip(v, 0.0, 2 * nb - 0.5, out=v)
        self.counts += np.bincount(v.astype(np.intp), minlength=2 * nb)

    def _grow(self, a: float) -> None:
        if self.range == 0.0:
            self.range = a  # only zeros so far: they stay in the zero bin
            return
        factor = 1
        r = self.range
        while r < a:
            r *= 2.0
            factor *= 2
        nb = self.bins
        neg, pos = self.counts[:nb][::-1], self.counts[nb:]
        if factor >= nb:
            neg_f = np.zeros(nb, dtype=np.int64)
            pos_f = np.zeros(nb, dtype=np.int64)
            neg_f[0], pos_f[0] = neg.sum(), pos.sum()
        else:
            neg_f = np.zeros(nb, dtype=np.int64)
            pos_f = np.zeros(nb, dtype=np.int64)
            neg_f[: nb // factor] = neg.reshape(-1, factor).sum(axis=1)
            pos_f[: nb // factor] = pos.reshape(-1, factor).sum(axis=1)
        self.counts = np.concatenate((neg_f[::-1], pos_f))
        self.range = r

    def finish(self) -> TensorStatistics:
        nb = self.bins
        if not math.isfinite(self.min):
            raise EffdeployError(f"tensor {self.name} was never computed on the calibration images")
        width = (self.range / nb) if self.range > 0 else 1.0
        return TensorStatistics(
            name=self.name,
            min=self.min,
            max=self.max,
            bin_width=width,
            positive=self.counts[nb:].copy(),
            negative=self.counts[:nb][::-1].copy(),
            samples=self.samples,
        )


def _abs_quantile(ts: TensorStatistics, q: float) -> float:
    counts = ts.positive + ts.negative
    return _quantile(counts, 0.0, ts.bin_width, q)


def _quantile(counts: np.ndarray, start: float, width: float, q: float) -> float:
    """The q-quantile of a histogram (bins from ``start``, ``width`` wide), linear within a bin."""
    cum = np.cumsum(counts, dtype=np.float64)
    total = cum[-1]
    if total <= 0:
        return 0.0
    target = q * total
    k = int(np.searchsorted(cum, target, side="left"))
    k = min(k, counts.size - 1)
    below = cum[k - 1] if k > 0 else 0.0
    inside = counts[k]
    frac = (target - below) / inside if inside > 0 else 1.0
    return float(start + (k + min(max(frac, 0.0), 1.0)) * width)


def _as_images(data: Any) -> np.ndarray:
    arr = data if isinstance(data, np.ndarray) else getattr(data, "data", data)  # CalibrationSet.data
    if not isinstance(arr, np.ndarray):
        raise EffdeployError(f"calibration data must be an (N, C, H, W) float32 array, got {type(arr).__name__}")
    if arr.ndim != 4 or arr.shape[0] == 0:
        raise EffdeployError(f"calibration data must be a non-empty (N, C, H, W) array, got shape {tuple(arr.shape)}")
    return arr


def _load_model(model: Any):
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model)
    if not path.is_file():
        raise EffdeployError(f"ONNX model {path} does not exist")
    try:
        return onnx.load(str(path))
    except Exception as e:  # protobuf DecodeError and friends
        raise EffdeployError(f"cannot read ONNX model {path}: {first_line(e)}") from None


def _single_input(proto) -> tuple[str, tuple]:
    inits = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise EffdeployError(f"calibration supports models with one image input; this one has {len(inputs)}")
    dims = tuple(
        d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim
    )
    return inputs[0].name, dims


def _check_images(images: np.ndarray, input_shape: tuple) -> None:
    if len(input_shape) != 4:
        return
    want = input_shape[1:]
    got = tuple(images.shape[1:])
    if any(w is not None and w != g for w, g in zip(want, got)):
        shown = "x".join("?" if w is None else str(w) for w in want)
        raise EffdeployError(
            f"calibration images are {'x'.join(map(str, got))} but the model input is {shown}; "
            "the preprocessing and the exported model disagree"
        )


def _augment(proto, names: Sequence[str], samples_per_image: int | None):
    """A copy of the model whose only outputs are, per tensor: per-image min, max and samples."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    produced = {o for node in graph.node for o in node.output}
    inputs = {i.name for i in graph.input}
    inits = {i.name for i in graph.initializer}
    for t in names:
        if t in inits and t not in produced:
            raise EffdeployError(f"tensor {t} is a weight (initializer), not an activation; calibrate activations only")
        if t not in produced and t not in inputs:
            missing = [n for n in names if n not in produced and n not in inputs]
            raise EffdeployError(
                f"{len(missing)} tensor(s) to calibrate are not in the model, e.g. {missing[0]!r}; "
                "pass names of the simplified ONNX graph"
            )
    per_image, types = _shape_info(proto, names)
    floats = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
    not_float = [t for t in names if t in types and types[t] not in floats]
    if not_float:
        raise EffdeployError(
            f"tensor {not_float[0]} is a {TensorProto.DataType.Name(types[not_float[0]]).lower()} tensor, "
            "not a float activation; calibrate float activations only"
        )
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    prefix = "__effdeploy_calib"
    new_nodes = []
    new_inits = []
    outputs: dict[str, tuple[str, str, str]] = {}
    axes_name = f"{prefix}_axes1"
    if opset >= 18:
        new_inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), axes_name))
    for k, t in enumerate(names):
        flat, mn, mx = f"{prefix}_{k}_flat", f"{prefix}_{k}_min", f"{prefix}_{k}_max"
        nodes = [helper.make_node("Flatten", [t], [flat], axis=1, name=f"{prefix}_{k}_Flatten")]
        for op, out in (("ReduceMin", mn), ("ReduceMax", mx)):
            if opset >= 18:
                nodes.append(helper.make_node(op, [flat, axes_name], [out], keepdims=0, name=f"{prefix}_{k}_{op}"))
            else:
                nodes.append(helper.make_node(op, [flat], [out], axes=[1], keepdims=0, name=f"{prefix}_{k}_{op}"))
        stride = _sample_stride(per_image.get(t), samples_per_image)
        if stride > 1:
            smp = f"{prefix}_{k}_samples"
            consts = {}
            for nm, val in (("starts", 0), ("ends", _INT64_MAX), ("axes", 1), ("steps", stride)):
                cname = f"{prefix}_{k}_{nm}"
                new_inits.append(numpy_helper.from_array(np.array([val], dtype=np.int64), cname))
                consts[nm] = cname
            nodes.append(
                helper.make_node(
                    "Slice",
                    [flat, consts["starts"], consts["ends"], consts["axes"], consts["steps"]],
                    [smp],
                    name=f"{prefix}_{k}_Slice",
                )
            )
        else:
            smp = flat
        new_nodes.extend(nodes)
        outputs[t] = (mn, mx, smp)
    graph.node.extend(new_nodes)
    graph.initializer.extend(new_inits)
    del graph.output[:]
    for t in names:
        for o in outputs[t]:
            graph.output.append(helper.make_tensor_value_info(o, TensorProto.FLOAT, None))
    # declare the outputs with the tensor's own element type (a float16 model stays valid)
    by_name = {o.name: o for o in graph.output}
    for t in names:
        if t in types:
            for o in outputs[t]:
                by_name[o].type.tensor_type.elem_type = types[t]
    return model, outputs


def _shape_info(proto, names: Sequence[str]) -> tuple[dict[str, int], dict[str, int]]:
    """Per tensor: elements per image (dims after the first, where shape inference knows them) and
    the element type (where known)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # shape inference is best effort: unknown sizes just mean no sampling
        inferred = proto
    infos = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    per_image: dict[str, int] = {}
    types: dict[str, int] = {}
    for t in names:
        vi = infos.get(t)
        if vi is None:
            continue
        if vi.type.tensor_type.elem_type:
            types[t] = vi.type.tensor_type.elem_type
        dims = vi.type.tensor_type.shape.dim
        if len(dims) < 2 or not all(d.HasField("dim_value") and d.dim_value > 0 for d in dims[1:]):
            continue
        per_image[t] = int(np.prod([d.dim_value for d in dims[1:]]))
    return per_image, types


def _sample_stride(per_image: int | None, samples_per_image: int | None) -> int:
    """A prime step giving about ``samples_per_image`` samples; prime so it never divides C, H*W."""
    if per_image is None or samples_per_image is None or per_image <= samples_per_image:
        return 1
    k = max(2, -(-per_image // samples_per_image))
    while not _is_prime(k) or per_image % k == 0:
        k += 1
    return k


def _is_prime(k: int) -> bool:
    if k < 2:
        return False
    if k % 2 == 0:
        return k == 2
    f = 3
    while f * f <= k:
        if k % f == 0:
            return False
        f += 2
    return True
