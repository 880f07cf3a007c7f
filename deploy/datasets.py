"""Labelled image sets for verification and accuracy: folders, ImageFolder trees, synset names.

Labels come from an ImageFolder tree (sub-folders named by ImageNet synset, or any names in
sorted order) or from file names that start with a synset (``n01440764_tench.JPEG``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Sequence

from .errors import EffdeployError
from .labels import label_from_filename, synset_index

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    label: int | None


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.exists():
        raise EffdeployError(f"image folder {folder} does not exist")
    if not folder.is_dir():
        raise EffdeployError(f"{folder} is not a folder of images")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


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


# Natural colour photographs shipped inside the scikit-image wheel (skimage/data); no download.
BUILTIN_IMAGES = (
    "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
    "motorcycle_right.png", "hubble_deep_field.jpg", "retina.jpg", "ihc.png", "color.png",
    "logo.png", "grass.png", "gravel.png", "brick.png", "camera.png", "moon.png", "coins.png",
    "cell.png", "clock_motion.png",
)


def builtin_image_paths() -> list[Path]:
    """A small built-in set of natural images from scikit-image, for runs without data."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("skimage")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise EffdeployError(
            "no image data given and scikit-image (which ships the built-in sample images) is not installed; "
            "pass --calib-data/--verify-data DIR or pip install 'effdeploy[build]'"
        )
    root = Path(list(spec.submodule_search_locations)[0]) / "data"
    return [root / n for n in BUILTIN_IMAGES if (root / n).is_file()]
