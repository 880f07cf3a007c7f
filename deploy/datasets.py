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

@dataclass(frozen=True)
class LabelledImage:
    path: Path
    label: int | None


def list_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (nested), sorted; the calibration sources define what counts."""
    from .calibration import list_items, source_kind

    folder = Path(folder)
    if not folder.exists():
        raise EffdeployError(f"image folder {folder} does not exist")
    if source_kind(folder) != "folder":
        raise EffdeployError(f"{folder} is not a folder of images")
    return [Path(p) for p in list_items(folder)]


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


def builtin_image_paths() -> list[Path]:
    """The small built-in set of natural images (shipped by scikit-image; see effdeploy.calibration)."""
    from .calibration import list_items

    return [Path(p) for p in list_items(None)]
