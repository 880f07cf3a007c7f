"""Issue 14: the bad inputs and interruptions that went wrong, one test each. A fixed case exits with
the documented code, says what is wrong in one line on stderr, and leaves nothing half-written;
bench/bad_inputs.py runs the same cases (and the well-handled ones) as one table."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, read_manifest, run_cli

LITE = ("--phi", "0", "--variant", "lite", "--resolution", "64")
CAMERA = REPO / "examples" / "camera_classify.py"


def lines_of(proc) -> list[str]:  # type: ignore[no-untyped-def]
    return [l for l in proc.stderr.splitlines() if l.strip()]


def one_error_line(proc, code: int = 2) -> str:  # type: ignore[no-untyped-def]
    """The whole of stderr is one 'effdeploy: error: ...' line (nothing printed before it)."""
    assert proc.returncode == code, proc.stderr
    lines = lines_of(proc)
    assert len(lines) == 1 and lines[0].startswith("effdeploy: error: "), proc.stderr
    return lines[0]


def entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 readable JPEGs (the built-in photos, flipped and cropped) and one truncated to a third."""
    from effdeploy.data.datasets import write_builtin_variants

    folder = tmp_path_factory.mktemp("images") / "good+1"
    n = len(write_builtin_variants(folder, 160))
    data = (folder / "img_000.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    assert n == 60
    return folder


@pytest.fixture()
def bad(tmp_path: Path) -> Path:
    """Inputs that hold nothing usable, in a folder of their own; ``tmp_path/work`` stays empty
    for the build's --out so leftovers are easy to see."""
    root = tmp_path / "inputs"
    root.mkdir()
    (root / "empty").mkdir()
    (root / "corrupt-only").mkdir()
    (root / "corrupt-only" / "a.jpg").write_bytes(b"not a jpeg")
    (root / "corrupt-only" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    (root / "fake.mp4").write_bytes(b"\x00" * 4096)
    np.save(root / "wrong.npy", np.zeros((2, 3, 32, 32), np.float32))
    np.save(root / "zero.npy", np.zeros((0, 3, 64, 64), np.float32))
    (root / "dir.toml").mkdir()
    (tmp_path / "work").mkdir()
    return root


# --- 1: unreadable images are skipped and counted everywhere ------------------------------------


def test_verification_set_skips_and_replaces_an_unreadable_image(images: Path) -> None:
    from effdeploy.data.datasets import labelled_images, select_readable, split
    from effdeploy.pipeline import BuildRequest, verification_set
    from effdeploy.profiles import load_profile
    from effdeploy.model.spec import model_spec

    spec = model_spec(0, "lite", resolution=64)
    req = BuildRequest(phi=0, variant="lite", profile=load_profile("cpu"), verify_data=str(images))
    v = verification_set(req, spec)
    assert len(v.data) == 60 and not any("truncated" in i for i in v.ids)
    assert v.warning and v.warning.startswith("skipped 1 unreadable verification image(s)") and "truncated.jpg" in v.warning
    # a sample that draws the bad file gets a replacement from the images left over, same size
    items = labelled_images(images)
    seed = next(s for s in range(50) if any("truncated" in str(i.path) for i in split(items, (), 10, s)))
    r = select_readable(items, (), 10, seed, spec.preprocessing)
    assert len(r.items) == 10 and r.data.shape == (10, 3, 64, 64) and len(r.skipped) == 1
    # with every image readable the selection is exactly split's (same images as before this change)
    good = [i for i in items if "truncated" not in str(i.path)]
    assert [i.path for i in select_readable(good, (), 10, 3, spec.preprocessing).items] == \
        [i.path for i in split(good, (), 10, 3)]


def test_verify_data_with_a_corrupt_image(tiny_trained_bundle: Path, images: Path) -> None:
    """Before: one corrupt image aborted verify (exit 2)."""
    proc = run_cli("verify", str(tiny_trained_bundle), "--data", str(images))
    assert proc.returncode == 0, proc.stderr
    warnings = [l for l in lines_of(proc) if "warning" in l]
    assert len(warnings) == 1 and "skipped 1 unreadable verification image(s)" in warnings[0], proc.stderr
    assert next(l for l in proc.stdout.splitlines() if l.startswith("images ")).split() == ["images", "60"]
    assert "within budget" in proc.stdout


@pytest.mark.slow
def test_issue_int8_build_with_a_truncated_image(images: Path, tmp_path: Path) -> None:
    """The issue's command: calibration skipped the truncated JPEG, then verification aborted (exit 2)."""
    out = tmp_path / "lite0"
    proc = run_cli("build", "--phi", "0", "--variant", "lite", "--weights", "pretrained", "--precision", "int8",
                   "--profile", "cpu", "--calib-images", "16", "--no-repair", "--calib-data", str(images),
                   "--out", str(out))
    assert proc.returncode in (0, 3), proc.stderr  # verified, or missed the budget: never a bad-input abort
    assert "Traceback" not in proc.stderr and "skipped 1 unreadable" in proc.stderr
    m = read_manifest(out)
    assert m["parity"]["verify"]["comparison"]["samples"] == 44  # 61 - 16 calibration images - the truncated one
    # 11: every artifact has the same mode (calibration.json/.cache were 0600 through the atomic writer)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert {"calibration.json", "calibration.cache", "model.onnx"} <= set(modes)
    assert len(set(modes.values())) == 1, modes
    assert entries(tmp_path) == ["lite0"]


# --- 2: data is checked before the model is built -----------------------------------------------


@pytest.mark.parametrize("flag,name,needle", [
    ("--calib-data", "empty", "no images under"),
    ("--calib-data", "corrupt-only", "none of the 2 images"),
    ("--calib-data", "fake.mp4", "OpenCV cannot open video"),
    ("--calib-data", "wrong.npy", "has shape (2, 3, 32, 32)"),
    ("--calib-data", "zero.npy", "holds no images"),
    ("--verify-data", "corrupt-only", "none of the 2 images"),
    ("--verify-data", "empty", "no images under"),
])
def test_unusable_data_is_refused_before_the_model_is_built(bad: Path, tmp_path: Path, flag: str, name: str,
                                                             needle: str) -> None:
    t = time.perf_counter()
    proc = run_cli("build", *LITE, "--precision", "int8", "--calib-images", "4", flag, str(bad / name),
                   "--out", str(tmp_path / "work" / "b"))
    line = one_error_line(proc)  # no "[1/5] ..." progress: nothing was built
    assert needle in line
    assert time.perf_counter() - t < 60  # was ~15 s of export first; seconds here even on a loaded machine
    assert entries(tmp_path / "work") == []


def test_a_calibration_folder_that_leaves_nothing_to_verify(images: Path, tmp_path: Path) -> None:
    five = tmp_path / "five"
    five.mkdir()
    for k in range(5):
        (five / f"{k}.jpg").write_bytes((images / f"img_{k:03d}.jpg").read_bytes())
    base = ("build", *LITE, "--precision", "int8", "--calib-data", str(five), "--out", str(tmp_path / "b"))
    line = one_error_line(run_cli(*base))
    assert "holds 5 images" in line and "(the default --calib-images)" in line and "--verify-data" in line
    line = one_error_line(run_cli(*base, "--calib-images", "8"))
    assert "up to 8 (--calib-images)" in line
    assert entries(tmp_path) == ["five"]


# --- 3: a directory where a file is expected ----------------------------------------------------


def test_directory_given_for_a_file(bad: Path, tmp_path: Path, tiny_bundle: Path) -> None:
    out = str(tmp_path / "work" / "b")
    line = one_error_line(run_cli("build", *LITE, "--weights", str(bad / "empty"), "--out", out))
    assert "--weights" in line and "is a directory" in line and "checkpoint file" in line
    line = one_error_line(run_cli("build", *LITE, "--profile", str(bad / "dir.toml"), "--out", out))
    assert "is a directory" in line and ".toml file" in line
    line = one_error_line(run_cli("classify", str(tiny_bundle), str(bad / "empty")))
    assert "is a directory" in line and "image files" in line
    assert entries(tmp_path / "work") == []


# --- 4: sizes no machine has --------------------------------------------------------------------


@pytest.mark.parametrize("args,needle", [
    (("--phi", "0", "--resolution", "100000"), "would need about"),
    (("--phi", "100"), "would need about"),
    (("--phi", "1e6"), "overflows"),
    ((*LITE, "--num-classes", "1000000000"), "would need about"),
])
def test_models_that_cannot_fit_are_refused_with_their_size(tmp_path: Path, args: tuple[str, ...], needle: str) -> None:
    line = one_error_line(run_cli("build", *args, "--out", str(tmp_path / "b")))
    assert needle in line and "internal error" not in line
    if "would need" in line:
        assert "this machine has" in line and "--resolution" in line
    assert entries(tmp_path) == []


def test_size_estimate_is_exact_and_the_bound_is_the_machine(tmp_path: Path) -> None:
    from effdeploy.errors import EffdeployError
    from effdeploy.model.network import EfficientNet
    from effdeploy.model.spec import build_memory_bytes, check_fits_memory, estimate_size, model_spec

    for phi, variant, res, classes in ((0, "b", None, 1000), (2, "b", 64, 10), (1.5, "b", 64, 1000),
                                       (0, "lite", None, 1000), (4, "lite", 64, 5)):
        spec = model_spec(phi, variant, resolution=res, num_classes=classes)
        assert estimate_size(spec).parameters == EfficientNet(spec).spec.parameters, (phi, variant)
    b0 = model_spec(0)
    size = estimate_size(b0)
    assert size.largest_activation == 96 * 114 * 114  # blocks.1.0's padded depthwise input at 112 px
    need = build_memory_bytes(size)
    # B0's 5,288,548 parameters in 4 copies and 3 live copies of that activation for 32 images, 4 bytes
    # each: 563,701,312 bytes, the 0.56 GB the README's Limits section states for 224 px
    assert size.parameters == 5_288_548 and need == 4 * (4 * 5_288_548 + 3 * 32 * 96 * 114 * 114) == 563_701_312
    assert check_fits_memory(b0, ram_bytes=need) == size
    with pytest.raises(EffdeployError, match="would need about"):
        check_fits_memory(b0, ram_bytes=need - 1)
    huge = estimate_size(model_spec(1000))  # O(stages): priced without enumerating 10^79 blocks
    assert huge.blocks > 10**70


def test_lite_phi_beyond_the_table_shows_progress_then_warns(tmp_path: Path) -> None:
    """Before: nothing on stderr for minutes (the random-init pass of an 81M-parameter model)."""
    proc = subprocess.Popen([sys.executable, "-m", "effdeploy", "build", "--phi", "9", "--variant", "lite",
                             "--resolution", "64", "--out", str(tmp_path / "b")], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL,
                            text=True, env=os.environ.copy())
    assert proc.stderr is not None
    first = proc.stderr.readline()
    second = proc.stderr.readline()
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 130
    assert first.startswith("[1/4] efficientnet-lite9: 80,912,456 parameters, 64 px"), first
    assert second.startswith("warning: efficientnet-lite9 is beyond the released EfficientNet-Lite models (phi 0..4)")
    assert "extrapolated" in second and "Traceback" not in rest
    assert entries(tmp_path) == []


# --- 5: click's usage errors in the house format ------------------------------------------------


@pytest.mark.parametrize("flag,value,choices", [
    ("--variant", "c", "'b', 'lite'"),
    ("--precision", "int4", "'fp32', 'fp16', 'int8'"),
    ("--calib-method", "kl", "'auto', 'max', 'percentile', 'entropy', 'mse'"),
])
def test_usage_errors_are_one_line_listing_the_choices(tmp_path: Path, flag: str, value: str, choices: str) -> None:
    line = one_error_line(run_cli("build", *LITE, flag, value, "--out", str(tmp_path / "b")))
    assert f"'{value}' is not one of {choices}" in line and "effdeploy build --help" in line
    assert entries(tmp_path) == []


def test_other_usage_errors_are_one_line() -> None:
    assert "Missing option '--phi'" in one_error_line(run_cli("build"))
    assert "Did you mean '--variant'?" in one_error_line(run_cli("build", "--phi", "0", "--varient", "b"))
    assert "No such command 'bogus'" in one_error_line(run_cli("bogus"))


# --- 6, 7: classify and the camera example ------------------------------------------------------


def test_classify_top_k_above_the_class_count(tiny_bundle: Path, images: Path) -> None:
    line = one_error_line(run_cli("classify", str(tiny_bundle), str(images / "img_000.jpg"), "--top-k", "5000"))
    assert "--top-k 5000 is more than the 1000 classes" in line
    ok = run_cli("classify", str(tiny_bundle), str(images / "img_000.jpg"), "--top-k", "1000", "--json")
    assert ok.returncode == 0 and len(json.loads(ok.stdout)["results"][0]["top_k"]) == 1000
    assert "--threads must be at least 1" in one_error_line(
        run_cli("classify", str(tiny_bundle), str(images / "img_000.jpg"), "--threads", "-1"))


@pytest.mark.parametrize("args,needle", [
    (("--max-frames", "0"), "--max-frames must be at least 1"),
    (("--threads", "-1"), "--threads must be at least 1"),
    (("--top-k", "5000"), "--top-k 5000 is more than the model's 1000 classes"),
])
def test_camera_example_validates_its_numbers(tiny_bundle: Path, tmp_path: Path, args: tuple[str, ...],
                                              needle: str) -> None:
    proc = subprocess.run([sys.executable, str(CAMERA), str(tiny_bundle), "--headless", "--source",
                           str(tmp_path / "clip.avi"), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = lines_of(proc)
    assert len(lines) == 1 and lines[0].startswith("camera_classify: error: ") and needle in lines[0], proc.stderr


def test_runner_refuses_threads_below_one(tiny_bundle: Path) -> None:
    from effdeploy.errors import EffdeployError
    from effdeploy.runtime.runner import Runner

    with pytest.raises(EffdeployError, match="threads must be an integer >= 1"):
        Runner.open(tiny_bundle, threads=-1)


# --- 8: an unusable cache folder is said, once ----------------------------------------------------


def test_unusable_cache_folder_is_one_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from effdeploy import cache
    from effdeploy.calibration import cache_problem
    from effdeploy.cache import warn_unusable as warn_cache_unusable

    in_the_way = tmp_path / "afile"
    in_the_way.write_text("x")
    assert cache_problem(in_the_way / "calibration") is not None
    assert cache_problem(tmp_path / "fine" / "calibration") is None
    from effdeploy.report import attach_cli_output

    attach_cli_output()  # what the command line shows (a library user gets the line as a logging warning)
    cache._WARNED.discard(str(in_the_way))
    warn_cache_unusable(in_the_way, "Not a directory")
    warn_cache_unusable(in_the_way, "not writable")  # the calibration stage finding the same folder
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"warning: cache folder {in_the_way} cannot be used")


def test_build_with_an_unusable_cache_warns_up_front(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    env = {**os.environ, "EFFDEPLOY_CACHE_DIR": str(tmp_path / "afile")}
    proc = subprocess.Popen([sys.executable, "-m", "effdeploy", "build", *LITE, "--out", str(tmp_path / "b")],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    assert proc.stderr is not None
    first = proc.stderr.readline()
    second = proc.stderr.readline()
    proc.send_signal(signal.SIGINT)
    proc.stderr.read()
    assert proc.wait(timeout=120) == 130
    assert first.startswith(f"warning: cache folder {tmp_path / 'afile' / 'calibration'} cannot be used"), first
    assert "EFFDEPLOY_CACHE_DIR" in first and second.startswith("[1/4]")
    assert entries(tmp_path) == ["afile"]


# --- 9: what a SIGKILL leaves is recognised and removed -------------------------------------------

_STAGE_AND_STALL = """
import sys, time
from pathlib import Path
from effdeploy.bundle import staging_dir
with staging_dir(Path(sys.argv[1])) as tmp:
    (tmp / "model.onnx").write_bytes(b"x" * 1000)
    print(tmp, flush=True)
    time.sleep(120)
"""


def _killed_in_staging(out: Path) -> Path:
    child = subprocess.Popen([sys.executable, "-c", _STAGE_AND_STALL, str(out)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    partial = Path(child.stdout.readline().strip())
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    return partial


def test_stale_partial_of_a_killed_build_is_removed_and_said(tmp_path: Path) -> None:
    from effdeploy.bundle import OWNER, remove_stale_partials, stale_partials, staging_dir

    out = tmp_path / "bundle"
    partial = _killed_in_staging(out)
    assert partial.is_dir() and partial.name.startswith(".bundle.partial-") and (partial / OWNER).is_file()
    other = _killed_in_staging(tmp_path / "other")  # another --out's partial is not this build's business
    legacy = tmp_path / ".bundle.partial-abc123"  # written before owners were recorded: whose is unknown
    legacy.mkdir()
    assert stale_partials(out) == [partial]
    done = remove_stale_partials(out)
    assert len(done) == 1 and done[0].startswith(f"removed {partial.name} (1.0") and f"KB) beside {out}" in done[0]
    assert "process is gone" in done[0]
    assert entries(tmp_path) == sorted([legacy.name, other.name])
    with staging_dir(out) as tmp:  # a live build's own folder is never stale
        assert (tmp / OWNER).is_file() and stale_partials(out) == []
    assert out.is_dir() and not (out / OWNER).exists()  # the owner record does not travel with the bundle


def test_a_reused_pid_does_not_keep_a_partial_alive(tmp_path: Path) -> None:
    from effdeploy.bundle import OWNER, stale_partials

    out = tmp_path / "bundle"
    partial = tmp_path / f".bundle.partial-{os.getpid()}-zzz"  # our pid, but another start time
    partial.mkdir()
    (partial / OWNER).write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename, "started": "1"}))
    assert stale_partials(out) == [partial]
    (partial / OWNER).write_text(json.dumps({"pid": os.getpid(), "host": "another-machine", "started": "1"}))
    assert stale_partials(out) == []  # a build on another machine sharing the folder: left alone


def test_a_bundle_caught_mid_swap_is_put_back(tmp_path: Path) -> None:
    from effdeploy.bundle import remove_stale_partials

    out = tmp_path / "bundle"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    old = tmp_path / f".bundle.old-{int(dead.stdout)}"
    old.mkdir()
    (old / "manifest.json").write_text("{}")
    done = remove_stale_partials(out)
    assert done and done[0].startswith(f"restored the previous bundle {out}")
    assert entries(tmp_path) == ["bundle"] and (out / "manifest.json").is_file()


_WRITE_AND_STALL = """
import sys, time
import effdeploy.files as b
def stall(*a):
    print("written", flush=True)
    time.sleep(120)
b.os.replace = stall  # the data is on disk, the rename has not happened: the worst moment to die
b.atomic_write(sys.argv[1], "new" * 100000)
"""


def test_cache_entry_survives_a_writer_killed_mid_write(tmp_path: Path) -> None:
    from effdeploy.files import atomic_write

    entry = tmp_path / "cache" / "entry.json"
    atomic_write(entry, "old")
    child = subprocess.Popen([sys.executable, "-c", _WRITE_AND_STALL, str(entry)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "written"
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    left = [p for p in entry.parent.iterdir() if p != entry]
    assert entry.read_text() == "old" and len(left) == 1 and f".tmp-{child.pid}-" in left[0].name
    atomic_write(entry, "newer")  # the next write of the same entry removes what the dead writer left
    assert entries(entry.parent) == ["entry.json"] and entry.read_text() == "newer"


@pytest.mark.slow
def test_killed_build_then_rebuild_of_the_same_out(tmp_path: Path, images: Path) -> None:
    out = tmp_path / "bundle"
    proc = subprocess.Popen([sys.executable, "-m", "effdeploy", "build", *LITE, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    deadline = time.time() + 300
    while not list(tmp_path.glob(".bundle.partial-*")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    partials = list(tmp_path.glob(".bundle.partial-*"))
    assert len(partials) == 1 and not out.exists()
    again = run_cli("build", *LITE, "--out", str(out), "--verify-data", str(images))
    assert again.returncode == 0, again.stderr
    assert f"note: removed {partials[0].name}" in again.stderr and "skipped 1 unreadable" in again.stderr
    assert entries(tmp_path) == ["bundle"]
    # 10: building over it says so on stderr and in the summary, and keeps the atomic swap
    third = run_cli("build", *LITE, "--out", str(out), "--json")  # --json: stderr stays quiet, the summary says it
    assert third.returncode == 0, third.stderr
    summary = json.loads(third.stdout)
    assert summary["replaced"].startswith("efficientnet-lite0 fp32, status benchmark-only") and summary["cleaned_up"] == []
    assert entries(tmp_path) == ["bundle"]


# --- 10: replacing an existing bundle is said -------------------------------------------------------


def test_replacing_an_existing_bundle_is_said_and_an_interruption_keeps_it(tiny_bundle: Path, tmp_path: Path) -> None:
    import shutil

    from effdeploy.commands.build import summary_rows

    out = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, out)
    before = (out / "manifest.json").read_bytes()
    proc = subprocess.Popen([sys.executable, "-m", "effdeploy", "build", *LITE, "--out", str(out)],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=os.environ.copy())
    assert proc.stderr is not None
    first = proc.stderr.readline()
    proc.send_signal(signal.SIGINT)
    proc.stderr.read()
    assert proc.wait(timeout=120) == 130
    status = json.loads(before)["status"]  # random weights: benchmark-only
    assert first.startswith(f"note: replacing the bundle at {out} (efficientnet-b0 fp32, status {status}, built ")
    assert (out / "manifest.json").read_bytes() == before and entries(tmp_path) == ["bundle"]
    summary = {"bundle": "b", "replaced": "efficientnet-b0 fp32, status verified", "status": "verified", "model": "m",
               "weights": "random", "parameters": 1, "gflops": 0.1, "resolution": 64, "precision": "fp32",
               "profile": "cpu", "onnx_nodes": 1, "export_max_abs": 0.0}
    assert ("replaced", "the bundle that was there (efficientnet-b0 fp32, status verified)") in summary_rows(summary)


# --- 11: artifacts written by the atomic writer get the usual mode ------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_write_respects_the_umask(tmp_path: Path, umask: int) -> None:
    from effdeploy.files import atomic_write

    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "a.json", "{}")
        (tmp_path / "b.json").write_text("{}")  # what any other writer gets
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "a.json").stat().st_mode)
    assert mode == 0o666 & ~umask == stat.S_IMODE((tmp_path / "b.json").stat().st_mode)


# --- output people read ------------------------------------------------------------------------------


def test_build_help_has_no_doubled_percent() -> None:
    proc = run_cli("build", "--help")
    assert proc.returncode == 0 and "%%" not in proc.stdout and "99 % agreement" in " ".join(proc.stdout.split())


def test_profiles_table_shows_workspace_batches_and_sources() -> None:
    out = run_cli("profiles").stdout
    assert "workspace MiB" in out and "batch min/opt/max" in out and "sources:" in out
    orin = next(l for l in out.splitlines() if l.startswith("jetson-orin "))
    assert "4096" in orin and "1/1/8" in orin
    assert any(l.strip().startswith("jetson-orin ") and "data sheet" in l for l in out.splitlines())


def test_inspect_io_table_has_headers(tiny_bundle: Path) -> None:
    out = run_cli("inspect", str(tiny_bundle)).stdout
    header = next(l for l in out.splitlines() if "dtype" in l)
    assert header.split() == ["tensor", "name", "dtype", "shape"]
    assert "batch x 3 x 64 x 64" in out


def test_bench_table_has_one_format_per_column(tiny_bundle: Path) -> None:
    import re

    from effdeploy.commands.bench import table_cells

    row = {"batch": 8, "measure": "compute", "mean_ms": 49.9, "p50_ms": 56.18, "p90_ms": 1463.0, "p99_ms": 0.123,
           "throughput_ips": 160.3219}
    assert table_cells(row) == (8, "compute", "49.90", "56.18", "1463.00", "0.12", "160.3")  # was 49.9, 56.18, 1463

    out = run_cli("bench", str(tiny_bundle), "--batch", "1,2", "--iterations", "3", "--warmup", "1").stdout
    rows = [l.split() for l in out.splitlines() if re.match(r"^\d+\s+compute", l)]
    assert len(rows) == 2
    for r in rows:
        assert all(re.fullmatch(r"\d+\.\d\d", c) for c in r[2:6]) and re.fullmatch(r"\d+\.\d", r[6]), r


def test_default_calibration_count_is_called_the_default() -> None:
    from effdeploy.calibration import plan_calibration

    asked = plan_calibration(None, 256).warnings[0]
    default = plan_calibration(None, 256, count_given=False).warnings[0]
    assert "(256 asked for)" in asked and "(the default 256)" in default and "asked" not in default


def test_pyproject_license_is_an_spdx_string() -> None:
    """setuptools prints a deprecation box per build step for the table form."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "Apache-2.0"
    assert any(r.startswith("setuptools>=77") for r in meta["build-system"]["requires"])
