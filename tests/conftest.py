"""Shared fixtures. Real data lives in ../shared beside the repository (CI has it, a user's
fresh clone does not): tests that need it skip with the reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Calibration caches go to a per-run folder, never the user's ~/.cache (subprocesses inherit it).
if "EFFDEPLOY_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["EFFDEPLOY_CACHE_DIR"] = tempfile.mkdtemp(prefix="effdeploy-test-cache-")
# As the CLI does (effdeploy.commands.main), before anything here imports torch: two test workers
# share the cores, and torch's spinning OpenMP threads would starve each other's builds.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
SHARED = REPO.parent / "shared" / "data"
IMAGENET_SAMPLE = SHARED / "imagenet-sample"


@pytest.fixture(scope="session")
def imagenet_sample() -> Path:
    if not IMAGENET_SAMPLE.is_dir():
        pytest.skip(f"needs the shared ImageNet sample at {IMAGENET_SAMPLE} (present in CI, absent in a fresh clone)")
    return IMAGENET_SAMPLE


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real console entry point in a subprocess (what a user types)."""
    return subprocess.run(
        [sys.executable, "-m", "effdeploy", *args], capture_output=True, text=True, cwd=cwd,
        env={**os.environ, **(env or {})}, timeout=900,
    )


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real fp32 bundle of B0 at 64 px (fast), built through the public pipeline; random weights,
    so its status is benchmark-only (numerical checks passed, no accuracy claim)."""
    from effdeploy.pipeline import BuildRequest, build_bundle
    from effdeploy.profiles import load_profile

    out = tmp_path_factory.mktemp("bundles") / "b0-64"
    build_bundle(BuildRequest(phi=0, resolution=64, profile=load_profile("cpu"), out=out, quiet=True))
    return out


@pytest.fixture(scope="session")
def tiny_trained_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A verified fp32 bundle of pretrained Lite0 at 64 px: trained weights, so an accuracy claim."""
    from effdeploy.pipeline import BuildRequest, build_bundle
    from effdeploy.profiles import load_profile

    out = tmp_path_factory.mktemp("bundles") / "lite0-64"
    build_bundle(BuildRequest(phi=0, variant="lite", weights="pretrained", resolution=64, profile=load_profile("cpu"),
                              out=out, quiet=True))
    return out


def read_manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())
