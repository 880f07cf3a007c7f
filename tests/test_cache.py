"""The one build cache: every stage's folder under one root, `effdeploy cache info` and `clear`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", "effdeploy", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


def test_every_stage_folder_is_under_the_one_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from effdeploy.cache import KINDS, cache_folder, cache_root
    from effdeploy.calibration import default_cache_dir
    from effdeploy.export.exporter import export_cache_dir

    monkeypatch.setenv("EFFDEPLOY_CACHE_DIR", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    assert default_cache_dir() == cache_folder("calibration") == tmp_path / "c" / "calibration"
    assert export_cache_dir() == tmp_path / "c" / "export"
    assert {cache_folder(k).parent for k in KINDS} == {tmp_path / "c"}
    with pytest.raises(ValueError):
        cache_folder("nonsense")


def test_cache_info_and_clear_on_a_real_build_cache(tiny_bundle: Path, tmp_path: Path) -> None:
    """A copy of the session's build cache after a real build (export and logits entries): info
    counts them, clear of one kind removes only that kind, clear of all leaves foreign files alone."""
    import os
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(os.environ["EFFDEPLOY_CACHE_DIR"], cache)  # the session's cache stays warm for other tests
    env = {"EFFDEPLOY_CACHE_DIR": str(cache)}
    (cache / "mine.txt").write_text("not the cache's")
    info = run_cli("cache", "info", "--json", env=env)
    assert info.returncode == 0, info.stderr
    kinds = {k["kind"]: k for k in json.loads(info.stdout)["kinds"]}
    assert kinds["export"]["entries"] >= 1 and kinds["export"]["bytes"] > 1e6
    assert kinds["reference"]["entries"] >= 1
    table = run_cli("cache", "info", env=env)
    assert table.returncode == 0 and "MB" in table.stdout and "export" in table.stdout

    cleared = run_cli("cache", "clear", "export", "--json", env=env)
    assert cleared.returncode == 0, cleared.stderr
    assert [r["kind"] for r in json.loads(cleared.stdout)["removed"]] == ["export"]
    after = {k["kind"]: k["entries"] for k in json.loads(run_cli("cache", "info", "--json", env=env).stdout)["kinds"]}
    assert after["export"] == 0 and after["reference"] == kinds["reference"]["entries"]

    assert run_cli("cache", "clear", env=env).returncode == 0
    assert [p.name for p in cache.iterdir()] == ["mine.txt"]


def test_cache_clear_of_an_unknown_kind_is_one_line(tmp_path: Path) -> None:
    proc = run_cli("cache", "clear", "exports", env={"EFFDEPLOY_CACHE_DIR": str(tmp_path)})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("effdeploy: error: unknown cache kind 'exports'") and "export" in lines[0]
