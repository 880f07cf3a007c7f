"""Verification: comparators between a reference (eager PyTorch, or the FP32 reference graph)
and a candidate runner, budgets per precision, and the report every build ends with."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import EffdeployError
from ..report import wilson_interval


@dataclass(frozen=True)
class Budget:
    """Default budgets (flags change them): what a precision must hold to be called verified."""

    max_abs: float | None = None
    top1_agreement: float | None = None
    accuracy_drop_pt: float | None = None
    min_cosine: float | None = None  # mean logit cosine; the gross-breakage gate of benchmark-only builds

    @staticmethod
    def for_precision(precision: str) -> "Budget":
        if precision == "fp32":
            return Budget(max_abs=1e-3)
        if precision == "fp16":
            return Budget(top1_agreement=0.995)
        if precision == "int8":
            return Budget(top1_agreement=0.98, accuracy_drop_pt=1.0)
        raise EffdeployError(f"unknown precision {precision!r}")


def budget_with(base: Budget, max_abs: float | None = None, min_agreement_pct: float | None = None,
                max_drop_pt: float | None = None) -> Budget | None:
    """The default budget with the user's flags applied (None when no flag was given)."""
    if max_abs is None and min_agreement_pct is None and max_drop_pt is None:
        return None
    if min_agreement_pct is not None and not (0 <= min_agreement_pct <= 100):
        raise EffdeployError("--min-agreement is a percentage between 0 and 100")
    from dataclasses import replace

    return replace(
        base,
        max_abs=max_abs if max_abs is not None else base.max_abs,
        top1_agreement=min_agreement_pct / 100.0 if min_agreement_pct is not None else base.top1_agreement,
        accuracy_drop_pt=max_drop_pt if max_drop_pt is not None else base.accuracy_drop_pt,
    )


@dataclass(frozen=True)
class Comparison:
    samples: int
    top1_agreement: float
    top5_agreement: float  # reference top-1 within candidate top-5
    cosine_mean: float
    cosine_min: float
    max_abs: float
    mean_abs: float
    labelled: int = 0
    reference_top1: float | None = None
    reference_top5: float | None = None
    candidate_top1: float | None = None
    candidate_top5: float | None = None
    relative_error: float = 0.0  # ||candidate - reference|| / ||reference|| over all logits

    @property
    def accuracy_drop_pt(self) -> float | None:
        if self.reference_top1 is None or self.candidate_top1 is None:
            return None
        # rounded: 100 * (0.895 - 0.885) is 1.0000000000000009, which missed a 1.0 pt budget with 2 of 200 images
        return round(100.0 * (self.reference_top1 - self.candidate_top1), 9)

    @property
    def top1_agreement_ci95(self) -> tuple[float, float]:
        """Wilson 95 % interval of the top-1 agreement: what the images can tell apart."""
        return wilson_interval(round(self.top1_agreement * self.samples), self.samples)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["accuracy_drop_pt"] = self.accuracy_drop_pt
        d["top1_agreement_ci95"] = list(self.top1_agreement_ci95)
        return d




def agreement_text(c: "Comparison") -> str:
    """'99.18 % (95 % CI 97.1-99.8 %, 244 images)' for tables and log lines."""
    lo, hi = c.top1_agreement_ci95
    return f"{100 * c.top1_agreement:.2f} % (95 % CI {100 * lo:.1f}-{100 * hi:.1f} %, {c.samples} images)"


def _topk(logits: np.ndarray, k: int) -> np.ndarray:
    k = min(k, logits.shape[1])
    return np.argsort(-logits, axis=1)[:, :k]


def compare(reference: np.ndarray, candidate: np.ndarray, labels: Sequence[int | None] | None = None) -> Comparison:
    """Agreement, cosine similarity and error of two logit sets; accuracy where labels are known."""
    if reference.shape != candidate.shape or reference.ndim != 2 or len(reference) == 0:
        raise EffdeployError(f"cannot compare logits of shapes {reference.shape} and {candidate.shape}")
    ref = reference.astype(np.float64)
    cand = candidate.astype(np.float64)
    ref_top1 = ref.argmax(1)
    cand_top5 = _topk(cand, 5)
    num = (ref * cand).sum(1)
    den = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    cos = np.where(den > 0, num / np.maximum(den, 1e-30), 1.0)
    diff = np.abs(ref - cand)
    fields: dict[str, Any] = {}
    if labels is not None:
        idx = [i for i, l in enumerate(labels) if l is not None and 0 <= l < ref.shape[1]]
        if idx:
            y = np.asarray([labels[i] for i in idx])
            r5, c5 = _topk(ref[idx], 5), _topk(cand[idx], 5)
            fields = dict(
                labelled=len(idx),
                reference_top1=float((ref[idx].argmax(1) == y).mean()),
                reference_top5=float((r5 == y[:, None]).any(1).mean()),
                candidate_top1=float((cand[idx].argmax(1) == y).mean()),
                candidate_top5=float((c5 == y[:, None]).any(1).mean()),
            )
    return Comparison(
        samples=len(ref),
        top1_agreement=float((ref_top1 == cand.argmax(1)).mean()),
        top5_agreement=float((cand_top5 == ref_top1[:, None]).any(1).mean()),
        cosine_mean=float(cos.mean()),
        cosine_min=float(cos.min()),
        max_abs=float(diff.max()),
        mean_abs=float(diff.mean()),
        relative_error=float(np.linalg.norm(ref - cand) / max(float(np.linalg.norm(ref)), 1e-30)),
        **fields,
    )


def check_budget(c: Comparison, budget: Budget) -> list[str]:
    """The budget lines this comparison misses (empty = verified)."""
    misses = []
    if budget.max_abs is not None and c.max_abs > budget.max_abs:
        misses.append(f"max abs error {c.max_abs:.3g} > {budget.max_abs:.3g}")
    if budget.top1_agreement is not None and c.top1_agreement < budget.top1_agreement:
        misses.append(f"top-1 agreement {100 * c.top1_agreement:.2f} % < {100 * budget.top1_agreement:.2f} %")
    drop = c.accuracy_drop_pt
    if budget.accuracy_drop_pt is not None and drop is not None and drop > budget.accuracy_drop_pt:
        misses.append(f"top-1 accuracy drop {drop:.2f} pt > {budget.accuracy_drop_pt:.2f} pt")
    if budget.min_cosine is not None and c.cosine_mean < budget.min_cosine:
        misses.append(f"mean logit cosine {c.cosine_mean:.3f} < {budget.min_cosine:g}")
    return misses


def comparison_rows(c: Comparison) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = [
        ("images", c.samples),
        ("top-1 agreement", agreement_text(c)),
        ("top-5 agreement", f"{100 * c.top5_agreement:.2f} %"),
        ("cosine (mean / min)", f"{c.cosine_mean:.6f} / {c.cosine_min:.6f}"),
        ("max abs error", f"{c.max_abs:.3e}"),
        ("relative error (logits)", f"{c.relative_error:.3e}"),
    ]
    if c.labelled:
        rows += [
            ("labelled images", c.labelled),
            ("top-1 accuracy (reference -> bundle)", f"{100 * c.reference_top1:.2f} % -> {100 * c.candidate_top1:.2f} %"),
            ("top-5 accuracy (reference -> bundle)", f"{100 * c.reference_top5:.2f} % -> {100 * c.candidate_top5:.2f} %"),
            ("top-1 drop", f"{c.accuracy_drop_pt:.2f} pt"),
        ]
    return rows


def coarse_verification(images: int, budget: Budget, more: str = "--verify-data (or --calib-data)") -> str | None:
    """A warning when the verification set is too small to resolve the agreement budget: with fewer
    than 1 / (1 - budget) images (50 for INT8's 98 %) one flipped image already misses it, so a pass
    only says "no flips on these few images" (the built-in set leaves 5 for verification)."""
    if budget.top1_agreement is None or images * (1.0 - budget.top1_agreement) >= 1.0:
        return None
    return (f"verified on only {images} images: one image is {100 / images:.1f} % of top-1 agreement, too coarse "
            f"for a {100 * budget.top1_agreement:g} % budget; pass {more} with at least "
            f"{verify_images_needed(budget)} images for a meaningful gate")


def verify_images_needed(budget: Budget) -> int:
    """The fewest verification images at which one flipped image cannot decide the budget."""
    t = budget.top1_agreement
    return math.ceil(1 / (1 - t)) if t is not None and t < 1 else 1


def gate_status(misses: Sequence[str], coarse: str | None) -> str:
    """verified: the budget holds on enough images to resolve it; checked: it holds on too few;
    failed-parity: it misses."""
    if misses:
        return "failed-parity"
    return "checked" if coarse else "verified"


# --- the verify stage: one judgement of a candidate, for the build and `effdeploy verify` --------


@dataclass(frozen=True)
class VerifySet:
    """The images a candidate is judged on (never ones its calibration or choices used)."""

    data: np.ndarray
    labels: list[int | None] | None
    source: str
    ids: tuple[str, ...]
    warning: str | None = None  # unreadable images skipped (and replaced where others were left)


@dataclass(frozen=True)
class VerifyReport:
    """A candidate against its reference on one image set: the manifest's ``parity.verify``."""

    reference: str
    data: str
    budget: Budget
    comparison: Comparison
    misses: tuple[str, ...]
    coarse: str | None = None  # the images are too few to resolve the budget (status checked)
    reference_logits_cached: bool | None = None
    reference_logit_margin: float | None = None
    images: tuple[str, ...] = ()  # which images judged it, so anyone can check they were new to the build

    @property
    def status(self) -> str:
        return gate_status(self.misses, self.coarse)

    def outcome(self) -> dict[str, Any]:
        """Agreement and misses: what the repair records of each judgement."""
        return {"top1_agreement": self.comparison.top1_agreement, "misses": list(self.misses)}

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"reference": self.reference, "data": self.data, "budget": asdict(self.budget),
                             "comparison": self.comparison.to_dict(), "misses": list(self.misses)}
        if self.reference_logits_cached is not None:
            d["reference_logits_cached"] = self.reference_logits_cached
        if self.reference_logit_margin is not None:
            d["reference_logit_margin"] = self.reference_logit_margin
        if self.images:
            d["images"] = list(self.images)
        return d


def logit_margin(logits: np.ndarray) -> float:
    """Median gap between the top two logits in units of each row's standard deviation: how much
    noise top-1 agreement can take (random weights have a small one, trained ones a large one)."""
    top2 = np.sort(logits, axis=1)[:, -2:]
    return float(np.median((top2[:, 1] - top2[:, 0]) / np.maximum(logits.std(axis=1), 1e-12)))


def verify_bundle(reference_logits: np.ndarray, candidate_logits: np.ndarray, labels: Sequence[int | None] | None,
                  budget: Budget, *, reference: str, data: str, more: str = "--verify-data (or --calib-data)",
                  reference_cached: bool | None = None, images: Sequence[str] = ()) -> VerifyReport:
    """The one judgement the build and ``effdeploy verify`` share: comparison, budget misses, and
    whether the images are enough to call a pass verified (``more`` names the flag that adds some)."""
    comp = compare(reference_logits, candidate_logits, labels)
    return VerifyReport(reference=reference, data=data, budget=budget, comparison=comp,
                        misses=tuple(check_budget(comp, budget)),
                        coarse=coarse_verification(len(candidate_logits), budget, more),
                        reference_logits_cached=reference_cached,
                        reference_logit_margin=logit_margin(reference_logits), images=tuple(images))


REFERENCE_GRAPH = "fp32 reference graph (eager parity above)"


def verify_candidate(candidate: Any, reference_logits: np.ndarray, verify: VerifySet, budget: Budget,
                     optimize: bool | None = None, reference: str = REFERENCE_GRAPH,
                     reference_cached: bool | None = None) -> tuple[VerifyReport, bool]:
    """A candidate ONNX graph judged on ``verify`` (ONNX Runtime, cached); the report and whether
    ORT's graph optimiser ran it (off where it would mis-rewrite the graph)."""
    from ..export.logits import cached_logits
    from ..precision.qdq import needs_unoptimized_ort

    if optimize is None:
        optimize = not needs_unoptimized_ort(candidate)
    logits, _ = cached_logits(candidate, verify.data, optimize=optimize)
    return verify_bundle(reference_logits, logits, verify.labels, budget, reference=reference, data=verify.source,
                         reference_cached=reference_cached, images=verify.ids), optimize
