"""``effdeploy export``: a bundle (or engine) as a Triton Inference Server model repository."""

from __future__ import annotations

from pathlib import Path

import click

from . import cli
from ..errors import EffdeployError
from ..report import emit_json, kv_table


@cli.command("export")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--triton", "triton_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Write a Triton model repository entry here: DIR/NAME/config.pbtxt, DIR/NAME/1/model.onnx (or "
                   "model.plan from an engine), labels.txt and a preprocess.py client.")
@click.option("--name", default=None, help="The Triton model name (default: MODEL-PRECISION, e.g. efficientnet-lite0-int8).")
@click.option("--max-batch", type=int, default=8, show_default=True,
              help="Triton's max_batch_size for a bundle with a free batch axis (an engine's profile decides its own).")
@click.option("--force", is_flag=True, help="Export a failed-parity bundle anyway.")
@click.option("--json", "as_json", is_flag=True)
def export_cmd(artifact: Path, triton_dir: Path | None, name: str | None, max_batch: int, force: bool,
               as_json: bool) -> None:
    """Hand a verified bundle (or an engine.plan) to a serving framework.

    Example: effdeploy export bundles/efficientnet-lite0-int8-cpu --triton model_repository
    """
    from ..runtime.runner import check_status, resolve_artifact
    from ..runtime.serving import export_triton

    if triton_dir is None:
        raise EffdeployError("say where to export: --triton DIR (a Triton model repository)")
    warning = check_status(resolve_artifact(artifact), force=force)  # failed-parity bundles are refused here
    result = export_triton(artifact, triton_dir, name=name, max_batch=max_batch)
    if as_json:
        emit_json(result.to_dict())
        return
    click.echo(kv_table([("triton model", f"{result.directory} ({result.details['platform']}, max_batch_size "
                                          f"{result.details['max_batch_size']})"),
                         ("files", ", ".join(result.files)), *[("note", n) for n in result.notes],
                         *([("warning", warning)] if warning else [])]))
