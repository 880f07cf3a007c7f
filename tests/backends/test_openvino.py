"""OpenVINO as a CPU backend: the same logits as ONNX Runtime in f32, the precision explicit and
read back, ``auto`` timed once and cached, and without OpenVINO one line saying how to install it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import run_cli
from effdeploy.errors import EffdeployError

ov = pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'effdeploy[openvino]')")


def test_same_logits_as_onnxruntime_in_f32(tiny_bundle):
    from effdeploy.backends.onnxrt import OnnxRuntimeRunner
    from effdeploy.backends.openvino import OpenVinoRunner

    x = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    ref = OnnxRuntimeRunner(tiny_bundle / "model.onnx").infer(x)
    with OpenVinoRunner(tiny_bundle / "model.onnx", threads=1) as r:
        assert r.precision == "f32" and r.input_shape == (-1, 3, 64, 64) and r.output_names == ["logits"]
        assert float(np.abs(r.infer(x) - ref).max() / np.abs(ref).max()) <= 1e-4
    if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        with OpenVinoRunner(tiny_bundle / "model.onnx", precision="bf16") as r:
            assert r.precision == "bf16"  # what the plugin was told, read back from the compiled model
    else:  # an AVX2-only CPU: the plugin runs f32 whatever it is told, and the runner says so
        with pytest.warns(UserWarning, match="no bf16 support"), \
                OpenVinoRunner(tiny_bundle / "model.onnx", precision="bf16") as r:
            assert r.precision == "f32"
    with pytest.raises(EffdeployError, match="precision must be one of f32, bf16"):
        OpenVinoRunner(tiny_bundle / "model.onnx", precision="fp8")


def test_auto_is_timed_once_per_graph_and_threads(tiny_bundle, tmp_path, monkeypatch):
    import effdeploy.runtime.backend_choice as choice
    from effdeploy.runtime import Runner

    monkeypatch.setenv("EFFDEPLOY_CACHE_DIR", str(tmp_path))
    timed: list[int] = []
    real = choice.time_backends

    def counting(open_runner, rounds=2):
        timed.append(1)
        return real(open_runner, rounds=1)

    monkeypatch.setattr(choice, "time_backends", counting)
    with pytest.warns(UserWarning), Runner.open(tiny_bundle, backend="auto", threads=1) as r:
        first = r.backend.choice
        assert r.backend_name == first["choice"] and set(first["p50_ms"]) == {"onnxruntime", "openvino"}
        assert first["choice"] == min(first["p50_ms"], key=first["p50_ms"].get) and first["cached"] is False
    with pytest.warns(UserWarning), Runner.open(tiny_bundle, backend="auto", threads=1) as r:
        assert r.backend.choice["cached"] is True and r.backend_name == first["choice"]
    assert timed == [1]
    with pytest.warns(UserWarning), Runner.open(tiny_bundle, backend="auto", threads=2):
        pass
    assert timed == [1, 1]  # another thread count is another choice
    from effdeploy.cache import load

    (entry,) = [p for p in (tmp_path / "backend").glob("*.json") if json.loads(load(p))["threads"] == 1]
    entry.write_text("{broken")
    with pytest.warns(UserWarning), Runner.open(tiny_bundle, backend="auto", threads=1):
        pass
    assert timed == [1, 1, 1]  # a corrupt record is timed again, never a crash


def test_bench_and_verify_on_openvino(tiny_bundle, tiny_trained_bundle):
    proc = run_cli("bench", str(tiny_bundle), "--backend", "openvino", "--iterations", "5", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["backend"] == "openvino" and out["openvino_precision"] == "f32"
    proc = run_cli("verify", str(tiny_trained_bundle), "--backend", "openvino", "--images", "6", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["backend"] == "openvino" and report["passed"] is True


def test_without_openvino_one_line_and_auto_falls_back(tiny_bundle):
    code = ("import sys; sys.modules['openvino'] = None\n"  # as if not installed
            "from effdeploy.commands import main; main()")
    r = subprocess.run([sys.executable, "-c", code, "bench", str(tiny_bundle), "--backend", "openvino"],
                       capture_output=True, text=True, timeout=120)
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("effdeploy: error:")]
    assert r.returncode == 2 and lines == ["effdeploy: error: OpenVINO is not installed: pip install 'effdeploy[openvino]'"]
    code = ("import sys, warnings; sys.modules['openvino'] = None; warnings.simplefilter('ignore')\n"
            "from effdeploy.runtime import Runner\n"
            f"r = Runner.open({str(tiny_bundle)!r}, backend='auto'); print(r.backend_name, r.backend.choice['reason'])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "onnxruntime the only CPU runtime installed", r.stderr


def test_an_engine_is_not_run_on_a_cpu_runtime(tmp_path):
    from effdeploy.runtime.runner import open_backend, resolve_artifact
    from tiny_bundle import engine_manifest

    plan, _ = engine_manifest(tmp_path)
    with pytest.raises(EffdeployError, match="is a TensorRT engine; --backend openvino runs the bundle it came from"):
        open_backend(resolve_artifact(plan), backend="openvino")


def test_a_frame_in_graph_runs_on_openvino_as_on_onnxruntime(tmp_path):
    """A frame-in graph takes uint8 frames as they are (no float cast) and OpenVINO's resize and
    MatMul kernels give ONNX Runtime's pixels: what bench/runtime_perf.py times frame-in with."""
    import onnx

    from effdeploy.backends.onnxrt import FrameSession
    from effdeploy.backends.openvino import OpenVinoFrameRunner
    from effdeploy.data.frames import FrameInput
    from effdeploy.data.preprocess import Preprocessing
    from effdeploy.export.frames import preprocessing_model
    from effdeploy.runtime.benchmark import synthetic_frame

    spec = Preprocessing(resolution=224, resize=256)
    for frame in (FrameInput(640, 480, "bgr"), FrameInput(320, 200, "rgb")):
        path = tmp_path / f"{frame}.onnx"
        onnx.save(preprocessing_model(frame, spec), str(path))
        f = synthetic_frame(frame.width, frame.height, seed=3)[None]
        want = FrameSession(path).infer(f)
        with OpenVinoFrameRunner(path, threads=1) as r:
            got = r.infer(f)
        assert got.shape == want.shape == (1, 3, 224, 224)
        assert float(np.abs(got - want).max()) <= 1e-5, frame
