"""``effdeploy build``, ``inspect`` and ``profiles``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from . import cli
from ..profiles import PRECISIONS
from ..report import emit_json, info, kv_table, table
from ..request import CALIBRATION_METHODS, RECONSTRUCT_MODES, default


@cli.command("build")
@click.option("--phi", required=True, help="Compound coefficient: 0..7 (b) or 0..4 (lite) use the released table; any other number >= 0 the compound rule.")
@click.option("--variant", type=click.Choice(["b", "lite"]), default=default("variant"), show_default=True)
@click.option("--precision", type=click.Choice(list(PRECISIONS)), default=default("precision"), show_default=True)
@click.option("--profile", "profile_name", default="cpu", show_default=True, help="Built-in profile name or path to a .toml file.")
@click.option("--weights", default=None, help="Checkpoint path (native/lukemelas/torchvision/timm) or 'pretrained' (lite 0..2).")
@click.option("--weights-arch", default=None, metavar="SOURCE:NAME[.TAG]",
              help="The library function the weights belong to (padding, BatchNorm eps, preprocessing), e.g. "
                   "timm:tf_efficientnet_b1 or torchvision:efficientnet_b1.IMAGENET1K_V2 (docs/weights.md); "
                   "required for timm's layout.")
@click.option("--replace-head", is_flag=True, help="Put a new, untrained head on a checkpoint whose head does not fit --num-classes (status benchmark-only).")
@click.option("--resolution", type=int, default=None, help="Override the input resolution.")
@click.option("--resize", type=int, default=None, help="Override the preprocessing: shorter side before the center crop, in pixels.")
@click.option("--crop-pct", type=float, default=None, help="Override the preprocessing: crop / resize (timm's crop_pct), e.g. 0.875.")
@click.option("--interpolation", type=click.Choice(["bicubic", "bilinear", "nearest", "box", "hamming", "lanczos"]),
              default=None, help="Override the preprocessing's resampling filter.")
@click.option("--mean", default=None, metavar="R,G,B", help="Override the normalisation mean, 0-1 scale (e.g. 0.5,0.5,0.5).")
@click.option("--std", default=None, metavar="R,G,B", help="Override the normalisation std, 0-1 scale (e.g. 0.5,0.5,0.5).")
@click.option("--labels", "labels", type=click.Path(dir_okay=False), default=None,
              help="Class names, one per line in class order (or ImageNet's 'n01440764<TAB>tench' lines): kept in the "
                   "bundle as labels.txt and used by classify and the Runner.")
@click.option("--num-classes", type=int, default=None,
              help="Classes of the model's head  [default: a Hugging Face weights folder's num_classes, else 1000]")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Bundle directory [bundles/<model>-<precision>-<profile>].")
@click.option("--calib-data", default=None, help="Calibration images: folder, video file or .npy (int8).")
@click.option("--calib-images", type=int, default=default("calib_images"), show_default=True)
@click.option("--calib-method", type=click.Choice(["auto", *CALIBRATION_METHODS]), default=default("calib_method"), show_default=True)
@click.option("--int8-float", "int8_float", default="auto", show_default=True,
              help="EfficientNet parts kept out of INT8 (comma list of se, stem, classifier, dw (the depthwise convs); 'none' for none; "
                   "auto: se; for the B family se,dw on GPU and cpu-openvino profiles, se,stem,dw on cpu and cpu-vnni).")
@click.option("--reconstruct", "reconstruct_mode", type=click.Choice(RECONSTRUCT_MODES),
              default=default("reconstruct_mode"), show_default=True, is_flag=False, flag_value="auto",
              help="INT8: correct the INT8 layers on calibration images, in order, for the error of their weights and "
                   "of the quantized activations before them; every layer stays INT8. bias: every layer's bias "
                   "(sequential bias correction, seconds); thorough: the convs with a linear output (the project "
                   "convs) learn how their weights round and their bias, the others stay as quantized (AdaRound; "
                   "about half a minute more on two cores); auto: thorough given at least 32 reconstruction images, "
                   "for Lite everywhere and for the B family on GPU and cpu-openvino profiles, else bias "
                   "(measured, docs/int8.md).")
@click.option("--no-reconstruct", "no_reconstruct", is_flag=True, help="INT8: no reconstruction (the quantizer's rounding).")
@click.option("--reconstruct-images", type=int, default=default("reconstruct_images"), show_default=True,
              help="Calibration images the reconstruction measures on (the repair chooses on the others).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=default("device"), show_default=True,
              help="Where torch runs the INT8 reconstruction: auto picks the GPU when torch sees one.")
@click.option("--verify-data", default=None, help="Verification images (folder; labels from synset names or sub-folders).")
@click.option("--verify-images", type=int, default=default("verify_images"), show_default=True)
@click.option("--seed", type=int, default=default("seed"), show_default=True)
@click.option("--accuracy-budget", type=float, default=None, help="Allowed top-1 disagreement with eager in percent (and accuracy drop in points), e.g. 1 for 99 % agreement.")
@click.option("--repair/--no-repair", default=default("repair"), show_default=True, help="When INT8 misses its budget, keep the most sensitive MBConv blocks in higher precision until it holds (1..8 blocks one by one, then doubling and bisection, within --max-kept-macs).")
@click.option("--conv-fallback/--no-conv-fallback", default=default("conv_fallback"), show_default=True,
              help="With the repair, where all-INT8 meets the budget on the selection split: rank the quantized convs by how much keeping each one alone out of INT8 helps (on 32 calibration images), and keep the 1-4 best (within 10 % of the multiply-adds) in higher precision when the split shows a gain beyond its noise.")
@click.option("--max-kept-macs", type=float, default=default("max_kept_macs"), show_default=True,
              help="The repair keeps at most this percentage of the multiply-adds out of INT8 (beyond it the bundle is no longer mostly INT8).")
@click.option("--max-abs", type=float, default=None, help="Budget: max abs logit error (default fp32 1e-3).")
@click.option("--min-agreement", type=float, default=None, help="Budget: min top-1 agreement in percent (default fp16 99.5, int8 98).")
@click.option("--max-drop", type=float, default=None, help="Budget: max top-1 accuracy drop in points where labels exist (default int8 1.0).")
@click.option("--allow-parity-failure", is_flag=True, help="Keep going (exit 0) when verification misses its budget.")
@click.option("--frame", "frame_sizes", default=None, metavar="WxH[,WxH]",
              help="Add a verified frame-in graph per camera frame size (raw uint8 NHWC frame in, logits out; the "
                   "preprocessing runs inside the graph), e.g. --frame 1920x1080,1280x720.")
@click.option("--frame-format", type=click.Choice(["bgr", "rgb"]), default="bgr", show_default=True,
              help="Channel order of the frames the frame-in graphs take (OpenCV delivers bgr).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary on stdout.")
def build_cmd(phi: str, variant: str, precision: str, profile_name: str, weights: str | None, weights_arch: str | None,
              replace_head: bool, resize: int | None, crop_pct: float | None, interpolation: str | None,
              mean: str | None, std: str | None, resolution: int | None,
              num_classes: int | None, labels: str | None, out: Path | None, calib_data: str | None, calib_images: int, calib_method: str,
              verify_data: str | None, verify_images: int, seed: int, accuracy_budget: float | None,
              max_abs: float | None, min_agreement: float | None, max_drop: float | None, int8_float: str, repair: bool,
              max_kept_macs: float, conv_fallback: bool, allow_parity_failure: bool, as_json: bool, reconstruct_mode: str, no_reconstruct: bool,
              reconstruct_images: int, device: str, frame_sizes: str | None, frame_format: str) -> None:
    """Build and verify a bundle (ONNX + manifest) for a profile.

    Example: effdeploy build --phi 1 --precision int8 --profile jetson-orin
    """
    from ..pipeline import BuildRequest, build_bundle
    from ..profiles import load_profile
    from ..model.spec import parse_phi

    from ..errors import EffdeployError
    from ..verify.gate import Budget, budget_with

    from ..data.frames import parse_frames

    parse_phi(phi)
    frames = parse_frames(frame_sizes, frame_format)
    if frames and interpolation == "nearest":
        raise EffdeployError("--frame needs a resampling filter with weights; --interpolation nearest has none "
                             "(drop --frame or choose another --interpolation)")
    profile = load_profile(profile_name)
    budget = budget_with(Budget.for_precision(precision), max_abs, min_agreement, max_drop)
    parts: tuple[str, ...] | None = None
    if int8_float.strip() != "auto":
        parts = tuple(p.strip() for p in int8_float.split(",") if p.strip() and p.strip() != "none")
        from ..precision.qdq import FLOAT_PARTS

        bad = [p for p in parts if p not in FLOAT_PARTS]
        if bad:
            raise EffdeployError(f"--int8-float takes {', '.join(FLOAT_PARTS)}, none or auto (got {', '.join(bad)})")
    source = click.get_current_context().get_parameter_source
    if no_reconstruct and source("reconstruct_mode") != click.core.ParameterSource.DEFAULT:
        raise EffdeployError("--no-reconstruct and --reconstruct contradict each other; pass one of them")
    given = source("calib_images") != click.core.ParameterSource.DEFAULT
    overrides = {"resize": resize, "crop_pct": crop_pct, "interpolation": interpolation,
                 "mean": _triple("--mean", mean), "std": _triple("--std", std)}
    req = BuildRequest(
        phi=phi, variant=variant, precision=precision, profile=profile, weights=weights, weights_arch=weights_arch,
        replace_head=replace_head, preprocessing=tuple((k, v) for k, v in overrides.items() if v is not None),
        resolution=resolution,
        out=out, num_classes=num_classes, labels=labels, calib_data=calib_data, calib_images=calib_images, calib_images_given=given,
        calib_method=calib_method,
        verify_data=verify_data, verify_images=verify_images, seed=seed, accuracy_budget=accuracy_budget,
        budget=budget, allow_parity_failure=allow_parity_failure, quiet=as_json, int8_float_parts=parts, repair=repair,
        max_kept_macs=max_kept_macs, conv_fallback=conv_fallback, reconstruct=not no_reconstruct, reconstruct_mode=reconstruct_mode, reconstruct_images=reconstruct_images, device=device, frames=frames,
    )
    from ..bundle import status_warning

    result = build_bundle(req)
    summary = build_summary(result.bundle.path, result.bundle.manifest.to_dict(), result.timings)
    summary["replaced"] = result.replaced
    warning = status_warning(summary["status"])
    if as_json:
        emit_json({**summary, "cleaned_up": list(result.cleaned), "engine": str(result.engine) if result.engine else None,
                   "next_step": result.next_step, "compile": result.compile_reason,
                   "warnings": [warning] if warning else []})
        return
    click.echo(kv_table(summary_rows(summary)))
    if warning:
        info(f"warning: {warning}")
    if result.engine:
        info(f"\nengine: {result.engine} ({result.compile_reason})")
    elif result.next_step:
        info(f"\n{result.compile_reason}\ncompile on the target with:\n  {result.next_step}")


def _triple(flag: str, text: str | None) -> tuple[float, float, float] | None:
    """'0.5,0.5,0.5' -> (0.5, 0.5, 0.5); one line naming the flag otherwise."""
    from ..errors import EffdeployError

    if text is None:
        return None
    try:
        vals = tuple(float(x) for x in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) != 3:
        raise EffdeployError(f"{flag} takes three comma-separated numbers on the 0-1 scale (got {text!r}); "
                             f"e.g. {flag} 0.5,0.5,0.5")
    return vals  # type: ignore[return-value]


def build_summary(path: Path, m: dict[str, Any], timings: dict[str, float] | None = None) -> dict[str, Any]:
    from ..backends.ort_safety import ort_hint_for_manifest

    verify = m.get("parity", {}).get("verify", {})
    return {
        "bundle": str(path),
        "status": m["status"],
        "model": m["model"]["name"],
        "variant": m["model"]["variant"],
        "parameters": m["model"]["parameters"],
        "gflops": 2 * m["graph"].get("macs", 0) / 1e9,
        "resolution": m["model"]["resolution"],
        "precision": m["precision"],
        "profile": m["profile"]["name"],
        "weights": m["weights"].get("source"),
        "weights_arch": (m["weights"].get("arch") or {}).get("key"),
        "head": m["weights"].get("classifier"),
        "preprocessing": {**m["model"]["preprocessing"], **(m["weights"].get("preprocessing") or {})},
        "onnx_nodes": m["graph"]["nodes"],
        "export_max_abs": m["parity"]["export"]["max_abs"],
        "verify": verify.get("comparison"),
        "budget_misses": verify.get("misses", []),
        "quantization": {k: m.get("quantization", {}).get(k) for k in ("dialect", "activations", "method")
                         if m.get("quantization", {}).get(k)},
        "calibration_images": m.get("quantization", {}).get("calibration", {}).get("image_count"),
        "kept_blocks": (m.get("quantization", {}).get("repair") or {}).get("kept_blocks", []),
        "kept_convs": (m.get("quantization", {}).get("fallback") or {}).get("kept_nodes", []),
        "kept_convs_macs_share": (m.get("quantization", {}).get("fallback") or {}).get("macs_share_kept"),
        "reconstruction": _reconstruction_line(m.get("quantization", {}).get("reconstruction")),
        "drift_final": (m.get("quantization", {}).get("drift") or [{}])[-1].get("relative_error"),
        "timings_s": {k: round(v, 2) for k, v in (timings or {}).items()},
        "onnxruntime": ort_hint_for_manifest(m),
        "frames": list(m.get("frames") or []),
    }


def _reconstruction_line(r: dict[str, Any] | None) -> str | None:
    if not r:
        return None
    layers = r.get("layers") or []
    mse = r.get("logit_relative_mse")
    err = f", logit relative MSE {mse[0]:.2e} -> {mse[1]:.2e}" if mse else ""
    thorough = r["recipe"].get("mode") == "thorough"  # learned integers: all or nothing
    used = (f" at strength {r['strength']:g}" if r.get("accepted", True) and "strength" in r and not thorough
            else "" if r.get("accepted", True) else " (not better on its images: not used)")
    on = r["recipe"].get("device", "cpu")
    return f"{r['recipe']['name']}: {len(layers)} layers on {r['images']} calibration images{err}{used}, {_seconds(r)} on {on}"


def _seconds(r: dict[str, Any]) -> str:
    return "cache hit" if r.get("cache_hit") else f"{r['seconds']:.1f} s"


def summary_rows(s: dict[str, Any]) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = [
        ("bundle", s["bundle"]),
        *([("replaced", f"the bundle that was there ({s['replaced']})")] if s.get("replaced") else []),
        ("status", s["status"]),
        ("model", f"{s['model']} ({s['weights']}{' as ' + s['weights_arch'] if s.get('weights_arch') else ''})"),
        ("parameters", f"{s['parameters']:,}"),
        ("GFLOPs (2 x MACs, batch 1)", f"{s['gflops']:.3f}"),
        ("resolution", s["resolution"]),
        *([("preprocessing", preprocessing_line(s["preprocessing"]))] if s.get("preprocessing") else []),
        *([("head", s["head"])] if s.get("head", "loaded") not in ("loaded", None) else []),
        ("precision / profile", f"{s['precision']} / {s['profile']}"),
        ("ONNX nodes", s["onnx_nodes"]),
        ("export parity (max abs vs eager)", f"{s['export_max_abs']:.2e}"),
    ]
    v = s.get("verify")
    if v:
        lo, hi = v.get("top1_agreement_ci95") or (None, None)
        ci = f" (95 % CI {100 * lo:.1f}-{100 * hi:.1f} %)" if lo is not None else ""
        rows.append(("verify top-1 agreement", f"{100 * v['top1_agreement']:.2f} % of {v['samples']} images{ci}"))
        rows.append(("verify max abs / cosine min", f"{v['max_abs']:.2e} / {v['cosine_min']:.6f}"))
        if v.get("relative_error") is not None:
            rows.append(("verify relative error / cosine mean", f"{v['relative_error']:.3g} / {v['cosine_mean']:.6f}"))
        if v.get("labelled"):
            rows.append(("top-1 accuracy eager -> bundle",
                         f"{100 * v['reference_top1']:.2f} % -> {100 * v['candidate_top1']:.2f} %"))
    if s.get("quantization"):
        q = s["quantization"]
        rows.append(("INT8", f"{q.get('dialect')} dialect, activations {q.get('activations')}, "
                              f"{q.get('method')} ranges from {s.get('calibration_images')} images"))
    if s.get("reconstruction"):
        rows.append(("INT8 reconstruction", s["reconstruction"]))
    if s.get("kept_convs"):
        share = s.get("kept_convs_macs_share")
        share = f" ({100 * share:.1f} % of the multiply-adds)" if share else ""
        rows.append(("convs kept in higher precision", ", ".join(c.strip("/").removesuffix("/Conv").removesuffix("/Gemm")
                                                                 for c in s["kept_convs"]) + share))
    if s.get("kept_blocks"):
        rows.append(("blocks kept in higher precision", ", ".join(s["kept_blocks"])))
    if s.get("drift_final") is not None:
        rows.append(("drift at the last block", f"{s['drift_final']:.3g} (relative error vs FP32)"))
    for miss in s.get("budget_misses", []):
        rows.append(("budget missed", miss))
    if s.get("frames"):
        from ..data.frames import frame_line

        rows += [(f"frame-in graph {f['width']}x{f['height']} {f['channel_order']}", frame_line(f)) for f in s["frames"]]
    if s.get("onnxruntime"):
        rows.append(("ONNX Runtime", s["onnxruntime"]))
    if s.get("timings_s", {}).get("total"):
        rows.append(("build time", f"{s['timings_s']['total']:.1f} s"))
    return rows


def preprocessing_line(p: dict[str, Any]) -> str:
    """'resize 272 bicubic, crop 240, mean/std ImageNet (from timm:...; overridden: resize)'."""
    mean, std = tuple(round(x / 255, 3) for x in p["mean"]), tuple(round(x / 255, 3) for x in p["std"])
    norm = "ImageNet" if (mean, std) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)) else f"{mean} / {std}"
    where = p.get("from")
    over = ", ".join(p.get("overrides") or {})
    tail = "; ".join(x for x in (f"from {where}" if where else "", f"overridden: {over}" if over else "") if x)
    return (f"resize {p['resize']} {p['interpolation']}, crop {p['resolution']}, mean/std {norm}"
            + (f" ({tail})" if tail else ""))


@cli.command("inspect")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def inspect_cmd(artifact: Path, as_json: bool) -> None:
    """Show a bundle's manifest and graph summary, or a plain ONNX file's graph.

    Example: effdeploy inspect bundles/efficientnet-b1-fp32-cpu
    """
    import onnx

    from ..bundle import is_bundle, load_bundle
    from ..errors import EffdeployError, first_line
    from ..export.exporter import count_macs, graph_summary

    if not artifact.exists():
        raise EffdeployError(f"{artifact} does not exist; pass a bundle directory or an .onnx file")
    if artifact.is_dir() or is_bundle(artifact):
        bundle = load_bundle(artifact)
        onnx_path = bundle.model_path
        manifest = bundle.manifest.to_dict()
    elif artifact.suffix == ".onnx" and artifact.is_file():
        onnx_path, manifest = artifact, None
    else:
        raise EffdeployError(f"{artifact} is neither a bundle directory nor an .onnx file")
    try:
        proto = onnx.load(str(onnx_path))
    except Exception as e:
        raise EffdeployError(f"cannot read ONNX {onnx_path}: {first_line(e, 160)}") from None
    from ..backends.ort_safety import ort_hint_for_graph

    graph = graph_summary(proto)
    graph["macs"] = count_macs(proto)
    graph["onnxruntime"] = ort_hint_for_graph(proto)
    if as_json:
        emit_json({"manifest": manifest, "graph": graph})
        return
    if manifest:
        click.echo(kv_table(summary_rows(build_summary(artifact, manifest))))
        click.echo("artifacts: " + ", ".join(f"{k} ({v['bytes'] / 1e6:.1f} MB)" for k, v in manifest["artifacts"].items()))
        click.echo("")
    click.echo(kv_table([
        ("ONNX", str(onnx_path)),
        ("opset", graph["opset"]),
        ("nodes", graph["nodes"]),
        ("initializer values (BN folded)", f"{graph['initializer_parameters']:,}"),
        ("GFLOPs (2 x MACs, batch 1)", f"{2 * graph['macs'] / 1e9:.3f}"),
    ]))
    click.echo("")
    io_rows = [(d, v["name"], v["dtype"], " x ".join(str(x) for x in v["shape"]))
               for d, vals in (("input", graph["inputs"]), ("output", graph["outputs"])) for v in vals]
    click.echo(table(io_rows, ["tensor", "name", "dtype", "shape"]))
    click.echo("")
    click.echo(table(list(graph["ops"].items()), ["op", "count"]))
    if graph["onnxruntime"] and not manifest:  # a bundle's summary above already says it
        click.echo(f"\nONNX Runtime: {graph['onnxruntime']}")


@cli.command("profiles")
@click.option("--json", "as_json", is_flag=True)
def profiles_cmd(as_json: bool) -> None:
    """List the built-in target profiles.

    Example: effdeploy profiles
    """
    from ..profiles import all_profiles

    profiles = all_profiles()
    if as_json:
        emit_json([{**p.to_dict(), "runtime": p.target_runtime} for p in profiles])
        return
    rows = []
    for p in profiles:
        trt = "; ".join(f"{r.platform}: {r.min_version}{' to <' + r.max_version if r.max_version else '+'}"
                        for r in p.tensorrt)
        rows.append((p.name, p.device, p.target_runtime, p.architecture or "-", p.compute_capability or "-", p.dla_cores,
                     ",".join(p.precisions), p.workspace_mb, f"{p.batch_min}/{p.batch_opt}/{p.batch_max}", trt or "-"))
    click.echo(table(rows, ["profile", "device", "runtime", "arch", "compute cap.", "DLA cores", "precisions", "workspace MiB",
                            "batch min/opt/max", "TensorRT (platform: versions)"]))
    click.echo("\nsources:")
    click.echo(table([(f"  {p.name}", p.source or "-") for p in profiles]))
