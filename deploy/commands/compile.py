"""``effdeploy compile``: a verified bundle -> ``engine.plan`` + ``engine.json`` on the target."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from . import cli
from ..report import emit_json, info, kv_table


def _parse_batch(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int, int] | None:
    if value is None:
        return None
    from ..backends.tensorrt.plan import parse_batch

    return parse_batch(value)


@cli.command("compile")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--profile", "profile_name", default=None, help="Built-in profile or .toml path [the bundle's profile].")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Engine path [BUNDLE/engine.plan]; engine.json goes beside it.")
@click.option("--dla-core", type=int, default=None, help="Run on this DLA core (one fixed batch size; no GPU fallback unless --gpu-fallback).")
@click.option("--gpu-fallback", is_flag=True, help="With --dla-core: let layers DLA cannot run go to the GPU (engine.json lists where each ran).")
@click.option("--batch", callback=_parse_batch, default=None, help="Optimisation profile MIN,OPT,MAX batch [from the profile].")
@click.option("--workspace-mb", type=int, default=None, help="Builder workspace memory-pool limit in MiB [from the profile].")
@click.option("--opt-level", type=int, default=None, help="Builder optimisation level 0..5 [from the profile].")
@click.option("--timing-cache", type=click.Path(path_type=Path), default=None, help="Timing cache to reuse/update [beside the engine].")
@click.option("--force", is_flag=True, help="Build even though the local GPU's compute capability differs from the profile's.")
@click.option("--hardware-compat", type=click.Choice(["none", "ampere_plus", "same_compute_capability"]),
              is_flag=False, flag_value="ampere_plus", default=None,
              help="Hardware-compatible engine (bare flag = ampere_plus) [from the profile].")
@click.option("--version-compatible/--no-version-compatible", default=None,
              help="Engine that also runs on newer TensorRT releases [from the profile].")
@click.option("--trt-version", default=None, help="Check the rules for this target TensorRT release [the installed one].")
@click.option("--dry-run", is_flag=True, help="Check the rules and print the build plan; build nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result on stdout.")
def compile_cmd(bundle: Path, profile_name: str | None, out: Path | None, dla_core: int | None, gpu_fallback: bool,
                batch: tuple[int, int, int] | None, workspace_mb: int | None, opt_level: int | None,
                timing_cache: Path | None, force: bool, hardware_compat: str | None, version_compatible: bool | None,
                trt_version: str | None, dry_run: bool, as_json: bool) -> None:
    """Compile a verified bundle into a TensorRT engine for a profile (run this on the target).

    Example: effdeploy compile bundles/b1-int8-jetson-orin --profile jetson-orin
    """
    from ..backends.tensorrt.build import compile_bundle
    from ..backends.tensorrt.compat import TrtVersion, import_tensorrt
    from ..backends.tensorrt.manifest import cuda_problem, engine_manifest_path, probe_cuda, read_l4t
    from ..backends.tensorrt.plan import CompileOptions, check_installed, plan_for

    opts = CompileOptions(
        out=out, dla_core=dla_core, batch=batch, workspace_mb=workspace_mb, opt_level=opt_level,
        timing_cache=timing_cache, force=force, hardware_compat=hardware_compat,
        version_compatible=version_compatible, trt_version=str(TrtVersion.parse(trt_version)) if trt_version else None,
        gpu_fallback=gpu_fallback,
    )
    if dry_run:
        plan = plan_for(bundle, profile_name, opts)
        trt = import_tensorrt() if not opts.trt_version else None
        if trt is not None:
            probe = probe_cuda()
            plan = check_installed(plan, str(trt.__version__), None, probe.gpu, read_l4t(), cuda_problem(probe))
        rows = _plan_rows(plan.to_dict())
        if as_json:
            emit_json({"dry_run": True, "build_plan": plan.to_dict()})
        else:
            click.echo(kv_table(rows))
            checked = plan.trt_version or "every release of the profile"
            info(f"\ndry run: the rules pass for TensorRT {checked}; nothing was built", quiet=False)
        return

    result = compile_bundle(bundle, profile_name, opts, quiet=as_json)
    m = result.engine
    summary: dict[str, Any] = {
        "engine": result.plan.plan_path,
        "manifest": str(engine_manifest_path(result.plan.plan_path)),
        "profile": m.profile_name,
        "precision": m.precision,
        "tensorrt": m.tensorrt_version,
        "gpu": f"{m.gpu_info.name} (CC {m.gpu_info.compute_capability})",
        "device": (f"DLA core {result.plan.dla_core}" + (" + GPU fallback" if result.plan.gpu_fallback else ", no GPU fallback")
                   if result.plan.uses_dla else "GPU"),
        "batch": f"{result.plan.batch_min}/{result.plan.batch_opt}/{result.plan.batch_max}",
        "workspace_mb": result.plan.workspace_mb,
        "opt_level": result.plan.opt_level,
        "hardware_compat": result.plan.hardware_compat,
        "version_compatible": result.plan.version_compatible,
        "timing_cache": f"{result.plan.timing_cache_path} ({'reused' if result.timing_cache_reused else 'new'})",
        "plan_mb": round(m.plan_bytes / 1e6, 2),
        "plan_sha256": m.plan_sha256,
        "build_s": round(result.seconds, 1),
    }
    if m.build.get("dla"):
        from ..backends.tensorrt.build import dla_summary

        summary["dla_placement"] = dla_summary(m.build["dla"])
    frames = [{"engine": f.plan.plan_path, **dict(f.engine.frame)} for f in result.frame_engines]
    if as_json:
        emit_json({**summary, "frame_engines": frames, "warnings": list(result.warnings), "engine_manifest": m.to_dict()})
        return
    click.echo(kv_table(summary.items()))
    for f in frames:
        info(f"frame-in engine: {f['engine']} (raw {f['width']}x{f['height']} {f['channel_order']} uint8 frames in)")
    for w in result.warnings:
        info(f"note: {w}")


def _plan_rows(d: dict[str, Any]) -> list[tuple[str, Any]]:
    """The build plan as a person reads it: labels with units, no raw field names or Python reprs."""
    profile = d.get("profile")
    profile_name = profile.get("name") if isinstance(profile, dict) else profile
    chw = d.get("input_chw") or ()
    dla = d.get("dla_core")
    rows: list[tuple[str, Any]] = [
        ("bundle", d.get("bundle_path")),
        ("engine", d.get("plan_path")),
        ("timing cache", d.get("timing_cache_path")),
        ("profile", profile_name),
        ("model / precision", f"{d.get('model_name')} / {d.get('precision')}"),
        ("input", f"{d.get('input_name')}: N x {' x '.join(str(x) for x in chw)} (batch x C x H x W)"),
        ("batch min / opt / max", f"{d.get('batch_min')} / {d.get('batch_opt')} / {d.get('batch_max')}"),
        ("workspace", f"{d.get('workspace_mb')} MiB"),
        ("builder optimisation level", f"{d.get('opt_level')} (0..5)"),
        ("device", "GPU" if dla is None else f"DLA core {dla}" + (" + GPU fallback" if d.get("gpu_fallback") else "")),
        ("hardware compatibility", d.get("hardware_compat")),
        ("version compatible", "yes" if d.get("version_compatible") else "no"),
        ("TensorRT rules checked for", d.get("trt_version") or "every release of the profile"),
        ("ONNX sha256", d.get("onnx_sha256")),
        ("calibration sha256", d.get("calibration_sha256") or "- (no INT8 calibration)"),
    ]
    rows += [("note", n) for n in d.get("notes", [])]
    return rows
