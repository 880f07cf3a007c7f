"""``effdeploy verify``: a bundle (or engine) against the eager model on images, with budgets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import numpy as np

from . import cli
from ..errors import EffdeployError, ParityError
from ..report import emit_json, info, kv_table
from ..verify.rerun import reference_for, verification_images


def engine_source(artifact: Path) -> tuple[Any, Path]:
    """An engine is verified against the eager model of the bundle it was compiled from."""
    from ..runtime.runner import resolve_artifact

    engine_art = resolve_artifact(artifact)
    source_bundle = engine_art.manifest.bundle.get("path")
    if not source_bundle or not Path(source_bundle).is_dir():
        raise EffdeployError(f"{artifact}: the bundle it was compiled from ({source_bundle}) is not here; "
                             "copy it beside the engine or verify the bundle itself")
    return engine_art, Path(source_bundle)


def candidate_logits(bundle: Any, engine_art: Any, x: np.ndarray, quiet: bool, backend: str | None = None,
                     ov_precision: str = "f32") -> np.ndarray:
    from ..export.logits import run_batched
    from ..backends.onnxrt import bundle_runner
    from ..runtime.runner import open_backend, resolve_artifact

    if engine_art is not None:
        runner = open_backend(engine_art)
    elif backend is not None:  # judged as that runtime runs it (OpenVINO fuses and reorders differently)
        runner = open_backend(resolve_artifact(bundle.path), backend=backend, ov_precision=ov_precision)
    else:
        runner = bundle_runner(bundle)
    try:
        return run_batched(runner.infer, x, batch=16, label="verify", quiet=quiet)
    finally:
        runner.close()


def show_report(bundle: Any, report: Any, drift: list[dict[str, Any]]) -> None:
    from ..verify.gate import comparison_rows

    m = bundle.manifest
    verdict = {"verified": "verified: within budget",
               "checked": "checked: within budget on too few images to resolve it"}.get(
        report.status, "MISSED: " + "; ".join(report.misses))
    click.echo(kv_table([("bundle", f"{bundle.path} ({m.model.name}, {m.precision})"), ("reference", report.reference),
                         ("data", report.data), *comparison_rows(report.comparison), ("verdict", verdict)]))
    if drift:
        worst = sorted(drift, key=lambda r: -r["added"])[:3]
        click.echo("drift (relative error at the last block): "
                   f"{drift[-1]['relative_error']:.3g}; most added by " +
                   ", ".join(f"{r['block']} (+{r['added']:.3g})" for r in worst))


@cli.command("verify")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--data", "data", default=None, help="Image folder (labels from synset file names or ImageFolder sub-folders); default: built-in images.")
@click.option("--images", "count", type=int, default=200, show_default=True, help="At most this many images.")
@click.option("--reference", type=click.Choice(["auto", "eager", "onnx"]), default="auto", show_default=True,
              help="auto: eager PyTorch when torch and the weights are here, else the bundle's FP32 reference graph.")
@click.option("--max-abs", type=float, default=None)
@click.option("--min-agreement", type=float, default=None, help="Percent.")
@click.option("--max-drop", type=float, default=None, help="Points.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--backend", type=click.Choice(["onnxruntime", "openvino", "auto"]), default=None,
              help="Judge the bundle as this CPU runtime runs it (default onnxruntime for every bundle, as the build "
                   "verified it; a cpu-openvino(-vnni) bundle runs on openvino: pass --backend openvino to judge it there).")
@click.option("--ov-precision", type=click.Choice(["f32", "bf16"]), default="f32", show_default=True,
              help="OpenVINO's inference precision: bf16 shows how far OpenVINO's default on AMX CPUs is from FP32.")
@click.option("--json", "as_json", is_flag=True)
def verify_cmd(artifact: Path, data: str | None, count: int, reference: str, max_abs: float | None,
               min_agreement: float | None, max_drop: float | None, seed: int, backend: str | None,
               ov_precision: str, as_json: bool) -> None:
    """Compare a bundle (or an engine.plan, where TensorRT exists) with the eager model on images.

    Example: effdeploy verify bundles/efficientnet-lite0-int8-cpu --data ../shared/data/imagenet-sample
    """
    from ..bundle import REFERENCE, load_bundle
    from ..verify.repair import drift_report
    from ..verify.gate import Budget, budget_with, verify_bundle
    from ..model.weights import accuracy_claim, no_claim_reason

    if count < 1:
        raise EffdeployError("--images must be at least 1")
    budget_with(Budget.for_precision("fp32"), max_abs, min_agreement, max_drop)  # bad budget flags fail first
    engine_art = None
    if artifact.suffix == ".plan":
        engine_art, artifact = engine_source(artifact)
    bundle = load_bundle(artifact)
    m = bundle.manifest
    if m.status == "benchmark-only" or not accuracy_claim(m.weights):
        raise EffdeployError(
            f"{bundle.path} was built from {no_claim_reason(m.weights)} (status benchmark-only): there is no accuracy "
            "to verify; its numerical checks are in the manifest ('effdeploy inspect'); rebuild with trained --weights"
        )
    images = verification_images(bundle, data, count, seed, as_json)
    ref_logits, ref_name = reference_for(bundle, images.data, reference, as_json)
    cand = candidate_logits(bundle, engine_art, images.data, as_json, backend, ov_precision)
    budget = budget_with(Budget.for_precision(m.precision), max_abs, min_agreement, max_drop) or Budget.for_precision(m.precision)
    report = verify_bundle(ref_logits, cand, images.labels, budget, reference=ref_name, data=images.source, more="--data")
    if report.coarse:
        info(f"warning: {report.coarse}", as_json)
    drift = []
    if m.precision != "fp32" and bundle.reference_path is not None:
        import onnx

        drift = drift_report(onnx.load(str(bundle.path / REFERENCE)), onnx.load(str(bundle.model_path)), images.data[:32])
    if as_json:
        emit_json({"bundle": str(bundle.path), "engine": str(engine_art.path) if engine_art else None,
                   "backend": backend or ("tensorrt" if engine_art else "onnxruntime"),
                   "openvino_precision": ov_precision if backend in ("openvino", "auto") else None,
                   "precision": m.precision, "reference": ref_name, "data": images.source,
                   "comparison": report.comparison.to_dict(), "budget": report.budget.__dict__,
                   "misses": list(report.misses), "passed": not report.misses, "status": report.status,
                   "drift": drift, "warnings": [w for w in (images.warning, report.coarse) if w]})
    else:
        show_report(bundle, report, drift)
    if report.misses:
        raise ParityError(f"{bundle.path} missed its budget: {'; '.join(report.misses)}")
