"""``effdeploy compile``: one line for every refusal, the dry run's plan, the bundle's profile by
default. Nothing here needs TensorRT."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_errors import assert_one_line_error, run_cli
from tiny_bundle import bundle, make_bundle  # noqa: F401  (bundle: a fixture)

from effdeploy.backends.tensorrt.compat import MISSING_TENSORRT, import_tensorrt
from effdeploy.backends.tensorrt.plan import compile_hint
from effdeploy.bundle import STATUS_UNVERIFIED
from effdeploy.profiles import load_profile

HAS_TRT = import_tensorrt() is not None

# --- the command line: one line for every refusal ------------------------------------------------


def test_cli_refusals_are_one_line(tmp_path: Path):
    fp32 = make_bundle(tmp_path / "fp32")
    int8 = make_bundle(tmp_path / "int8", precision="int8")
    fp16 = make_bundle(tmp_path / "fp16", precision="fp16")
    unver = make_bundle(tmp_path / "unverified", status=STATUS_UNVERIFIED)
    assert_one_line_error(run_cli("compile", str(int8), "--profile", "jetson-nano"), "no INT8 kernels")
    assert_one_line_error(run_cli("compile", str(fp16), "--profile", "jetson-orin", "--dla-core", "0",
                                  "--trt-version", "11.2"), "DLA is unavailable in TensorRT 11.0-11.3")
    assert_one_line_error(run_cli("compile", str(fp32), "--profile", "jetson-orin", "--trt-version", "11.0"),
                          "JetPack 6")
    assert_one_line_error(run_cli("compile", str(fp32), "--profile", "jetson-orin", "--dla-core", "0",
                                  "--trt-version", "10.3"), "DLA has no FP32 kernels")
    assert_one_line_error(run_cli("compile", str(unver), "--profile", "jetson-orin", "--trt-version", "10.3"),
                          "not verified")
    assert_one_line_error(run_cli("compile", str(fp16), "--profile", "jetson-xavier-nx"), "TensorRT >= 10.0")
    assert_one_line_error(run_cli("compile", str(fp32), "--profile", "jetson-orin", "--batch", "8,1,1"), "--batch")
    assert_one_line_error(run_cli("compile", str(fp32), "--profile", "jetson-orin", "--trt-version", "ten"),
                          "not a TensorRT version")
    assert_one_line_error(run_cli("compile", str(tmp_path / "missing"), "--profile", "jetson-orin"), "does not exist")


@pytest.mark.skipif(HAS_TRT, reason="checks the no-TensorRT message; TensorRT is installed here")
def test_cli_without_tensorrt_prints_the_command_for_the_target(bundle: Path):
    line = assert_one_line_error(run_cli("compile", str(bundle), "--profile", "jetson-orin"), MISSING_TENSORRT)
    assert compile_hint(bundle, load_profile("jetson-orin")) in line
    # Refusals that need no TensorRT still come first.
    assert_one_line_error(run_cli("compile", str(bundle), "--profile", "jetson-orin", "--dla-core", "0"),
                          "DLA has no FP32 kernels")


def test_cli_dry_run_prints_the_plan(bundle: Path):
    r = run_cli("compile", str(bundle), "--profile", "jetson-orin", "--trt-version", "10.3", "--batch", "1,2,4",
                "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "4096 MiB" in r.stdout and "1 / 2 / 4" in r.stdout and "dry run" in r.stderr
    assert "workspace_mb" not in r.stdout and "None" not in r.stdout and "(3, " not in r.stdout  # no raw fields
    r = run_cli("compile", str(bundle), "--profile", "a100", "--trt-version", "11.4", "--hardware-compat",
                "--version-compatible", "--dry-run", "--json")
    plan = json.loads(r.stdout)["build_plan"]
    assert plan["hardware_compat"] == "ampere_plus" and plan["version_compatible"] is True
    assert plan["profile"] == "a100" and plan["trt_version"] == "11.4.0"


def test_cli_uses_the_bundles_profile_by_default(tmp_path: Path):
    b = make_bundle(tmp_path / "nx", precision="fp16", profile="jetson-orin-nx")
    r = run_cli("compile", str(b), "--trt-version", "10.3", "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["build_plan"]["profile"] == "jetson-orin-nx"
