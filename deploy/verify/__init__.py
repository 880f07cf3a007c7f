"""Judging a candidate against the eager model: comparators, budgets and the gate (``gate``),
the export's parity check (``parity``), the sensitivity repair and the paired evidence it acts on
(``repair``), the frame-in graphs' checks (``frames``), and a built bundle judged again
(``rerun``: ``effdeploy verify``, ``Bundle.verify``)."""

from .. import lazy_exports

__getattr__ = lazy_exports(__name__, {
    "gate": ("Budget", "budget_with", "Comparison", "wilson_interval", "agreement_text", "compare",
             "check_budget", "comparison_rows", "coarse_verification", "verify_images_needed", "gate_status",
             "VerifySet", "VerifyReport", "logit_margin", "verify_bundle", "REFERENCE_GRAPH", "verify_candidate"),
    "parity": ("check_parity",),
    "repair": ("repair_int8", "RepairReport", "RepairEvidence", "drift_report"),
    "rerun": ("verify_again",),
})
