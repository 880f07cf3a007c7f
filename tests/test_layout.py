"""The package's layout holds what docs/architecture.md promises: stages import only from earlier
stages, the device side pulls in no torch, the root stays small, the documented tree is the real
one, and module paths from the flat layout still import."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO

TOOLS = REPO / "tools"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_no_import_breaks_the_stage_order_and_no_cycle():
    for script in ("layering.py", "import_cycles.py"):
        r = subprocess.run([sys.executable, str(TOOLS / script)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr


def test_the_stage_order_rule():
    layering = _load("layering")
    assert layering.allowed("verify", "export") and not layering.allowed("export", "verify")
    assert layering.allowed("precision", "device") and not layering.allowed("device", "precision")
    assert layering.allowed("runtime", "bundle") and not layering.allowed("runtime", "model")
    assert not layering.allowed("shared", "data") and not layering.allowed("verify", "top")
    assert layering.allowed("top", "model") and not layering.allowed("device", "runtime")


def test_a_backward_import_is_found(tmp_path, monkeypatch):
    """A lazy import of the verify stage from data/ (a copy of the package) is reported."""
    layering = _load("layering")
    for folder in ("deploy", "calibration", "profiles"):
        shutil.copytree(REPO / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    labels = tmp_path / "deploy" / "data" / "labels.py"
    labels.write_text(labels.read_text() + "\n\ndef _late():\n    from ..verify.gate import Budget\n")
    import import_cycles

    monkeypatch.setattr(import_cycles, "ROOTS", {"effdeploy": tmp_path / "deploy",
                                                 "effdeploy.calibration": tmp_path / "calibration",
                                                 "effdeploy.profiles": tmp_path / "profiles"})
    monkeypatch.setattr(layering, "REPO", tmp_path)
    found = layering.violations()
    assert len(found) == 1 and "effdeploy.data.labels (data) imports effdeploy.verify.gate (verify) lazily" in found[0]


def test_device_side_imports_no_torch():
    code = ("import sys; import effdeploy.runtime, effdeploy.runtime.runner, effdeploy.runtime.frames, "
            "effdeploy.runtime.doctor, effdeploy.runtime.benchmark, effdeploy.backends.onnxrt, "
            "effdeploy.backends.timing, effdeploy.backends.ort_safety, effdeploy.profiles, effdeploy.bundle, "
            "effdeploy.data.preprocess, effdeploy.data.datasets, effdeploy.data.frames, effdeploy.data.labels; "
            "from effdeploy.runtime import Runner; "
            "sys.exit('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_root_holds_at_most_eight_modules():
    root = sorted(p.name for p in (REPO / "deploy").glob("*.py") if p.name != "__init__.py")
    assert len(root) <= 8, root


def test_the_documented_tree_is_the_real_one():
    text = (REPO / "docs" / "architecture.md").read_text()
    block = text.split("## The tree", 1)[1].split("```", 2)[1]
    documented = set(re.findall(r"^  (\S+)", block, re.M))
    real = {p.name for p in (REPO / "deploy").glob("*.py")}
    real |= {p.name + "/" for p in (REPO / "deploy").iterdir() if (p / "__init__.py").is_file()}
    assert documented == real


def test_flat_layout_paths_still_import():
    from effdeploy.data.preprocess import preprocess
    from effdeploy.precision.qdq import quantize
    from effdeploy.precision.transforms import shift_skewed_inputs
    from effdeploy.runtime.frames import FrameRouter
    from effdeploy.runtime.runner import Runner

    code = ("import effdeploy.runtime, effdeploy.model, effdeploy.int8.transforms as t; "
            "from effdeploy.preprocess import preprocess; from effdeploy.precision import quantize; "
            "from effdeploy.framegraph import FrameRouter; from effdeploy.cli import main; "
            "print(effdeploy.runtime.Runner.__module__, effdeploy.model.build_model.__module__, "
            "t.shift_skewed_inputs.__module__, preprocess.__module__, quantize.__module__, FrameRouter.__module__, "
            "main.__module__)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [Runner.__module__, "effdeploy.model.network", shift_skewed_inputs.__module__,
                                preprocess.__module__, quantize.__module__, FrameRouter.__module__,
                                "effdeploy.commands"]
