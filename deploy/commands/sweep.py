"""``effdeploy sweep``: phi x precision on a profile, each point a normal build and a latency
measurement; the table marks the Pareto front, a budget picks the largest phi that fits, and
sweep.csv / sweep.json / sweep.png are written as the points come in (a killed sweep resumes)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import click

from . import cli


@cli.command("sweep")
@click.option("--phi", "phis", default="0:2", show_default=True,
              help="Phis to sweep: a list (0,1,2) or a range START:STOP[:STEP] (0:4, 0:2:0.5); fractional phi uses the compound rule.")
@click.option("--variant", type=click.Choice(["b", "lite"]), default="b", show_default=True)
@click.option("--weights", default=None,
              help="pretrained (Lite0-2 ship weights; other phis refuse in their row), or omit for random weights (benchmark-only points).")
@click.option("--precision", "precisions", default="fp32,int8", show_default=True, help="Comma-separated: fp32, fp16, int8.")
@click.option("--profile", "profile_name", default="cpu", show_default=True)
@click.option("--calib-data", default=None, help="Calibration (and verification) images for INT8 points.")
@click.option("--calib-images", type=int, default=256, show_default=True)
@click.option("--latency-budget", default=None, help="e.g. 5ms: recommend the largest phi whose p50 fits, per precision.")
@click.option("--resolution", type=int, default=None,
              help="One input resolution for every point (default: each phi's own, by the compound rule).")
@click.option("--batch", type=int, default=1, show_default=True, help="Batch size the latency is measured at.")
@click.option("--threads", type=int, default=None, help="CPU threads for the CPU runtime [all].")
@click.option("--iterations", "-n", type=int, default=100, show_default=True, help="Timed calls per point.")
@click.option("--find-phi", "find", is_flag=True,
              help="With --latency-budget: search phi (random weights, benchmark-only) for the largest model that fits.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Sweep folder [sweeps/<variant>-<profile>].")
@click.option("--json", "as_json", is_flag=True, help="The sweep.json object on stdout.")
def sweep_cmd(phis: str, variant: str, weights: str | None, precisions: str, profile_name: str, calib_data: str | None,
              calib_images: int, latency_budget: str | None, resolution: int | None, batch: int, threads: int | None, iterations: int,
              find: bool, out: Path | None, as_json: bool) -> None:
    """Which phi, at which precision, fits the target: build and time every point, mark the Pareto
    front, recommend under a budget.

    Example: effdeploy sweep --phi 0:2 --variant lite --weights pretrained --precision fp32,int8 --profile cpu --calib-data frames/ --latency-budget 5ms
    """
    from ..errors import EffdeployError
    from ..profiles import PRECISIONS, load_profile
    from ..sweep.points import parse_latency, parse_phis
    from ..sweep.run import SweepSettings

    phi_list = parse_phis(phis)
    precision_list = tuple(dict.fromkeys(p.strip() for p in precisions.split(",") if p.strip()))
    bad = [p for p in precision_list if p not in PRECISIONS]
    if not precision_list or bad:
        raise EffdeployError(f"--precision takes {', '.join(PRECISIONS)} (comma-separated); got {precisions!r}")
    budget = parse_latency(latency_budget)
    for name, value in (("--batch", batch), ("--iterations", iterations), ("--calib-images", calib_images)):
        if value < 1:
            raise EffdeployError(f"{name} must be >= 1 (got {value})")
    profile = load_profile(profile_name)
    folder = out or Path("sweeps") / f"{variant}-{profile.name}"
    settings = SweepSettings(variant=variant, weights=None if weights in (None, "none") else weights, profile=profile.name,
                             calib_data=calib_data, calib_images=calib_images, batch=batch, threads=threads,
                             iterations=iterations, resolution=resolution)
    if find:
        if budget is None:
            raise EffdeployError("--find-phi needs --latency-budget (e.g. --latency-budget 3ms)")
        return _find(settings, profile, precision_list, budget, folder, as_json)
    _sweep(settings, profile, phi_list, precision_list, budget, folder, as_json)


def _sweep(settings: Any, profile: Any, phis: tuple[float, ...], precisions: tuple[str, ...], budget: float | None,
           folder: Path, as_json: bool) -> None:
    from ..backends.timing import machine_info
    from ..files import atomic_write
    from ..report import emit_json, info
    from ..sweep.plot import PLOT_HINT, have_matplotlib, write_plot
    from ..sweep.breakdown import departures
    from ..sweep.points import csv_rows, latency_exponent, pareto, quality_measure, recommend
    from ..sweep.run import run_sweep

    info(f"sweep of {len(phis) * len(precisions)} points (phi {', '.join(f'{p:g}' for p in phis)} x "
         f"{', '.join(precisions)}) on {profile.name}, in {folder}", as_json)
    points, reused = run_sweep(settings, profile, phis, precisions, folder, quiet=as_json)
    points = pareto(points)
    result = {"settings": settings.to_dict(), "phis": list(phis), "precisions": list(precisions),
              "latency_budget_ms": budget, "quality": quality_measure(points), "points": [p.to_dict() for p in points],
              "recommended": recommend(points, budget) if budget is not None else {},
              "latency_vs_macs": latency_exponent(points), "departures_from_macs": departures(points),
              "reused_points": reused, "machine": machine_info()}
    buf = io.StringIO()
    csv.writer(buf).writerows(csv_rows(points))
    atomic_write(folder / "sweep.csv", buf.getvalue())
    atomic_write(folder / "sweep.json", json.dumps(result, indent=2) + "\n")
    title = f"EfficientNet-{'Lite' if settings.variant == 'lite' else 'B'} on {profile.name} ({result['machine']['cpu']})"
    plotted = write_plot(points, folder / "sweep.png", title, budget)
    if not plotted:
        info("note: no sweep.png: no point was timed" if have_matplotlib() else f"note: no sweep.png: {PLOT_HINT}", as_json)
    if as_json:
        emit_json(result)
        return
    _show(result, points, folder, plotted)


def _show(result: dict[str, Any], points: list, folder: Path, plotted: bool) -> None:
    from ..report import table

    def ms(v: float | None) -> str:
        return f"{v:.2f}" if v is not None else "-"

    rows = []
    for p in points:
        agree = (f"{100 * p.top1_agreement:.1f}" if p.top1_agreement is not None else "-")
        rows.append((f"{p.phi:g}", p.precision, p.resolution or "-", f"{p.parameters / 1e6:.1f}" if p.parameters else "-",
                     f"{p.macs / 1e9:.2f}" if p.macs else "-", p.status or "error", ms(p.latency_p50_ms),
                     ms(p.latency_p90_ms), f"{p.throughput_ips:.0f}" if p.throughput_ips else "-", agree,
                     f"{100 * p.top1_accuracy:.1f}" if p.top1_accuracy is not None else "-",
                     f"{p.model_bytes / 2 ** 20:.1f}" if p.model_bytes else "-", ms(p.build_s),
                     "*" if p.pareto else "", p.error or (p.timed_on or "")))
    click.echo(table(rows, ["phi", "precision", "res (px)", "params (M)", "MACs (G)", "status", "p50 (ms)", "p90 (ms)",
                            "img/s", "agreement %", "top-1 %", "model (MiB)", "build (s)", "Pareto", "timed on / error"]))
    click.echo(f"* on the Pareto front: no other point is both faster and better ({result['quality']} is 'better')")
    for precision, rec in result["recommended"].items():
        click.echo(f"budget {result['latency_budget_ms']:g} ms, {precision}: {rec['why']}")
    for precision, fit in result["latency_vs_macs"].items():
        click.echo(f"{precision}: latency grows as MACs^{fit['exponent']:.2f} across {fit['points']} points "
                   "(1.00 = like the multiply-adds, the paper's FLOPs rule)")
    if result["departures_from_macs"]:
        click.echo("where latency departs from the multiply-adds (ONNX Runtime's per-layer profile; kernel time):")
        for line in result["departures_from_macs"]:
            click.echo(f"  {line}")
    click.echo(f"wrote {folder / 'sweep.csv'}, {folder / 'sweep.json'}" + (f", {folder / 'sweep.png'}" if plotted else "")
               + (f" ({result['reused_points']} points reused from an earlier run)" if result["reused_points"] else ""))


def _find(settings: Any, profile: Any, precisions: tuple[str, ...], budget: float, folder: Path, as_json: bool) -> None:
    from ..backends.timing import machine_info
    from ..files import atomic_write
    from ..report import emit_json, info
    from ..sweep.run import find_phi

    found = {}
    for precision in precisions:
        info(f"--find-phi: the largest {settings.variant} phi whose {precision} p50 fits {budget:g} ms on {profile.name}",
             as_json)
        found[precision] = find_phi(settings, profile, precision, budget, folder, quiet=as_json)
    result = {"settings": settings.to_dict(), "latency_budget_ms": budget, "recommended": found, "machine": machine_info()}
    atomic_write(folder / "find-phi.json", json.dumps(result, indent=2) + "\n")
    if as_json:
        emit_json(result)
        return
    for precision, r in found.items():
        if not r["found"]:
            click.echo(f"{precision}: {r['why']}")
            continue
        s = r["spec"]
        click.echo(f"{precision}: phi {r['phi']:g} (depth {s['depth']:.3f}, width {s['width']:.3f}, {s['resolution']} px, "
                   f"{s['parameters'] / 1e6:.2f} M parameters, {s['macs'] / 1e9:.2f} G MACs): p50 {r['latency_p50_ms']:.2f} ms "
                   f"of {budget:g} ms, after {r['candidates']} measured candidates"
                   + ("" if r["within_10pct_under"] else " (not within 10 % under the budget: the bracket ran out)"))
