"""The sensitivity fallback: blocks are kept out of INT8 in drift order until the budget holds."""

import json

import onnx
import pytest

from conftest import read_manifest, run_cli
from effdeploy.precision import config_for, quantize, calibration_tensors, block_of
from effdeploy.quantize_stage import sensitivity_order

LITE = ["--phi", "0", "--variant", "lite", "--weights", "pretrained", "--resolution", "96"]


def test_kept_blocks_leave_int8(tiny_bundle):
    from dataclasses import replace

    from effdeploy.calibration import collect_statistics, ranges_from_statistics
    from effdeploy.datasets import builtin_image_paths
    from effdeploy.preprocess import preprocess_files
    from effdeploy.bundle import load_bundle

    bundle = load_bundle(tiny_bundle)
    fp32 = onnx.load(str(bundle.model_path))
    cfg = replace(config_for(True, "max"), keep_blocks=("blocks.0.0", "blocks.3.1"))
    x = preprocess_files(builtin_image_paths()[:4], bundle.manifest.preprocessing)
    ranges = ranges_from_statistics(collect_statistics(fp32, calibration_tensors(fp32, cfg), x), "max").ranges
    q = quantize(fp32, ranges, cfg)
    dq_out = {n.output[0] for n in q.graph.node if n.op_type == "DequantizeLinear"}
    convs = [n for n in q.graph.node if n.op_type == "Conv"]
    for n in convs:
        quantized = n.input[0] in dq_out
        if block_of(n.name) in cfg.keep_blocks or ".se." in n.name:
            assert not quantized, n.name
        else:
            assert quantized, n.name


def test_sensitivity_order_by_added_error():
    drift = [{"block": "blocks.0.0", "added": 0.01}, {"block": "blocks.1.0", "added": 0.05},
             {"block": "blocks.1.1", "added": -0.01}, {"block": "blocks.2.0", "added": 0.02}]
    assert sensitivity_order(drift) == ["blocks.1.0", "blocks.2.0", "blocks.0.0", "blocks.1.1"]


def test_repair_loop_runs_and_reports(tmp_path):
    """An unreachable budget: every step is tried in drift order, then the build fails loudly."""
    out = tmp_path / "b"
    proc = run_cli("build", *LITE, "--precision", "int8", "--profile", "cpu", "--calib-images", "8",
                   "--calib-method", "max", "--max-abs", "1e-9", "--out", str(out))
    assert proc.returncode == 3, proc.stderr
    m = read_manifest(out)
    repair = m["quantization"]["repair"]
    assert repair["held"] is False and len(repair["tried"]) == 8
    drift_order = sensitivity_order(m["quantization"]["drift"])  # drift after the last attempt
    kept = repair["kept_blocks"]
    assert len(kept) == 8 and len(set(kept)) == 8
    assert [t["keep_blocks"] for t in repair["tried"]][-1] == kept
    assert 0 < repair["macs_share_kept"] < 1
    assert m["quantization"]["config"]["keep_blocks"] == kept and drift_order
