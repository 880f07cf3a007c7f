"""Calibration data: pick images deterministically from a source and preprocess them.

A source is an image folder (JPEG/PNG/BMP/WebP, nested), a video file (frames sampled evenly
with OpenCV), a ``.npy`` array (NCHW float32 already preprocessed, or NHWC uint8 images), or
nothing: then a few natural images that ship inside the scikit-image wheel are used, with a
warning, so a first build works offline without any dataset.

Selection happens in two steps so that a cached rebuild never decodes a pixel:
:func:`plan_calibration` lists and hashes the candidates and fixes the order they are tried in
(cheap), :func:`load_plan` decodes and preprocesses them with the manifest's
:class:`~effdeploy.data.preprocess.Preprocessing` through :func:`effdeploy.data.preprocess.preprocess`, the one
implementation the runtime also uses. :func:`load_calibration_set` does both.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Sequence

import numpy as np
from effdeploy.data.datasets import IMAGE_SUFFIXES, builtin_image_dir, builtin_names, builtin_root, folder_images
from effdeploy.data.preprocess import Preprocessing, load_image, preprocess
from effdeploy.errors import EffdeployError
from effdeploy.files import sha256_json
from effdeploy.report import progress


VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"})
ARRAY_SUFFIXES = frozenset({".npy"})

KIND_FOLDER = "folder"
KIND_VIDEO = "video"
KIND_ARRAY = "array"
KIND_BUILTIN = "builtin"

# Views per built-in photo: whole, mirrored, then seeded crops (mirrored every other one). Nine or
# ten photos are too few for ranges and for the reconstruction's bias fit; their views give a few
# dozen distinct inputs (docs/int8.md has what it changed).
BUILTIN_VIEWS = 4

_FRAME_SEP = "#frame"
_VIEW_SEP = "#view"
_ROW_SEP = "#"


@dataclass(frozen=True)
class CalibrationPlan:
    """Which items to try, in which order; built without decoding anything.

    ``items`` are the ids to load (file paths, ``video.mp4#frame123`` or ``arr.npy#17``) in the
    order they are tried: the first ``count`` that decode are used, unreadable ones are replaced
    by the next. ``sha256`` covers the kind, the candidates' names and contents, the try order
    and ``count``, so it changes whenever the images a load would use could change; it is the
    image part of the calibration cache key.
    """

    source: str
    kind: str
    items: tuple[str, ...]
    names: tuple[str, ...]  # items relative to the source root: portable across checkouts
    count: int
    seed: int
    sha256: str
    content: tuple[str, ...]  # sha256 of each item's file (video/array: the whole file)
    warnings: tuple[str, ...] = ()
    count_given: bool = True  # False: ``count`` is the default, not the user's number

    @property
    def asked(self) -> str:
        """How to name ``count`` in a message: the user's number, or the default."""
        return f"{self.count} were asked for" if self.count_given else f"the default is {self.count}"

    @property
    def builtin(self) -> bool:
        return self.kind == KIND_BUILTIN


@dataclass(frozen=True, eq=False)
class CalibrationSet:
    """Preprocessed calibration images, with where they came from.

    ``data`` is (N, C, H, W) float32 exactly as the runtime feeds the model. ``ids`` are the items
    used (pass them as ``exclude`` to draw disjoint verification images); ``ids_sha256`` hashes
    their source-relative names and file contents, so it is the same on every checkout.
    """

    data: np.ndarray
    ids: tuple[str, ...]
    skipped: int
    warnings: tuple[str, ...]
    source: str
    builtin: bool
    ids_sha256: str
    plan_sha256: str = ""

    def __len__(self) -> int:
        return int(self.data.shape[0])


def source_kind(source: str | Path | None) -> str:
    """folder / video / array / builtin; EffdeployError for a missing or unsupported path."""
    if source is None or str(source) == "":
        return KIND_BUILTIN
    p = Path(source)
    if not p.exists():
        raise EffdeployError(
            f"calibration source {p} does not exist; pass a folder of images, a video file or a .npy array"
        )
    if p.is_dir():
        return KIND_FOLDER
    suffix = p.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return KIND_VIDEO
    if suffix in ARRAY_SUFFIXES:
        return KIND_ARRAY
    raise EffdeployError(
        f"calibration source {p} is not a supported kind (a folder of {'/'.join(sorted(s[1:] for s in IMAGE_SUFFIXES))} "
        f"images, a video {'/'.join(sorted(s[1:] for s in VIDEO_SUFFIXES))} or a .npy array)"
    )


def check_usable(source: str | Path | None, resolution: int | None = None) -> str:
    """The source's kind, after making sure it holds at least one usable item: cheap (one image
    decoded, one frame read, an array's header), so a build refuses a bad source before minutes
    of model building and export. ``resolution`` checks a preprocessed array's shape."""
    kind = source_kind(source)
    if kind == KIND_BUILTIN:
        builtin_root()
        return kind
    p = Path(source)  # type: ignore[arg-type]
    if kind == KIND_FOLDER:
        names = folder_images(p)
        if not names:
            raise EffdeployError(
                f"no images under {p} (looked for {', '.join(sorted(IMAGE_SUFFIXES))}, in subfolders too)"
            )
        for n in names:
            try:
                load_image(p / n)
                return kind
            except EffdeployError:
                continue
        raise EffdeployError(
            f"none of the {len(names)} images under {p} can be read (corrupt, truncated or not images); "
            "pass a folder of readable images"
        )
    if kind == KIND_VIDEO:
        cap = _video_capture(p)
        try:
            ok, frame = cap.read()
        finally:
            cap.release()
        if not ok or frame is None:
            raise EffdeployError(f"video {p} has no frames OpenCV can decode; re-encode it (e.g. H.264 .mp4)")
        return kind
    arr = _open_array(p)
    if (arr.shape[0] if arr.ndim == 4 else 1) == 0:
        raise EffdeployError(f"array {p} holds no images (shape {tuple(arr.shape)})")
    _array_layout(arr, p, resolution)
    return kind


def _array_layout(arr: np.ndarray, path: Path, resolution: int | None) -> str:
    """``"images"`` (NHWC/HWC uint8) or ``"tensors"`` (NCHW float at ``resolution``); else the error."""
    if arr.dtype == np.uint8 and arr.ndim in (3, 4) and arr.shape[-1] == 3:
        if arr.shape[-2] == 0 or arr.shape[-3] == 0:
            raise EffdeployError(f"{path}: images of zero size")
        return "images"
    res = resolution if resolution is not None else "R"
    if arr.ndim == 4 and np.issubdtype(arr.dtype, np.floating):
        if resolution is not None and tuple(arr.shape[1:]) != (3, resolution, resolution):
            raise EffdeployError(
                f"{path} has shape {tuple(arr.shape)} but the model's preprocessing gives (N, 3, {res}, {res}) "
                f"float32; save preprocessed NCHW arrays at {res}px or NHWC uint8 images"
            )
        return "tensors"
    raise EffdeployError(
        f"{path} has dtype {arr.dtype} and shape {tuple(arr.shape)}; expected (N, 3, {res}, {res}) float32 "
        "preprocessed tensors or (N, H, W, 3) uint8 RGB images"
    )


def list_items(source: str | Path | None) -> tuple[str, ...]:
    """Every candidate id of a source in sorted order (files, frames or array rows)."""
    kind = source_kind(source)
    if kind == KIND_BUILTIN:
        root = builtin_root()
        return tuple(str(root / n) for n in builtin_names(root))
    p = Path(source)  # type: ignore[arg-type]
    if kind == KIND_FOLDER:
        return tuple(str(p / n) for n in folder_images(p))
    if kind == KIND_VIDEO:
        return tuple(f"{p}{_FRAME_SEP}{i}" for i in range(_video_frame_count(p)))
    return tuple(f"{p}{_ROW_SEP}{i}" for i in range(_array_rows(p)))


def complement_ids(source: str | Path | None, ids: Collection[str]) -> tuple[str, ...]:
    """The items of ``source`` not in ``ids``: the other side of a calibration/verification split."""
    used = {_id_key(i) for i in ids}
    return tuple(i for i in list_items(source) if _id_key(i) not in used)


def plan_calibration(
    source: str | Path | None,
    count: int,
    seed: int = 0,
    exclude: Collection[str] = (),
    count_given: bool = True,
) -> CalibrationPlan:
    """Choose (without decoding) which items calibration tries and in which order.

    Folders and arrays: candidates sorted by path, then a seeded permutation, so the same seed
    always gives the same images. Videos: ``count`` frames evenly spaced over the clip (the seed
    is not used). ``exclude`` leaves items out (file paths, or ids as returned in
    :attr:`CalibrationSet.ids`), so verification images can be kept disjoint. ``count_given``
    False words messages as "the default" rather than as the user's number.
    """
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise EffdeployError(f"the number of calibration images must be an integer >= 1 (got {count!r})")
    count = int(count)
    kind = source_kind(source)
    excluded = {_id_key(e) for e in exclude}
    warnings: list[str] = []

    if kind == KIND_VIDEO:
        p = Path(source)  # type: ignore[arg-type]
        total = _video_frame_count(p)
        gone = _excluded_fragments(p, excluded)
        frames = [i for i in range(total) if f"frame{i}" not in gone]
        if not frames:
            raise EffdeployError(f"video {p} has no frames left to calibrate on (all {total} excluded or unreadable)")
        if len(frames) > count:
            pick = np.unique(np.round(np.linspace(0, len(frames) - 1, count)).astype(np.int64))
            frames = [frames[i] for i in pick]
        names = tuple(f"{p.name}{_FRAME_SEP}{i}" for i in frames)
        items = tuple(f"{p}{_FRAME_SEP}{i}" for i in frames)
        file_hash = _sha256_file(p)
        content = (file_hash,) * len(items)
        return _make_plan(str(p), kind, items, names, content, count, seed, warnings, count_given)

    if kind == KIND_ARRAY:
        p = Path(source)  # type: ignore[arg-type]
        gone = _excluded_fragments(p, excluded)
        rows = [i for i in range(_array_rows(p)) if str(i) not in gone]
        if not rows:
            raise EffdeployError(f"array {p} has no rows left to calibrate on (all excluded)")
        order = np.random.default_rng(seed).permutation(len(rows))
        chosen = sorted(rows[i] for i in order[:count])
        names = tuple(f"{p.name}{_ROW_SEP}{i}" for i in chosen)
        items = tuple(f"{p}{_ROW_SEP}{i}" for i in chosen)
        content = (_sha256_file(p),) * len(items)
        return _make_plan(str(p), kind, items, names, content, count, seed, warnings, count_given)

    if kind == KIND_BUILTIN:
        root = builtin_root()
        all_names = builtin_names(root)
        source_label = f"scikit-image:{root}"
    else:
        root = Path(source)  # type: ignore[arg-type]
        all_names = folder_images(root)
        source_label = str(root)
        if not all_names:
            raise EffdeployError(
                f"no images under {root} (looked for {', '.join(sorted(IMAGE_SUFFIXES))}, in subfolders too)"
            )
    names_list = [n for n in all_names if _id_key(str(root / n)) not in excluded]
    if not names_list:
        raise EffdeployError(
            f"every one of the {len(all_names)} images under {root} is excluded (kept for verification); "
            "pass more images or a different source"
        )
    if kind == KIND_BUILTIN:
        names_list, photos = _builtin_views(root, names_list, excluded), len(names_list)
        asked = f"{count} asked for" if count_given else f"the default {count}"
        warnings.append(f"no calibration data given: calibrating on {min(count, len(names_list))} views of {photos} "
                        f"natural images shipped with scikit-image ({asked}); pass a folder of images from your "
                        "camera/domain for production ranges")
    order = np.random.default_rng(seed).permutation(len(names_list))
    names = tuple(names_list[i] for i in order)
    items = tuple(str(root / n) for n in names)
    content = tuple(_sha256_file(root / n.partition(_VIEW_SEP)[0]) for n in names)
    return _make_plan(source_label, kind, items, names, content, count, seed, warnings, count_given)


def load_plan(plan: CalibrationPlan, spec: Preprocessing, quiet: bool = False) -> CalibrationSet:
    """Decode and preprocess a plan's items; unreadable ones are skipped, counted and replaced."""
    if plan.kind == KIND_ARRAY:
        return _load_array(plan, spec, quiet)
    if plan.kind == KIND_VIDEO:
        crops, used, skipped = _read_video_frames(plan, spec, quiet)
    else:
        crops, used, skipped = _read_image_files(plan, spec, quiet)
    warnings = list(plan.warnings)
    if not crops:
        raise EffdeployError(
            f"none of the {skipped} calibration images from {plan.source} could be read "
            "(corrupt, truncated or not images); pass a folder of readable images"
        )
    if skipped:
        warnings.append(f"skipped {skipped} unreadable calibration image(s) from {plan.source}")
    return _make_set(plan, np.stack(crops), used, skipped, warnings)


def load_calibration_set(
    source: str | Path | None,
    count: int,
    spec: Preprocessing,
    seed: int = 0,
    exclude: Collection[str] = (),
    quiet: bool = False,
) -> CalibrationSet:
    """The images calibration runs on: :func:`plan_calibration` then :func:`load_plan`."""
    return load_plan(plan_calibration(source, count, seed=seed, exclude=exclude), spec, quiet=quiet)


# --- helpers ---------------------------------------------------------------------------------


def _make_plan(
    source: str,
    kind: str,
    items: Sequence[str],
    names: Sequence[str],
    content: Sequence[str],
    count: int,
    seed: int,
    warnings: Sequence[str],
    count_given: bool = True,
) -> CalibrationPlan:
    digest = sha256_json({"kind": kind, "count": count, "items": [[n, c] for n, c in zip(names, content)]})
    return CalibrationPlan(
        source=source,
        kind=kind,
        items=tuple(items),
        names=tuple(names),
        count=count,
        seed=int(seed),
        sha256=digest,
        content=tuple(content),
        warnings=tuple(warnings),
        count_given=count_given,
    )


def _make_set(
    plan: CalibrationPlan, data: np.ndarray, used: Sequence[int], skipped: int, warnings: list[str]
) -> CalibrationSet:
    n = len(used)
    builtin_all = plan.builtin and skipped == 0 and n == len(plan.items)  # already said by the builtin warning
    if n < plan.count and not builtin_all:
        warnings.append(f"only {n} usable calibration image(s) from {plan.source} ({plan.asked})")
    return CalibrationSet(
        data=data,
        ids=tuple(plan.items[i] for i in used),
        skipped=skipped,
        warnings=tuple(warnings),
        source=plan.source,
        builtin=plan.builtin,
        ids_sha256=sha256_json([[plan.names[i], plan.content[i]] for i in used]),
        plan_sha256=plan.sha256,
    )


def _id_key(item: str) -> tuple[str, str]:
    """Normalise an id so './a.jpg', 'a.jpg' and '/abs/a.jpg' compare equal; keeps '#frame12'."""
    item = str(item)
    base, sep, frag = item.rpartition("#")
    if sep and (frag.isdigit() or frag.startswith(("frame", "view"))):
        return (os.path.realpath(base), frag)
    return (os.path.realpath(item), "")


def _excluded_fragments(path: Path, excluded: set[tuple[str, str]]) -> set[str]:
    """The '#...' parts of excluded ids that refer to ``path`` (frames or rows)."""
    real = os.path.realpath(path)
    return {frag for base, frag in excluded if base == real and frag}


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    except OSError as e:
        return f"unreadable:{e.errno}"
    return h.hexdigest()




def _builtin_views(root: Path, names: Sequence[str], excluded: set[tuple[str, str]]) -> list[str]:
    """``photo.png#view0`` .. ``#view{BUILTIN_VIEWS - 1}`` per photo, less the excluded views."""
    return [f"{n}{_VIEW_SEP}{k}" for n in names for k in range(BUILTIN_VIEWS)
            if f"view{k}" not in _excluded_fragments(root / n, excluded)]


def builtin_view(image: np.ndarray, k: int, name: str) -> np.ndarray:
    """View ``k`` of a built-in photo: 0 whole, 1 mirrored, then a crop of 50-90 % of each side
    (seeded by the photo's name and ``k``, so the same on every machine), mirrored when ``k`` is odd."""
    import zlib

    if k >= 2:
        rng = np.random.default_rng([k, zlib.crc32(name.encode())])
        h, w = image.shape[:2]
        ch, cw = max(1, int(h * rng.uniform(0.5, 0.9))), max(1, int(w * rng.uniform(0.5, 0.9)))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        image = image[y:y + ch, x:x + cw]
    return np.ascontiguousarray(image[:, ::-1] if k % 2 else image)


def _load_item(item: str) -> np.ndarray:
    """An image file, or a view of a built-in photo (``photo.png#view3``)."""
    base, sep, k = item.rpartition(_VIEW_SEP)
    if sep and k.isdigit():
        return builtin_view(load_image(base), int(k), Path(base).name)
    return load_image(item)


def _read_image_files(
    plan: CalibrationPlan, spec: Preprocessing, quiet: bool
) -> tuple[list[np.ndarray], list[int], int]:
    """Walk the try order until ``count`` images decode; each is preprocessed at once (bounded memory)."""
    crops: list[np.ndarray] = []
    used: list[int] = []
    skipped = 0
    length = min(plan.count, len(plan.items))
    with progress(range(length), length=length, label="decoding calibration images", quiet=quiet) as bar:
        ticks = iter(bar)
        for i, path in enumerate(plan.items):
            try:
                image = _load_item(path)
            except EffdeployError:
                skipped += 1
                continue
            crops.append(preprocess(image, spec)[0])
            used.append(i)
            next(ticks, None)
            if len(used) >= plan.count:
                break
    order = sorted(range(len(used)), key=lambda k: plan.names[used[k]])
    return [crops[k] for k in order], [used[k] for k in order], skipped


def _video_capture(path: Path):
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise EffdeployError(f"OpenCV cannot open video {path}; re-encode it (e.g. H.264 .mp4) or extract frames")
    return cap


def _video_frame_count(path: Path) -> int:
    """Frames in a video; counts by decoding when the container does not say (some .webm/.mkv)."""
    import cv2

    cap = _video_capture(path)
    try:
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        if n <= 0:
            n = 0
            while cap.grab():
                n += 1
    finally:
        cap.release()
    if n <= 0:
        raise EffdeployError(f"video {path} has no frames OpenCV can decode")
    return n


def _frame_index(item: str) -> int:
    return int(item.rpartition(_FRAME_SEP)[2])


def _read_video_frames(
    plan: CalibrationPlan, spec: Preprocessing, quiet: bool
) -> tuple[list[np.ndarray], list[int], int]:
    """Seek to far-apart frames, read close ones sequentially (seeking re-decodes from a keyframe)."""
    import cv2

    path = Path(plan.source)
    wanted = [_frame_index(i) for i in plan.items]
    cap = _video_capture(path)
    frames: list[np.ndarray] = []
    used: list[int] = []
    skipped = 0
    pos = 0
    try:
        with progress(list(enumerate(wanted)), length=len(wanted), label="decoding video frames", quiet=quiet) as it:
            for k, idx in it:
                ok = True
                if idx - pos > 32 or idx < pos:
                    ok = cap.set(cv2.CAP_PROP_POS_FRAMES, idx)
                    pos = idx
                while ok and pos < idx:
                    ok = cap.grab()
                    pos += 1
                ok, frame = cap.read() if ok else (False, None)
                pos += 1
                if not ok or frame is None or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
                    skipped += 1
                    continue
                frames.append(preprocess(frame, spec, bgr=True)[0])  # OpenCV decodes BGR
                used.append(k)
    finally:
        cap.release()
    return frames, used, skipped


def _array_rows(path: Path) -> int:
    arr = _open_array(path)
    if arr.ndim == 3:
        return 1
    return int(arr.shape[0])


def _open_array(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise EffdeployError(f"cannot read calibration array {path}: {e}") from None
    if not isinstance(arr, np.ndarray):
        raise EffdeployError(f"{path} holds no single array; save one with numpy.save")
    return arr


def _load_array(plan: CalibrationPlan, spec: Preprocessing, quiet: bool) -> CalibrationSet:
    """NCHW float (already preprocessed: shape must match the spec) or NHWC uint8 images."""
    path = Path(plan.source)
    arr = _open_array(path)
    rows = [int(i.rpartition(_ROW_SEP)[2]) for i in plan.items]
    if _array_layout(arr, path, spec.resolution) == "images":
        images = arr[None] if arr.ndim == 3 else arr
        with progress(rows, length=len(rows), label="preprocessing calibration images", quiet=quiet) as it:
            frames = [np.ascontiguousarray(images[r]) for r in it]
        data = _preprocess_in_chunks(frames, spec)
    else:
        data = np.ascontiguousarray(arr[rows], dtype=np.float32)
        if not np.isfinite(data).all():
            raise EffdeployError(f"{path} contains NaN or infinite values")
    return _make_set(plan, data, list(range(len(rows))), 0, list(plan.warnings))


def _preprocess_in_chunks(frames: Sequence[np.ndarray], spec: Preprocessing, chunk: int = 64) -> np.ndarray:
    """One float32 block without holding a second full-size copy of the batch."""
    n = len(frames)
    out = np.empty((n, 3, spec.resolution, spec.resolution), dtype=np.float32)
    for s in range(0, n, chunk):
        out[s : s + chunk] = preprocess(list(frames[s : s + chunk]), spec)
    return out
