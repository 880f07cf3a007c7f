"""A built bundle judged again on images it never saw (``effdeploy verify``, ``Bundle.verify``):
the images (its calibration images left out), the reference (eager PyTorch where torch and the
weights are here, else its FP32 graph) and the same gate as the build."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EffdeployError
from ..report import info


def eager_model_for(manifest: Any) -> tuple[Any, str] | None:
    """The eager model a bundle came from (effdeploy.model.eager.eager_model), or None when torch
    or the bundle's weights are not on this machine."""
    from ..model.eager import eager_model

    try:
        return eager_model(manifest), f"eager ({manifest.weights.get('source', 'random')})"
    except EffdeployError:
        return None


def calibration_names(bundle: Any) -> set[str]:
    from ..calibration import CALIBRATION_JSON, read_calibration_json

    p = bundle.path / CALIBRATION_JSON
    if CALIBRATION_JSON not in bundle.manifest.artifacts or not p.is_file():  # only a listed, checked file
        return set()
    return {Path(n).name for n in read_calibration_json(p).images}


def verification_images(bundle: Any, data: str | None, count: int, seed: int, quiet: bool) -> Any:
    """The images to verify on, calibration images left out (a VerifySet)."""
    from ..data.datasets import builtin_image_paths, labelled_images, select_readable
    from ..data.preprocess import preprocess_files
    from ..verify.gate import VerifySet

    m, exclude = bundle.manifest, calibration_names(bundle)
    if not data:
        paths = [p for p in builtin_image_paths() if p.name not in exclude][:count]
        if not paths:
            raise EffdeployError("no images to verify on in built-in images (calibration images are left out)")
        return VerifySet(preprocess_files(paths, m.preprocessing), None, "built-in images", tuple(map(str, paths)))
    items = [it for it in labelled_images(data) if it.path.name not in exclude]
    readable = select_readable(items, (), count, seed, m.preprocessing)
    if not readable.items:
        unreadable = f"; {len(readable.skipped)} could not be read" if readable.skipped else ""
        raise EffdeployError(f"no images to verify on in {data} (calibration images are left out{unreadable})")
    warning = readable.warning("verification", str(data))
    if warning:
        info(f"warning: {warning}", quiet)
    return VerifySet(readable.data, [i.label for i in readable.items], str(data),
                     tuple(str(i.path) for i in readable.items), warning)


def reference_for(bundle: Any, x: np.ndarray, reference: str, quiet: bool) -> tuple[np.ndarray, str]:
    """Eager PyTorch where torch and the weights are here (``auto``/``eager``), else the bundle's
    FP32 reference graph: the logits and what they came from."""
    from ..model.eager import run_eager
    from ..export.logits import ort_logits

    m = bundle.manifest
    if reference in ("auto", "eager"):
        eager = eager_model_for(m)
        if eager is not None:
            model, name = eager
            info(f"reference: {name} on {len(x)} images", quiet)
            return run_eager(model, x), name
        if reference == "eager":
            raise EffdeployError("--reference eager needs torch and the bundle's weights here; use --reference onnx")
    ref_path = bundle.reference_path or (bundle.model_path if m.precision == "fp32" else None)
    if ref_path is None:
        raise EffdeployError("this bundle has no FP32 reference graph; install torch to verify against eager")
    return ort_logits(Path(ref_path), x), f"FP32 reference graph ({Path(ref_path).name})"


def verify_again(bundle: Any, data: str | None = None, count: int = 200, seed: int = 0, reference: str = "auto",
                 budget: Any = None, quiet: bool = True) -> Any:
    """The bundle's ``model.onnx`` (ONNX Runtime, as the manifest says to run it) against its
    reference on ``data``: a :class:`effdeploy.verify.gate.VerifyReport` (``misses`` empty when it holds)."""
    from ..backends.onnxrt import bundle_runner
    from ..export.logits import run_batched
    from ..model.weights import accuracy_claim, no_claim_reason
    from .gate import Budget, verify_bundle

    m = bundle.manifest
    if m.status == "benchmark-only" or not accuracy_claim(m.weights):
        raise EffdeployError(
            f"{bundle.path} was built from {no_claim_reason(m.weights)} (status benchmark-only): there is no accuracy "
            "to verify; its numerical checks are in the manifest ('effdeploy inspect'); rebuild with trained --weights")
    images = verification_images(bundle, data, count, seed, quiet)
    ref_logits, ref_name = reference_for(bundle, images.data, reference, quiet)
    runner = bundle_runner(bundle)
    try:
        cand = run_batched(runner.infer, images.data, batch=16, label="verify", quiet=quiet)
    finally:
        runner.close()
    return verify_bundle(ref_logits, cand, images.labels, budget or Budget.for_precision(m.precision),
                         reference=ref_name, data=images.source, more="--data")
