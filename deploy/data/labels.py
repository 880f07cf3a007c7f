"""Class names: ImageNet-1k's order and names, shipped with the package (imagenet-synsets.tsv
beside this file), and a bundle's own names (``build --labels``, kept as ``labels.txt``)."""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources
from pathlib import Path

from ..errors import EffdeployError

LABELS_FILE = "labels.txt"  # a bundle's class names, one per line (hashed in the manifest like every artifact)


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


def read_labels(path: str | Path) -> tuple[str, ...]:
    """Class names in class order: one name per line, or ImageNet's synset format
    (``n01440764<TAB>tench``, the name after the tab). Blank lines at the end are ignored."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise EffdeployError(f"cannot read labels {p}: {str(e)[:160]}; pass a text file with one class name per line") from None
    while lines and not lines[-1].strip():
        lines.pop()
    names = []
    for i, line in enumerate(lines, 1):
        head, tab, rest = line.partition("\t")
        name = (rest if tab and _SYNSET.match(head.strip()) else line).strip()
        if not name:
            raise EffdeployError(f"labels {p}: line {i} is empty; one class name per line, in class order")
        names.append(name)
    if not names:
        raise EffdeployError(f"labels {p} is empty; one class name per line, in class order")
    return tuple(names)


def check_label_count(names: tuple[str, ...], num_classes: int, path: str | Path) -> None:
    if len(names) != num_classes:
        raise EffdeployError(f"--labels {path} has {len(names)} names and the model has {num_classes} classes; "
                             "give one name per class, in class order")


def labels_text(names: tuple[str, ...]) -> str:
    return "".join(f"{n}\n" for n in names)
