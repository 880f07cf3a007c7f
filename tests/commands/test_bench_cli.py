"""``effdeploy bench`` and ``effdeploy classify`` through the real console entry point."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from effdeploy.backends.timing import (
    LatencyStats, TimingPlan, ratio, summarize, time_callable, time_interleaved,
)
from effdeploy.runtime.benchmark import parse_batches, parse_frame_size, synthetic_frame
from effdeploy.errors import EffdeployError

FAST = ("--iterations", "3", "--warmup", "1")


def one_line_error(out) -> str:  # type: ignore[no-untyped-def]
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("effdeploy: error:"), out.stderr
    return lines[0]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    """The console entry point in-process (fast, for the many refusal cases): -> (code, out, err)."""
    from types import SimpleNamespace

    from effdeploy.commands import main

    def call(*args: str) -> SimpleNamespace:
        try:
            main(list(args))
            code = 0
        except SystemExit as e:
            code = int(e.code or 0)
        captured = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=captured.out, stderr=captured.err)

    return call


# --- the timing loop and statistics (pure) ---------------------------------------------------------


def test_summarize_percentiles_and_throughput() -> None:
    s = summarize([i / 1000 for i in range(1, 101)], batch=4)  # 1..100 ms
    assert (s.iterations, s.min_ms, s.max_ms) == (100, 1.0, 100.0)
    assert s.mean_ms == pytest.approx(50.5) and s.p50_ms == pytest.approx(50.5)
    assert s.p90_ms == pytest.approx(90.1) and s.p99_ms == pytest.approx(99.01)
    assert s.throughput == pytest.approx(4 * 1000 / 50.5)
    skewed = summarize([0.001, 0.001, 0.001, 0.001, 0.096], batch=4)  # mean 20 ms, median 1 ms
    assert (skewed.mean_ms, skewed.p50_ms) == (pytest.approx(20.0), pytest.approx(1.0))
    assert skewed.throughput == pytest.approx(200.0)  # images per second at the mean: 4 images / 20 ms
    with pytest.raises(EffdeployError):
        summarize([])


def test_timing_loop_counts_and_durations() -> None:
    ticks = iter(range(10_000))
    clock = lambda: float(next(ticks))  # noqa: E731 - every call advances one "second"
    calls: list[int] = []
    samples = time_callable(lambda: calls.append(1), TimingPlan(warmup=2, iterations=5), clock=clock)
    assert len(samples) == 5 and len(calls) == 7 and all(s == 1.0 for s in samples)
    by_time = time_callable(lambda: None, TimingPlan(warmup=0, iterations=None, duration_s=6.5), clock=clock)
    assert 2 <= len(by_time) <= 4  # each timed call costs 3 clock ticks here
    seen: list[str] = []
    out = time_interleaved({"a": lambda: seen.append("a"), "b": lambda: seen.append("b")},
                           TimingPlan(warmup=1, iterations=3))
    assert seen == ["a", "b"] * 4 and [len(v) for v in out.values()] == [3, 3]
    slow = LatencyStats(batch=1, iterations=1, mean_ms=9, std_ms=0, min_ms=2, p50_ms=6, p90_ms=8, p99_ms=8, max_ms=8)
    fast = LatencyStats(batch=1, iterations=1, mean_ms=1, std_ms=0, min_ms=1, p50_ms=2, p90_ms=2, p99_ms=2, max_ms=2)
    assert ratio(slow, fast) == 3.0 and ratio(slow, fast, "mean_ms") == 9.0  # the median unless asked


def test_timing_plan_refuses_nonsense() -> None:
    for kwargs in ({"iterations": 0}, {"warmup": -1}, {"iterations": None}, {"iterations": None, "duration_s": 0}):
        with pytest.raises(EffdeployError):
            TimingPlan(**kwargs)  # type: ignore[arg-type]


def test_argument_parsers() -> None:
    assert parse_batches("1,8") == (1, 8) and parse_frame_size("1280x720") == (1280, 720)
    for bad in ("0", "a", ",", "1,-2"):
        with pytest.raises(EffdeployError, match="--batch"):
            parse_batches(bad)
    for bad in ("1920", "0x5", "axb"):
        with pytest.raises(EffdeployError, match="--frame-size"):
            parse_frame_size(bad)
    f = synthetic_frame(320, 200)
    assert f.shape == (200, 320, 3) and f.dtype == np.uint8 and f.std() > 10


# --- effdeploy bench -------------------------------------------------------------------------------


def test_bench_json_has_both_figure_sets(tiny_bundle: Path) -> None:
    out = run_cli("bench", str(tiny_bundle), "--batch", "1,2", *FAST, "--end-to-end", "--frame-size", "640x360",
                  "--threads", "1", "--json")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["backend"] == "onnxruntime" and r["status"] == "benchmark-only" and r["model"] == "efficientnet-b0"
    measures = {(row["batch"], row["measure"]) for row in r["results"]}
    assert measures == {(b, m) for b in (1, 2) for m in ("compute", "end-to-end 640x360")}
    for row in r["results"]:
        assert row["iterations"] == 3 and 0 < row["min_ms"] <= row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]
        assert row["throughput_ips"] == pytest.approx(row["batch"] * 1000 / row["mean_ms"])
    assert set(r["end_to_end_over_compute_p50"]) == {"1", "2"}
    assert "progress" not in out.stderr and "timing" not in out.stderr  # --json keeps stderr quiet too


def test_bench_table_for_people(tiny_bundle: Path) -> None:
    out = run_cli("bench", str(tiny_bundle), *FAST, "--end-to-end", "--frame-size", "320x240")
    assert out.returncode == 0, out.stderr
    assert "p50 ms" in out.stdout and "end-to-end 320x240" in out.stdout
    assert "end-to-end / compute latency (p50), batch 1:" in out.stdout
    assert "timing batch 1 compute" in out.stderr  # progress goes to stderr


def test_bench_vs_eager_prints_the_speedup(tiny_bundle: Path) -> None:
    pytest.importorskip("torch")
    out = run_cli("bench", str(tiny_bundle), *FAST, "--vs-eager", "--threads", "1", "--json")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert {row["measure"] for row in r["results"]} == {"compute", "eager pytorch"}
    assert r["eager_speedup_p50"]["1"] > 0
    assert r["eager_parity_max_abs"] < 1e-3  # the same model and weights, not just any PyTorch model


def test_bench_bare_onnx_and_duration(tiny_bundle: Path, tmp_path: Path) -> None:
    bare = tmp_path / "model.onnx"
    shutil.copy(tiny_bundle / "model.onnx", bare)
    out = run_cli("bench", str(bare), "--duration", "0.2", "--warmup", "1", "--json")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["kind"] == "onnx" and r["results"][0]["iterations"] >= 1 and r["resolution"] == 64
    out = run_cli("bench", str(bare), "--vs-eager", *FAST)
    assert "a bare .onnx has none" in one_line_error(out)


@pytest.mark.parametrize(
    "args, match",
    [
        (("--batch", "0"), "--batch"),
        (("--iterations", "5", "--duration", "1"), "not both"),
        (("--iterations", "0"), "--iterations"),
        (("--frame-size", "big"), "--frame-size"),
        (("--threads", "0"), "--threads"),
    ],
)
def test_bench_bad_arguments(tiny_bundle: Path, args: tuple[str, ...], match: str, cli) -> None:  # type: ignore[no-untyped-def]
    assert match in one_line_error(cli("bench", str(tiny_bundle), *args))


def test_bench_refuses_bad_artifacts(tiny_bundle: Path, tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad"
    shutil.copytree(tiny_bundle, bad)
    m = json.loads((bad / "manifest.json").read_text())
    (bad / "manifest.json").write_text(json.dumps({**m, "status": "failed-parity"}))
    assert "failed-parity" in one_line_error(cli("bench", str(bad), *FAST))
    assert cli("bench", str(bad), *FAST, "--force", "--json").returncode == 0
    data = (bad / "model.onnx").read_bytes()
    (bad / "model.onnx").write_bytes(data[:1000])
    assert "sha256" in one_line_error(cli("bench", str(bad), *FAST, "--force"))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x01garbage")
    assert "junk.onnx" in one_line_error(cli("bench", str(junk), *FAST))
    assert "does not exist" in one_line_error(cli("bench", str(tmp_path / "nope"), *FAST))


# --- effdeploy classify ----------------------------------------------------------------------------


def test_classify_json_and_table(tiny_bundle: Path, tmp_path: Path) -> None:
    paths = []
    for i, name in enumerate(["n01440764_tench.png", "holiday.jpg"]):
        p = tmp_path / name
        Image.fromarray(synthetic_frame(200 + 50 * i, 150, seed=i)).save(p)
        paths.append(str(p))
    out = run_cli("classify", str(tiny_bundle), *paths, "--top-k", "3", "--json")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert [x["image"] for x in r["results"]] == paths
    first = r["results"][0]
    assert len(first["top_k"]) == 3 and first["true_class_id"] == 0  # the synset in the file name
    assert "true_class_id" not in r["results"][1]
    from effdeploy.data.labels import imagenet_labels

    assert all(p["label"] == imagenet_labels()[p["class_id"]] for p in first["top_k"])
    table = run_cli("classify", str(tiny_bundle), *paths)
    assert table.returncode == 0 and first["top_k"][0]["label"] in table.stdout
    assert "labelled by file name" in table.stdout


def test_classify_bad_inputs(tiny_trained_bundle: Path, tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    bundle = str(tiny_trained_bundle)  # verified: no status warning before the error line
    assert "does not exist" in one_line_error(cli("classify", bundle, str(tmp_path / "none.jpg")))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    assert "cannot read image" in one_line_error(cli("classify", bundle, str(broken)))
    img = tmp_path / "x.png"
    Image.fromarray(synthetic_frame(64, 64)).save(img)
    assert "--top-k" in one_line_error(cli("classify", bundle, str(img), "--top-k", "0"))


def test_classify_real_sample_with_the_tiny_bundle(tiny_bundle: Path, imagenet_sample: Path) -> None:
    """Every shared image format goes through (JPEG, grayscale, CMYK, ...); labels come from file names."""
    paths = [str(p) for p in sorted(imagenet_sample.glob("*.JPEG"))[:40]]
    out = run_cli("classify", str(tiny_bundle), *paths, "--top-k", "1", "--json")
    assert out.returncode == 0, out.stderr
    assert all("correct_top1" in x for x in json.loads(out.stdout)["results"])
