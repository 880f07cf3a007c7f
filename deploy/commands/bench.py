"""``effdeploy bench``: latency you can reproduce, compute-only next to in-app (end-to-end)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from . import cli


@cli.command("bench")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--batch", "batches", default="1", show_default=True, help="Comma-separated batch sizes, e.g. 1,8.")
@click.option("--iterations", "-n", type=int, default=None, help="Timed calls per measurement [100].")
@click.option("--duration", type=float, default=None, help="Seconds per measurement instead of a call count.")
@click.option("--warmup", type=int, default=10, show_default=True, help="Untimed calls first.")
@click.option("--threads", type=int, default=None, help="CPU threads for ONNX Runtime (and PyTorch with --vs-eager) [all].")
@click.option("--end-to-end", "end_to_end", is_flag=True,
              help="Also time Runner.classify on camera-sized frames: preprocessing, copies, inference, top-5.")
@click.option("--frame-size", default="1920x1080", show_default=True, help="Frame size for --end-to-end (WxH).")
@click.option("--vs-eager", "vs_eager", is_flag=True, help="Also time the eager PyTorch model (needs torch) and print the speedup.")
@click.option("--spin/--no-spin", default=True, show_default=True,
              help="ONNX Runtime's threads busy-wait between calls; --no-spin for CPUs shared with busy processes.")
@click.option("--backend", type=click.Choice(["onnxruntime", "openvino", "auto"]), default=None,
              help="CPU runtime for a bundle: onnxruntime, openvino (default: the profile's runtime; openvino "
                   "for the cpu-openvino profiles), or auto "
                   "(the faster of those installed, timed once per graph and CPU and cached).")
@click.option("--ov-precision", type=click.Choice(["f32", "bf16"]), default="f32", show_default=True,
              help="OpenVINO's inference precision (bf16 is what its CPU plugin picks by default on AMX CPUs).")
@click.option("--force", is_flag=True, help="Benchmark a bundle whose status is failed-parity.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable results on stdout.")
def bench_cmd(artifact: Path, batches: str, iterations: int | None, duration: float | None, warmup: int,
              threads: int | None, end_to_end: bool, frame_size: str, vs_eager: bool, spin: bool,
              backend: str | None, ov_precision: str, force: bool, as_json: bool) -> None:
    """Latency (mean/p50/p90/p99) and throughput of a bundle, an .onnx or an engine.plan.

    Example: effdeploy bench bundles/efficientnet-b0-fp32-cpu --batch 1,8 --end-to-end --vs-eager
    """
    from ..backends.timing import TimingPlan, machine_info
    from ..runtime.benchmark import parse_batches, parse_frame_size
    from ..errors import EffdeployError
    from ..report import emit_json
    from ..runtime.runner import Runner, check_status, open_backend, resolve_artifact

    sizes = parse_batches(batches)
    if iterations is not None and duration is not None:
        raise EffdeployError("give --iterations or --duration, not both")
    if threads is not None and threads < 1:
        raise EffdeployError(f"--threads must be >= 1 (got {threads})")
    plan = TimingPlan(warmup=warmup, iterations=None if duration is not None else (100 if iterations is None else iterations),
                      duration_s=duration)
    width, height = parse_frame_size(frame_size)

    art = resolve_artifact(artifact, guess_preprocessing=True)
    warning = check_status(art, force)
    eager_manifest = _eager_manifest(art) if vs_eager else None  # refuse before any timing
    _announce(art, warning, as_json)
    from ..runtime.frames import routes_for

    model = open_backend(art, threads=threads, spin=spin, backend=backend, ov_precision=ov_precision)
    runner = Runner(model, art, frames=routes_for(art, model, threads, spin) if end_to_end else None)
    frame_in = next((f for f in runner.frame_sizes if (f.width, f.height) == (width, height)), None)
    choice = getattr(runner.backend, "choice", None)  # backend auto: what was timed, or the cached choice
    ov_precision_used = getattr(runner.backend, "precision", None)  # OpenVINO's, read back
    backend = runner.backend_name
    graph_optimization = getattr(runner.backend, "graph_optimization", None)  # ONNX Runtime only
    try:
        eager, eager_max_abs = _eager(eager_manifest, runner, threads, as_json) if vs_eager else (None, None)
        names = _measure_names(backend, width, height)
        rows = _measure(runner, sizes, plan, names, (width, height) if end_to_end else None, frame_in, eager, as_json)
    finally:
        runner.close()
    result = {
        "artifact": str(artifact), "kind": art.kind, "model": art.model_name, "precision": art.precision,
        "status": art.status, "backend": backend, "threads": threads, "spin": spin,
        "backend_choice": choice, "openvino_precision": ov_precision_used,
        "ort_graph_optimization": graph_optimization,
        "resolution": art.preprocessing.resolution,
        "timing": {"warmup": plan.warmup, "iterations": plan.iterations, "duration_s": plan.duration_s},
        "machine": machine_info(), "results": rows,
        **_ratios(rows, sizes, names, end_to_end, frame_in, eager is not None),
    }
    if eager is not None:
        result["eager_parity_max_abs"] = eager_max_abs
    if as_json:
        emit_json(result)
        return
    _show(result, art, names, (width, height) if end_to_end else None, frame_in, threads)


def _announce(art: Any, warning: str | None, quiet: bool) -> None:
    from ..report import info

    if art.status == "unknown":
        info("note: a bare .onnx has no manifest; timing uses ImageNet preprocessing sized from its input", quiet)
    elif warning:
        info(f"warning: {warning}", quiet)
    elif art.status != "verified":
        info(f"note: {art.path} has status {art.status}", quiet)


def _measure_names(backend: str, width: int, height: int) -> dict[str, str]:
    e2e = f"end-to-end {width}x{height}"
    return {"compute": "compute" if backend != "tensorrt" else "compute+copies", "e2e": e2e,
            "frame": f"{e2e} frame-in", "eager": "eager pytorch"}


def _measure(runner: Any, sizes: list[int], plan: Any, names: dict[str, str], frame: tuple[int, int] | None,
             frame_in: Any, eager: Any, quiet: bool) -> list[dict[str, Any]]:
    """Every measure per batch size: compute, end-to-end through the CPU path and (where the
    bundle has one for the size) through the frame-in graph, eager PyTorch."""
    import numpy as np

    from ..runtime.benchmark import FrameSource
    from ..backends.timing import summarize

    rng = np.random.default_rng(0)
    res = runner.artifact.preprocessing.resolution
    rows: list[dict[str, Any]] = []
    for b in sizes:
        batch = rng.standard_normal((b, 3, res, res)).astype(np.float32)
        measures = [(names["compute"], lambda: runner.infer(batch), None)]
        if frame is not None:
            # b frames per call, freshly written (untimed) the way a decoder delivers them
            source = FrameSource(*frame, batch=b)
            measures.append((names["e2e"], lambda: runner.classify(source.batch, top_k=5, frame_graph=False),
                             source.next))
            if frame_in is not None:  # the same frames through the bundle's frame-in graph
                bgr = frame_in.channel_order == "bgr"
                measures.append((names["frame"], lambda: runner.classify(source.batch, top_k=5, bgr=bgr), source.next))
        if eager is not None:
            measures.append((names["eager"], lambda: eager(batch), None))
        for name, fn, setup in measures:
            stats = summarize(_timed(fn, plan, f"batch {b} {name}", quiet, setup), batch=b)
            rows.append({"batch": b, "measure": name, **stats.to_dict()})
    return rows


def _ratios(rows: list[dict[str, Any]], sizes: list[int], names: dict[str, str], end_to_end: bool, frame_in: Any,
            eager: bool) -> dict[str, Any]:
    """p50 ratios measured in this one run (the figures the targets are about)."""
    def over_compute(measure: str) -> dict[str, float]:
        return {str(b): _p50(rows, b, measure) / _p50(rows, b, names["compute"]) for b in sizes}

    out: dict[str, Any] = {}
    if end_to_end:
        out["end_to_end_over_compute_p50"] = over_compute(names["e2e"])
        out["frame_in"] = str(frame_in) if frame_in is not None else None
        if frame_in is not None:
            out["frame_in_over_compute_p50"] = over_compute(names["frame"])
    if eager:
        out["eager_speedup_p50"] = over_compute(names["eager"])
    return out


def _show(result: dict[str, Any], art: Any, names: dict[str, str], frame: tuple[int, int] | None, frame_in: Any,
          threads: int | None) -> None:
    from ..report import info, table

    m, compute = result["machine"], names["compute"]
    precision = f" {result['openvino_precision']}" if result.get("openvino_precision") else ""
    click.echo(f"{art.model_name} ({art.precision}, {art.status}) on {result['backend']}{precision}, "
               f"threads {threads or 'all'}, {m['cpu']} ({m['cores']} cores)")
    choice = result.get("backend_choice") or {}
    if choice.get("p50_ms"):
        click.echo("backend auto: " + ", ".join(f"{k} {v:.2f} ms" for k, v in choice["p50_ms"].items())
                   + f" at batch 1 -> {choice['choice']}" + (" (cached)" if choice.get("cached") else ""))
    elif choice.get("reason"):
        click.echo(f"backend auto: {choice['choice']} ({choice['reason']})")
    click.echo(table([table_cells(r) for r in result["results"]],
                     headers=["batch", "measure", "mean ms", "p50 ms", "p90 ms", "p99 ms", "img/s"]))
    for b, v in result.get("end_to_end_over_compute_p50", {}).items():
        click.echo(f"end-to-end / {compute} latency (p50), batch {b}: {v:.3f}x")
    for b, v in result.get("frame_in_over_compute_p50", {}).items():
        click.echo(f"frame-in end-to-end ({result['frame_in']} frame-in graph) / {compute} latency (p50), batch {b}: {v:.3f}x")
    if frame is not None and art.kind == "bundle" and frame_in is None:
        click.echo(f"(no frame-in graph for {frame[0]}x{frame[1]}: only the CPU path was timed; "
                   f"build with --frame {frame[0]}x{frame[1]})")
    for b, v in result.get("eager_speedup_p50", {}).items():
        click.echo(f"speedup vs eager PyTorch (p50), batch {b}: {v:.2f}x")
    max_abs = result.get("eager_parity_max_abs")
    if max_abs is not None and art.precision == "fp32" and max_abs > 1e-3:
        info(f"warning: the eager model differs from the artifact (max abs {max_abs:.3g} on random input); "
             "the speedup compares different models")


def table_cells(r: dict[str, Any]) -> tuple[Any, ...]:
    """One number format per column (ms with two decimals, img/s with one), so columns compare."""
    return (r["batch"], r["measure"], *(f"{r[k]:.2f}" for k in ("mean_ms", "p50_ms", "p90_ms", "p99_ms")),
            f"{r['throughput_ips']:.1f}")


def _p50(rows: list[dict[str, Any]], batch: int, measure: str) -> float:
    return next(r["p50_ms"] for r in rows if r["batch"] == batch and r["measure"] == measure)


def _timed(fn: Any, plan: Any, label: str, quiet: bool, setup: Any = None) -> list[float]:
    """Time with a progress bar on stderr (hidden with --json)."""
    from ..backends.timing import time_callable
    from ..report import info

    if quiet:
        return time_callable(fn, plan, setup=setup)
    if plan.duration_s is not None:
        info(f"timing {label} for {plan.duration_s:g} s ...")
        return time_callable(fn, plan, setup=setup)
    import sys

    with click.progressbar(length=plan.iterations, label=f"timing {label}", file=sys.stderr) as bar:
        return time_callable(fn, plan, on_iteration=lambda _i: bar.update(1), setup=setup)


def _eager_manifest(art: Any) -> Any:
    """The bundle manifest (model spec and weights) that --vs-eager rebuilds the eager model from."""
    from ..bundle import is_bundle, load_bundle
    from ..errors import EffdeployError

    if art.kind == "engine":
        src = str(art.manifest.bundle.get("path") or "")
        if not src or not is_bundle(src):
            raise EffdeployError(f"--vs-eager needs the bundle {art.path} was compiled from ({src or 'not recorded'}); "
                                 "bench that bundle instead, or copy it to that path")
        return load_bundle(src).manifest
    if art.manifest is None:
        raise EffdeployError("--vs-eager needs a bundle manifest (model spec and weights); a bare .onnx has none")
    return art.manifest


def _eager(manifest: Any, runner: Any, threads: int | None, quiet: bool) -> tuple[Any, float]:
    """The eager PyTorch model as ``batch -> logits``, and its max abs distance from the artifact
    on one random batch, so a mismatched model cannot pass silently."""
    import numpy as np

    from ..model.eager import eager_model, eager_runner
    from ..report import info

    info("building the eager PyTorch model for --vs-eager ...", quiet)
    run = eager_runner(eager_model(manifest), threads)
    res = manifest.model.resolution
    x = np.random.default_rng(1).standard_normal((2, 3, res, res)).astype(np.float32)
    return run, float(np.abs(run(x) - runner.infer(x)).max())
