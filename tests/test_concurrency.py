"""Builds are processes that meet: two at once sharing one cache, two at once into one --out, and
a cache entry damaged on disk after it was written. Real processes, real builds, real entries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from effdeploy.bundle import load_bundle
from effdeploy.cache import ENTRY_MAGIC, load, store

INT8 = ["build", "--phi", "0", "--variant", "lite", "--weights", "pretrained", "--resolution", "64", "--precision",
        "int8", "--profile", "cpu", "--calib-images", "8", "--reconstruct-images", "4", "--allow-parity-failure"]


def _start(args: list[str], cache: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "effdeploy", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "EFFDEPLOY_CACHE_DIR": str(cache)})


def _entries(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("*") if p.is_file()]


def test_store_and_load_check_each_entry(tmp_path: Path, capsys) -> None:
    from effdeploy.report import attach_cli_output

    path = tmp_path / "kind" / "e.json"
    assert store(path, '{"a": 1}') and load(path) == b'{"a": 1}'
    raw = path.read_bytes()
    assert raw.startswith(ENTRY_MAGIC) and raw.endswith(b'{"a": 1}')
    damaged = {"bit flip": raw[:-2] + bytes([raw[-2] ^ 1]) + raw[-1:], "truncated": raw[:-3],
               "header only": raw[: len(ENTRY_MAGIC) + 10], "empty": b""}
    for what, data in damaged.items():
        path.write_bytes(data)
        assert load(path) is None and not path.exists(), what
    path.write_bytes(b'{"a": 1}')  # an entry of the format before checksums: a miss, removed quietly
    assert load(path) is None and not path.exists()
    assert load(tmp_path / "kind" / "missing.json") is None


@pytest.mark.slow
def test_two_builds_sharing_one_cache_at_once(tmp_path: Path) -> None:
    """Both end complete and identical; every entry they left passes its check and no temp file
    is left; a third build reuses them and writes the same graph."""
    cache = tmp_path / "cache"
    procs = [_start([*INT8, "--out", str(tmp_path / f"b{i}"), "--json"], cache) for i in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    models = {(tmp_path / f"b{i}" / "model.onnx").read_bytes() for i in range(2)}
    assert len(models) == 1
    files = _entries(cache)
    assert files and not [p for p in files if p.name.startswith(".")], files
    for p in files:
        if p.parent.name != "modules":
            assert load(p) is not None, p  # (a damaged one would have been removed by this load)
    third = _start([*INT8, "--out", str(tmp_path / "b2"), "--json"], cache)
    out, err = third.communicate(timeout=600)
    assert third.returncode == 0, err
    assert (tmp_path / "b2" / "model.onnx").read_bytes() in models
    assert json.loads(out)["timings_s"]  # the summary of a build that ran
    m = json.loads((tmp_path / "b2" / "manifest.json").read_text())
    assert m["quantization"]["calibration"]["cache_hit"] is True


def test_two_builds_into_one_out_at_once_leave_one_whole_bundle(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    cache = tmp_path / "cache"
    fp32 = ["build", "--phi", "0", "--resolution", "64", "--profile", "cpu", "--out", str(out)]
    procs = [_start(fp32, cache) for _ in range(3)]
    codes = [p.wait(timeout=600) for p in procs]
    assert codes == [0, 0, 0], [p.stderr.read() for p in procs]
    load_bundle(out)  # every artifact present with its hash: one bundle, not a mix
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "cache"]


_HOLD_SWAP = r"""
import sys, time
from pathlib import Path
from effdeploy.bundle import _swap_lock
with _swap_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(2.0)
"""


def test_the_final_swap_waits_for_another_builds_swap(tmp_path: Path) -> None:
    from effdeploy.bundle import staging_dir, write_manifest, Manifest
    from effdeploy.model.spec import model_spec
    from effdeploy.profiles import load_profile

    out = tmp_path / "bundle"
    child = subprocess.Popen([sys.executable, "-c", _HOLD_SWAP, str(out)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "locked"
    t = time.perf_counter()
    with staging_dir(out) as tmp:
        (tmp / "model.onnx").write_bytes(b"v1")
        write_manifest(tmp, Manifest(model=model_spec(0, "b", resolution=64), precision="fp32",
                                     profile=load_profile("cpu").to_dict(), weights={"source": "random"}))
    waited = time.perf_counter() - t
    child.wait(timeout=30)
    assert waited >= 1.0 and (out / "model.onnx").read_bytes() == b"v1"


@pytest.mark.slow
def test_a_damaged_cache_entry_is_recomputed_with_a_note(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = _start([*INT8, "--out", str(tmp_path / "a")], cache)
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    flipped = []
    for p in _entries(cache):
        if p.parent.name in ("reference", "calibration", "quantized"):
            raw = bytearray(p.read_bytes())
            raw[len(raw) // 2] ^= 0x10
            p.write_bytes(bytes(raw))
            flipped.append(p)
    assert len(flipped) >= 3
    again = _start([*INT8, "--out", str(tmp_path / "b")], cache)
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    assert "discarded a damaged cache entry" in err
    assert (tmp_path / "a" / "model.onnx").read_bytes() == (tmp_path / "b" / "model.onnx").read_bytes()
    # what the second build read (its reference logits and calibration; the quantizer's graphs are
    # only read when the method choice is not cached) was recomputed and stored whole again
    read = [p for p in flipped if p.parent.name in ("reference", "calibration")]
    assert read and all(load(p) is not None for p in read), [str(p.relative_to(cache)) for p in read]
