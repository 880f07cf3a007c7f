"""The fast preprocessing against its definition (Pillow's resize over the crop box), its input
checks and its layout. Speed is measured by bench/runtime_perf.py, not here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from effdeploy.runtime.benchmark import synthetic_frame
from effdeploy.errors import EffdeployError
from effdeploy.data.preprocess import (
    load_image, normalize, preprocess, preprocess_files, resample_plan, resize_crop, resize_crop_pil,
)
from effdeploy.data.preprocess import Preprocessing

B0 = Preprocessing.for_weights(224, "b", "native")
LITE = Preprocessing.for_weights(224, "lite", "native")
TINY = Preprocessing.for_weights(64, "b", "native")


def diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b.astype(np.int16))


@pytest.mark.parametrize("spec", [B0, TINY, Preprocessing(resolution=32, resize=36, interpolation="bilinear")],
                         ids=["b0-224", "b0-64", "bilinear-32"])
@pytest.mark.parametrize("size", [(1, 1), (3, 2), (7, 300), (300, 7), (64, 64), (100, 75), (500, 333), (1280, 720)])
def test_weights_match_pillow_exact_or_pre_reduced(spec: Preprocessing, size: tuple[int, int]) -> None:
    """Without pre-reduction the weights are Pillow's on a coarser grid (2^-15, Pillow's is 2^-22):
    a level per pass at most, so two where the first pass's level reaches the second. Pre-reduced
    sizes (the bilinear 32 px spec from 500x333 up, b0-64 from 500x333) get the looser bound the
    camera-frame test uses, so every filter's pre-reduction is compared with Pillow too."""
    w, h = size
    frame = synthetic_frame(w, h, seed=w * h)
    d = diff(resize_crop(frame, spec), resize_crop_pil(frame, spec))
    if resample_plan(h, w, spec).reduce == 1:
        assert d.max() <= 2 and d.mean() < 0.25
    else:
        assert d.max() <= 4 and d.mean() < 0.6


@pytest.mark.parametrize("size", [(1920, 1080), (3840, 2160), (1080, 1920)])
def test_prereduced_frames_stay_close_to_pillow(size: tuple[int, int]) -> None:
    w, h = size
    plan = resample_plan(h, w, B0)
    assert plan.reduce >= 2, "camera frames are pre-reduced (that is what makes them fast)"
    frame = synthetic_frame(w, h, seed=1)
    d = diff(resize_crop(frame, B0), resize_crop_pil(frame, B0))
    assert d.max() <= 4
    assert d.mean() < 0.6


def test_real_images_match_pillow(imagenet_sample: Path) -> None:
    paths = sorted(imagenet_sample.glob("*.JPEG"))[:60]
    worst, means = 0, []
    for p in paths:
        img = load_image(p)
        d = diff(resize_crop(img, LITE), resize_crop_pil(img, LITE))
        worst, means = max(worst, int(d.max())), means + [float(d.mean())]
        assert np.percentile(d, 99.9) <= 1, p.name
    assert np.mean(means) < 0.05
    assert worst <= 16  # isolated pixels where Pillow clips its intermediate differently


def test_real_photos_at_1080p_match_pillow(imagenet_sample: Path) -> None:
    """Real content through the pre-reduction path (the shared photos scaled to 1920x1080)."""
    for p in sorted(imagenet_sample.glob("*.JPEG"))[:12]:
        frame = np.asarray(Image.fromarray(load_image(p)).resize((1920, 1080), Image.Resampling.BICUBIC))
        d = diff(resize_crop(frame, LITE), resize_crop_pil(frame, LITE))
        assert d.mean() < 1.0, p.name
        assert np.percentile(d, 99) <= 6, p.name


def _dense(axis: object, out: int, transposed: bool) -> np.ndarray:
    w = np.zeros((out, axis.hi - axis.lo))  # type: ignore[attr-defined]
    for o0, o1, i0, i1, blk in axis.blocks:  # type: ignore[attr-defined]
        w[o0:o1, i0:i1] = blk.T if transposed else blk
    return w


def _resample_float64(frame: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """The two passes of the plan in float64 (exact for these sums), rounded as the definition rounds."""
    plan = resample_plan(*frame.shape[:2], spec)
    assert plan.reduce == 1
    res = spec.resolution
    wr, wc = _dense(plan.rows, res, False), _dense(plan.cols, res, True)
    x = frame[plan.rows.lo:plan.rows.hi, plan.cols.lo:plan.cols.hi].transpose(2, 0, 1).astype(np.float64)
    def rc(v: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(v), 0, 255)
    out = rc(rc(wr @ x) @ wc.T) if plan.vertical_first else rc(wr @ rc(x @ wc.T))
    return out.transpose(1, 2, 0).astype(np.uint8)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "lanczos"])
def test_grid_weights_make_float32_sums_exact(interpolation: str) -> None:
    """On the 2^-15 grid every product and partial sum is an exact float32: BLAS's float32 passes
    give the float64 result bit for bit, so any summation order (a frame-in graph's) gives it too."""
    spec = Preprocessing(resolution=224, resize=256, interpolation=interpolation)
    assert spec.resample_bits == 15
    for seed, (w, h) in enumerate([(500, 375), (333, 500), (640, 480)]):
        frame = synthetic_frame(w, h, seed=seed)
        np.testing.assert_array_equal(resize_crop(frame, spec), _resample_float64(frame, spec))


def test_a_manifest_from_before_the_grid_keeps_float32_weights() -> None:
    old = {k: v for k, v in B0.to_dict().items() if k != "resample_bits"}
    spec = Preprocessing.from_dict(old)
    assert spec.resample_bits is None and Preprocessing.from_dict(B0.to_dict()) == B0
    frame = synthetic_frame(500, 375, seed=9)
    assert diff(resize_crop(frame, spec), resize_crop(frame, B0)).max() <= 2


def test_bgr_flag_equals_swapping_channels() -> None:
    rgb = synthetic_frame(640, 480, seed=3)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    np.testing.assert_array_equal(preprocess(bgr, B0, bgr=True), preprocess(rgb, B0))
    assert not np.array_equal(preprocess(bgr, B0), preprocess(rgb, B0))


def test_layout_batch_and_mixed_sizes() -> None:
    frames = [synthetic_frame(640, 480, seed=1), synthetic_frame(300, 500, seed=2), synthetic_frame(1920, 1080, seed=3)]
    batch = preprocess(frames, B0)
    assert batch.shape == (3, 3, 224, 224) and batch.dtype == np.float32 and batch.flags.c_contiguous
    for i, f in enumerate(frames):
        np.testing.assert_array_equal(batch[i], preprocess(f, B0)[0])
    same = np.stack([frames[0]] * 2)  # an NHWC array is a batch too
    np.testing.assert_array_equal(preprocess(same, B0), np.concatenate([preprocess(frames[0], B0)] * 2))


def test_values_are_normalised_crops() -> None:
    """preprocess == normalize(resize_crop): the uint8 crop is the intermediate definition."""
    frame = synthetic_frame(800, 600, seed=4)
    crop = resize_crop(frame, LITE)
    assert crop.dtype == np.uint8 and crop.shape == (224, 224, 3)
    np.testing.assert_allclose(preprocess(frame, LITE), normalize(crop[None], LITE), rtol=0, atol=1e-6)
    flat = np.full((50, 70, 3), 200, np.uint8)
    out = preprocess(flat, B0)
    # ImageNet's mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225) on the 0-1 scale, RGB order,
    # worked by hand for a pixel of 200: (200/255 - mean) / std
    for c, want in enumerate((1.30705, 1.46569, 1.68139)):
        np.testing.assert_allclose(out[0, c], want, atol=2e-5)


def test_nearest_is_pillow_exactly() -> None:
    spec = Preprocessing(resolution=32, resize=37, interpolation="nearest")
    frame = synthetic_frame(123, 77, seed=5)
    np.testing.assert_array_equal(resize_crop(frame, spec), resize_crop_pil(frame, spec))


def test_unknown_interpolation_is_one_clear_error() -> None:
    spec = Preprocessing(resolution=32, resize=37, interpolation="area51")
    with pytest.raises(EffdeployError, match="interpolation 'area51'"):
        preprocess(synthetic_frame(64, 64), spec)


@pytest.mark.parametrize(
    "frame, match",
    [
        (np.zeros((10, 10, 3), np.float32), "dtype float32"),
        (np.zeros((10, 10, 4), np.uint8), "3 channels"),
        (np.zeros((10, 10), np.uint8), "3 channels"),
        (np.zeros((10, 10, 1), np.uint8), "3 channels"),
        (np.zeros((0, 10, 3), np.uint8), "zero size"),
        (np.zeros((10, 0, 3), np.uint8), "zero size"),
        ([[1, 2, 3]], "numpy array"),
    ],
    ids=["float", "bgra", "gray2d", "gray1", "no-rows", "no-cols", "list"],
)
def test_bad_frames_are_refused_with_one_line(frame: object, match: str) -> None:
    for bgr in (False, True):
        with pytest.raises(EffdeployError, match=match) as e:
            preprocess(frame if isinstance(frame, np.ndarray) and frame.ndim != 3 else [frame], B0, bgr=bgr)  # type: ignore[list-item]
        assert "\n" not in str(e.value)


def test_no_frames() -> None:
    with pytest.raises(EffdeployError, match="no frames"):
        preprocess([], B0)


def test_files_and_frames_agree(tmp_path: Path) -> None:
    """Calibration/verification read files, the runtime gets arrays: the same numbers."""
    frame = synthetic_frame(333, 500, seed=6)
    path = tmp_path / "frame.png"
    Image.fromarray(frame).save(path)
    np.testing.assert_array_equal(preprocess_files([path], B0), preprocess(frame, B0))
