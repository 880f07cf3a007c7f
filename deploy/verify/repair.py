"""The INT8 repair: where the error comes from (per-block drift), which blocks to keep out of
INT8 (sensitivity order within a multiply-add cap) and how many (the kept-count search), judged
on the selection split, never on the images the gate judges."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import onnx

from ..export.exporter import block_of
from ..export.logits import block_outputs, per_image_kl, run_outputs  # noqa: F401 (per_image_kl: this module's API too)
from .gate import Budget, VerifyReport, VerifySet, verify_candidate
from ..precision.qdq import needs_unoptimized_ort
from ..report import info


def drift_report(reference: onnx.ModelProto, candidate: onnx.ModelProto, data: np.ndarray) -> list[dict[str, Any]]:
    """Per-MBConv-block relative error (||a-b|| / ||a||) between the FP32 reference and the
    reduced-precision graph, and how much each block adds: where accuracy goes. Cached (the same
    two graphs on the same pixels: a rebuild's repair)."""
    import hashlib
    import json

    from ..backends.ort_safety import session_key
    from ..files import sha256_json, sha256_proto
    from ..cache import cache_folder, load, store

    key = sha256_json({"reference": sha256_proto(reference), "candidate": sha256_proto(candidate),
                       "data": hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest(), "shape": list(data.shape),
                       **session_key()})
    path = cache_folder("drift") / f"{key[:40]}.json"
    try:
        rows = json.loads(load(path) or b"null")
        if isinstance(rows, list):
            return rows
    except ValueError:
        pass
    rows = _drift_rows(reference, candidate, data)
    store(path, json.dumps(rows))
    return rows


def _drift_rows(reference: onnx.ModelProto, candidate: onnx.ModelProto, data: np.ndarray) -> list[dict[str, Any]]:
    blocks = block_outputs(reference)
    cand_tensors = {o for n in candidate.graph.node for o in n.output}
    blocks = {b: t for b, t in blocks.items() if t in cand_tensors}
    if not blocks:
        return []
    names = list(blocks.values())
    a = run_outputs(reference, names, data, optimize=True)
    b = run_outputs(candidate, names, data, optimize=not needs_unoptimized_ort(candidate))
    rows, prev = [], 0.0
    for block, t in blocks.items():
        ra, rb = a[t].astype(np.float64), b[t].astype(np.float64)
        err = float(np.linalg.norm(ra - rb) / max(np.linalg.norm(ra), 1e-30))
        rows.append({"block": block, "tensor": t, "relative_error": err, "added": err - prev})
        prev = err
    return rows


def sensitivity_order(drift: Sequence[Mapping[str, Any]]) -> list[str]:
    """Blocks by the error they add (largest first): the ones to keep in higher precision."""
    return [r["block"] for r in sorted(drift, key=lambda r: -r["added"])]


def block_macs_shares(model: onnx.ModelProto) -> dict[str, float]:
    """Each MBConv block's fraction of the network's multiply-adds (what keeping it out of INT8 costs)."""
    from ..export.exporter import macs_per_node

    per_node = macs_per_node(model)
    total = sum(per_node.values())
    shares: dict[str, float] = {}
    for name, macs in per_node.items():
        b = block_of(name)
        if b is not None and total:
            shares[b] = shares.get(b, 0.0) + macs / total
    return shares


def choice_twin(fp32: Any, int8: Any, config: Any) -> Any:
    """What the repair judges a candidate by: its FP32-typed twin (the same Q/DQ and reconstructed
    biases; run as written, a few times faster on a CPU than the FP16 rest of the tensorrt graph).
    A graph that is FP32-typed already (the cpu dialect) is its own twin."""
    from ..precision.qdq import quantize

    if config == int8.config and not config.fp16_rest:
        return int8.model
    return quantize(fp32, int8.artifact.ranges, replace(config, fp16_rest=False), initializers=int8.initializers)


@dataclass(frozen=True)
class RepairEvidence:
    """A repaired candidate against all-INT8 on the same selection images: the paired evidence the
    repair acts on, recorded whatever it decided."""

    images: int
    kl_all_int8: float  # mean per-image KL from the FP32 softmax
    kl_candidate: float
    kl_gain_ci95: tuple[float, float]  # bootstrap over images of mean(KL all-INT8 - KL candidate)
    agreement_all_int8: float
    agreement_candidate: float
    flips: tuple[int, int]  # images only the candidate agrees on, images only all-INT8 agrees on
    repair: bool
    reason: str
    keep_blocks: tuple[str, ...] = ()  # the blocks the candidate keeps out of INT8
    flips_p: float = 1.0  # exact two-sided McNemar p of the flips
    keep_nodes: tuple[str, ...] = ()  # the single convs the candidate keeps out of INT8 (the conv fallback)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["kl_gain_ci95"], d["flips"] = list(self.kl_gain_ci95), list(self.flips)
        d["keep_blocks"], d["keep_nodes"] = list(self.keep_blocks), list(self.keep_nodes)
        return d


BOOTSTRAP_RESAMPLES = 2000


def mcnemar_p(only_candidate: int, only_all_int8: int) -> float:
    """Exact two-sided McNemar test on the discordant images (a binomial with p = 1/2): how often
    chance alone splits them at least this unevenly. Written out because it is four lines and
    scipy is not a dependency."""
    from math import comb

    n = only_candidate + only_all_int8
    if n == 0:
        return 1.0
    k = min(only_candidate, only_all_int8)
    return min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2 ** n)


def repair_evidence(reference: np.ndarray, all_int8: np.ndarray, candidate: np.ndarray,
                    resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> RepairEvidence:
    """Whether a candidate beats all-INT8 by more than the images can resolve, by either of two
    paired tests, each one-sided at 2.5 % (together at most 5 %): the 95 % bootstrap interval (over
    images) of the mean KL gain lies above zero, or the exact McNemar test on the images only one of
    them agrees on gives p < 0.05 in the candidate's favour. Either way its mean KL must be lower
    and it must not agree on fewer images. Top-1 agreement on its own cannot decide (on 224 images
    two are 0.9 pt, and such a gain did not hold on 500 new images), and the KL interval alone is
    blind where a few images carry huge KL: on B0 it refused a candidate that 21 images preferred
    and 4 did not, which on 200 new images agreed 96.0 % against 90.5 % (docs/int8.md)."""
    kl_a, kl_c = per_image_kl(reference, all_int8), per_image_kl(reference, candidate)
    gain = kl_a - kl_c
    idx = np.random.default_rng(seed).integers(0, len(gain), (resamples, len(gain)))
    lo, hi = (float(v) for v in np.percentile(gain[idx].mean(1), [2.5, 97.5]))
    top = reference.argmax(1)
    agree_a, agree_c = all_int8.argmax(1) == top, candidate.argmax(1) == top
    flips = (int((agree_c & ~agree_a).sum()), int((agree_a & ~agree_c).sum()))
    p = mcnemar_p(*flips)
    by_kl, by_flips = lo > 0, flips[0] > flips[1] and p < 0.05
    if not (by_kl or by_flips):
        repair, reason = False, (f"the KL gain's 95 % interval ({lo:.2e}, {hi:.2e}) over {len(gain)} images "
                                 f"includes zero and the flips {flips[0]}:{flips[1]} (McNemar p {p:.2g}): not resolved")
    elif agree_c.mean() < agree_a.mean():
        repair, reason = False, "lower KL but fewer images agree"
    elif gain.mean() <= 0:
        repair, reason = False, f"more images agree ({flips[0]}:{flips[1]}) but the mean KL is higher"
    else:
        repair, reason = True, (f"KL gain {float(gain.mean()):.2e} (95 % CI {lo:.2e}-{hi:.2e}), flips "
                                f"{flips[0]}:{flips[1]} (McNemar p {p:.2g}) over {len(gain)} images")
    return RepairEvidence(len(gain), float(kl_a.mean()), float(kl_c.mean()), (lo, hi), float(agree_a.mean()),
                          float(agree_c.mean()), flips, repair, reason, flips_p=p)


LINEAR_KEPT_BLOCKS = 8  # the repair tries 1..8 kept blocks one by one, then doubles and bisects
SEARCH = f"1..{LINEAR_KEPT_BLOCKS} blocks one by one, then doubling and bisection, in sensitivity order"


def kept_count_search(n: int, holds: Callable[[int], bool],
                      linear: int = LINEAR_KEPT_BLOCKS) -> tuple[int | None, list[int]]:
    """How many of the ``n`` most sensitive blocks to keep out of INT8 so the budget holds.

    Agreement grows with the kept count only up to the image set's noise, so a pure bisection
    skips small counts that hold (docs/int8.md has the case). Small counts are cheap to deploy and
    worth finding, so 1..``linear`` are tried one by one; beyond that the search doubles up to ``n``
    (the blocks the caller's cap allows) and bisects: at most ``linear`` + ~2 log2(n) verifications.
    Returns (the count that held or None, the counts tried).
    """
    tried: list[int] = []

    def check(k: int) -> bool:
        tried.append(k)
        return holds(k)

    for k in range(1, min(linear, n) + 1):
        if check(k):
            return k, tried
    missed = min(linear, n)
    if missed == n:
        return None, tried
    k = min(2 * missed, n)
    while not check(k):
        missed = k
        if k == n:
            return None, tried
        k = min(2 * k, n)
    held = k
    while held - missed > 1:
        mid = (missed + held) // 2
        if check(mid):
            held = mid
        else:
            missed = mid
    return held, tried


def fewest_at_best(initial: float, agreements: Mapping[int, float]) -> int:
    """Where no count holds: the count with the best agreement, the fewest blocks among equals, and
    0 (all-INT8) unless a count beat all-INT8 — blocks kept for no gain cost latency and buy nothing."""
    best, count = initial, 0
    for k, agree in agreements.items():
        if (agree, -k) > (best, -count):
            best, count = agree, k
    return count


def blocks_within(order: Sequence[str], shares: dict[str, float], max_share: float) -> int:
    """How many of the leading blocks of ``order`` fit in ``max_share`` of the multiply-adds."""
    total, n = 0.0, 0
    for block in order:
        total += shares.get(block, 0.0)
        if total > max_share + 1e-9:
            break
        n += 1
    return n


@dataclass(frozen=True)
class RepairReport:
    """What the repair tried and kept: the manifest's ``quantization.repair``."""

    initial: Mapping[str, Any]  # all-INT8 on the selection split: top1_agreement, misses
    kept_blocks: tuple[str, ...]
    macs_share_kept: float
    max_kept_macs_pct: float
    blocks_within_cap: int
    model_bytes: Mapping[str, int]
    tried: tuple[Mapping[str, Any], ...]
    held: bool
    chosen_on: str = ""
    initial_verification: Mapping[str, Any] | None = None  # all-INT8 on the verification images
    evidence: RepairEvidence | None = None  # the chosen candidate against all-INT8 (None: none was chosen)

    def to_dict(self) -> dict[str, Any]:
        d = {"initial": dict(self.initial), "kept_blocks": list(self.kept_blocks),
             "macs_share_kept": self.macs_share_kept, "max_kept_macs_pct": self.max_kept_macs_pct,
             "blocks_within_cap": self.blocks_within_cap, "model_bytes": dict(self.model_bytes),
             "search": SEARCH, "tried": [dict(t) for t in self.tried], "held": self.held}
        if self.chosen_on:
            d["chosen_on"] = self.chosen_on
        if self.initial_verification is not None:
            d["initial_verification"] = dict(self.initial_verification)
        if self.evidence is not None:
            d["evidence"] = self.evidence.to_dict()
        return d


def repair_int8(fp32: onnx.ModelProto, int8: Any, reference_logits: np.ndarray, selection: VerifySet,
                budget: Budget, drift: list[dict[str, Any]], quiet: bool, first_report: VerifyReport | None,
                max_kept_macs: float) -> tuple[Any, RepairReport]:
    """Keep the blocks that add the most error in higher precision until the budget holds on the
    ``selection`` split, within ``max_kept_macs`` percent of the multiply-adds. Returns the INT8
    result with the chosen graph and config, and the report."""
    from ..precision.qdq import quantize

    shares = block_macs_shares(fp32)
    ranked = sensitivity_order(drift)
    order = ranked[:blocks_within(ranked, shares, max_kept_macs / 100.0)]
    info(f"      budget missed; blocks by sensitivity: {', '.join(ranked)} (up to {len(order)} of them fit in "
         f"{max_kept_macs:g} % of the multiply-adds, --max-kept-macs)", quiet)
    held_config: list[Any] = []  # the smallest count that held (a later count that holds is smaller)
    missed: dict[int, float] = {}  # count -> agreement, for the counts that did not hold
    tried: list[dict[str, Any]] = []

    def holds(k: int) -> bool:
        config = replace(int8.config, keep_blocks=tuple(order[:k]))
        report, _ = verify_candidate(choice_twin(fp32, int8, config), reference_logits, selection, budget,
                                     optimize=False)
        agree = report.comparison.top1_agreement
        tried.append({"keep_blocks": list(config.keep_blocks), **report.outcome()})
        names = ", ".join(order[:k]) if k <= 4 else f"{', '.join(order[:3])}, ... {order[k - 1]}"
        info(f"      keeping {k} block{'s' if k > 1 else ''} ({names}) in higher precision: "
             f"top-1 agreement {100 * agree:.2f} %", quiet)
        if not report.misses:
            held_config[:] = [config]
        else:
            missed[k] = agree
        return not report.misses

    held, _ = kept_count_search(len(order), holds)
    best = fewest_at_best(first_report.comparison.top1_agreement if first_report else -1.0, missed)
    config = (held_config[0] if held_config else  # no block fits the cap (or none in the graph): all-INT8
              replace(int8.config, keep_blocks=tuple(order[:best])) if best else int8.config)
    if not held_config and order:
        info(f"      no count held on the selection split; keeping {best} block(s), the fewest at the best "
             f"agreement ({100 * missed[best]:.2f} %)" if best else
             "      no count held on the selection split, and none beat all-INT8 there: all-INT8 stands", quiet)
    evidence = None
    if config != int8.config:
        evidence = judge_evidence(fp32, int8, config, reference_logits, selection)
        info(f"      {'repairing' if evidence.repair else 'all-INT8 stands'}: {evidence.reason}", quiet)
        if not evidence.repair:
            config = int8.config
    candidate = (int8.model if config == int8.config else
                 quantize(fp32, int8.artifact.ranges, config, initializers=int8.initializers))
    repair = RepairReport(
        initial=first_report.outcome() if first_report else {"top1_agreement": None, "misses": []}, kept_blocks=tuple(config.keep_blocks),
        macs_share_kept=sum(shares.get(k, 0.0) for k in config.keep_blocks), max_kept_macs_pct=max_kept_macs,
        blocks_within_cap=len(order), model_bytes={"all_int8": int8.model.ByteSize(), "repaired": candidate.ByteSize()},
        tried=tuple(tried), held=held is not None, chosen_on=selection.source,
        evidence=evidence)
    return replace(int8, model=candidate, config=config), repair


FALLBACK_COUNTS = (1, 2, 3, 4)  # how many of the most sensitive convs the conv fallback tries
FALLBACK_MAX_MACS_PCT = 10.0  # ... within this share of the multiply-adds (FP16 convs cost latency)


@dataclass(frozen=True)
class FallbackReport:
    """The conv fallback: single convs kept out of INT8 in leave-one-out sensitivity order, adopted
    only on evidence; the manifest's ``quantization.fallback``."""

    sensitivity: Mapping[str, Any]  # effdeploy.precision.sensitivity.Sensitivity.to_dict()
    tried: tuple[Mapping[str, Any], ...]  # per count: nodes, multiply-add share, KL and agreement on the selection split
    kept_nodes: tuple[str, ...]
    macs_share_kept: float
    max_macs_pct: float
    chosen_on: str
    evidence: RepairEvidence | None  # the lowest-KL count against all-INT8 (None: nothing to try)
    initial_verification: Mapping[str, Any] | None = None  # all-INT8 on the verification images

    def to_dict(self) -> dict[str, Any]:
        return {"sensitivity": dict(self.sensitivity), "tried": [dict(t) for t in self.tried],
                "kept_nodes": list(self.kept_nodes), "macs_share_kept": self.macs_share_kept,
                "max_macs_pct": self.max_macs_pct, "chosen_on": self.chosen_on,
                "evidence": self.evidence.to_dict() if self.evidence is not None else None,
                "initial_verification": dict(self.initial_verification) if self.initial_verification else None}


def fallback_counts(shares: Sequence[float], max_share: float, counts: Sequence[int] = FALLBACK_COUNTS) -> list[int]:
    """The counts of leading convs (their multiply-add ``shares`` in order) that fit in ``max_share``."""
    return [k for k in counts if k <= len(shares) and sum(shares[:k]) <= max_share + 1e-9]


def fallback_int8(fp32: onnx.ModelProto, int8: Any, sensitivity: Any, reference_logits: np.ndarray,
                  selection: VerifySet, quiet: bool,
                  max_macs_pct: float = FALLBACK_MAX_MACS_PCT) -> tuple[Any, FallbackReport]:
    """Keep the 1-4 convs whose float form helped most (ranked on other images) out of INT8: the
    count with the lowest KL on the selection split, and only if it beats all-INT8 there by more
    than the images resolve (:func:`repair_evidence`). Where the INT8 error sits in a few convs (the
    B family's stem swish and SE-gated project inputs) this halves it for a few % of the
    multiply-adds (docs/int8.md); the build runs it only where all-INT8 already meets the budget."""
    from ..export.logits import cached_logits
    from ..precision.qdq import quantize

    helpful = [c for c in sensitivity.convs if c.kl < sensitivity.all_int8_kl]
    counts = fallback_counts([c.macs_share for c in helpful], max_macs_pct / 100.0)
    plain, _ = cached_logits(choice_twin(fp32, int8, int8.config), selection.data, optimize=False)
    tried, best = [], None
    for k in counts:
        config = replace(int8.config, keep_nodes=tuple(c.node for c in helpful[:k]))
        logits, _ = cached_logits(choice_twin(fp32, int8, config), selection.data, optimize=False)
        kl = float(per_image_kl(reference_logits, logits).mean())
        agree = float((logits.argmax(1) == reference_logits.argmax(1)).mean())
        tried.append({"keep_nodes": list(config.keep_nodes), "macs_share": sum(c.macs_share for c in helpful[:k]),
                      "kl": kl, "top1_agreement": agree})
        info(f"      conv fallback: {k} conv{'s' if k > 1 else ''} in float ({', '.join(config.keep_nodes)}): KL "
             f"{kl:.4f}, top-1 agreement {100 * agree:.2f} % on the selection split", quiet)
        if best is None or kl < best[0]:
            best = (kl, config, logits)
    evidence, config = None, int8.config
    if best is not None:
        evidence = replace(repair_evidence(reference_logits, plain, best[2]), keep_nodes=best[1].keep_nodes)
        info(f"      conv fallback: {'keeping ' + ', '.join(best[1].keep_nodes) if evidence.repair else 'all-INT8 stands'}: "
             f"{evidence.reason}", quiet)
        if evidence.repair:
            config = best[1]
    share = {c.node: c.macs_share for c in helpful}
    report = FallbackReport(sensitivity.to_dict(), tuple(tried), tuple(config.keep_nodes),
                            sum(share[n] for n in config.keep_nodes), max_macs_pct, selection.source, evidence)
    if config == int8.config:
        return int8, report
    return replace(int8, model=quantize(fp32, int8.artifact.ranges, config, initializers=int8.initializers),
                   config=config), report


def judge_evidence(fp32: onnx.ModelProto, int8: Any, config: Any, reference_logits: np.ndarray,
                   selection: VerifySet) -> RepairEvidence:
    """The chosen candidate's twin against all-INT8's on the selection split (both logits cached
    from the search)."""
    from ..export.logits import cached_logits

    plain, _ = cached_logits(choice_twin(fp32, int8, int8.config), selection.data, optimize=False)
    cand, _ = cached_logits(choice_twin(fp32, int8, config), selection.data, optimize=False)
    return replace(repair_evidence(reference_logits, plain, cand), keep_blocks=tuple(config.keep_blocks),
                   keep_nodes=tuple(config.keep_nodes))
