"""effdeploy sweep: the phi parser, the Pareto rule, the budget choice and the latency fit on
literal cases; a real sweep (tiny resolution) that writes csv/json/png, keeps a failing point as a
row, and resumes after SIGKILL; --find-phi's search on a latency curve it cannot see."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import run_cli
from effdeploy.errors import EffdeployError
from effdeploy.sweep.breakdown import classify, departures
from effdeploy.sweep.points import Point, latency_exponent, parse_latency, parse_phis, pareto, recommend


def test_phi_lists_and_ranges():
    assert parse_phis("0,1,2") == (0.0, 1.0, 2.0)
    assert parse_phis("0:4") == (0.0, 1.0, 2.0, 3.0, 4.0)
    assert parse_phis("0:2:0.5") == (0.0, 0.5, 1.0, 1.5, 2.0)
    assert parse_phis("1:1.3:0.1") == (1.0, 1.1, 1.2, 1.3)  # float steps land on the end
    assert parse_phis("2,1,2") == (2.0, 1.0)  # order kept, repeats dropped
    for bad in ("", "a", "0:", "2:1", "0:1:0", "0:1:-1", "-1", "0:1:2:3", "nan", "0:100:0.5", "0:1e300", "0:inf",
                "0:1:nan"):
        with pytest.raises(EffdeployError, match="--phi"):
            parse_phis(bad)


def test_latency_budget_units():
    assert parse_latency("5ms") == 5.0 and parse_latency("5") == 5.0 and parse_latency("0.005s") == 5.0
    assert parse_latency(None) is None
    for bad in ("fast", "0ms", "-3ms", "inf"):
        with pytest.raises(EffdeployError, match="--latency-budget"):
            parse_latency(bad)


def _p(phi, prec, ms, macs, acc=None, error=None):
    return Point(phi=phi, precision=prec, latency_p50_ms=ms, macs=macs, top1_accuracy=acc, error=error)


def test_pareto_front_by_accuracy_and_by_the_macs_proxy():
    pts = [_p(0, "fp32", 4.0, 400, 0.75), _p(1, "fp32", 6.0, 700, 0.79), _p(0, "int8", 2.5, 400, 0.745),
           _p(1, "int8", 3.5, 700, 0.70),  # faster than fp32 phi 1 but worse than fp32 phi 0... and slower than int8 phi 0
           _p(2, "int8", 7.0, 1000, 0.78)]  # slower than fp32 phi 1 and worse: dominated
    front = {(p.phi, p.precision) for p in pareto(pts) if p.pareto}
    assert front == {(0, "fp32"), (1, "fp32"), (0, "int8")}
    # no accuracy anywhere: MACs is the quality, so equal MACs at higher latency is dominated
    proxy = [_p(0, "fp32", 4.0, 400), _p(0, "int8", 2.5, 400), _p(1, "int8", 3.5, 700), _p(1, "fp32", 6.0, 700),
             _p(2, "fp32", None, 1000), _p(3, "fp32", 1.0, 5000, error="refused")]
    front = {(p.phi, p.precision) for p in pareto(proxy) if p.pareto}
    assert front == {(0, "int8"), (1, "int8")}  # untimed and failed points are never on it


def test_the_budget_recommends_the_largest_phi_that_fits():
    pts = [_p(0, "fp32", 4.0, 400), _p(1, "fp32", 6.0, 700), _p(2, "fp32", 9.0, 1000),
           _p(0, "int8", 2.5, 400), _p(1, "int8", 3.5, 700), _p(2, "int8", 5.1, 1000)]
    rec = recommend(pts, 5.0)
    assert rec["fp32"]["phi"] == 0 and "phi 1 takes 6.00 ms" in rec["fp32"]["why"]
    assert rec["int8"]["phi"] == 1 and "5.10 ms" in rec["int8"]["why"]
    rec = recommend(pts, 2.0)
    assert rec["int8"]["point"] is None and "nothing fits" in rec["int8"]["why"]
    assert recommend(pts, 100.0)["fp32"]["phi"] == 2


def test_latency_exponent_is_the_log_log_slope():
    pts = [_p(phi, "fp32", 3.0 * (m / 400) ** 0.8, m) for phi, m in ((0, 400), (1, 700), (2, 1000), (3, 1800))]
    assert latency_exponent(pts)["fp32"]["exponent"] == pytest.approx(0.8, abs=1e-9)
    assert latency_exponent(pts[:1]) == {}


def test_executed_nodes_are_put_in_kinds_with_their_multiply_adds():
    # ORT's NCHWc conv (logical NCHW shapes), its channels-last QLinearConv, the SE gate, the classifier
    assert classify("Conv", {"group": 32, "kernel_shape": [3, 3]}, [[1, 32, 56, 56]], [1, 32, 56, 56]) == \
        ("depthwise", 32 * 56 * 56 * 9)
    assert classify("Conv", {"group": 1, "kernel_shape": [1, 1]}, [[1, 32, 56, 56]], [1, 96, 56, 56]) == \
        ("pointwise", 96 * 56 * 56 * 32)
    assert classify("QLinearConv", {"channels_last": 1, "group": 1}, [[1, 56, 56, 32]], [1, 56, 56, 96], [96, 32, 1, 1]) == \
        ("pointwise", 96 * 56 * 56 * 32)
    assert classify("Conv", {"kernel_shape": [3, 3]}, [[1, 3, 224, 224]], [1, 32, 112, 112])[0] == "stem"
    assert classify("FusedConv", {"kernel_shape": [1, 1]}, [[1, 96, 1, 1]], [1, 4, 1, 1]) == ("se", 384)
    assert classify("Mul", {}, [[1, 96, 56, 56], [1, 96, 1, 1]], [1, 96, 56, 56]) == ("se", 0)
    assert classify("Mul", {}, [[1, 96, 56, 56], [1, 96, 56, 56]], [1, 96, 56, 56]) == ("elementwise", 0)
    assert classify("Gemm", {}, [[1, 1280]], [1, 1000]) == ("classifier", 1280 * 1000)
    assert classify("QuantizeLinear", {}, [[1, 8, 4, 4]], [1, 8, 4, 4]) == ("quantize", 0)
    assert classify("ReorderOutput", {}, [[1, 8, 4, 4]], [1, 8, 4, 4]) == ("layout", 0)
    assert classify("Conv", {"group": 8}, [[1, 8, 1, 1]], [1, 8, 1, 1], [8, 1, 3, 3]) == ("depthwise", 72)  # not SE
    assert classify("QLinearConv", {"channels_last": 1}, [], [])[1] == 0  # a profile without shapes: no crash


def test_departures_name_the_layers_whose_time_is_not_their_arithmetic():
    def point(phi, macs, pw_ms, ew_ms, dw_ms):
        return Point(phi=phi, precision="fp32", macs=macs, latency_p50_ms=pw_ms + ew_ms + dw_ms, breakdown={
            "pointwise": {"ms": pw_ms, "macs": 0.9 * macs}, "depthwise": {"ms": dw_ms, "macs": 0.1 * macs},
            "elementwise": {"ms": ew_ms, "macs": 0}})
    lines = departures([point(0, 100, 4.0, 4.0, 1.0), point(1, 200, 8.0, 12.0, 2.2)])
    text = "\n".join(lines)
    assert len(lines) == 2 and "depthwise" not in text  # 11 % of the time for 10 % of the MACs: like its arithmetic
    assert "fp32 1x1 convs" in text and "90.0 % of the multiply-adds, 44 % of the time at phi 0, 36 % at phi 1 (0.5x" in text
    assert "elementwise" in text and "no multiply-adds, 44 % of the time at phi 0, 54 % at phi 1" in text
    assert departures([point(0, 100, 9.0, 0.0, 1.0)]) == []  # time where the arithmetic is: nothing to say
    # two points of equal MACs (a fixed --resolution, a fine phi grid): shares, no growth, no crash
    same = departures([point(0, 100, 4.0, 4.0, 1.0), point(0.05, 100, 4.0, 4.5, 1.0)])
    assert len(same) == 2 and not any("grew" in line for line in same)
    # points written before the breakdown existed load without one and are left out
    old = Point.from_dict({k: v for k, v in point(0, 100, 4.0, 4.0, 1.0).to_dict().items() if k != "breakdown"})
    assert old.breakdown == {} and departures([old]) == []
    assert "MACs^1.58" in text  # elementwise time x3 for MACs x2: log 3 / log 2


def test_find_phi_on_a_latency_curve(tmp_path):
    """Latency 2 ms x 2^phi with 3 % noise: the search must land within 10 % under a 5 ms budget in
    <= 8 candidates (the answer is phi ~ 1.32)."""
    from effdeploy.sweep.run import SweepSettings, find_phi

    noise = iter([1.02, 0.98, 1.03, 0.97, 1.01, 0.99, 1.0, 1.02, 0.98])

    def latency(phi):
        ms = 2.0 * 2 ** phi * next(noise)
        return ms, (ms * 0.99, ms * 1.01), {"depth": 1.2 ** phi, "width": 1.1 ** phi, "resolution": 224,
                                              "parameters": 1, "macs": int(4e8 * 2 ** phi)}

    r = find_phi(SweepSettings("b", None, "cpu"), None, "fp32", 5.0, tmp_path, latency=latency, quiet=True)
    assert r["found"] and r["candidates"] <= 8 and r["within_10pct_under"], r
    assert 4.5 <= r["latency_p50_ms"] <= 5.0 and 1.15 <= r["phi"] <= math.log2(2.5) + 0.05
    r = find_phi(SweepSettings("b", None, "cpu"), None, "fp32", 1.0, tmp_path,
                 latency=lambda phi: (2.0, (1.9, 2.1), {}), quiet=True)
    assert not r["found"] and "phi 0 already takes" in r["why"]


SWEEP = ["sweep", "--variant", "lite", "--weights", "pretrained", "--precision", "fp32", "--profile", "cpu",
         "--resolution", "32", "-n", "20"]


def test_a_sweep_writes_its_table_files_and_a_failing_point_as_a_row(tmp_path):
    out = tmp_path / "sw"
    proc = run_cli(*SWEEP, "--phi", "0,1,3", "--latency-budget", "50ms", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    d = json.loads((out / "sweep.json").read_text())
    rows = {p["phi"]: p for p in d["points"]}
    assert set(rows) == {0.0, 1.0, 3.0}
    assert rows[3.0]["error"] and "pretrained" in rows[3.0]["error"] and rows[3.0]["latency_p50_ms"] is None
    for phi in (0.0, 1.0):
        p = rows[phi]
        assert p["status"] == "verified" or p["status"] == "checked"
        assert p["latency_p50_ms"] > 0 and p["resolution"] == 32 and p["macs"] > 0 and p["top1_agreement"] == 1.0
    assert rows[1.0]["macs"] > rows[0.0]["macs"] and d["quality"] == "multiply-adds (proxy)"
    for phi in (0.0, 1.0):  # ONNX Runtime's profile of the graph, by kind of layer
        b = rows[phi]["breakdown"]
        assert {"depthwise", "pointwise", "stem", "classifier"} <= set(b) and sum(v["ms"] for v in b.values()) > 0
        # multiply-adds as ORT runs them: its blocked layout may pad channels, never drop any
        assert rows[phi]["macs"] <= sum(v["macs"] for v in b.values()) <= 1.5 * rows[phi]["macs"]
    # which kinds depart from their multiply-adds depends on the CPU (a CI machine found none at 32 px),
    # so the record must be what departures() says of the breakdowns it stored
    recorded = [SimpleNamespace(**{k: p.get(k) for k in ("precision", "phi", "macs", "breakdown", "error")})
                for p in d["points"]]
    assert d["departures_from_macs"] == departures(recorded)
    assert all(l.startswith("fp32 ") for l in d["departures_from_macs"])
    assert d["recommended"]["fp32"]["phi"] in (0.0, 1.0) and d["machine"]["cpu"]
    assert (out / "sweep.csv").read_text().splitlines()[0].startswith("phi,precision,")
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Pareto" in proc.stdout and "budget 50 ms, fp32:" in proc.stdout


def test_a_killed_sweep_resumes_from_its_points(tmp_path):
    out = tmp_path / "sw"
    args = [sys.executable, "-m", "effdeploy", *SWEEP, "--variant", "b", "--weights", "none", "--phi", "0,0.5,1",
            "--out", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    points = out / "points.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if points.exists() and points.read_text().count("\n") >= 1:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    done = points.read_text().count("\n")
    assert 1 <= done < 3
    again = run_cli(*SWEEP, "--variant", "b", "--weights", "none", "--phi", "0,0.5,1", "--out", str(out), "--json")
    assert again.returncode == 0, again.stderr
    d = json.loads(again.stdout)
    assert d["reused_points"] == done and len(d["points"]) == 3
    assert all(p["status"] == "benchmark-only" and p["latency_p50_ms"] for p in d["points"])
    assert points.read_text().count("\n") == 3  # the reused points were not measured again
    other = run_cli(*SWEEP, "--variant", "b", "--weights", "none", "--phi", "0", "-n", "21", "--out", str(out), "--json")
    assert json.loads(other.stdout)["reused_points"] == 0  # other settings: nothing reused


def test_sweep_refusals_are_one_line(tmp_path):
    for args, match in ((["--phi", "x"], "--phi"), (["--precision", "int4"], "--precision"),
                        (["--find-phi"], "--find-phi needs --latency-budget"), (["--batch", "0"], "--batch")):
        proc = run_cli("sweep", *args, "--out", str(tmp_path / "s"))
        assert proc.returncode == 2 and match in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
