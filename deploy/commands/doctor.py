"""``effdeploy doctor``: this machine's TensorRT, CUDA, GPU and CPU, and whether it can compile for a GPU
profile or run a CPU profile's bundles."""

from __future__ import annotations

import click

from . import cli
from ..report import emit_json, kv_table


@cli.command("doctor")
@click.option("--profile", "profile_name", default=None, help="Also say whether this machine can compile for this GPU profile, or run this CPU profile's bundles.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable facts and verdict on stdout.")
def doctor_cmd(profile_name: str | None, as_json: bool) -> None:
    """Check TensorRT, cuda-python, the driver, the GPU, DLA, JetPack and the CPU; one line per problem.

    Example: effdeploy doctor --profile jetson-orin
    """
    from ..runtime.doctor import assess, gather, rows
    from ..profiles import load_profile

    profile = load_profile(profile_name) if profile_name else None  # a bad name is a one-line error
    facts = gather()
    verdict = assess(facts, profile)
    if as_json:
        emit_json({"facts": facts.to_dict(), "verdict": verdict.to_dict()})
        return
    click.echo(kv_table(rows(facts, verdict)))
