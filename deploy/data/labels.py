"""ImageNet-1k class order and names, shipped with the package (effdeploy/data/imagenet-synsets.tsv)."""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources
from pathlib import Path


_SYNSET = re.compile(r"^(n\d{8})")


@lru_cache(maxsize=1)
def imagenet_synsets() -> tuple[tuple[str, str], ...]:
    """(synset, name) in the standard 1000-class order."""
    text = resources.files("effdeploy.data").joinpath("imagenet-synsets.tsv").read_text(encoding="utf-8")
    rows = [line.split("\t", 1) for line in text.splitlines() if line.strip()]
    return tuple((s.strip(), n.strip()) for s, n in rows)


@lru_cache(maxsize=1)
def synset_index() -> dict[str, int]:
    return {s: i for i, (s, _) in enumerate(imagenet_synsets())}


def imagenet_labels() -> list[str]:
    return [n for _, n in imagenet_synsets()]


def label_from_filename(path: str | Path) -> int | None:
    """Files named ``n01440764_tench.JPEG`` carry their class; anything else is unlabelled."""
    m = _SYNSET.match(Path(path).name)
    return synset_index().get(m.group(1)) if m else None
