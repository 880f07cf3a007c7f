"""Labelled image sets for verification and accuracy: folders, ImageFolder trees, synset names.

Labels come from an ImageFolder tree (sub-folders named by ImageNet synset, or any names in
sorted order) or from file names that start with a synset (``n01440764_tench.JPEG``).
"""

from __future__ import annotations

import importlib.util
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Sequence, TYPE_CHECKING

import numpy as np

from ..errors import EffdeployError
from .labels import label_from_filename, synset_index
from .preprocess import Preprocessing, load_image, preprocess


if TYPE_CHECKING:
    import numpy as np

    from .preprocess import Preprocessing


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    label: int | None


IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})

def folder_images(root: Path) -> list[str]:
    """Image files under ``root`` (recursive, hidden files and folders skipped), sorted, relative."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for f in filenames:
            if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES:
                out.append(Path(dirpath, f).relative_to(root).as_posix())
    return sorted(out)


def list_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (nested), sorted: the same files a calibration folder offers."""
    folder = Path(folder)
    if not folder.exists():
        raise EffdeployError(f"image folder {folder} does not exist")
    if not folder.is_dir():
        raise EffdeployError(f"{folder} is a file, not a folder of images; pass the folder that holds the images")
    return [folder / n for n in folder_images(folder)]


def labelled_images(folder: str | Path) -> list[LabelledImage]:
    """Every image under ``folder`` with its ImageNet class index where one can be known."""
    folder = Path(folder)
    paths = list_images(folder)
    classes = sorted({p.relative_to(folder).parts[0] for p in paths if len(p.relative_to(folder).parts) > 1})
    synsets = synset_index()
    if classes and all(c in synsets for c in classes):
        by_folder = {c: synsets[c] for c in classes}
    else:
        by_folder = {c: i for i, c in enumerate(classes)}
    out = []
    for p in paths:
        parts = p.relative_to(folder).parts
        label = by_folder.get(parts[0]) if len(parts) > 1 else None
        if label is None:
            label = label_from_filename(p)
        out.append(LabelledImage(p, label))
    return out


def split(items: Sequence[LabelledImage], exclude: Collection[str], count: int | None, seed: int) -> list[LabelledImage]:
    """A deterministic selection of ``count`` items not in ``exclude`` (paths as strings)."""
    excluded = {str(Path(e)) for e in exclude}
    pool = [it for it in items if str(it.path) not in excluded]
    if count is not None and count < len(pool):
        pool = sorted(random.Random(seed).sample(pool, count), key=lambda it: str(it.path))
    return pool


@dataclass(frozen=True, eq=False)
class ReadableImages:
    """The images of a selection that decode, preprocessed, and how many did not."""

    items: tuple[LabelledImage, ...]
    data: np.ndarray
    skipped: tuple[str, ...]  # unreadable files, in the order they were tried

    def warning(self, what: str, source: str) -> str | None:
        if not self.skipped:
            return None
        first = Path(self.skipped[0]).name
        more = f" and {len(self.skipped) - 1} more" if len(self.skipped) > 1 else ""
        return (f"skipped {len(self.skipped)} unreadable {what} image(s) from {source} ({first}{more}: corrupt, "
                f"truncated or not an image); {what} ran on the {len(self.items)} that decode")


def select_readable(items: Sequence[LabelledImage], exclude: Collection[str], count: int | None, seed: int,
                    spec: Preprocessing) -> ReadableImages:
    """:func:`split`, then decode and preprocess; an unreadable image is skipped, counted and
    replaced by one of the images left over (as calibration does), so one corrupt file neither
    aborts a build nor silently shrinks the set. With every image readable, the selection is
    exactly :func:`split`'s."""
    import numpy as np

    from .preprocess import load_image, preprocess

    chosen = split(items, exclude, count, seed)
    picked = {str(it.path) for it in chosen}
    spare = [it for it in split(items, exclude, None, seed) if str(it.path) not in picked]
    random.Random(seed + 1).shuffle(spare)
    queue = list(chosen)
    kept: list[tuple[LabelledImage, np.ndarray]] = []
    skipped: list[str] = []
    while queue:
        it = queue.pop(0)
        try:
            kept.append((it, preprocess(load_image(it.path), spec)[0]))
        except EffdeployError:
            skipped.append(str(it.path))
            if spare:
                queue.append(spare.pop())
    kept.sort(key=lambda k: str(k[0].path))
    res = spec.resolution
    data = np.stack([k[1] for k in kept]) if kept else np.zeros((0, 3, res, res), np.float32)
    return ReadableImages(tuple(k[0] for k in kept), data, tuple(skipped))


def builtin_image_paths() -> list[Path]:
    """The small built-in set of natural images (shipped by scikit-image; see effdeploy.calibration)."""
    root = builtin_root()
    return [root / n for n in builtin_names(root)]


def write_builtin_variants(folder: Path, size: int) -> list[Path]:
    """Four JPEG variants (as is, flipped, cropped, both) of each built-in photo, at most ``size``
    pixels a side: a small real image folder for examples, tests and the bad-input bench."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    photos = [Image.open(p).convert("RGB") for p in builtin_image_paths()]
    out: list[Path] = []
    for variant in range(4):
        for im in photos:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if variant % 2 else im
            if variant >= 2:
                w, h = im.size
                im = im.crop((w // 10, h // 10, w - w // 10, h - h // 10))
            im.thumbnail((size, size))
            out.append(folder / f"img_{len(out):03d}.jpg")
            im.save(out[-1], quality=90)
    return out


# Natural photographs shipped inside the scikit-image wheel (skimage/data/), no download needed.
# Synthetic or text images (color.png's saturated colour wheel, chessboard, logo, page, text, the
# horse silhouette) are left out: they would stretch activation ranges with patterns a camera
# never produces. Grayscale ones are converted to RGB like any grayscale input.
BUILTIN_IMAGES: tuple[str, ...] = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "ihc.png",
    "camera.png",
    "coins.png",
    "moon.png",
    "grass.png",
    "gravel.png",
    "brick.png",
)


def builtin_image_dir() -> Path | None:
    """skimage/data inside the installed wheel, found without importing scikit-image."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        d = Path(root) / "data"
        if d.is_dir():
            return d
    return None


def builtin_root() -> Path:
    root = builtin_image_dir()
    if root is None or not builtin_names(root):
        raise EffdeployError(
            "no calibration data given and scikit-image (whose sample photos are the built-in fallback) is not "
            "installed; pass a folder of images, or pip install scikit-image"
        )
    return root


def builtin_names(root: Path) -> list[str]:
    return sorted(n for n in BUILTIN_IMAGES if (root / n).is_file())
