"""The build: model -> ONNX -> simplified ONNX -> precision graph -> verified bundle [-> engine].

Each stage is a function of the previous stage's output; the manifest written last records all
of it. Everything happens in a staging directory renamed into place at the end.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import __version__
from .bundle import (
    MODEL,
    REFERENCE,
    STATUS_BENCHMARK_ONLY,
    STATUS_CHECKED,
    STATUS_FAILED_PARITY,
    Bundle,
    Manifest,
    check_output_dir,
    load_bundle,
    remove_stale_partials,
    staging_dir,
    write_manifest,
)
from .errors import EffdeployError, ParityError
from .profile import Profile
from .report import info
from .spec import check_fits_memory, extrapolation_warning, model_spec
from .verify import Budget, Comparison, agreement_text, coarse_verification, gate_status, verify_images_needed
from .weights import accuracy_claim, no_claim_reason

IMPLEMENTED_PRECISIONS = ("fp32", "fp16", "int8")
SELECTION_IMAGES = 32  # calibration images used to choose the calibration method
DRIFT_IMAGES = 32
# The repair keeps at most half of the multiply-adds out of INT8 by default: beyond that the bundle
# is mostly an FP16/FP32 model under an INT8 label (random B1 "verified" with all 23 blocks kept
# in FP16 is what an uncapped repair produced); --max-kept-macs raises it deliberately.
MAX_KEPT_MACS_PCT = 50.0
RECONSTRUCT_IMAGES = 32  # calibration images the INT8 reconstruction fits on (a subset of them)
REPAIR_SELECTION_IMAGES = 256  # calibration images the repair chooses kept blocks on (never the gate's)


@dataclass(frozen=True)
class BuildRequest:
    phi: Any
    variant: str = "b"
    precision: str = "fp32"
    profile: Profile | None = None
    weights: str | None = None
    weights_arch: str | None = None  # SOURCE:NAME[.TAG], effdeploy.archs
    replace_head: bool = False  # a new, untrained head instead of the checkpoint's (benchmark-only)
    preprocessing: tuple[tuple[str, Any], ...] = ()  # overrides: resize, crop_pct, interpolation, mean, std
    resolution: int | None = None
    out: Path | None = None
    num_classes: int = 1000
    calib_data: str | None = None
    calib_images: int = 256
    calib_images_given: bool = True  # False: the default count (messages say so)
    calib_method: str = "auto"
    verify_data: str | None = None
    verify_images: int = 200
    seed: int = 0
    budget: Budget | None = None
    accuracy_budget: float | None = None  # percent top-1 disagreement allowed; enables repair
    repair: bool = True  # INT8 missing its budget keeps sensitive blocks in higher precision
    max_kept_macs: float = MAX_KEPT_MACS_PCT  # ... at most this percentage of the multiply-adds
    int8_float_parts: tuple[str, ...] = ("se",)  # EfficientNet parts kept out of INT8: se, stem, classifier
    reconstruct: bool = True  # INT8: learn the rounding of the weights on calibration images
    reconstruct_images: int = RECONSTRUCT_IMAGES
    allow_parity_failure: bool = False
    quiet: bool = False
    frames: tuple[Any, ...] = ()  # effdeploy.framegraph.FrameInput per --frame size: frame-in graphs


@dataclass(frozen=True)
class BuildResult:
    bundle: Bundle
    timings: dict[str, float] = field(default_factory=dict)
    next_step: str | None = None  # the compile command for the target, when not compiled here
    engine: Path | None = None
    compile_reason: str = ""
    replaced: str | None = None  # the bundle that was at --out before (status, model, date)
    cleaned: tuple[str, ...] = ()  # what a killed earlier build of --out left and this one removed


@dataclass(frozen=True)
class VerifySet:
    data: np.ndarray
    labels: list[int | None] | None
    source: str
    ids: tuple[str, ...]
    warning: str | None = None  # unreadable images skipped (and replaced where others were left)


def default_out(spec_name: str, precision: str, profile: str) -> Path:
    return Path("bundles") / f"{spec_name}-{precision}-{profile}"


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    v = {"effdeploy": __version__, "python": platform.python_version(), "torch": torch.__version__,
         "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
    for mod in ("onnxsim", "onnxconverter_common"):
        try:
            import importlib

            v[mod] = getattr(importlib.import_module(mod), "__version__", "unknown")
        except ImportError:
            pass
    return v


def check_request(req: BuildRequest, resolution: int | None = None) -> None:
    """Refuse what cannot work before any minutes are spent: flags, and data that does not exist
    or holds nothing usable (``resolution`` checks a preprocessed .npy's shape)."""
    assert req.profile is not None
    if req.precision not in ("fp32", "fp16", "int8"):
        raise EffdeployError(f"--precision must be fp32, fp16 or int8 (got {req.precision!r})")
    if req.precision not in req.profile.precisions:
        raise EffdeployError(
            f"profile {req.profile.name} has no fast {req.precision} kernels "
            f"(supported: {', '.join(req.profile.precisions)}); choose one of those"
        )
    if req.calib_images < 1 or req.verify_images < 1 or req.reconstruct_images < 1:
        raise EffdeployError("--calib-images, --verify-images and --reconstruct-images must be at least 1")
    if req.accuracy_budget is not None and not (0 < req.accuracy_budget < 100):
        raise EffdeployError("--accuracy-budget is a percentage of top-1 disagreement, e.g. 1 (for 99 % agreement)")
    if not 0 < req.max_kept_macs <= 100:
        raise EffdeployError(f"--max-kept-macs is a percentage of the multiply-adds in (0, 100], got {req.max_kept_macs:g}")
    if req.seed < 0:
        raise EffdeployError(f"--seed must be an integer >= 0 (got {req.seed})")
    from .weights import check_weights_arg

    check_weights_arg(req.weights, req.phi, req.variant)
    if req.precision == "int8":
        from .calibration import check_usable, list_items

        # a missing, empty, unreadable or unsupported --calib-data fails here, not after export
        kind = check_usable(req.calib_data, resolution)
        if kind == "folder" and req.verify_data is None:
            n = len(list_items(req.calib_data))
            if n <= req.calib_images:
                raise EffdeployError(
                    f"--calib-data {req.calib_data} holds {n} images and calibration takes up to {req.calib_images} "
                    f"({'--calib-images' if req.calib_images_given else 'the default --calib-images'}), which leaves "
                    f"none to verify on; pass --verify-data DIR, or --calib-images below {n}"
                )
    if req.verify_data is not None:
        from .calibration import check_usable
        from .datasets import list_images

        list_images(req.verify_data)  # a folder, not a file
        check_usable(req.verify_data)  # with at least one image that decodes


def budget_for(req: BuildRequest) -> Budget:
    if req.budget is not None:
        return req.budget
    base = Budget.for_precision(req.precision)
    if req.accuracy_budget is not None:
        from dataclasses import replace

        base = replace(base, top1_agreement=1.0 - req.accuracy_budget / 100.0,
                       accuracy_drop_pt=req.accuracy_budget if req.precision != "fp32" else None)
    return base


GROSS_COSINE = 0.5  # benchmark-only FP16/INT8: mean logit cosine against FP32 below this is breakage


def numerical_budget(budget: Budget, precision: str) -> Budget:
    """The budget of a build that makes no accuracy claim (random weights, an untrained head): top-1
    agreement and accuracy drop say nothing about near-tied random logits (median top-1 margin 0.36
    logit standard deviations), so only numbers are gated: FP32's max abs error, and for FP16/INT8
    gross breakage (mean logit cosine against FP32 below 0.5) plus any --max-abs."""
    return replace(budget, top1_agreement=None, accuracy_drop_pt=None,
                   min_cosine=None if precision == "fp32" else GROSS_COSINE)


def sample_inputs(spec: Any, verify: VerifySet, seed: int) -> list[tuple[str, np.ndarray]]:
    """Random inputs plus a few real images (the same preprocessing as deployment)."""
    rng = np.random.default_rng(seed)
    res = spec.preprocessing.resolution
    sets = [("random", rng.standard_normal((4, 3, res, res)).astype(np.float32))]
    if len(verify.data):
        sets.append(("images", verify.data[:8]))
    return sets


def reserved_builtin_verification() -> tuple[str, ...]:
    """Built-in images kept out of calibration so an INT8 build without data still verifies on
    images it was not calibrated on (every third one)."""
    from .datasets import builtin_image_paths

    return tuple(str(p) for p in builtin_image_paths()[::3])


def verification_set(req: BuildRequest, spec: Any, calibration_ids: Sequence[str] = ()) -> VerifySet:
    """Images not used for calibration, with labels where they are known."""
    from .calibration import load_calibration_set, source_kind
    from .datasets import builtin_image_paths, labelled_images, select_readable
    from .preprocess import preprocess_files

    pre = spec.preprocessing
    if req.verify_data:
        readable = select_readable(labelled_images(req.verify_data), calibration_ids, req.verify_images, req.seed, pre)
        source = str(req.verify_data)
    elif req.precision == "int8" and req.calib_data and source_kind(req.calib_data) == "folder":
        readable = select_readable(labelled_images(req.calib_data), calibration_ids, req.verify_images, req.seed, pre)
        source = f"{req.calib_data} (images not used for calibration)"
    elif req.precision == "int8" and req.calib_data:
        s = load_calibration_set(req.calib_data, req.verify_images, pre, seed=req.seed + 1,
                                 exclude=calibration_ids, quiet=True)
        return VerifySet(s.data, None, f"{req.calib_data} (items not used for calibration)", tuple(s.ids))
    elif req.precision == "int8":
        paths = [Path(p) for p in reserved_builtin_verification()]
        return VerifySet(preprocess_files(paths, pre), None, "built-in images not used for calibration",
                         tuple(map(str, paths)))
    else:
        paths = builtin_image_paths()[: req.verify_images]
        return VerifySet(preprocess_files(paths, pre), None, "built-in images", tuple(map(str, paths)))
    items = readable.items
    if not items:
        unreadable = f" ({len(readable.skipped)} unreadable)" if readable.skipped else ""
        raise EffdeployError(f"no verification images left in {source}{unreadable}; pass --verify-data DIR")
    return VerifySet(readable.data, [i.label for i in items], source, tuple(str(i.path) for i in items),
                     readable.warning("verification", source))


def calibration_subset(plan: Any, n: int, pre: Any, skip: int = 0) -> Any:
    """``n`` of the images calibration runs on (never one outside them, so never a verification
    image): the plan's candidates ``skip`` to ``count``, loaded until ``n`` decode."""
    from .calibration import load_plan

    k = min(plan.count, len(plan.items))
    if skip >= k:
        raise EffdeployError(f"only {k} calibration images, none left after the {skip} the reconstruction fits on; "
                             "pass more --calib-images or fewer --reconstruct-images")
    sub = replace(plan, items=plan.items[skip:k], names=plan.names[skip:k], content=plan.content[skip:k],
                  count=min(n, k - skip))
    return load_plan(sub, pre, quiet=True)


def choice_twin(fp32: Any, int8: Any, config: Any) -> Any:
    """What the repair judges a candidate by: its FP32-typed twin (the same Q/DQ and reconstructed
    biases; run as written, a few times faster on a CPU than the FP16 rest of the tensorrt graph)."""
    from .precision import quantize

    return quantize(fp32, int8.artifact.ranges, replace(config, fp16_rest=False), initializers=int8.initializers)


def selection_set(req: BuildRequest, plan: Any, pre: Any) -> VerifySet:
    """Where the repair chooses: calibration images the reconstruction did not fit on, never the
    images the gate judges (choosing and judging on the same images buys only their noise)."""
    available = min(plan.count, len(plan.items))
    skip = req.reconstruct_images if req.reconstruct and available > req.reconstruct_images else 0
    s = calibration_subset(plan, REPAIR_SELECTION_IMAGES, pre, skip=skip)
    return VerifySet(s.data, None, f"{len(s.data)} calibration images (selection split)", tuple(s.ids))


def build_bundle(req: BuildRequest) -> BuildResult:
    assert req.profile is not None
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    # The spec alone (no weights read, nothing allocated) prices the model and names the bundle,
    # so a model that cannot fit, bad data or an unusable --out is refused in the first second.
    preview = model_spec(req.phi, req.variant, resolution=req.resolution, num_classes=req.num_classes)
    size = check_fits_memory(preview)
    check_request(req, preview.resolution)
    out = Path(req.out) if req.out else default_out(preview.name, req.precision, req.profile.name)
    check_output_dir(out)
    from .cache import cache_problem, cache_folder, warn_unusable

    problem = cache_problem(cache_folder("calibration"))
    if problem:
        warn_unusable(cache_folder("calibration"), problem, req.quiet)
    cleaned = tuple(remove_stale_partials(out))
    for line in cleaned:
        info(f"note: {line}", req.quiet)
    replaced = describe_bundle(out)
    if replaced:
        info(f"note: replacing the bundle at {out} ({replaced}) once the new one is complete", req.quiet)
    steps = 5 if req.precision != "fp32" else 4
    info(f"[1/{steps}] {preview.name}: {size.parameters:,} parameters, {preview.resolution} px, weights: "
         f"{req.weights or 'random init'}", req.quiet)
    extrapolated = extrapolation_warning(preview)
    if extrapolated:
        info(f"warning: {extrapolated}", req.quiet)
    import onnx  # torch, onnx and the exporter load only once the request has passed every check

    from .export import cached_export, check_parity, count_macs, graph_summary, run_eager
    from .model import build_model

    model = build_model(req.phi, req.variant, weights=req.weights, num_classes=req.num_classes,
                        resolution=req.resolution, seed=req.seed, weights_arch=req.weights_arch,
                        replace_head=req.replace_head, preprocessing=dict(req.preprocessing))
    spec = model.spec
    if req.frames:
        from .framegraph import check_frame_spec

        check_frame_spec(spec.preprocessing)
    timings["model"] = time.perf_counter() - t0
    info(f"      weights: {model.weights_info['source']}{arch_note(model.weights_info)}", req.quiet)

    with staging_dir(out) as tmp:
        t = time.perf_counter()
        fp32, export_hit = cached_export(model, spec.resolution)
        fp32_path = tmp / (MODEL if req.precision == "fp32" else REFERENCE)
        onnx.save(fp32, str(fp32_path))
        timings["export"] = time.perf_counter() - t
        info(f"[2/{steps}] exported and simplified: {len(fp32.graph.node)} nodes"
             + (" (export cache hit)" if export_hit else ""), req.quiet)

        quant: dict[str, Any] = {}
        notes: list[str] = []
        int8 = None
        calibration_ids: tuple[str, ...] = ()
        if req.precision == "int8":
            from .calibration import (
                CALIBRATION_JSON,
                TRT_CALIBRATION_CACHE,
                plan_calibration,
                write_calibration_json,
                write_trt_calibration_cache,
            )
            from .precision import config_for
            from .quantize_stage import run_int8

            t = time.perf_counter()
            exclude = reserved_builtin_verification() if req.calib_data is None else ()
            plan = plan_calibration(req.calib_data, req.calib_images, req.seed, exclude=exclude,
                                    count_given=req.calib_images_given)
            config = replace(config_for(req.profile.is_gpu),
                             quantize_se="se" not in req.int8_float_parts,
                             quantize_stem="stem" not in req.int8_float_parts,
                             quantize_classifier="classifier" not in req.int8_float_parts)
            info(f"[3/{steps}] INT8 ({config.dialect} dialect): calibrating on "
                 f"{'built-in images' if req.calib_data is None else req.calib_data}", req.quiet)

            def selection() -> np.ndarray:
                return calibration_subset(plan, SELECTION_IMAGES, spec.preprocessing).data

            recipe = None
            if req.reconstruct:
                from .reconstruct import Recipe

                recipe = Recipe(images=req.reconstruct_images)
            int8 = run_int8(fp32, fp32_path, config, plan, spec.preprocessing, req.calib_method, selection, req.quiet,
                            recipe=recipe, reconstruction_data=lambda n: calibration_subset(plan, n, spec.preprocessing).data)
            calibration_ids = int8.calibration_ids
            for w in int8.warnings:
                info(f"warning: {w}", req.quiet)
                notes.append(w)
            write_calibration_json(tmp / CALIBRATION_JSON, int8.artifact)
            write_trt_calibration_cache(tmp / TRT_CALIBRATION_CACHE, int8.artifact)
            candidate = int8.model
            timings["calibration"] = time.perf_counter() - t
        elif req.precision == "fp16":
            from .precision import to_fp16

            info(f"[3/{steps}] FP16 conversion (onnxconverter-common, FP32 inputs/outputs)", req.quiet)
            candidate = to_fp16(fp32)
        else:
            candidate = fp32

        t = time.perf_counter()
        verify = verification_set(req, spec, calibration_ids)
        if verify.warning:
            info(f"warning: {verify.warning}", req.quiet)
            notes.append(verify.warning)
        parity = check_parity(model, fp32_path, sample_inputs(spec, verify, req.seed))
        timings["export_parity"] = time.perf_counter() - t
        parity["export_cache_hit"] = export_hit
        if not parity["passed"]:
            raise EffdeployError(
                f"the exported ONNX differs from eager by {parity['max_abs']:.3g} (> {parity['tolerance']} x logit "
                f"scale {parity['logit_scale']:.3g}); "
                "this is an exporter bug, please report it"
            )
        info(f"      export parity: max abs {parity['max_abs']:.2e} vs eager", req.quiet)

        t = time.perf_counter()
        # The reference graph is eager-equivalent (export parity above, on random and real
        # images) and 5x faster to run than eager on the CPU; `effdeploy verify` uses eager.
        from .quantize_stage import reference_logits as fp32_logits

        eager_reference = req.precision == "fp32"
        reference_hit = False
        if eager_reference:
            reference_logits = run_eager(model, verify.data)
        else:
            reference_logits, reference_hit = fp32_logits(fp32, verify.data)
        budget = budget_for(req)
        if not accuracy_claim(model.weights_info):
            budget = numerical_budget(budget, req.precision)
            notes.append(f"{no_claim_reason(model.weights_info)}: no accuracy claim, numerical checks only "
                         "(export parity; " + ("max abs error vs eager)" if req.precision == "fp32" else
                                               f"logit cosine >= {GROSS_COSINE:g} and relative error vs FP32 reported)"))
        coarse = coarse_verification(len(verify.data), budget)
        if coarse:
            info(f"warning: {coarse}", req.quiet)
            notes.append(coarse)
        report, candidate_opt = verify_candidate(candidate, reference_logits, verify, budget, req.quiet)
        reference_facts = {"reference_logits_cached": reference_hit,
                           "reference_logit_margin": logit_margin(reference_logits)}
        if eager_reference:
            report["reference"] = "eager"
        report.update(reference_facts)
        info(f"[{steps - 1}/{steps}] verify on {len(verify.data)} images ({verify.source}): "
             f"top-1 agreement {agreement_text(Comparison(**_comparison_fields(report)))}", req.quiet)
        drift: list[dict[str, Any]] = []
        repair: dict[str, Any] = {}
        from .quantize_stage import drift_report

        if req.precision != "fp32":
            drift = drift_report(fp32, candidate, verify.data[:DRIFT_IMAGES])
        if int8 is not None and req.repair:
            selection = selection_set(req, plan, spec.preprocessing)
            sel_reference, _ = fp32_logits(fp32, selection.data)
            sel_report, _ = verify_candidate(choice_twin(fp32, int8, int8.config), sel_reference, selection, budget,
                                             True, optimize=False)
            if sel_report["misses"]:
                info(f"      all-INT8 misses the budget on the selection split ({selection.source}): "
                     f"{'; '.join(sel_report['misses'])}; repairing", req.quiet)
                sel_drift = drift_report(fp32, candidate, selection.data[:DRIFT_IMAGES])
                candidate, int8, _, repair, _ = repair_int8(
                    fp32, fp32_path, int8, sel_reference, selection, budget, sel_drift, req.quiet, sel_report,
                    req.max_kept_macs)
                repair["chosen_on"] = selection.source
                repair["initial_verification"] = {"top1_agreement": report["comparison"]["top1_agreement"],
                                                  "misses": report["misses"]}
                write_calibration_json(tmp / CALIBRATION_JSON, int8.artifact)
                report, candidate_opt = verify_candidate(candidate, reference_logits, verify, budget, req.quiet)
                report.update(reference_facts)
                drift = drift_report(fp32, candidate, verify.data[:DRIFT_IMAGES])
        timings["verify"] = time.perf_counter() - t
        if req.precision != "fp32":
            from .precision import precision_summary

            onnx.save(candidate, str(tmp / MODEL))
            quant = {"precision_summary": precision_summary(candidate),
                     "ort_graph_optimization": "all" if candidate_opt else "disabled",
                     "drift": drift, "repair": repair}
            if req.precision == "fp16":
                quant["converter"] = "onnxconverter-common float16 (keep_io_types)"
        if int8 is not None:
            quant.update({
                "dialect": int8.config.dialect,
                "config": int8.config.to_dict(),
                "activations": "S8 symmetric" if int8.config.activations == "int8" else "U8 asymmetric",
                "weights": "S8 symmetric per-channel",
                "method": int8.config.method,
                "method_scores": dict(int8.method_scores),
                "cpu_dialect_latency_ms": dict(int8.dialect_timings_ms),
                "cpu_dialect_timed_before": int8.dialect_timed_before,
                "reconstruction": int8.reconstruction.to_dict() if int8.reconstruction is not None else None,
                "calibration": {**int8.artifact.manifest_entry(), "cache_hit": int8.cache_hit,
                                "builtin": int8.artifact.builtin, "warnings": list(int8.warnings)},
            })
            if int8.artifact.builtin:
                notes.append("calibrated on the small built-in image set (no --calib-data); "
                             "pass --calib-data DIR with images from the deployment for best accuracy")

        summary = graph_summary(candidate)
        summary["macs"] = count_macs(fp32)
        status = gate_status(report["misses"], coarse)
        if status != STATUS_FAILED_PARITY and not accuracy_claim(model.weights_info):
            status = STATUS_BENCHMARK_ONLY
        elif status == STATUS_CHECKED:
            info(f"warning: status checked, not verified: the budget held on {len(verify.data)} images, too few to "
                 f"resolve it; {verify_images_needed(budget)} verification images would verify it", req.quiet)
        frames: tuple[dict[str, Any], ...] = ()
        if req.frames:
            from .framegraph import add_frame_graphs

            t = time.perf_counter()
            frames = add_frame_graphs(tmp, candidate, spec.preprocessing, req.frames, verify.ids, candidate_opt,
                                      req.profile.is_gpu, req.quiet)
            timings["frame_graphs"] = time.perf_counter() - t
        manifest = Manifest(
            model=spec,
            precision=req.precision,
            profile=req.profile.to_dict(),
            weights=dict(model.weights_info),
            io={"inputs": summary["inputs"], "outputs": summary["outputs"]},
            versions=versions(),
            parity={"export": parity, "verify": report},
            graph={k: summary[k] for k in ("nodes", "opset", "ops", "macs", "initializer_parameters")},
            quantization=quant,
            notes=tuple(notes),
            status=status,
            frames=frames,
        )
        info(f"[{steps}/{steps}] bundle {status}", req.quiet)
        write_manifest(tmp, manifest)
    timings["total"] = time.perf_counter() - t0
    bundle = load_bundle(out)
    if status == STATUS_FAILED_PARITY and not req.allow_parity_failure:
        hint = "try --accuracy-budget, more --calib-images or --precision fp16"
        if repair and not repair["held"]:
            hint = (f"keeping {len(repair['kept_blocks'])} blocks ({100 * repair['macs_share_kept']:.0f} % of the "
                    f"multiply-adds, --max-kept-macs {repair['max_kept_macs_pct']:g}) out of INT8 did not meet it; {hint}")
        if not accuracy_claim(model.weights_info):
            hint = (f"with {no_claim_reason(model.weights_info)} there is no accuracy claim, so only numerical "
                    f"budgets gate this build (logit margin {report['reference_logit_margin']:.2f} standard deviations); "
                    f"a mean logit cosine below {GROSS_COSINE:g} against FP32 is breakage, please report it")
        raise ParityError(
            f"bundle {out} missed its accuracy budget ({'; '.join(report['misses'])}); it is kept with status "
            f"failed-parity (see 'effdeploy inspect'); {hint}"
        )
    auto = compile_step(bundle, req.profile, req.quiet)
    return BuildResult(bundle=bundle, timings=timings, next_step=auto.hint, engine=auto.engine,
                       compile_reason=auto.reason, replaced=replaced, cleaned=cleaned)


def describe_bundle(path: Path) -> str | None:
    """A few words on the bundle already at ``path`` (status, model, when built), or None."""
    from .bundle import is_bundle

    if not is_bundle(path):
        return None
    try:
        m = load_bundle(path, check=False).manifest
        return f"{m.model.name} {m.precision}, status {m.status}, built {m.created or 'at an unknown time'}"
    except EffdeployError:
        return "an unreadable manifest"


def _comparison_fields(report: dict[str, Any]) -> dict[str, Any]:
    from dataclasses import fields

    names = {f.name for f in fields(Comparison)}
    return {k: v for k, v in report["comparison"].items() if k in names}


def arch_note(weights_info: dict[str, Any]) -> str:
    """' as timm:tf_efficientnet_b1.ns_jft_in1k', saying when the key layout chose it."""
    arch = weights_info.get("arch") or {}
    if not arch or arch.get("source") == "native":
        return ""
    how = ""
    if arch.get("inferred") and arch.get("source") == "torchvision":
        how = " (torchvision's default weights for this layout; --weights-arch NAME.TAG for another tag)"
    return f" as {arch['key']}{how}"


def logit_margin(logits: np.ndarray) -> float:
    """Median gap between the top two logits in units of each row's standard deviation: how much
    noise top-1 agreement can take (measured: random B0/B1 0.34-0.36, pretrained Lite0 2.4)."""
    top2 = np.sort(logits, axis=1)[:, -2:]
    return float(np.median((top2[:, 1] - top2[:, 0]) / np.maximum(logits.std(axis=1), 1e-12)))


def verify_candidate(candidate: Any, reference_logits: np.ndarray, verify: VerifySet, budget: Budget,
                     quiet: bool, optimize: bool | None = None) -> tuple[dict[str, Any], bool]:
    """Reference logits vs the candidate graph on ONNX Runtime; the report and the ORT setting."""
    from .precision import needs_unoptimized_ort
    from .quantize_stage import cached_logits
    from .verify import check_budget, compare

    if optimize is None:
        optimize = not needs_unoptimized_ort(candidate)
    logits, _ = cached_logits(candidate, verify.data, optimize=optimize)
    comp = compare(reference_logits, logits, verify.labels)
    return {"reference": "fp32 reference graph (eager parity above)", "data": verify.source, "budget": budget.__dict__,
            "comparison": comp.to_dict(), "misses": check_budget(comp, budget)}, optimize


LINEAR_KEPT_BLOCKS = 8  # the repair tries 1..8 kept blocks one by one, then doubles and bisects


def kept_count_search(n: int, holds: Callable[[int], bool],
                      linear: int = LINEAR_KEPT_BLOCKS) -> tuple[int | None, list[int]]:
    """How many of the ``n`` most sensitive blocks to keep out of INT8 so the budget holds.

    Agreement grows with the kept count only up to the verification set's noise (one image of 244
    is 0.41 pt), so a pure bisection skips small counts that hold: measured on Lite0 at a 99 %
    budget it kept 10 blocks (55 % of the multiply-adds) where 5 (25 %) held. Small counts are
    cheap to deploy and worth finding, so 1..``linear`` are tried one by one; beyond that the
    search doubles up to ``n`` (the blocks the caller's cap allows) and bisects: at most
    ``linear`` + ~2 log2(n) verifications. Returns (the count that held or None, the counts tried).
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


def blocks_within(order: Sequence[str], shares: dict[str, float], max_share: float) -> int:
    """How many of the leading blocks of ``order`` fit in ``max_share`` of the multiply-adds."""
    total, n = 0.0, 0
    for block in order:
        total += shares.get(block, 0.0)
        if total > max_share + 1e-9:
            break
        n += 1
    return n


def repair_int8(fp32: Any, fp32_path: Path, int8: Any, reference_logits: np.ndarray, verify: VerifySet,
                budget: Budget, drift: list[dict[str, Any]], quiet: bool, first_report: dict[str, Any] | None = None,
                max_kept_macs: float = MAX_KEPT_MACS_PCT):
    """Keep the blocks that add the most error in higher precision until the budget holds, within
    ``max_kept_macs`` percent of the multiply-adds."""
    from .precision import needs_unoptimized_ort, quantize
    from .quantize_stage import block_macs_shares, sensitivity_order

    shares = block_macs_shares(fp32)
    ranked = sensitivity_order(drift)
    order = ranked[:blocks_within(ranked, shares, max_kept_macs / 100.0)]
    first_size = int8.model.ByteSize()
    info(f"      budget missed; blocks by sensitivity: {', '.join(ranked)} (up to {len(order)} of them fit in "
         f"{max_kept_macs:g} % of the multiply-adds, --max-kept-macs)", quiet)
    chosen: list[tuple[Any, Any, dict[str, Any], bool]] = []  # the smallest count that held, or the last one
    tried = []

    def holds(k: int) -> bool:
        config = replace(int8.config, keep_blocks=tuple(order[:k]))
        report, _ = verify_candidate(choice_twin(fp32, int8, config), reference_logits, verify, budget, quiet,
                                     optimize=False)
        agree = report["comparison"]["top1_agreement"]
        tried.append({"keep_blocks": list(config.keep_blocks), "top1_agreement": agree, "misses": report["misses"]})
        names = ", ".join(order[:k]) if k <= 4 else f"{', '.join(order[:3])}, ... {order[k - 1]}"
        info(f"      keeping {k} block{'s' if k > 1 else ''} ({names}) in higher precision: "
             f"top-1 agreement {100 * agree:.2f} %", quiet)
        ok = not report["misses"]
        if ok or k == len(order):  # a later count that holds is smaller: one choice in memory
            chosen[:] = [(config, report)]
        return ok

    held, _ = kept_count_search(len(order), holds)
    if not chosen:  # no MBConv block fits the cap (or none in the graph): the first result stands
        chosen.append((int8.config, first_report or {}))
    config, report = chosen[0]
    candidate = (int8.model if config == int8.config else
                 quantize(fp32, int8.artifact.ranges, config, initializers=int8.initializers))
    optimize = not needs_unoptimized_ort(candidate)
    int8 = replace(int8, model=candidate, config=config)
    initial = {"top1_agreement": None, "misses": []}
    if first_report:
        initial = {"top1_agreement": first_report["comparison"]["top1_agreement"], "misses": first_report["misses"]}
    repair = {
        "initial": initial,
        "kept_blocks": list(config.keep_blocks),
        "macs_share_kept": sum(shares.get(k, 0.0) for k in config.keep_blocks),
        "max_kept_macs_pct": max_kept_macs,
        "blocks_within_cap": len(order),
        "model_bytes": {"all_int8": first_size, "repaired": candidate.ByteSize()},
        "search": f"1..{LINEAR_KEPT_BLOCKS} blocks one by one, then doubling and bisection, in sensitivity order",
        "tried": tried,
        "held": held is not None,
    }
    return candidate, int8, report, repair, optimize


def compile_step(bundle: Bundle, profile: Profile, quiet: bool) -> Any:
    """GPU profiles: compile here when TensorRT and a matching GPU exist, else say how on the target."""
    from .compile import compile_after_build

    return compile_after_build(bundle.path, profile, quiet=quiet)
