"""The build: model -> ONNX -> simplified ONNX -> precision graph -> verified bundle [-> engine].

Each stage is a function of the previous stage's output; the manifest written last records all
of it. Everything happens in a staging directory renamed into place at the end.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .bundle import (
    MODEL,
    REFERENCE,
    STATUS_FAILED_PARITY,
    STATUS_VERIFIED,
    Bundle,
    Manifest,
    check_output_dir,
    load_bundle,
    staging_dir,
    write_manifest,
)
from .errors import EffdeployError, ParityError
from .profile import Profile
from .report import info
from .verify import Budget

IMPLEMENTED_PRECISIONS = ("fp32",)


@dataclass(frozen=True)
class BuildRequest:
    phi: Any
    variant: str = "b"
    precision: str = "fp32"
    profile: Profile | None = None
    weights: str | None = None
    resolution: int | None = None
    out: Path | None = None
    num_classes: int = 1000
    calib_data: str | None = None
    calib_images: int = 256
    calib_method: str = "auto"
    verify_data: str | None = None
    verify_images: int = 200
    seed: int = 0
    budget: Budget | None = None
    allow_parity_failure: bool = False
    quiet: bool = False


@dataclass(frozen=True)
class BuildResult:
    bundle: Bundle
    timings: dict[str, float] = field(default_factory=dict)
    next_step: str | None = None


def default_out(spec_name: str, precision: str, profile: str) -> Path:
    return Path("bundles") / f"{spec_name}-{precision}-{profile}"


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    v = {"effdeploy": __version__, "python": platform.python_version(), "torch": torch.__version__,
         "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
    try:
        import onnxsim

        v["onnxsim"] = getattr(onnxsim, "__version__", "unknown")
    except ImportError:
        pass
    return v


def check_request(req: BuildRequest) -> None:
    """Refuse what cannot work before any minutes are spent."""
    assert req.profile is not None
    if req.precision not in ("fp32", "fp16", "int8"):
        raise EffdeployError(f"--precision must be fp32, fp16 or int8 (got {req.precision!r})")
    if req.precision not in req.profile.precisions:
        raise EffdeployError(
            f"profile {req.profile.name} has no fast {req.precision} kernels "
            f"(supported: {', '.join(req.profile.precisions)}); choose one of those"
        )
    if req.precision not in IMPLEMENTED_PRECISIONS:
        raise EffdeployError(f"--precision {req.precision} is not implemented yet; use --precision fp32")
    if req.calib_images < 1 or req.verify_images < 1:
        raise EffdeployError("--calib-images and --verify-images must be at least 1")


def sample_inputs(spec: Any, verify_data: str | None, count: int, seed: int) -> list[tuple[str, np.ndarray]]:
    """Random inputs plus a few real images (the same preprocessing as deployment)."""
    from .datasets import builtin_image_paths, labelled_images, split
    from .preprocess import preprocess_files

    rng = np.random.default_rng(seed)
    res = spec.preprocessing.resolution
    sets = [("random", rng.standard_normal((4, 3, res, res)).astype(np.float32))]
    if verify_data:
        paths = [it.path for it in split(labelled_images(verify_data), (), count, seed)]
    else:
        paths = builtin_image_paths()[:count]
    if paths:
        sets.append(("images", preprocess_files(paths, spec.preprocessing)))
    return sets


def build_bundle(req: BuildRequest) -> BuildResult:
    import onnx

    from .export import check_parity, count_macs, export_onnx, graph_summary, simplify
    from .model import build_model

    assert req.profile is not None
    check_request(req)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    model = build_model(req.phi, req.variant, weights=req.weights, num_classes=req.num_classes,
                        resolution=req.resolution, seed=req.seed)
    spec = model.spec
    out = Path(req.out) if req.out else default_out(spec.name, req.precision, req.profile.name)
    check_output_dir(out)
    timings["model"] = time.perf_counter() - t0
    info(f"[1/4] {spec.name}: {spec.parameters:,} parameters, {spec.resolution} px, weights: "
         f"{model.weights_info['source']}", req.quiet)

    with staging_dir(out) as tmp:
        t = time.perf_counter()
        proto = simplify(export_onnx(model, spec.resolution))
        fp32_path = tmp / MODEL
        onnx.save(proto, str(fp32_path))
        timings["export"] = time.perf_counter() - t
        info(f"[2/4] exported and simplified: {len(proto.graph.node)} nodes", req.quiet)

        t = time.perf_counter()
        parity = check_parity(model, fp32_path, sample_inputs(spec, req.verify_data, 8, req.seed))
        timings["export_parity"] = time.perf_counter() - t
        if not parity["passed"]:
            raise EffdeployError(
                f"the exported ONNX differs from eager by {parity['max_abs']:.3g} (> {parity['tolerance']}); "
                "this is an exporter bug, please report it"
            )
        info(f"[3/4] export parity: max abs {parity['max_abs']:.2e} vs eager", req.quiet)

        summary = graph_summary(proto)
        summary["macs"] = count_macs(proto)
        manifest = Manifest(
            model=spec,
            precision=req.precision,
            profile=req.profile.to_dict(),
            weights=dict(model.weights_info),
            io={"inputs": summary["inputs"], "outputs": summary["outputs"]},
            versions=versions(),
            parity={"export": parity},
            graph={k: summary[k] for k in ("nodes", "opset", "ops", "macs", "initializer_parameters")},
        )

        t = time.perf_counter()
        report = verify_fp32(model, fp32_path, req, spec)
        timings["verify"] = time.perf_counter() - t
        status = STATUS_VERIFIED if not report["misses"] else STATUS_FAILED_PARITY
        manifest = manifest.with_(status=status, parity={**manifest.parity, "verify": report})
        info(f"[4/4] verify: {status} on {report['comparison']['samples']} images", req.quiet)
        write_manifest(tmp, manifest)
    timings["total"] = time.perf_counter() - t0
    bundle = load_bundle(out)
    if status != STATUS_VERIFIED and not req.allow_parity_failure:
        raise ParityError(
            f"bundle {out} missed its accuracy budget ({'; '.join(report['misses'])}); "
            "it is kept with status failed-parity, see 'effdeploy inspect'"
        )
    return BuildResult(bundle=bundle, timings=timings, next_step=next_step(bundle, req.profile))


def verify_fp32(model: Any, onnx_path: Path, req: BuildRequest, spec: Any) -> dict[str, Any]:
    from .datasets import builtin_image_paths, labelled_images, split
    from .export import run_eager
    from .preprocess import preprocess_files
    from .runners import OnnxRuntimeRunner
    from .verify import check_budget, compare, run_batched

    if req.verify_data:
        items = split(labelled_images(req.verify_data), (), req.verify_images, req.seed)
        paths, labels = [i.path for i in items], [i.label for i in items]
    else:
        paths, labels = builtin_image_paths()[: req.verify_images], None
    data = preprocess_files(paths, spec.preprocessing)
    reference = run_eager(model, data)
    runner = OnnxRuntimeRunner(onnx_path)
    try:
        candidate = run_batched(runner.infer, data, label="verify", quiet=req.quiet)
    finally:
        runner.close()
    comp = compare(reference, candidate, labels)
    budget = req.budget or Budget.for_precision(req.precision)
    return {"reference": "eager", "data": req.verify_data or "built-in images", "budget": budget.__dict__,
            "comparison": comp.to_dict(), "misses": check_budget(comp, budget)}


def next_step(bundle: Bundle, profile: Profile) -> str | None:
    """For GPU profiles: compile here when possible, else the one command to run on the target."""
    if not profile.is_gpu:
        return None
    return f"effdeploy compile {bundle.path} --profile {profile.path or profile.name} --out {bundle.path}/engine.plan"
