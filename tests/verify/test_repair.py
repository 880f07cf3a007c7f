"""The sensitivity fallback: blocks are kept out of INT8 in drift order until the budget holds."""

import json

import numpy as np

import onnx
import pytest

from conftest import REPO, read_manifest, run_cli
from effdeploy.precision.qdq import config_for, quantize, calibration_tensors
from effdeploy.verify.repair import sensitivity_order

LITE = ["--phi", "0", "--variant", "lite", "--weights", "pretrained", "--resolution", "96"]


def test_kept_blocks_leave_int8(tiny_bundle):
    from dataclasses import replace

    from effdeploy.calibration import collect_statistics, ranges_from_statistics
    from effdeploy.data.datasets import builtin_image_paths
    from effdeploy.data.preprocess import preprocess_files
    from effdeploy.bundle import load_bundle

    bundle = load_bundle(tiny_bundle)
    fp32 = onnx.load(str(bundle.model_path))
    cfg = replace(config_for(True, "max"), keep_blocks=("blocks.0.0", "blocks.3.1"))
    x = preprocess_files(builtin_image_paths()[:4], bundle.manifest.preprocessing)
    ranges = ranges_from_statistics(collect_statistics(fp32, calibration_tensors(fp32, cfg), x), "max").ranges
    q = quantize(fp32, ranges, cfg)
    dq_out = {n.output[0] for n in q.graph.node if n.op_type == "DequantizeLinear"}
    convs = [n for n in q.graph.node if n.op_type == "Conv"]
    float_convs = [n.name for n in convs if n.input[0] not in dq_out]
    # B0 by hand: 81 convs (stem, head, 4 in blocks.0.0, 5 in each of the other 15 blocks), 32 of them
    # in the SE paths; kept: blocks.0.0's dw + project and blocks.3.1's expand + dw + project
    assert len(convs) == 81 and len(float_convs) == 32 + 2 + 3
    kept = [c for c in float_convs if c.startswith(("/blocks.0.0.", "/blocks.3.1.")) and ".se." not in c]
    assert len(kept) == 5, float_convs


def test_sensitivity_order_by_added_error():
    drift = [{"block": "blocks.0.0", "added": 0.01}, {"block": "blocks.1.0", "added": 0.05},
             {"block": "blocks.1.1", "added": -0.01}, {"block": "blocks.2.0", "added": 0.02}]
    assert sensitivity_order(drift) == ["blocks.1.0", "blocks.2.0", "blocks.0.0", "blocks.1.1"]


def test_without_a_held_count_the_fewest_blocks_at_the_best_agreement():
    from effdeploy.verify.repair import fewest_at_best

    assert fewest_at_best(0.90, {1: 0.91, 2: 0.93, 3: 0.92, 8: 0.93, 16: 0.93}) == 2
    assert fewest_at_best(0.90, {8: 0.95, 1: 0.91, 16: 0.95, 4: 0.95}) == 4  # order of trying does not matter
    assert fewest_at_best(0.95, {1: 0.94, 2: 0.95, 3: 0.93}) == 0  # a tie with all-INT8 keeps all-INT8
    assert fewest_at_best(-1.0, {}) == 0


@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 16, 23])
def test_kept_count_search_finds_the_fewest_blocks(n):
    """Monotone budgets: the smallest count that holds, one by one up to 8, then by bisection."""
    import math

    from effdeploy.verify.repair import LINEAR_KEPT_BLOCKS, kept_count_search

    for need in range(1, n + 2):  # need > n: not even every block is enough
        held, tried = kept_count_search(n, lambda k: k >= need)
        assert held == (need if need <= n else None)
        assert len(tried) == len(set(tried)) and all(1 <= k <= n for k in tried)
        assert tried[:min(need, LINEAR_KEPT_BLOCKS, n)] == list(range(1, min(need, LINEAR_KEPT_BLOCKS, n) + 1))
        assert len(tried) <= LINEAR_KEPT_BLOCKS + 2 * math.ceil(math.log2(max(n, 2)))
    assert kept_count_search(0, lambda k: True) == (None, [])


def test_kept_count_search_keeps_a_small_count_that_holds_through_noise():
    """Noise: 5 holds, 6-8 miss again; one-by-one finds 5 where bisection from 16 would not."""
    from effdeploy.verify.repair import kept_count_search

    held, tried = kept_count_search(16, lambda k: k == 5 or k >= 12)
    assert (held, tried) == (5, [1, 2, 3, 4, 5])
    held, tried = kept_count_search(16, lambda k: k >= 12)
    assert held == 12 and tried[:9] == [1, 2, 3, 4, 5, 6, 7, 8, 16]


def test_blocks_within_the_macs_cap():
    from effdeploy.verify.repair import blocks_within

    shares = {"a": 0.3, "b": 0.15, "c": 0.1, "d": 0.2}
    assert blocks_within(["a", "b", "c", "d"], shares, 0.5) == 2  # a+b = 0.45; +c = 0.55 is over
    assert blocks_within(["c", "b", "a", "d"], shares, 0.55) == 3
    assert blocks_within(["d", "a"], shares, 0.1) == 0
    assert blocks_within(["a", "b", "c", "d"], shares, 1.0) == 4


@pytest.mark.parametrize("cap", [None, "100"])
def test_repair_loop_runs_and_reports(tmp_path, cap):
    """An unreachable budget: 1..8 blocks, then as many as the --max-kept-macs cap allows (all of
    them at 100 %), then the build fails loudly. What it keeps is the fewest blocks at the best
    agreement on the selection split, none when no count beat all-INT8 there."""
    out = tmp_path / "b"
    extra = ["--max-kept-macs", cap] if cap else []
    proc = run_cli("build", *LITE, "--precision", "int8", "--profile", "cpu", "--calib-images", "8",
                   "--calib-method", "max", "--max-abs", "1e-9", "--out", str(out), *extra)
    assert proc.returncode == 3, proc.stderr
    assert "--max-kept-macs" in proc.stderr and "did not meet it" in proc.stderr
    m = read_manifest(out)
    repair = m["quantization"]["repair"]
    blocks = {r["block"] for r in m["quantization"]["drift"]}
    assert len(blocks) == 16  # Lite0's MBConv blocks
    counts = [len(t["keep_blocks"]) for t in repair["tried"]]
    kept = repair["kept_blocks"]
    assert repair["held"] is False
    tried = [t["keep_blocks"] for t in repair["tried"]]
    longest = max(tried, key=len)
    assert all(t == longest[:len(t)] for t in tried)  # prefixes of one order
    evidence = repair.get("evidence")
    if evidence is None:  # nothing was judged: all-INT8 stands
        assert kept == []
    else:  # a candidate judged against all-INT8 on the same images, kept only on evidence
        assert evidence["keep_blocks"] in tried and kept == (evidence["keep_blocks"] if evidence["repair"] else [])
    assert m["quantization"]["config"]["keep_blocks"] == kept
    # What the bundle's graph holds in float, read from the graph itself: the kept blocks' convs
    # (not their SE convs, float anyway) take no dequantized input, every other block's do.
    graph = onnx.load(str(out / "model.onnx"))
    dq_out = {n.output[0] for n in graph.graph.node if n.op_type == "DequantizeLinear"}
    float_blocks = {".".join(n.name[1:].split(".")[:3]) for n in graph.graph.node
                    if n.op_type == "Conv" and n.name.startswith("/blocks.") and ".se." not in n.name
                    and n.input[0] not in dq_out}
    assert float_blocks == set(kept)
    if cap:
        assert counts == [1, 2, 3, 4, 5, 6, 7, 8, 16] and set(longest) == blocks
    else:
        assert repair["max_kept_macs_pct"] == 50 and repair["blocks_within_cap"] == len(longest) < 16
        assert counts[: min(8, len(longest))] == list(range(1, min(8, len(longest)) + 1))


def _logits(n: int = 224, classes: int = 1000, seed: int = 0):
    """Reference logits with trained-like margins (one class well ahead on most images)."""
    rng = np.random.default_rng(seed)
    ref = rng.normal(0, 1, (n, classes))
    ref[np.arange(n), rng.integers(0, classes, n)] += rng.uniform(2, 8, n)
    return ref.astype(np.float32), rng


def test_a_two_image_difference_does_not_repair():
    """All-INT8 and the candidate have the same error everywhere but on two images, where only the
    candidate keeps the reference's top-1: 0.9 pt of agreement on 224 images, not resolved."""
    from effdeploy.verify.repair import repair_evidence

    ref, rng = _logits()
    noise = rng.normal(0, 0.5, ref.shape).astype(np.float32)
    all_int8, candidate = ref + noise, ref + noise
    for i in (0, 1):
        top = ref[i].argmax()
        all_int8[i, top] -= 20  # all-INT8 loses these two images
    ev = repair_evidence(ref, all_int8, candidate)
    assert ev.flips == (2, 0) and ev.agreement_candidate > ev.agreement_all_int8
    assert ev.kl_candidate < ev.kl_all_int8  # a gain in the mean, carried by two images
    assert not ev.repair and ev.kl_gain_ci95[0] <= 0 and "not resolved" in ev.reason
    assert ev.flips_p == 0.5  # 2:0 happens by chance half the time


def test_a_consistent_gain_repairs_and_noise_alone_does_not():
    from effdeploy.verify.repair import repair_evidence

    ref, rng = _logits(seed=1)
    all_int8 = ref + rng.normal(0, 0.6, ref.shape).astype(np.float32)
    better = ref + rng.normal(0, 0.3, ref.shape).astype(np.float32)  # half the error on every image
    ev = repair_evidence(ref, all_int8, better)
    assert ev.repair and ev.kl_gain_ci95[0] > 0 and ev.kl_candidate < 0.5 * ev.kl_all_int8
    same = ref + rng.normal(0, 0.6, ref.shape).astype(np.float32)  # another draw of the same error
    assert not repair_evidence(ref, all_int8, same).repair


def test_mcnemar_p_is_the_exact_binomial():
    """Against values computed by hand: 2:0 -> 2 x 1/4; 21:4 -> 2 x P(X <= 4 | 25, 1/2)."""
    from math import comb

    from effdeploy.verify.repair import mcnemar_p

    assert mcnemar_p(2, 0) == 0.5 and mcnemar_p(0, 0) == 1.0 and mcnemar_p(3, 3) == 1.0
    assert mcnemar_p(21, 4) == pytest.approx(2 * (1 + 25 + 300 + 2300 + 12650) / 2 ** 25) == mcnemar_p(4, 21)
    assert comb(25, 4) == 12650 and mcnemar_p(21, 4) < 0.001


def test_many_flips_repair_where_a_few_images_carry_huge_kl():
    """The B0 case: 21 images agree only with the candidate, 4 only with all-INT8, and the candidate's
    KL is lower on most images but enormous on a few, so the KL interval includes zero. The flips
    resolve it; with the flips the other way round nothing is repaired."""
    from effdeploy.verify.repair import repair_evidence

    ref, rng = _logits(seed=2)
    noise = rng.normal(0, 0.3, ref.shape).astype(np.float32)
    all_int8, candidate = ref + 2 * noise, ref + noise
    top = ref.argmax(1)
    for i in range(21):
        all_int8[i, top[i]] -= 30  # only the candidate agrees here
    for i in range(21, 25):
        candidate[i, top[i]] -= 30  # only all-INT8 agrees here
    for i in range(25, 29):
        candidate[i] = ref[i] * -4  # a few images with huge candidate KL: the interval reaches below 0
    ev = repair_evidence(ref, all_int8, candidate)
    assert ev.flips[0] >= 21 and ev.flips[1] >= 4 and ev.flips_p < 0.01
    assert ev.kl_gain_ci95[0] <= 0 < ev.kl_all_int8 - ev.kl_candidate, ev
    assert ev.repair and "McNemar" in ev.reason
    reverse = repair_evidence(ref, candidate, all_int8)  # the same images, roles swapped
    assert not reverse.repair


DISTILLED_B = REPO.parent / "shared" / "models" / "efficientnet-b0-distilled-b.pth"


@pytest.mark.slow
def test_repair_on_evidence_with_real_images(imagenet_sample, tmp_path):
    """The path users meet: the distilled-b B0 (which never saw these images) on the cpu profile with a
    94 % agreement budget that all-INT8 misses on the selection split. The repair keeps blocks on
    evidence, the graph really keeps them out of INT8, the gate judges on images the build never
    chose on, and on those images (the test's own ONNX Runtime run) the repaired bundle agrees no
    less than all-INT8 did there."""
    from effdeploy.bundle import load_bundle
    from effdeploy.export.logits import ort_logits
    from effdeploy.data.preprocess import preprocess_files

    if not DISTILLED_B.is_file():
        pytest.skip(f"needs {DISTILLED_B} (../shared/models, present in CI)")
    # the depthwise convs in INT8 (the B family's CPU default before 2026-12-03): with them in float,
    # all-INT8 already holds 94 % on the selection split and there would be nothing to repair
    common = ["build", "--phi", "0", "--weights", str(DISTILLED_B), "--precision", "int8", "--profile", "cpu",
              "--calib-data", str(imagenet_sample), "--calib-images", "256", "--verify-images", "200",
              "--int8-float", "se,stem", "--min-agreement", "94", "--allow-parity-failure", "--json"]
    proc = run_cli(*common, "--out", str(tmp_path / "repaired"))
    assert proc.returncode == 0, proc.stderr
    m = read_manifest(tmp_path / "repaired")
    repair = m["quantization"]["repair"]
    ev = repair["evidence"]
    assert repair["initial"]["misses"] and ev["repair"] is True and ev["images"] == 256 - 32
    assert repair["kept_blocks"] == ev["keep_blocks"] != [] and repair["held"] is True
    assert m["quantization"]["config"]["keep_blocks"] == repair["kept_blocks"]
    graph = onnx.load(str(tmp_path / "repaired" / "model.onnx")).graph
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    for n in graph.node:
        if n.op_type == "Conv" and n.name.startswith(tuple(f"/{b}." for b in repair["kept_blocks"])):
            assert n.input[1] not in dequantized, n.name  # float weights: out of INT8
    judged = m["parity"]["verify"]["images"]
    calibrated = json.loads((tmp_path / "repaired" / "calibration.json").read_text())["images"]
    assert len(judged) == 200 and not {p.split("/")[-1] for p in judged} & {p.split("/")[-1] for p in calibrated}

    # on those images the test runs the bundle itself; the build recorded all-INT8's agreement there
    # before it repaired (repair.initial_verification), and the repaired bundle must not agree less
    bundle = load_bundle(tmp_path / "repaired")
    x = preprocess_files(judged, bundle.manifest.preprocessing)
    ref = ort_logits(tmp_path / "repaired" / "reference.onnx", x)
    ours = ort_logits(tmp_path / "repaired" / "model.onnx", x)
    agreement = float((ours.argmax(1) == ref.argmax(1)).mean())
    assert abs(agreement - m["parity"]["verify"]["comparison"]["top1_agreement"]) <= 1 / 200
    assert agreement >= repair["initial_verification"]["top1_agreement"], (agreement, repair["initial_verification"])
