"""Class names a user gives (``build --labels``): read in both formats, checked against the
class count before any work, kept in the bundle (hashed), and used by the Runner and classify."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import read_manifest, run_cli
from effdeploy.data.labels import read_labels
from effdeploy.errors import EffdeployError

NAMES = ("cat", "dog", "forklift", "pallet jack", "person")


def test_one_name_per_line_or_imagenet_synset_lines(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("cat\ndog\n  pallet jack  \n\n")  # names trimmed, blank lines at the end ignored
    assert read_labels(plain) == ("cat", "dog", "pallet jack")
    tsv = tmp_path / "synsets.tsv"
    tsv.write_text("n01440764\ttench\nn01443537\tgoldfish\n")
    assert read_labels(tsv) == ("tench", "goldfish")
    gap = tmp_path / "gap.txt"
    gap.write_text("cat\n\ndog\n")
    with pytest.raises(EffdeployError, match="line 2 is empty"):
        read_labels(gap)
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(EffdeployError, match="is empty"):
        read_labels(tmp_path / "empty.txt")


def test_a_wrong_count_is_refused_before_any_work(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(NAMES[:3]) + "\n")
    proc = run_cli("build", "--phi", "0", "--resolution", "64", "--num-classes", "5", "--labels", str(labels),
                   "--out", str(tmp_path / "b"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"effdeploy: error: --labels {labels} has 3 names and the model has 5 classes; "
        "give one name per class, in class order")
    assert not (tmp_path / "b").exists()


def test_labels_flow_to_the_runner_and_classify(tmp_path):
    from effdeploy.runtime import Runner

    labels = tmp_path / "names.txt"
    labels.write_text("\n".join(NAMES) + "\n")
    out = tmp_path / "b"
    proc = run_cli("build", "--phi", "0", "--resolution", "64", "--num-classes", "5", "--labels", str(labels),
                   "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    m = read_manifest(out)
    assert m["labels"] == "labels.txt" and (out / "labels.txt").read_text() == "".join(f"{n}\n" for n in NAMES)
    assert m["artifacts"]["labels.txt"]["bytes"] == (out / "labels.txt").stat().st_size  # hashed like the model
    frame = np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8)
    with pytest.warns(UserWarning, match="benchmark-only"), Runner.open(out) as r:
        assert r.labels == NAMES
        logits = r.infer(r.preprocess(frame))[0]
        best = r.classify(frame, top_k=1)[0]
    assert best.label == NAMES[int(np.argmax(logits))]
    from PIL import Image

    Image.fromarray(frame).save(tmp_path / "frame.png")
    proc = run_cli("classify", str(out), str(tmp_path / "frame.png"), "--top-k", "5", "--json")
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    first = shown[0] if isinstance(shown, list) else shown["results"][0]
    assert sorted(p["label"] for p in first["top_k"]) == sorted(NAMES)
    (out / "labels.txt").write_text("".join(f"{n}\n" for n in reversed(NAMES)))  # changed after the build
    proc = run_cli("classify", str(out), str(tmp_path / "frame.png"))
    assert proc.returncode != 0 and "labels.txt" in proc.stderr and "Traceback" not in proc.stderr
