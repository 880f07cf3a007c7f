"""examples/camera_classify.py runs headless on a short video this test writes (what CI runs)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from effdeploy.runtime.benchmark import synthetic_frame

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "camera_classify.py"


def run_example(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EXAMPLE), *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import cv2

    path = tmp_path_factory.mktemp("video") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15, (320, 240))
    assert writer.isOpened()
    for i in range(9):
        frame = synthetic_frame(320, 240, seed=i)[:, :, ::-1].copy()
        cv2.circle(frame, (40 + 25 * i, 120), 30, (0, 0, 255), -1)  # something that moves
        writer.write(frame)
    writer.release()
    return path


def test_headless_prints_every_frame(tiny_bundle: Path, video: Path) -> None:
    out = run_example(str(tiny_bundle), "--source", str(video), "--headless", "--top-k", "2")
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("frame")]
    assert [int(ln.split()[1]) for ln in lines] == list(range(9))  # a file: every frame, in order
    from effdeploy.data.labels import imagenet_labels

    names = set(imagenet_labels())
    for ln in lines:
        assert "fps" in ln and " ms " in ln
        top1 = ln.split(" ms ", 1)[1].split("|")[0].strip().rsplit(" ", 1)[0]
        assert top1 in names
    assert "9 frames" in out.stderr and "onnxruntime" in out.stderr


def test_headless_labels_match_the_runner(tiny_bundle: Path, video: Path) -> None:
    """What the example prints is the Runner's answer for the decoded BGR frames."""
    from effdeploy.runtime.runner import Runner, video_frames

    with Runner.open(tiny_bundle) as r:
        expected = [r.classify(f, top_k=1, bgr=True)[0] for f in video_frames(str(video))]
    out = run_example(str(tiny_bundle), "--source", str(video), "--headless", "--max-frames", "4")
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("frame")]
    assert len(lines) == 4
    for ln, p in zip(lines, expected):
        assert ln.endswith(f"{p.label} {p.score:.2f}")


@pytest.mark.parametrize("source", ["missing.mp4", "junk.mp4", "99", "rtsp://127.0.0.1:9/none"])
def test_unopenable_sources_are_one_line(tiny_trained_bundle: Path, tmp_path: Path, source: str) -> None:
    if source == "junk.mp4":
        (tmp_path / source).write_bytes(np.zeros(64, np.uint8).tobytes())
    src = str(tmp_path / source) if source.endswith(".mp4") else source
    # a verified bundle: a benchmark-only one would add its status warning before the error line
    out = run_example(str(tiny_trained_bundle), "--source", src, "--headless")
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("camera_classify: error:"), out.stderr
    assert "video source" in lines[0]


def test_bad_artifacts_are_one_line(tiny_bundle: Path, tmp_path: Path, video: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(tiny_bundle, bad)
    m = json.loads((bad / "manifest.json").read_text())
    (bad / "manifest.json").write_text(json.dumps({**m, "status": "failed-parity"}))
    out = run_example(str(bad), "--source", str(video), "--headless")
    assert out.returncode == 2 and "failed-parity" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert run_example(str(bad), "--source", str(video), "--headless", "--force", "--max-frames", "1").returncode == 0


def test_window_mode_without_gui_says_so(tiny_bundle: Path, video: Path) -> None:
    import cv2

    try:
        cv2.namedWindow("probe")
        cv2.destroyAllWindows()
        pytest.skip("this OpenCV has a GUI")
    except cv2.error:
        pass
    out = run_example(str(tiny_bundle), "--source", str(video))
    assert out.returncode == 2 and "--headless" in out.stderr
