"""``effdeploy export``: a bundle (or engine) for Triton Inference Server or DeepStream (Gst-nvinfer)."""

from __future__ import annotations

from pathlib import Path

import click

from . import cli
from ..errors import EffdeployError
from ..report import emit_json, kv_table


@cli.command("export")
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--triton", "triton_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Write a Triton model repository entry here: DIR/NAME/config.pbtxt, DIR/NAME/1/model.onnx (or "
                   "model.plan from an engine), labels.txt and a preprocess.py client.")
@click.option("--name", default=None, help="The Triton model name (default: MODEL-PRECISION, e.g. efficientnet-lite0-int8).")
@click.option("--max-batch", type=int, default=8, show_default=True,
              help="Triton's max_batch_size for a bundle with a free batch axis (an engine's profile decides its own).")
@click.option("--deepstream", "deepstream_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Write a Gst-nvinfer config, its labels, the DeepStream graph (Softmax; normalisation inside where one "
                   "scale cannot express it) and a README.txt with the measured preprocessing agreement here.")
@click.option("--process-mode", type=click.Choice(["primary", "secondary"]), default="primary", show_default=True,
              help="DeepStream: classify whole frames (primary) or detected objects (secondary).")
@click.option("--batch", type=int, default=1, show_default=True, help="DeepStream: nvinfer's batch-size.")
@click.option("--threshold", type=float, default=0.0, show_default=True,
              help="DeepStream: classifier-threshold (a label is attached above this probability).")
@click.option("--onnx", "with_onnx", is_flag=True, help="DeepStream: also name onnx-file (nvinfer then rebuilds a "
              "missing engine itself, unverified).")
@click.option("--data", default=None, help="DeepStream: images to measure the preprocessing change on (default: the "
              "bundle's verification images where they are here, else built-in images).")
@click.option("--images", type=int, default=200, show_default=True, help="DeepStream: at most this many of them.")
@click.option("--force", is_flag=True, help="Export a failed-parity bundle anyway.")
@click.option("--json", "as_json", is_flag=True)
def export_cmd(artifacts: tuple[Path, ...], triton_dir: Path | None, name: str | None, max_batch: int, deepstream_dir: Path | None,
               process_mode: str, batch: int, threshold: float, with_onnx: bool, data: str | None, images: int,
               force: bool, as_json: bool) -> None:
    """Hand a verified bundle (or an engine.plan) to a serving framework.

    Example: effdeploy export bundles/efficientnet-lite0-int8-cpu --triton model_repository

    Several engines of one bundle (one per GPU) make one Triton model with cc_model_filenames:
    effdeploy export orin/engine.plan t4/engine.plan --triton model_repository
    """
    from ..runtime.runner import check_status, resolve_artifact
    from ..runtime.serving import export_deepstream, export_triton

    if triton_dir is None and deepstream_dir is None:
        raise EffdeployError("say where to export: --triton DIR (a Triton model repository) and/or --deepstream DIR")
    if len(artifacts) > 1 and deepstream_dir is not None:
        raise EffdeployError("--deepstream takes one bundle; several artifacts are engines for --triton")
    arts = [resolve_artifact(a) for a in artifacts]  # once: each resolution hashes the bundle
    warning = next((w for w in (check_status(a, force=force) for a in arts) if w), None)
    artifact = arts[0]
    results = []
    if triton_dir is not None:
        results.append(export_triton(arts if len(arts) > 1 else artifact, triton_dir, name=name, max_batch=max_batch))
    if deepstream_dir is not None:
        results.append(export_deepstream(artifact, deepstream_dir, name=name, batch=batch, process_mode=process_mode,
                                         threshold=threshold, with_onnx=with_onnx, data=data, images=images))
    if as_json:
        emit_json([r.to_dict() for r in results] if len(results) > 1 else results[0].to_dict())
        return
    rows = []
    for r in results:
        rows.append((r.target, str(r.directory) + (f" ({r.details['platform']}, max_batch_size "
                                                   f"{r.details['max_batch_size']})" if r.target == "triton" else "")))
        rows += [("files", ", ".join(r.files)), *[("note", n) for n in r.notes]]
    click.echo(kv_table([*rows, *([("warning", warning)] if warning else [])]))
