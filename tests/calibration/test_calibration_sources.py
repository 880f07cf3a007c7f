"""Calibration data sources: folders, video, .npy, the built-in set; selection, exclusion, failures."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from effdeploy.calibration import (
    BUILTIN_IMAGES, builtin_image_dir, complement_ids, list_items, load_calibration_set, load_plan,
    plan_calibration, source_kind,
)
from effdeploy.errors import EffdeployError
from effdeploy.data.preprocess import load_image, preprocess
from effdeploy.data.preprocess import Preprocessing

IMAGENET_SAMPLE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "imagenet-sample"
SPEC = Preprocessing(resolution=32, resize=36)


@pytest.fixture(scope="module")
def imagenet_sample() -> Path:
    if not IMAGENET_SAMPLE.is_dir():
        pytest.skip(f"needs the shared ImageNet sample at {IMAGENET_SAMPLE} (present in CI, absent in a fresh clone)")
    return IMAGENET_SAMPLE


def _photo(seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    """A smooth random RGB image (gradients + noise), different for every seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * (255 / w), yy * (255 / h), (xx + yy) * (127 / (h + w))], axis=-1)
    img = base * rng.uniform(0.3, 1.0, 3) + rng.normal(0, 12, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """Twelve readable images in four formats, nested two levels deep."""
    root = tmp_path / "imgs"
    (root / "a" / "deep").mkdir(parents=True)
    (root / "b").mkdir()
    fmts = [("JPEG", ".jpg"), ("PNG", ".png"), ("BMP", ".bmp"), ("WEBP", ".webp")]
    for i in range(12):
        fmt, ext = fmts[i % 4]
        sub = ["", "a", "a/deep", "b"][i % 4]
        Image.fromarray(_photo(i)).save(root / sub / f"img{i:02d}{ext.upper() if i == 4 else ext}", fmt)
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.jpg").write_bytes(b"junk")  # hidden files are never candidates
    return root


def test_folder_nested_formats_preprocessed_with_the_spec(folder: Path) -> None:
    cs = load_calibration_set(folder, 100, SPEC, quiet=True)
    assert len(cs) == 12 and cs.data.shape == (12, 3, 32, 32) and cs.data.dtype == np.float32
    assert cs.skipped == 0 and not cs.builtin
    assert sorted(cs.ids) == list(cs.ids)  # ids come back sorted by path
    assert any("/a/deep/" in i for i in cs.ids) and any(i.endswith(".webp") for i in cs.ids)
    # exactly effdeploy.data.preprocess on load_image, the runtime's own implementation
    for k in (0, 5, 11):
        np.testing.assert_array_equal(cs.data[k], preprocess(load_image(cs.ids[k]), SPEC)[0])
    assert cs.warnings == ("only 12 usable calibration image(s) from " + str(folder) + " (100 were asked for)",)


def test_selection_is_deterministic_per_seed(folder: Path) -> None:
    a = load_calibration_set(folder, 5, SPEC, seed=3, quiet=True)
    b = load_calibration_set(folder, 5, SPEC, seed=3, quiet=True)
    c = load_calibration_set(folder, 5, SPEC, seed=4, quiet=True)
    assert a.ids == b.ids and a.ids_sha256 == b.ids_sha256
    np.testing.assert_array_equal(a.data, b.data)
    assert a.ids != c.ids and a.ids_sha256 != c.ids_sha256
    assert len(a) == 5 and a.warnings == ()


def test_exclude_and_complement_split(folder: Path) -> None:
    calib = load_calibration_set(folder, 7, SPEC, quiet=True)
    verify = load_calibration_set(folder, 100, SPEC, exclude=calib.ids, quiet=True)
    assert set(calib.ids).isdisjoint(verify.ids)
    assert len(calib) + len(verify) == 12
    assert set(complement_ids(folder, calib.ids)) == set(verify.ids)
    assert len(list_items(folder)) == 12
    # exclusion compares real paths: a relative spelling of the same file is excluded too
    rel = [str(Path(i).relative_to(folder.parent)) for i in calib.ids]
    import os

    cwd = os.getcwd()
    os.chdir(folder.parent)
    try:
        again = load_calibration_set(folder, 100, SPEC, exclude=["./" + r for r in rel], quiet=True)
    finally:
        os.chdir(cwd)
    assert set(again.ids) == set(verify.ids)


def test_everything_excluded_is_a_clear_error(folder: Path) -> None:
    with pytest.raises(EffdeployError, match="excluded"):
        plan_calibration(folder, 3, exclude=list_items(folder))


def test_unusual_image_modes_are_converted(tmp_path: Path) -> None:
    """Grayscale, CMYK, palette, 16-bit and EXIF-rotated files all become RGB the same way."""
    rgb = _photo(7, 40, 60)
    d = tmp_path / "modes"
    d.mkdir()
    Image.fromarray(rgb).convert("L").save(d / "gray.png")
    Image.fromarray(rgb).convert("CMYK").save(d / "cmyk.jpg", "JPEG", quality=95)
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(d / "palette.png")
    Image.fromarray((rgb[:, :, 0].astype(np.uint16) * 257)).save(d / "sixteen.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(rgb).save(d / "rotated.jpg", "JPEG", quality=98, exif=exif)
    assert Image.open(d / "sixteen.png").mode.startswith("I")

    cs = load_calibration_set(d, 5, SPEC, quiet=True)
    assert len(cs) == 5 and cs.skipped == 0
    by_name = {Path(i).name: cs.data[k] for k, i in enumerate(cs.ids)}
    gray = by_name["gray.png"]
    np.testing.assert_array_equal(gray[0] * SPEC.std[0] + SPEC.mean[0] >= -1, True)
    # grayscale -> three identical channels (before normalisation)
    raw = gray * np.asarray(SPEC.std, dtype=np.float32)[:, None, None] + np.asarray(SPEC.mean, dtype=np.float32)[:, None, None]
    np.testing.assert_allclose(raw[0], raw[1], atol=1e-3)
    np.testing.assert_allclose(raw[1], raw[2], atol=1e-3)
    # 16-bit: scaled down to 8 bits, so it matches the 8-bit gray of the same channel
    eight = preprocess(np.repeat(rgb[:, :, :1], 3, axis=2), SPEC)[0]
    np.testing.assert_allclose(by_name["sixteen.png"], eight, atol=2 / 57)
    # EXIF orientation applied: the crop of the rotated photo, not of the stored pixels
    expected = preprocess(np.ascontiguousarray(np.rot90(rgb, k=-1)), SPEC)[0]
    unrotated = preprocess(rgb, SPEC)[0]
    err_rot = np.abs(by_name["rotated.jpg"] - expected).mean()  # JPEG noise only
    assert err_rot < 0.15 and 4 * err_rot < np.abs(by_name["rotated.jpg"] - unrotated).mean()
    # CMYK and palette are colour images close to the original
    for name in ("cmyk.jpg", "palette.png"):
        assert np.abs(by_name[name] - unrotated).mean() < 0.2


def test_unreadable_files_are_skipped_counted_and_replaced(folder: Path) -> None:
    good = sorted(folder.rglob("img0[0-3].*"))[0].read_bytes()
    (folder / "truncated.jpg").write_bytes((folder / "img00.jpg").read_bytes()[:200])
    (folder / "text.png").write_text("this is not a png")
    (folder / "empty.bmp").write_bytes(b"")
    assert good
    cs = load_calibration_set(folder, 12, SPEC, quiet=True)
    assert len(cs) == 12  # the three bad files were replaced by readable ones
    assert cs.skipped == 3
    assert cs.warnings == (f"skipped 3 unreadable calibration image(s) from {folder}",)
    assert not any(Path(i).name in ("truncated.jpg", "text.png", "empty.bmp") for i in cs.ids)
    short = load_calibration_set(folder, 20, SPEC, quiet=True)
    assert len(short) == 12 and any("only 12 usable" in w for w in short.warnings)


def test_no_readable_image_is_an_error(tmp_path: Path) -> None:
    d = tmp_path / "bad"
    d.mkdir()
    (d / "a.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (d / "b.png").write_text("nope")
    with pytest.raises(EffdeployError, match="none of the 2 calibration images"):
        load_calibration_set(d, 4, SPEC, quiet=True)


def test_missing_empty_and_unsupported_sources(tmp_path: Path) -> None:
    with pytest.raises(EffdeployError, match="does not exist"):
        load_calibration_set(tmp_path / "nope", 4, SPEC)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EffdeployError, match="no images under"):
        load_calibration_set(tmp_path / "empty", 4, SPEC)
    (tmp_path / "list.txt").write_text("a.jpg\n")
    with pytest.raises(EffdeployError, match="not a supported kind"):
        source_kind(tmp_path / "list.txt")
    with pytest.raises(EffdeployError, match="integer >= 1"):
        plan_calibration(tmp_path, 0)


def test_video_frames_sampled_evenly(tmp_path: Path) -> None:
    cv2 = pytest.importorskip("cv2")
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    assert writer.isOpened()
    for i in range(30):
        frame = np.zeros((48, 64, 3), np.uint8)
        frame[:, :, 2] = 40 + 6 * i  # red ramps with the frame index (OpenCV writes BGR)
        writer.write(frame)
    writer.release()

    assert source_kind(path) == "video"
    cs = load_calibration_set(path, 5, SPEC, quiet=True)
    assert cs.ids == tuple(f"{path}#frame{i}" for i in (0, 7, 14, 22, 29))
    red = cs.data[:, 0].mean(axis=(1, 2)) * SPEC.std[0] + SPEC.mean[0]
    np.testing.assert_allclose(red, [40 + 6 * i for i in (0, 7, 14, 22, 29)], atol=4)  # RGB, right frames
    assert np.all(np.abs(cs.data[:, 2].mean(axis=(1, 2)) * SPEC.std[2] + SPEC.mean[2]) < 4)
    rest = load_calibration_set(path, 5, SPEC, exclude=cs.ids, quiet=True)
    assert set(rest.ids).isdisjoint(cs.ids) and len(rest) == 5
    assert len(complement_ids(path, cs.ids)) == 25


def test_npy_preprocessed_nchw_and_uint8_nhwc(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    nchw = rng.standard_normal((10, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "pre.npy", nchw)
    cs = load_calibration_set(tmp_path / "pre.npy", 4, SPEC, seed=1, quiet=True)
    rows = [int(i.rpartition("#")[2]) for i in cs.ids]
    assert len(set(rows)) == 4 and rows == sorted(rows)
    np.testing.assert_array_equal(cs.data, nchw[rows])

    nhwc = np.stack([_photo(i) for i in range(6)])
    np.save(tmp_path / "raw.npy", nhwc)
    raw = load_calibration_set(tmp_path / "raw.npy", 6, SPEC, quiet=True)
    np.testing.assert_array_equal(raw.data, preprocess(list(nhwc), SPEC))

    np.save(tmp_path / "wrong.npy", rng.standard_normal((3, 3, 24, 24)).astype(np.float32))
    with pytest.raises(EffdeployError, match=r"shape \(3, 3, 24, 24\).*\(N, 3, 32, 32\)"):
        load_calibration_set(tmp_path / "wrong.npy", 2, SPEC)
    np.save(tmp_path / "odd.npy", np.zeros((4, 5), np.int16))
    with pytest.raises(EffdeployError, match="dtype int16"):
        load_calibration_set(tmp_path / "odd.npy", 2, SPEC)
    bad = nchw.copy()
    bad[1, 0, 0, 0] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(EffdeployError, match="NaN"):
        load_calibration_set(tmp_path / "nan.npy", 10, SPEC)


def test_builtin_images_without_a_source() -> None:
    """The built-in photos, each as 4 views (whole, mirrored, seeded crops); excluding a
    photo excludes all its views."""
    root = builtin_image_dir()
    if root is None:
        pytest.skip("scikit-image is not installed (the built-in images ship inside it)")
    cs = load_calibration_set(None, 8, SPEC, quiet=True)
    assert cs.builtin and len(cs) == 8
    assert {Path(i.partition("#view")[0]).name for i in cs.ids} <= set(BUILTIN_IMAGES)
    assert any("no calibration data given" in w and "scikit-image" in w for w in cs.warnings)
    everything = load_calibration_set(None, 1000, SPEC, quiet=True)
    present = [n for n in BUILTIN_IMAGES if (root / n).is_file()]
    assert len(everything) == 4 * len(present) and len(present) >= 10  # whole, mirrored, two crops
    assert sorted(i.partition("#")[2] for i in everything.ids if i.startswith(str(root / present[0]) + "#")) == \
        ["view0", "view1", "view2", "view3"]
    assert len(set(everything.ids)) == len(everything)
    assert not any(np.array_equal(everything.data[0], x) for x in everything.data[1:])  # distinct views
    assert len(everything.warnings) == 1  # one warning, with the count, not two
    reserved = [str(root / n) for n in present[::3]]  # e.g. kept for verification
    rest = load_calibration_set(None, 1000, SPEC, exclude=reserved, quiet=True)
    assert {i.partition("#view")[0] for i in rest.ids}.isdisjoint(reserved)
    assert len(rest) == 4 * (len(present) - len(reserved))
    assert f"calibrating on {len(rest)} views of {len(present) - len(reserved)} natural images" in rest.warnings[0]
    again = load_calibration_set(None, 1000, SPEC, quiet=True)
    np.testing.assert_array_equal(again.data, everything.data)  # seeded: the same views every time


def test_plan_hash_follows_content_not_location(folder: Path, tmp_path: Path) -> None:
    a = plan_calibration(folder, 6, seed=0)
    copy = tmp_path / "elsewhere"
    shutil.copytree(folder, copy)
    b = plan_calibration(copy, 6, seed=0)
    assert a.sha256 == b.sha256  # same images elsewhere: the cache still hits
    assert a.names == b.names and a.items != b.items
    Image.fromarray(_photo(99)).save(copy / "img00.jpg", "JPEG")
    assert plan_calibration(copy, 6, seed=0).sha256 != a.sha256
    assert plan_calibration(folder, 7, seed=0).sha256 != a.sha256
    assert plan_calibration(folder, 6, seed=1).sha256 != a.sha256
    loaded = load_plan(a, SPEC, quiet=True)
    assert loaded.plan_sha256 == a.sha256 and len(loaded) == 6


def test_imagenet_sample_calibration_and_verification_split(imagenet_sample: Path) -> None:
    spec = Preprocessing.for_weights(64, "b", "native")
    plan = plan_calibration(imagenet_sample, 48, seed=0)
    assert len(plan.items) == 500 and plan.kind == "folder"
    calib = load_plan(plan, spec, quiet=True)
    assert calib.data.shape == (48, 3, 64, 64) and calib.skipped == 0 and calib.warnings == ()
    assert np.isfinite(calib.data).all() and -3 < calib.data.mean() < 3
    verify = load_calibration_set(imagenet_sample, 32, spec, seed=0, exclude=calib.ids, quiet=True)
    assert set(calib.ids).isdisjoint(verify.ids) and len(verify) == 32
    assert len(complement_ids(imagenet_sample, calib.ids)) == 452
    again = load_calibration_set(imagenet_sample, 48, spec, seed=0, quiet=True)
    assert again.ids == calib.ids and again.ids_sha256 == calib.ids_sha256
