"""Frame-in graphs (issue 15): the preprocessing as ONNX ops, checked against preprocess() on real
images, and the Runner routing frames to them (or to the CPU path)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import read_manifest, run_cli
from effdeploy.errors import EffdeployError
from effdeploy.data.frames import PIXELS_OUTPUT, FrameInput, parse_frames
from effdeploy.backends.onnxrt import FrameSession
from effdeploy.backends.tensorrt.build import frame_compile_plans
from effdeploy.export.frames import preprocessing_model
from effdeploy.verify.frames import scale_to_frame
from effdeploy.data.preprocess import load_image, preprocess, resample_plan, resize_crop
from effdeploy.data.preprocess import Preprocessing

# What TensorRT's ONNX parser takes, and all the preprocessing part may use.
TRT_OPS = {"Cast", "Slice", "Transpose", "AveragePool", "Add", "Floor", "MatMul", "Concat", "Round", "Clip",
           "Identity", "Sub", "Mul"}
FRAMES = [FrameInput(1920, 1080, "bgr"), FrameInput(1920, 1080, "rgb"), FrameInput(1280, 720, "bgr"),
          FrameInput(1280, 720, "rgb")]


def _pixels(frame: FrameInput, spec: Preprocessing, images: list[np.ndarray], cast_first: bool = False) -> tuple[float, float]:
    """(max, mean) |graph pixels - preprocess()'s pixels| in 0..255 levels over ``images`` at ``frame``."""
    session = FrameSession(preprocessing_model(frame, spec, cast_first=cast_first), threads=2)
    worst, means = 0.0, []
    for img in images:
        f = scale_to_frame(img, frame)
        want = resize_crop(f, spec).astype(np.float32)
        want = want[:, :, ::-1] if frame.channel_order == "bgr" else want  # the graph's pixels are RGB
        (got,) = session.infer(f[None], outputs=[PIXELS_OUTPUT])
        d = np.abs(got[0].transpose(1, 2, 0) - want)
        worst, means = max(worst, float(d.max())), means + [float(d.mean())]
    return worst, float(np.mean(means))


@pytest.fixture(scope="module")
def sample_images(imagenet_sample: Path) -> list[np.ndarray]:
    return [load_image(p) for p in sorted(imagenet_sample.glob("*.JPEG"))[::125]]  # 4 of the 500


@pytest.mark.parametrize("frame", FRAMES, ids=str)
@pytest.mark.parametrize("resolution", [224, 64])
def test_pixel_parity_on_real_images(frame: FrameInput, resolution: int, sample_images: list[np.ndarray]) -> None:
    """Bit for bit preprocess()'s pixels: the weights' grid makes every float32 sum exact, so ONNX
    Runtime's other summation order cannot move a pixel; 224 px covers the 2x box pre-reduction at
    1080p and none at 720p, 64 px the 4x one."""
    spec = Preprocessing.for_weights(resolution, "b", "native")
    worst, mean = _pixels(frame, spec, sample_images)
    assert worst == 0.0 and mean == 0.0, (worst, mean)


def test_pixel_parity_builtin_images_and_tensorrt_layout() -> None:
    """The same on the built-in images (always there), for the cast-first (TensorRT) layout too,
    with the Lite normalisation and a bilinear filter."""
    from effdeploy.data.datasets import builtin_image_paths

    images = [load_image(p) for p in builtin_image_paths()[:3]]
    spec = Preprocessing(resolution=96, resize=110, interpolation="bilinear", mean=(127.0,) * 3, std=(128.0,) * 3)
    for frame in (FrameInput(1920, 1080, "bgr"), FrameInput(1280, 720, "rgb")):
        for cast_first in (False, True):
            worst, _ = _pixels(frame, spec, images, cast_first)
            assert worst == 0.0
    normalised = FrameSession(preprocessing_model(FrameInput(1280, 720, "rgb"), spec)).infer(
        scale_to_frame(images[0], FrameInput(1280, 720, "rgb"))[None])
    ref = preprocess(scale_to_frame(images[0], FrameInput(1280, 720, "rgb")), spec)
    np.testing.assert_array_equal(normalised, ref)  # the same float32 normalisation too


def test_graph_uses_tensorrt_ops_and_preprocess_weights() -> None:
    spec = Preprocessing.for_weights(224, "b", "native")
    frame = FrameInput(1920, 1080, "bgr")
    model = preprocessing_model(frame, spec, block=0)
    ops = {n.op_type for n in model.graph.node}
    assert ops <= TRT_OPS and "AveragePool" in ops
    plan = resample_plan(1080, 1920, spec)
    assert plan.reduce == 2  # one 2x2 step
    assert sum(n.op_type == "AveragePool" for n in model.graph.node) == 1
    # block=0: one dense MatMul per pass holding exactly preprocess()'s banded weights
    from onnx import numpy_helper

    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    mats = [weights[i] for n in model.graph.node if n.op_type == "MatMul" for i in n.input if i in weights]
    assert len(mats) == 2
    rows = mats[0] if mats[0].shape[0] == 224 else mats[1]
    o0, o1, i0, i1, blk = plan.rows.blocks[3]
    np.testing.assert_array_equal(rows[o0:o1, i0:i1], blk)


def test_frame_checks_pad_few_photos_with_crops_and_few_frames_only_check() -> None:
    """A build with a handful of photos still checks its frame graph on 200 frames (the photos whole,
    then seeded crops of them); a pass on fewer frames than the 99.5 % budget can resolve is 'checked'."""
    from effdeploy.verify.frames import FrameVerification, frame_views

    photos = [np.full((40 + i, 60, 3), i, np.uint8) for i in range(3)]
    views = frame_views(photos)
    assert len(views) == 200 and all(v is p for v, p in zip(views, photos))
    assert all(10 <= v.shape[0] <= 42 and 30 <= v.shape[1] <= 60 for v in views[3:])
    assert [v.shape for v in frame_views(photos)] == [v.shape for v in views]  # seeded
    base = dict(source="test", pixel_max_abs=0.0, pixel_mean_abs=0.0, pixels_off=0, top1_agreement=1.0,
                logits_max_abs=0.0, seconds=0.0)
    assert FrameVerification(images=200, **base).status == "verified"
    assert FrameVerification(images=199, **base).status == "checked"
    assert FrameVerification(images=200, **{**base, "pixel_max_abs": 2.0}).status == "failed-parity"


def test_parse_frames_refuses_bad_sizes() -> None:
    assert parse_frames("1920x1080, 1280X720", "rgb") == (FrameInput(1920, 1080, "rgb"), FrameInput(1280, 720, "rgb"))
    for bad in ("1920by1080", "0x10", "1920x"):
        with pytest.raises(EffdeployError, match="--frame"):
            parse_frames(bad)
    with pytest.raises(EffdeployError, match="--frame-format"):
        parse_frames("1920x1080", "bgra")


def test_build_cli_refuses_bad_frame_in_one_line() -> None:
    out = run_cli("build", "--phi", "0", "--frame", "1920by1080")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "effdeploy: error: --frame" in out.stderr


# --- a real bundle with frame-in graphs ------------------------------------------------------------


@pytest.fixture(scope="module")
def frame_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Pretrained Lite0 at 64 px with 1080p and 720p BGR frame-in graphs (export cached by the
    session's other Lite0 64 px bundle)."""
    from effdeploy.pipeline import BuildRequest, build_bundle
    from effdeploy.profiles import load_profile

    out = tmp_path_factory.mktemp("bundles") / "lite0-64-frames"
    build_bundle(BuildRequest(phi=0, variant="lite", weights="pretrained", resolution=64, profile=load_profile("cpu"),
                              out=out, quiet=True, verify_images=6,
                              frames=(FrameInput(1920, 1080, "bgr"), FrameInput(1280, 720, "bgr"))))
    return out


@pytest.fixture(scope="module")
def frames_1080(frame_bundle: Path) -> list[np.ndarray]:
    from effdeploy.data.datasets import builtin_image_paths

    return [scale_to_frame(load_image(p), FrameInput(1920, 1080, "bgr")) for p in builtin_image_paths()[:3]]


def test_manifest_lists_hashes_and_verifies_the_frame_graphs(frame_bundle: Path) -> None:
    m = read_manifest(frame_bundle)
    assert [(f["width"], f["height"], f["channel_order"]) for f in m["frames"]] == [(1920, 1080, "bgr"), (1280, 720, "bgr")]
    for f in m["frames"]:
        assert f["file"] in m["artifacts"] and (frame_bundle / f["file"]).is_file()
        v = f["verification"]
        assert f["verified"] and v["passed"] and v["status"] == "verified"
        assert v["images"] == 200, "too few frames for a 99.5 % budget: the build's images, whole then cropped"
        assert v["pixel_max_abs"] == 0.0 and v["pixels_off"] == 0 and v["top1_agreement"] == 1.0
        assert set(f["preprocessing_ops"]) <= TRT_OPS and f["input"]["dtype"] == "uint8"
    import onnx

    g = onnx.load(str(frame_bundle / m["frames"][0]["file"]))
    plain = onnx.load(str(frame_bundle / "model.onnx"))
    assert len(g.graph.node) == len(plain.graph.node) + m["frames"][0]["preprocessing_nodes"]
    assert g.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8


def test_inspect_shows_the_frame_graphs(frame_bundle: Path) -> None:
    out = run_cli("inspect", str(frame_bundle))
    assert out.returncode == 0, out.stderr
    assert "frame-in graph 1920x1080 bgr" in out.stdout and "top-1 agreement 100.00 % of 200 frames" in out.stdout


def test_a_changed_frame_graph_is_refused(frame_bundle: Path, tmp_path: Path) -> None:
    from effdeploy.runtime.runner import Runner

    copy = tmp_path / "b"
    shutil.copytree(frame_bundle, copy)
    with open(copy / "model-frame-1280x720.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(EffdeployError, match="model-frame-1280x720.onnx does not match its sha256"):
        Runner.open(copy)


def test_runner_routes_matching_frames_to_the_frame_graph(frame_bundle: Path, frames_1080: list[np.ndarray]) -> None:
    from effdeploy.runtime.runner import Runner

    with Runner.open(frame_bundle, threads=2) as r:
        assert [str(f) for f in r.frame_sizes] == ["1920x1080 bgr", "1280x720 bgr"]
        f = frames_1080[0]
        assert r.frames.describe(f, bgr=True).startswith("frame-in: model-frame-1920x1080.onnx")
        assert r.frames.describe(f, bgr=False).startswith("cpu:")  # same size, other channel order
        graph = r.frame_logits(f, bgr=True)
        cpu = r.frame_logits(f, bgr=True, frame_graph=False)
        np.testing.assert_allclose(graph, cpu, atol=1e-3)
        assert r.classify(frames_1080, top_k=1, bgr=True) == r.classify(frames_1080, top_k=1, bgr=True, frame_graph=False)
        np.testing.assert_allclose(r.frame_logits(np.stack(frames_1080[:2]), bgr=True), r.frame_logits(frames_1080[:2], bgr=True))


def test_other_sizes_and_orders_take_the_cpu_path(frame_bundle: Path, frames_1080: list[np.ndarray]) -> None:
    from effdeploy.runtime.runner import Runner

    from effdeploy.data.datasets import builtin_image_paths

    small = scale_to_frame(load_image(builtin_image_paths()[3]), FrameInput(640, 480, "bgr"))
    with Runner.open(frame_bundle, threads=2) as r:
        assert r.frames.key(small, bgr=True) is None
        mixed = [frames_1080[0], small, frames_1080[0][:, :, ::-1].copy()]
        got = r.frame_logits(mixed, bgr=True)
        want = r.infer(preprocess(mixed, r.preprocessing, bgr=True))
        np.testing.assert_allclose(got, want, atol=1e-3)
        rgb = r.frame_logits(frames_1080[0][:, :, ::-1].copy(), bgr=False)  # 1080p RGB: no RGB graph, CPU path
        np.testing.assert_allclose(rgb, r.infer(preprocess(frames_1080[0][:, :, ::-1], r.preprocessing)), atol=1e-5)
        paths = [res.path for res in r.stream(iter([frames_1080[0], small, frames_1080[1]]), bgr=True)]
        assert paths == ["frame-in", "cpu", "frame-in"]


@pytest.mark.parametrize("bad, what", [
    (lambda f: f.astype(np.float32), "dtype float32"),
    (lambda f: f[:, :, :1], "3 channels"),
    (lambda f: np.dstack([f, f[:, :, :1]]), "3 channels"),
])
def test_bad_frames_are_refused_in_one_line(frame_bundle: Path, frames_1080: list[np.ndarray], bad, what: str) -> None:  # type: ignore[no-untyped-def]
    from effdeploy.runtime.runner import Runner

    with Runner.open(frame_bundle, threads=1) as r:
        for frames in (bad(frames_1080[0]), [frames_1080[0], bad(frames_1080[1])]):
            with pytest.raises(EffdeployError, match=what) as e:
                r.classify(frames, bgr=True)
            assert "\n" not in str(e.value)


def test_bench_end_to_end_times_both_paths(frame_bundle: Path) -> None:
    out = run_cli("bench", str(frame_bundle), "--end-to-end", "-n", "3", "--warmup", "1", "--threads", "2", "--json")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    measures = {row["measure"] for row in r["results"]}
    assert {"compute", "end-to-end 1920x1080", "end-to-end 1920x1080 frame-in"} <= measures
    assert r["frame_in"] == "1920x1080 bgr" and r["frame_in_over_compute_p50"]["1"] > 0


def test_compile_plans_one_engine_per_frame_graph(frame_bundle: Path) -> None:
    """No TensorRT needed to plan: the frame engines' inputs are the frames, NHWC uint8, on the GPU."""
    from effdeploy.bundle import load_bundle
    from effdeploy.backends.tensorrt.plan import make_plan
    from effdeploy.profiles import load_profile

    bundle = load_bundle(frame_bundle)
    plan = make_plan(bundle, load_profile("jetson-orin"))
    plans = frame_compile_plans(bundle, plan)
    assert [str(f) for f, _ in plans] == ["1920x1080 bgr", "1280x720 bgr"]
    f, p = plans[0]
    assert p.input_name == "frame" and p.shapes[0] == (plan.batch_min, 1080, 1920, 3)
    assert Path(p.plan_path).name == "engine-frame-1920x1080.plan" and p.dla_core is None
    assert plan.tf32 and not p.tf32 and p.compile_settings()["tf32"] is False  # exact resampling MatMuls
    assert p.onnx_sha256 == bundle.manifest.artifacts["model-frame-1920x1080.onnx"]["sha256"]


def test_compile_writes_frame_engines_with_tensorrt(frame_bundle: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorrt", reason="TensorRT is not installed here (frame engines are built on the target)")
    from effdeploy.backends.tensorrt.plan import CompileOptions
    from effdeploy.backends.tensorrt.manifest import detect_gpu, load_engine_manifest
    from effdeploy.runtime.runner import Runner
    from effdeploy.backends.tensorrt.build import compile_bundle

    if detect_gpu() is None:
        pytest.skip("no CUDA GPU visible")
    copy = tmp_path / "b"
    shutil.copytree(frame_bundle, copy)
    result = compile_bundle(copy, "jetson-orin", CompileOptions(force=True), quiet=True)
    assert [dict(e.engine.frame)["width"] for e in result.frame_engines] == [1920, 1280]
    m = load_engine_manifest(copy / "engine-frame-1920x1080.plan")
    assert dict(m.frame) == {"width": 1920, "height": 1080, "channel_order": "bgr"}
    with Runner.open(copy / "engine.plan") as r:
        assert [str(f) for f in r.frame_sizes] == ["1920x1080 bgr", "1280x720 bgr"]


def test_on_openvino_frames_take_the_cpu_path_into_openvino(frame_bundle: Path, frames_1080: list[np.ndarray]) -> None:
    """A Runner on OpenVINO opens no frame-in graph (OpenVINO runs their preprocessing slowly, and
    ONNX Runtime would take the model off OpenVINO): frames are preprocessed on the CPU and the model
    runs on OpenVINO, with ONNX Runtime's top-1 and logits."""
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'effdeploy[openvino]')")
    from effdeploy.runtime.runner import Runner

    with Runner.open(frame_bundle, threads=2) as ort, Runner.open(frame_bundle, threads=2, backend="openvino") as ov:
        assert ov.backend_name == "openvino" and ov.frame_sizes == () and len(ort.frame_sizes) == 2
        assert ov.frames.describe(frames_1080[0], bgr=True).startswith("cpu:")
        np.testing.assert_allclose(ov.frame_logits(frames_1080, bgr=True), ort.frame_logits(frames_1080, bgr=True),
                                   atol=1e-3)
        top1 = [[p.class_id for p in preds] for preds in ov.classify(frames_1080, top_k=1, bgr=True)]
        assert top1 == [[p.class_id for p in preds] for preds in ort.classify(frames_1080, top_k=1, bgr=True)]
