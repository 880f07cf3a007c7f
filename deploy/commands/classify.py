"""``effdeploy classify``: ImageNet labels for image files through the deployment Runner."""

from __future__ import annotations

from pathlib import Path

import click

from . import cli


@cli.command("classify")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--top-k", "top_k", type=int, default=5, show_default=True, help="Classes per image.")
@click.option("--threads", type=int, default=None, help="CPU threads for ONNX Runtime [all].")
@click.option("--batch", "batch_size", type=int, default=16, show_default=True, help="Images per inference call.")
@click.option("--backend", type=click.Choice(["onnxruntime", "openvino", "auto"]), default=None,
              help="CPU runtime for a bundle (default: its profile's, openvino for the cpu-openvino profiles).")
@click.option("--force", is_flag=True, help="Run a bundle whose status is failed-parity.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable results on stdout.")
def classify_cmd(artifact: Path, images: tuple[Path, ...], top_k: int, threads: int | None, batch_size: int,
                 backend: str | None,
                 force: bool, as_json: bool) -> None:
    """Top-k ImageNet classes for IMAGES with a bundle or an engine.plan.

    Example: effdeploy classify bundles/efficientnet-lite0-fp32-cpu cat.jpg dog.png --top-k 3
    """
    from ..errors import EffdeployError
    from ..data.labels import label_from_filename
    from ..data.preprocess import load_image
    from ..report import emit_json, progress, table
    from ..runtime.runner import Runner, resolve_artifact

    if top_k < 1:
        raise EffdeployError(f"--top-k must be at least 1 (got {top_k})")
    if batch_size < 1:
        raise EffdeployError(f"--batch must be at least 1 (got {batch_size})")
    if threads is not None and threads < 1:
        raise EffdeployError(f"--threads must be at least 1 (got {threads}); leave it out to use every core")
    for p in images:
        if p.is_dir():
            raise EffdeployError(f"image {p} is a directory; pass image files (e.g. {p}/*.jpg)")
        if not p.is_file():
            raise EffdeployError(f"image {p} does not exist")
    art = resolve_artifact(artifact)  # the class count, before opening prints any status warning
    if top_k > art.num_classes:
        raise EffdeployError(f"--top-k {top_k} is more than the {art.num_classes} classes of {art.model_name}; "
                             f"use --top-k {art.num_classes} or less")
    with Runner.open(artifact, threads=threads, force=force, backend=backend) as runner:
        backend, art = runner.backend_name, runner.artifact
        results = []
        starts = range(0, len(images), batch_size)
        with progress(starts, length=len(starts), label="classifying",
                      quiet=as_json or len(images) <= batch_size) as bar:
            for i in bar:
                chunk = images[i:i + batch_size]
                preds = runner.classify([load_image(p) for p in chunk], top_k=top_k)
                results.extend(zip(chunk, preds))

    records = []
    for path, preds in results:
        truth = label_from_filename(path) if art.num_classes == 1000 else None
        records.append({
            "image": str(path),
            "top_k": [{"class_id": p.class_id, "label": p.label, "score": p.score} for p in preds],
            **({"true_class_id": truth, "correct_top1": preds[0].class_id == truth} if truth is not None else {}),
        })
    if as_json:
        emit_json({"artifact": str(artifact), "model": art.model_name, "backend": backend, "results": records})
        return
    rows = []
    for rec in records:
        for rank, p in enumerate(rec["top_k"], 1):
            rows.append((rec["image"] if rank == 1 else "", rank, p["label"], p["class_id"], f"{p['score']:.4f}"))
    click.echo(table(rows, headers=["image", "rank", "label", "class", "score"]))
    labelled = [r for r in records if "correct_top1" in r]
    if labelled:
        correct = sum(r["correct_top1"] for r in labelled)
        click.echo(f"top-1 correct on {correct} of {len(labelled)} images labelled by file name")
