"""The build: model -> ONNX -> simplified ONNX -> precision graph -> verified bundle [-> engine].

Each stage is a function of the previous stage's output; the manifest written last records all
of it. Everything happens in a staging directory renamed into place at the end.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence, TYPE_CHECKING

import numpy as np

from . import __version__
from .bundle import (
    MODEL, REFERENCE, STATUS_BENCHMARK_ONLY, STATUS_CHECKED, STATUS_FAILED_PARITY, Manifest,
    check_output_dir, load_bundle, remove_stale_partials, staging_dir, write_manifest,
)
from .bundle import Bundle as BundleRecord
from .errors import EffdeployError, ParityError
from .model.spec import check_fits_memory, extrapolation_warning, model_spec
from .model.weights import accuracy_claim, no_claim_reason
from .profiles import PRECISIONS, Profile
from .report import info
from .request import BuildRequest, RECONSTRUCT_MODES, REPAIR_SELECTION_IMAGES
from .verify.gate import (
    REFERENCE_GRAPH, Budget, VerifyReport, VerifySet, agreement_text, coarse_verification, verify_candidate,
    verify_images_needed,
)

if TYPE_CHECKING:  # the repair module loads onnx; the build imports it only once the checks passed
    from .verify.repair import FallbackReport, RepairReport

SELECTION_IMAGES = 32  # calibration images used to choose the calibration method
DRIFT_IMAGES = 32


@dataclass(frozen=True)
class BuildResult:
    bundle: BundleRecord
    timings: dict[str, float] = field(default_factory=dict)
    next_step: str | None = None  # the compile command for the target, when not compiled here
    engine: Path | None = None
    compile_reason: str = ""
    replaced: str | None = None  # the bundle that was at --out before (status, model, date)
    cleaned: tuple[str, ...] = ()  # what a killed earlier build of --out left and this one removed


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
    if req.precision not in PRECISIONS:
        raise EffdeployError(f"--precision must be one of {', '.join(PRECISIONS)} (got {req.precision!r})")
    if req.precision not in req.profile.precisions:
        raise EffdeployError(
            f"profile {req.profile.name} has no fast {req.precision} kernels "
            f"(supported: {', '.join(req.profile.precisions)}); choose one of those"
        )
    if req.reconstruct_mode not in RECONSTRUCT_MODES:
        raise EffdeployError(f"--reconstruct takes {', '.join(RECONSTRUCT_MODES)} (got {req.reconstruct_mode!r})")
    if req.calib_images < 1 or req.verify_images < 1 or req.reconstruct_images < 1:
        raise EffdeployError("--calib-images, --verify-images and --reconstruct-images must be at least 1")
    if req.accuracy_budget is not None and not (0 < req.accuracy_budget < 100):
        raise EffdeployError("--accuracy-budget is a percentage of top-1 disagreement, e.g. 1 (for 99 % agreement)")
    if not 0 < req.max_kept_macs <= 100:
        raise EffdeployError(f"--max-kept-macs is a percentage of the multiply-adds in (0, 100], got {req.max_kept_macs:g}")
    if req.seed < 0:
        raise EffdeployError(f"--seed must be an integer >= 0 (got {req.seed})")
    from .model.weights import check_weights_arg

    check_weights_arg(req.weights, req.phi, req.variant)
    if req.labels is not None:
        from .data.labels import check_label_count, read_labels

        names = read_labels(req.labels)
        if req.num_classes is not None:
            check_label_count(names, req.num_classes, req.labels)
    if req.precision == "int8" and req.profile.vnni and req.profile.target_runtime == "onnxruntime":
        from .backends.cpu_features import describe_int8_dot, vnni_flags

        if not vnni_flags():  # its verification would run ONNX Runtime's saturating QLinear kernels
            raise EffdeployError(
                f"profile {req.profile.name} builds 8-bit INT8 weights for CPUs with VNNI or AMX, and this CPU has "
                f"{describe_int8_dot()}: ONNX Runtime's INT8 kernels saturate them here, so the build could not "
                "verify what the target runs; build on a VNNI CPU, or use --profile cpu (7-bit weights, any x86 CPU)")
    if req.precision == "int8" and req.reconstruct:
        from .precision.reconstruct import resolve_device

        resolve_device(req.device)  # --device cuda without a GPU torch can see fails now
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
        from .data.datasets import list_images

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
    agreement and accuracy drop say nothing about near-tied random logits (see ``logit_margin``),
    so only numbers are gated: FP32's max abs error, and for FP16/INT8 gross breakage (mean logit
    cosine against FP32 below 0.5) plus any --max-abs."""
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


# The built-in photos whose subject an ImageNet class names (tripod, tabby, espresso, motor scooter,
# missile; the motorcycle stereo pair stays on one side). Top-1 agreement on the others (textures,
# micrographs, a face, the moon) measures how the model breaks near-ties it has no class for, so
# they calibrate and these judge.
BUILTIN_VERIFICATION = ("camera", "chelsea", "coffee", "motorcycle_left", "motorcycle_right", "rocket")


def reserved_builtin_verification() -> tuple[str, ...]:
    """Built-in images kept out of calibration so an INT8 build without data still verifies on
    images it was not calibrated on (the object photos, see BUILTIN_VERIFICATION)."""
    from .data.datasets import builtin_image_paths

    return tuple(str(p) for p in builtin_image_paths() if p.stem in BUILTIN_VERIFICATION)


def verification_set(req: BuildRequest, spec: Any, calibration_ids: Sequence[str] = ()) -> VerifySet:
    """Images not used for calibration, with labels where they are known."""
    from .calibration import load_calibration_set, source_kind
    from .data.datasets import builtin_image_paths, labelled_images, select_readable
    from .data.preprocess import preprocess_files

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


def selection_skip(req: BuildRequest, plan: Any) -> int:
    """How many leading calibration images the selection split leaves to the reconstruction and
    the conv sensitivity (both fit on the first ones); 0 where no image would be left."""
    from .precision.sensitivity import SENSITIVITY_IMAGES

    skip = req.reconstruct_images if req.reconstruct else 0
    skip = max(skip, SENSITIVITY_IMAGES) if req.conv_fallback else skip
    return skip if min(plan.count, len(plan.items)) > skip else 0


def selection_set(req: BuildRequest, plan: Any, pre: Any) -> VerifySet:
    """Where the repair chooses: calibration images the reconstruction did not fit on, never the
    images the gate judges (choosing and judging on the same images buys only their noise)."""
    s = calibration_subset(plan, REPAIR_SELECTION_IMAGES, pre, skip=selection_skip(req, plan))
    return VerifySet(s.data, None, f"{len(s.data)} calibration images (selection split)", tuple(s.ids))


@dataclass(frozen=True)
class Exported:
    """The export stage's output: the simplified FP32 graph, saved in the staging bundle."""

    fp32: Any  # onnx.ModelProto
    path: Path
    cache_hit: bool


@dataclass(frozen=True)
class Candidate:
    """The precision stage's output: the graph to verify (and its INT8 record)."""

    model: Any  # onnx.ModelProto
    int8: Any = None  # effdeploy.precision.int8_stage.Int8Result
    calibration_ids: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Verified:
    """The verify-and-repair stage's output: the final candidate and what judged it."""

    candidate: Candidate
    parity: dict[str, Any]  # export parity vs eager
    report: VerifyReport
    optimize: bool  # ONNX Runtime's graph optimiser runs the candidate
    drift: list[dict[str, Any]]
    repair: RepairReport | None
    notes: tuple[str, ...]
    images: tuple[str, ...] = ()  # the verification images (the frame-in graphs are checked on them too)
    fallback: FallbackReport | None = None  # the conv fallback (INT8 with the repair on)


def build_bundle(req: BuildRequest) -> BuildResult:
    """model -> export -> precision -> verify (and repair) -> manifest [-> compile], staged in a
    directory renamed into place only when the manifest is written."""
    assert req.profile is not None
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    steps = 5 if req.precision != "fp32" else 4  # the progress lines' [k/steps]
    out, replaced, cleaned = check_build(req, steps)
    model = model_stage(req)
    timings["model"] = time.perf_counter() - t0
    with staging_dir(out) as tmp:
        t = time.perf_counter()
        exported = export_stage(req, model, tmp, steps)
        timings["export"] = time.perf_counter() - t
        t = time.perf_counter()
        candidate = precision_stage(req, model.spec, exported, tmp, steps)
        if candidate.int8 is not None:
            timings["calibration"] = time.perf_counter() - t
        t = time.perf_counter()
        verified = verify_stage(req, model, exported, candidate, tmp, steps, timings)
        timings["verify"] = time.perf_counter() - t
        t = time.perf_counter()
        frames = frame_stage(req, model.spec, verified, tmp)
        if frames:
            timings["frame_graphs"] = time.perf_counter() - t
        manifest = assemble_manifest(req, model, exported, verified, tmp, frames)
        info(f"[{steps}/{steps}] bundle {manifest.status}", req.quiet)
        write_manifest(tmp, manifest)
    timings["total"] = time.perf_counter() - t0
    bundle = load_bundle(out)
    if manifest.status == STATUS_FAILED_PARITY and not req.allow_parity_failure:
        raise ParityError(parity_failure_message(out, verified, model.weights_info))
    auto = compile_step(bundle, req.profile, req.quiet)
    return BuildResult(bundle=bundle, timings=timings, next_step=auto.hint, engine=auto.engine,
                       compile_reason=auto.reason, replaced=replaced, cleaned=cleaned)


def check_build(req: BuildRequest, steps: int) -> tuple[Path, str | None, tuple[str, ...]]:
    """Everything that can be refused before a weight is read: the spec alone prices the model and
    names the bundle, so a model that cannot fit, bad data or an unusable --out fail in the first
    second. Returns --out, what it replaces there and the stale partials it removed."""
    from .cache import cache_folder, cache_problem, warn_unusable

    preview = model_spec(req.phi, req.variant, resolution=req.resolution, num_classes=req.num_classes or 1000)
    size = check_fits_memory(preview)
    check_request(req, preview.resolution)
    out = Path(req.out) if req.out else default_out(preview.name, req.precision, req.profile.name)
    check_output_dir(out)
    problem = cache_problem(cache_folder("calibration"))
    if problem:
        warn_unusable(cache_folder("calibration"), problem, req.quiet)
    cleaned = tuple(remove_stale_partials(out))
    for line in cleaned:
        info(f"note: {line}", req.quiet)
    replaced = describe_bundle(out)
    if replaced:
        info(f"note: replacing the bundle at {out} ({replaced}) once the new one is complete", req.quiet)
    info(f"[1/{steps}] {preview.name}: {size.parameters:,} parameters, {preview.resolution} px, weights: "
         f"{req.weights or (f'the given {type(req.module).__name__} module' if req.module is not None else 'random init')}", req.quiet)
    extrapolated = extrapolation_warning(preview)
    if extrapolated:
        info(f"warning: {extrapolated}", req.quiet)
    if req.precision == "int8":
        from .backends.cpu_features import int8_build_notes

        for line in int8_build_notes(req.profile):
            info(f"note: {line}", req.quiet)
    return out, replaced, cleaned


def model_stage(req: BuildRequest) -> Any:
    """The eager model with its weights (torch and the exporter load only now)."""
    from .model.network import build_model

    if req.module is not None:
        model = module_model(req)
    else:
        model = build_model(req.phi, req.variant, weights=req.weights, num_classes=req.num_classes,
                            resolution=req.resolution, seed=req.seed, weights_arch=req.weights_arch,
                            replace_head=req.replace_head, preprocessing=dict(req.preprocessing))
    if req.frames:
        from .data.frames import check_frame_spec

        check_frame_spec(model.spec.preprocessing)
    if req.labels is not None:  # the class count may come from the weights folder: checked once it is known
        from .data.labels import check_label_count, read_labels

        check_label_count(read_labels(req.labels), model.spec.num_classes, req.labels)
    info(f"      weights: {model.weights_info['source']}{arch_note(model.weights_info)}", req.quiet)
    return model


def module_model(req: BuildRequest) -> Any:
    """A model object given to :func:`build`: effdeploy's own as it is; another library's rebuilt
    from its weights (read like a checkpoint) and checked against the module itself."""
    import torch

    from .data.datasets import builtin_image_paths
    from .data.preprocess import preprocess_files
    from .model.adopt import adopt, module_parity, module_state_file
    from .model.network import EfficientNet, build_model

    if isinstance(req.module, EfficientNet):
        model = req.module.eval()
        if not getattr(model, "weights_info", None):
            model.weights_info = {"source": "module", "format": "native", "note": "an effdeploy EfficientNet object"}
        return model
    a = adopt(req.module)
    model = build_model(a.phi, a.variant, weights=str(module_state_file(req.module)), weights_arch=a.weights_arch,
                        num_classes=a.num_classes, resolution=req.resolution or a.resolution,
                        preprocessing={**a.preprocessing, **dict(req.preprocessing)})
    res = model.spec.resolution
    noise = torch.randn(4, 3, res, res, generator=torch.Generator().manual_seed(0))
    try:
        x = torch.cat([torch.from_numpy(preprocess_files(builtin_image_paths()[:4], model.spec.preprocessing)), noise])
    except EffdeployError:  # no built-in images (scikit-image absent): noise alone
        x = noise
    parity = module_parity(req.module, model, x)
    model.weights_info = {**model.weights_info, "source": f"module {a.origin}",
                          "module": {"origin": a.origin, "parity": parity}}
    info(f"      adopted {a.origin}: effdeploy's rebuild gives its logits to {parity['relative']:.1e} of their scale",
         req.quiet)
    return model


def export_stage(req: BuildRequest, model: Any, tmp: Path, steps: int) -> Exported:
    """The simplified FP32 graph (cached), saved as the bundle's model or its FP32 reference."""
    import onnx

    from .export.exporter import cached_export

    fp32, hit = cached_export(model, model.spec.resolution)
    path = tmp / (MODEL if req.precision == "fp32" else REFERENCE)
    onnx.save(fp32, str(path))
    info(f"[2/{steps}] exported and simplified: {len(fp32.graph.node)} nodes" + (" (export cache hit)" if hit else ""),
         req.quiet)
    return Exported(fp32, path, hit)


def precision_stage(req: BuildRequest, spec: Any, exported: Exported, tmp: Path, steps: int) -> Candidate:
    """The graph in the requested precision: FP32 as exported, FP16 converted, INT8 calibrated,
    quantized in the profile's dialect and reconstructed."""
    if req.precision == "fp16":
        from .precision.qdq import to_fp16

        info(f"[3/{steps}] FP16 conversion (onnxconverter-common, FP32 inputs/outputs)", req.quiet)
        return Candidate(to_fp16(exported.fp32))
    if req.precision != "int8":
        return Candidate(exported.fp32)
    from .calibration import (
        CALIBRATION_JSON, TRT_CALIBRATION_CACHE, write_calibration_json, write_trt_calibration_cache,
    )

    int8 = int8_stage(req, spec, exported, steps)
    speed = (int8.speed_note,) if int8.speed_note else ()
    for w in (*int8.warnings, *speed):
        info(f"warning: {w}", req.quiet)
    write_calibration_json(tmp / CALIBRATION_JSON, int8.artifact)
    write_trt_calibration_cache(tmp / TRT_CALIBRATION_CACHE, int8.artifact)
    return Candidate(int8.model, int8, tuple(int8.calibration_ids), (*int8.warnings, *speed))


def int8_config(req: BuildRequest, variant: str) -> Any:
    """The profile's dialect with the float parts asked for (or the family's defaults); 8-bit weights
    where the profile's CPU has VNNI (``target.vnni``), else the dialect's own (7-bit on CPUs)."""
    from .precision.qdq import RUNTIME_DIALECTS, config_for, default_float_parts

    dialect = RUNTIME_DIALECTS[req.profile.target_runtime]
    parts = req.int8_float_parts
    if parts is None:
        parts = default_float_parts(variant, dialect)
    base = config_for(dialect)
    return replace(base, quantize_se="se" not in parts, quantize_stem="stem" not in parts,
                   quantize_classifier="classifier" not in parts, quantize_depthwise="dw" not in parts,
                   reduce_range=base.reduce_range and not req.profile.vnni)


def int8_stage(req: BuildRequest, spec: Any, exported: Exported, steps: int) -> Any:
    """Calibration plan, the dialect's config with the user's float parts, and the INT8 stage."""
    from .calibration import plan_calibration
    from .precision.int8_stage import run_int8

    exclude = reserved_builtin_verification() if req.calib_data is None else ()
    plan = plan_calibration(req.calib_data, req.calib_images, req.seed, exclude=exclude,
                            count_given=req.calib_images_given)
    config = int8_config(req, spec.variant)
    info(f"[3/{steps}] INT8 ({config.dialect} dialect): calibrating on "
         f"{'built-in images' if req.calib_data is None else req.calib_data}", req.quiet)
    recipe = None
    if req.reconstruct:
        from .precision.reconstruct import Recipe, default_mode, resolve_device

        images = min(req.reconstruct_images, plan.count)
        mode = default_mode(spec.variant, images, config.dialect) if req.reconstruct_mode == "auto" else req.reconstruct_mode
        recipe = Recipe(images=req.reconstruct_images, mode=mode, device=resolve_device(req.device))
    pre = spec.preprocessing
    int8 = run_int8(exported.fp32, exported.path, config, plan, pre, req.calib_method,
                    lambda: calibration_subset(plan, SELECTION_IMAGES, pre).data, req.quiet, recipe=recipe,
                    reconstruction_data=lambda n: calibration_subset(plan, n, pre).data)
    return replace(int8, plan=plan)


def verify_stage(req: BuildRequest, model: Any, exported: Exported, candidate: Candidate, tmp: Path, steps: int,
                 timings: dict[str, float]) -> Verified:
    """Export parity against eager, then the candidate against the FP32 reference on images it was
    not calibrated on; an INT8 candidate that misses its budget on the selection split is repaired."""
    from .calibration import CALIBRATION_JSON, write_calibration_json
    from .verify.repair import drift_report

    t = time.perf_counter()
    verify = verification_set(req, model.spec, candidate.calibration_ids)
    notes = list(candidate.notes)
    if verify.warning:
        info(f"warning: {verify.warning}", req.quiet)
        notes.append(verify.warning)
    parity = export_parity(req, model, exported, verify)
    timings["export_parity"] = time.perf_counter() - t
    reference_logits, reference_hit = reference_stage(req, model, exported, verify)
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
    reference = "eager" if req.precision == "fp32" else REFERENCE_GRAPH
    report, optimize = verify_candidate(candidate.model, reference_logits, verify, budget, reference=reference,
                                        reference_cached=reference_hit)
    info(f"[{steps - 1}/{steps}] verify on {len(verify.data)} images ({verify.source}): "
         f"top-1 agreement {agreement_text(report.comparison)}", req.quiet)
    drift = drift_report(exported.fp32, candidate.model, verify.data[:DRIFT_IMAGES]) if req.precision != "fp32" else []
    repair = fallback = None
    if candidate.int8 is not None and req.repair:
        int8, fallback, repair = repair_stage(req, model.spec, exported, candidate.int8, budget, report,
                                              claim=accuracy_claim(model.weights_info))
        if int8.config != candidate.int8.config:
            candidate = replace(candidate, model=int8.model, int8=int8)
            write_calibration_json(tmp / CALIBRATION_JSON, int8.artifact)
            report, optimize = verify_candidate(candidate.model, reference_logits, verify, budget,
                                                reference=reference, reference_cached=reference_hit)
            drift = drift_report(exported.fp32, candidate.model, verify.data[:DRIFT_IMAGES])
    return Verified(candidate, parity, report, optimize, drift, repair, tuple(notes), verify.ids, fallback)


def frame_stage(req: BuildRequest, spec: Any, verified: Verified, tmp: Path) -> tuple[dict[str, Any], ...]:
    """Per ``--frame`` size, the verified preprocessing and the model as one graph taking the raw
    frame (effdeploy.export.frames), checked on the build's images scaled to that size: the frame graph
    chooses nothing on images, so the calibration images judge it as fairly as the verification ones."""
    if not req.frames:
        return ()
    from .verify.frames import add_frame_graphs

    ids = verified.images + verified.candidate.calibration_ids
    return add_frame_graphs(tmp, verified.candidate.model, spec.preprocessing, req.frames, ids,
                            verified.optimize, req.profile.is_gpu, req.quiet)


def export_parity(req: BuildRequest, model: Any, exported: Exported, verify: VerifySet) -> dict[str, Any]:
    """The exported graph against eager on random inputs and real images; a miss is an exporter bug."""
    from .verify.parity import check_parity

    parity = check_parity(model, exported.path, sample_inputs(model.spec, verify, req.seed))
    parity["export_cache_hit"] = exported.cache_hit
    if not parity["passed"]:
        raise EffdeployError(
            f"the exported ONNX differs from eager by {parity['max_abs']:.3g} (> {parity['tolerance']} x logit "
            f"scale {parity['logit_scale']:.3g}); this is an exporter bug, please report it")
    info(f"      export parity: max abs {parity['max_abs']:.2e} vs eager", req.quiet)
    return parity


def reference_stage(req: BuildRequest, model: Any, exported: Exported, verify: VerifySet) -> tuple[np.ndarray, bool]:
    """What a candidate is judged against: eager for FP32; for FP16/INT8 the FP32 reference graph,
    eager-equivalent by export parity and several times faster than eager on a CPU (cached)."""
    from .model.eager import run_eager
    from .export.logits import reference_logits

    if req.precision == "fp32":
        return run_eager(model, verify.data), False
    return reference_logits(exported.fp32, verify.data)


def repair_stage(req: BuildRequest, spec: Any, exported: Exported, int8: Any, budget: Budget,
                 first: VerifyReport, claim: bool = True) -> tuple[Any, FallbackReport | None, RepairReport | None]:
    """Decide and choose on the selection split (calibration images the reconstruction did not fit
    on), never on the verification images the gate judges. Where all-INT8 misses the budget there,
    the block repair; where it holds, the conv fallback (single convs out of INT8, on evidence).
    Measured on the distilled-b B0 (docs/int8.md): the block repair alone beat the fallback followed
    by the block repair in both dialects (the fallback met part of the budget with fewer float
    multiply-adds, and less accuracy), so the fallback is only the refinement of a graph that holds."""
    from .export.logits import reference_logits
    from .verify.repair import choice_twin, drift_report, repair_int8

    selection = selection_set(req, int8.plan, spec.preprocessing)
    sel_reference, _ = reference_logits(exported.fp32, selection.data)
    sel_report, _ = verify_candidate(choice_twin(exported.fp32, int8, int8.config), sel_reference, selection,
                                     budget, optimize=False)
    if not sel_report.misses:
        if not claim:  # random weights or an untrained head: no accuracy to refine
            info("      conv fallback: skipped (no accuracy claim to refine; the KL of random weights means nothing)",
                 req.quiet)
            return int8, None, None
        int8, fallback = fallback_stage(req, spec, exported, int8, sel_reference, selection)
        return int8, replace(fallback, initial_verification=first.outcome()) if fallback else None, None
    info(f"      all-INT8 misses the budget on the selection split ({selection.source}): "
         f"{'; '.join(sel_report.misses)}; repairing", req.quiet)
    sel_drift = drift_report(exported.fp32, int8.model, selection.data[:DRIFT_IMAGES])
    int8, repair = repair_int8(exported.fp32, int8, sel_reference, selection, budget, sel_drift, req.quiet,
                               sel_report, req.max_kept_macs)
    return int8, None, replace(repair, initial_verification=first.outcome())


def fallback_stage(req: BuildRequest, spec: Any, exported: Exported, int8: Any, sel_reference: np.ndarray,
                   selection: VerifySet) -> tuple[Any, FallbackReport | None]:
    """Rank the quantized convs by leave-one-out sensitivity on calibration images outside the
    selection split, then let :func:`effdeploy.verify.repair.fallback_int8` choose on the split."""
    from .precision.reconstruct import resolve_device
    from .precision.sensitivity import SENSITIVITY_IMAGES, conv_sensitivity
    from .verify.repair import choice_twin, fallback_int8

    if not req.conv_fallback or selection_skip(req, int8.plan) < SENSITIVITY_IMAGES:  # off, or too few
        return int8, None  # calibration images to rank on others than the split
    t = time.perf_counter()
    images = calibration_subset(int8.plan, SENSITIVITY_IMAGES, spec.preprocessing).data
    sensitivity = conv_sensitivity(exported.fp32, choice_twin(exported.fp32, int8, int8.config), images,
                                   fp16_scales=int8.config.fp16_rest, device=resolve_device(req.device))
    info(f"      conv sensitivity on {sensitivity.images} calibration images ({time.perf_counter() - t:.1f} s"
         f"{', cached' if sensitivity.cache_hit else ''}): all-INT8 KL {sensitivity.all_int8_kl:.4f}; "
         + ", ".join(f"{c.node} in float {c.kl:.4f}" for c in sensitivity.convs[:3]), req.quiet)
    return fallback_int8(exported.fp32, int8, sensitivity, sel_reference, selection, req.quiet)


def status_of(req: BuildRequest, verified: Verified, weights_info: dict[str, Any]) -> str:
    """verified / checked / failed-parity from the gate; benchmark-only where no accuracy is claimed."""
    report = verified.report
    status = report.status
    if status != STATUS_FAILED_PARITY and not accuracy_claim(weights_info):
        return STATUS_BENCHMARK_ONLY
    if status == STATUS_CHECKED:
        info(f"warning: status checked, not verified: the budget held on {report.comparison.samples} images, too "
             f"few to resolve it; {verify_images_needed(report.budget)} verification images would verify it",
             req.quiet)
    return status


def quantization_record(req: BuildRequest, verified: Verified) -> dict[str, Any]:
    """The manifest's ``quantization``: precision summary, drift, repair and the INT8 choices."""
    from .precision.qdq import precision_summary

    model, int8 = verified.candidate.model, verified.candidate.int8
    if req.precision == "fp32":
        return {}
    quant: dict[str, Any] = {"precision_summary": precision_summary(model),
                             "ort_graph_optimization": "all" if verified.optimize else "disabled",
                             "drift": verified.drift, "repair": verified.repair.to_dict() if verified.repair else {},
                             "fallback": verified.fallback.to_dict() if verified.fallback else {}}
    if req.precision == "fp16":
        quant["converter"] = "onnxconverter-common float16 (keep_io_types)"
    if int8 is not None:
        quant.update(int8.to_manifest())
    return quant


def assemble_manifest(req: BuildRequest, model: Any, exported: Exported, verified: Verified, tmp: Path,
                      frames: tuple[dict[str, Any], ...] = ()) -> Manifest:
    """The one record of the build (written last: a bundle without it is not a bundle)."""
    import onnx

    from .export.exporter import count_macs, graph_summary

    candidate = verified.candidate.model
    notes = list(verified.notes)
    if req.precision != "fp32":
        onnx.save(candidate, str(tmp / MODEL))
    int8 = verified.candidate.int8
    if int8 is not None and int8.artifact.builtin:
        notes.append("calibrated on the small built-in image set (no --calib-data); "
                     "pass --calib-data DIR with images from the deployment for best accuracy")
    summary = graph_summary(candidate)
    summary["macs"] = count_macs(exported.fp32)
    labels = None
    if req.labels is not None:
        from .data.labels import LABELS_FILE, labels_text, read_labels

        (tmp / LABELS_FILE).write_text(labels_text(read_labels(req.labels)), encoding="utf-8")
        labels = LABELS_FILE
    return Manifest(
        model=model.spec, precision=req.precision, profile=req.profile.to_dict(), weights=dict(model.weights_info),
        io={"inputs": summary["inputs"], "outputs": summary["outputs"]}, versions=versions(),
        parity={"export": verified.parity, "verify": verified.report.to_dict()},
        graph={k: summary[k] for k in ("nodes", "opset", "ops", "macs", "initializer_parameters")},
        quantization=quantization_record(req, verified), notes=tuple(notes),
        status=status_of(req, verified, model.weights_info), frames=frames, labels=labels,
    )


def parity_failure_message(out: Path, verified: Verified, weights_info: dict[str, Any]) -> str:
    """What missed, and what to try (the repair's outcome, or why a benchmark-only build failed)."""
    report, repair = verified.report, verified.repair
    hint = "try --accuracy-budget, more --calib-images or --precision fp16"
    if repair is not None and not repair.held:
        hint = (f"keeping up to {max(len(t['keep_blocks']) for t in repair.tried)} blocks (--max-kept-macs "
                f"{repair.max_kept_macs_pct:g}) out of INT8 did not meet it on the selection split; {hint}"
                if repair.tried else hint)
    elif repair is not None and repair.evidence is not None and not repair.evidence.repair:
        hint = (f"keeping {', '.join(repair.evidence.keep_blocks)} out of INT8 met it on the selection split, but not by more "
                f"than its images resolve ({repair.evidence.reason}), so all-INT8 stands; {hint}")
    if not accuracy_claim(weights_info):
        hint = (f"with {no_claim_reason(weights_info)} there is no accuracy claim, so only numerical "
                f"budgets gate this build (logit margin {report.reference_logit_margin:.2f} standard deviations); "
                f"a mean logit cosine below {GROSS_COSINE:g} against FP32 is breakage, please report it")
    return (f"bundle {out} missed its accuracy budget ({'; '.join(report.misses)}); it is kept with status "
            f"failed-parity (see 'effdeploy inspect'); {hint}")


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


def arch_note(weights_info: dict[str, Any]) -> str:
    """' as timm:tf_efficientnet_b1.ns_jft_in1k', saying when the key layout chose it."""
    arch = weights_info.get("arch") or {}
    if not arch or arch.get("source") == "native":
        return ""
    how = ""
    if arch.get("inferred") and arch.get("source") == "torchvision":
        how = " (torchvision's default weights for this layout; --weights-arch NAME.TAG for another tag)"
    return f" as {arch['key']}{how}"


def compile_step(bundle: BundleRecord, profile: Profile, quiet: bool) -> Any:
    """GPU profiles: compile here when TensorRT and a matching GPU exist, else say how on the target."""
    from .backends.tensorrt.build import compile_after_build

    return compile_after_build(bundle.path, profile, quiet=quiet)


# --- the Python API -------------------------------------------------------------------------------

_API_FIXED = {"phi", "module", "profile", "precision", "out", "quiet"}


def build(model_or_phi: Any, *, precision: str = "fp32", profile: Any = "cpu", out: str | Path | None = None,
          progress: Any = None, **options: Any) -> Any:
    """``effdeploy build`` from Python: ``model_or_phi`` is a phi (as ``--phi``) or an EfficientNet
    module (effdeploy's, timm's, torchvision's, lukemelas'), adopted only where effdeploy rebuilds
    it exactly. ``options`` are the build's other settings by their names (``variant``, ``weights``,
    ``calib_data``, ``calib_images``, ``verify_data``, ``labels``, ``accuracy_budget``, ...; see
    :class:`effdeploy.request.BuildRequest`). Status lines go to the ``effdeploy`` logger, or to
    ``progress`` (a callable taking each line). Returns the finished :class:`Bundle`;
    a missed budget raises :class:`effdeploy.errors.ParityError` (the bundle stays, ``failed-parity``)."""
    from dataclasses import fields

    from .profiles import load_profile
    from .report import lines_to

    known = {f.name for f in fields(BuildRequest)} - _API_FIXED
    unknown = sorted(set(options) - known)
    if unknown:
        raise EffdeployError(f"effdeploy.build got unknown option(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}")
    if "preprocessing" in options:
        options["preprocessing"] = tuple(dict(options["preprocessing"]).items())
    if isinstance(model_or_phi, (int, float, str)):
        req = BuildRequest(phi=model_or_phi, **options)
    else:
        req = module_request(model_or_phi, options)
    req = replace(req, precision=precision, out=Path(out) if out is not None else None,
                  profile=profile if not isinstance(profile, (str, Path)) else load_profile(profile))
    with lines_to(progress):
        record = build_bundle(req).bundle
    return Bundle(record.path, record.manifest)


def module_request(module: Any, options: dict[str, Any]) -> BuildRequest:
    """The request for a module: its phi, variant and classes come from the module itself."""
    from .model.adopt import adopt

    clash = sorted(set(options) & {"variant", "weights", "weights_arch", "num_classes", "replace_head"})
    if clash:
        raise EffdeployError(f"effdeploy.build(module) takes {', '.join(clash)} from the module itself; drop "
                             f"{'it' if len(clash) == 1 else 'them'}")
    a = adopt(module)
    return BuildRequest(phi=a.phi, variant=a.variant, num_classes=a.num_classes,
                        resolution=options.pop("resolution", None) or a.resolution, module=module, **options)


def load(path: str | Path) -> "Bundle":
    """A finished bundle, every artifact checked against its sha256."""
    record = load_bundle(path)
    return Bundle(record.path, record.manifest)


@dataclass(frozen=True)
class Bundle(BundleRecord):
    """The handle :func:`build` and :func:`load` return: the bundle record (``path``, ``status``,
    ``manifest``) and what one does with it next. Here, at the top of the pipeline, because its
    actions reach forward to the runtime and the compiler."""

    def runner(self, **options: Any) -> Any:
        """The deployment :class:`effdeploy.runtime.Runner` on this bundle (``Runner.open`` options:
        ``threads``, ``force``, ``spin``); torch-free."""
        from .runtime.runner import Runner

        return Runner.open(self.path, **options)

    def verify(self, data: str | Path | None = None, images: int = 200, seed: int = 0, reference: str = "auto",
               budget: Any = None) -> Any:
        """Judge the bundle again on ``data`` (a folder; its calibration images left out), as
        ``effdeploy verify`` does: a :class:`effdeploy.verify.gate.VerifyReport`."""
        from .verify.rerun import verify_again

        return verify_again(self, None if data is None else str(data), images, seed, reference, budget)

    def compile(self, profile: str | None = None, **options: Any) -> Any:
        """``effdeploy compile`` on this machine's TensorRT and GPU (``CompileOptions`` fields as
        keywords): the engine result, or one line saying why not here."""
        from .backends.tensorrt.build import compile_bundle
        from .backends.tensorrt.plan import CompileOptions

        return compile_bundle(self.path, profile, CompileOptions(**options), quiet=True)
