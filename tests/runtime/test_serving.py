"""effdeploy export --triton: a model repository entry Triton's model loader accepts (the config
parsed against Triton's ModelConfig schema), with the bundle's shapes, class names and ONNX Runtime
optimisation level, the model file byte for byte, and a client that prepares the verified tensors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from google.protobuf import text_format

from conftest import run_cli
from tiny_bundle import make_bundle
from triton_schema import model_config_class


def _config(folder: Path):
    return text_format.Parse((folder / "config.pbtxt").read_text(), model_config_class()())


def test_triton_repository_for_a_bundle(tiny_bundle, tmp_path):
    proc = run_cli("export", str(tiny_bundle), "--triton", str(tmp_path / "repo"), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    folder = tmp_path / "repo" / "efficientnet-b0-fp32"
    assert out["directory"] == str(folder) and out["platform"] == "onnxruntime_onnx"
    cfg = _config(folder)
    assert (cfg.name, cfg.platform, cfg.max_batch_size) == ("efficientnet-b0-fp32", "onnxruntime_onnx", 8)
    assert [(i.name, list(i.dims)) for i in cfg.input] == [("input", [3, 64, 64])]
    assert [(o.name, list(o.dims), o.label_filename) for o in cfg.output] == [("logits", [1000], "labels.txt")]
    assert cfg.input[0].data_type == 11 and cfg.input[0].format == 2  # TYPE_FP32, FORMAT_NCHW
    assert cfg.HasField("dynamic_batching") and not cfg.HasField("optimization")  # ORT's defaults are fine
    assert (folder / "1" / "model.onnx").read_bytes() == (tiny_bundle / "model.onnx").read_bytes()
    labels = (folder / "labels.txt").read_text().splitlines()
    assert len(labels) == 1000 and labels[:2] == ["tench", "goldfish"]
    again = run_cli("export", str(tiny_bundle), "--triton", str(tmp_path / "repo"))
    assert again.returncode == 2 and "is not empty" in again.stderr  # never overwrites a model


def test_the_client_prepares_the_verified_tensors(tiny_bundle, tmp_path):
    """preprocess.py's tensors() equal the Runner's preprocessing of the same file."""
    from PIL import Image

    from effdeploy.runtime import Runner

    assert run_cli("export", str(tiny_bundle), "--triton", str(tmp_path / "repo")).returncode == 0
    frame = np.random.default_rng(1).integers(0, 255, (120, 90, 3), dtype=np.uint8)
    Image.fromarray(frame).save(tmp_path / "f.png")
    client = tmp_path / "repo" / "efficientnet-b0-fp32" / "preprocess.py"
    code = (f"import sys, numpy as np; sys.path.insert(0, {str(client.parent)!r}); import preprocess; "
            f"np.save({str(tmp_path / 'x.npy')!r}, preprocess.tensors([{str(tmp_path / 'f.png')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    with Runner.open(tiny_bundle, force=True) as runner:
        ours = runner.preprocess(np.asarray(Image.open(tmp_path / "f.png").convert("RGB")))
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), ours)


def test_graphs_verified_unoptimised_are_served_unoptimised(tmp_path):
    """An INT8/FP16 bundle verified with ONNX Runtime's graph optimisation off gets level 2, which
    Triton's ONNX Runtime backend maps to ORT_DISABLE_ALL; its own class names go to labels.txt."""
    b = make_bundle(tmp_path / "b", precision="int8", profile="cpu", batch="N")
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["quantization"] = {"ort_graph_optimization": "disabled"}
    (b / "labels.txt").write_text("".join(f"part {i}\n" for i in range(10)))
    manifest["labels"] = "labels.txt"
    from effdeploy.bundle import Manifest, write_manifest

    write_manifest(b, Manifest.from_dict(manifest))  # hashes labels.txt in
    proc = run_cli("export", str(b), "--triton", str(tmp_path / "repo"), "--name", "parts", "--max-batch", "4")
    assert proc.returncode == 0, proc.stderr
    cfg = _config(tmp_path / "repo" / "parts")
    assert cfg.optimization.graph.level == 2 and cfg.max_batch_size == 4
    assert (tmp_path / "repo" / "parts" / "labels.txt").read_text().splitlines()[3] == "part 3"


def test_refusals(tiny_bundle, tmp_path):
    from cli_errors import assert_one_line_error, run_cli as run_quiet

    assert_one_line_error(run_quiet("export", str(tiny_bundle)), "--triton DIR")
    assert_one_line_error(run_quiet("export", str(tiny_bundle), "--triton", str(tmp_path), "--name", "../up"),
                          "not a usable Triton model name")
    fixed = make_bundle(tmp_path / "fixed", batch=1)
    assert run_cli("export", str(fixed), "--triton", str(tmp_path / "r")).returncode == 0
    assert _config(tmp_path / "r" / "efficientnet-b0-fp32").max_batch_size == 0  # a fixed batch: no batching


# --- DeepStream ---------------------------------------------------------------------------------

def _nvinfer_input(frame_hwc: np.ndarray, cfg: dict) -> np.ndarray:
    """What Gst-nvinfer feeds the network from an RGB frame already at the network size:
    net-scale-factor * (pixel - offset[c]), planar (its documented formula, written out here)."""
    scale = float(cfg["net-scale-factor"])
    offsets = np.array([float(o) for o in cfg["offsets"].split(";")], np.float32)
    return (scale * (frame_hwc.astype(np.float32) - offsets)).transpose(2, 0, 1)[None].astype(np.float32)


def _read_config(path: Path) -> dict:
    import configparser

    parser = configparser.ConfigParser()
    parser.read(path)
    return dict(parser["property"])


def _check_deepstream(bundle: Path, folder: Path, inside: bool) -> dict:
    import onnxruntime as ort

    from effdeploy.data.preprocess import normalize
    from effdeploy.runtime.serving import NVINFER_KEYS

    proc = run_cli("export", str(bundle), "--deepstream", str(folder), "--name", "m", "--images", "6", "--json",
                   "--force")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    cfg = _read_config(folder / "config_infer_primary_m.txt")
    assert set(cfg) <= NVINFER_KEYS and "onnx-file" not in cfg  # a missing engine fails loudly, never rebuilt
    assert (cfg["network-type"], cfg["model-engine-file"], cfg["output-blob-names"]) == ("1", "m.engine", "probabilities")
    assert (cfg["maintain-aspect-ratio"], cfg["scaling-filter"], cfg["scaling-compute-hw"]) == ("0", "1", "1")
    m = json.loads((bundle / "manifest.json").read_text())
    res = m["model"]["preprocessing"]["resolution"]
    assert cfg["infer-dims"] == f"3;{res};{res}"
    labels = (folder / "labels_m.txt").read_text().strip().split(";")
    assert len(labels) == m["model"]["num_classes"]
    # the graph nvinfer runs, fed as nvinfer feeds it, gives the bundle's own probabilities
    frame = np.random.default_rng(3).integers(0, 256, (res, res, 3), dtype=np.uint8)
    ds = ort.InferenceSession(str(folder / "m.onnx"), providers=["CPUExecutionProvider"])
    probs = ds.run(None, {ds.get_inputs()[0].name: _nvinfer_input(frame, cfg)})[0]
    own = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = own.run(None, {own.get_inputs()[0].name: normalize(frame[None], _spec(m))})[0].astype(np.float64)
    want = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(probs, want / want.sum(1, keepdims=True), rtol=1e-4, atol=1e-6)
    assert (float(cfg["net-scale-factor"]) == 1.0) == inside
    agreement = summary["agreement"]
    assert agreement["images"] == 6 and 0 <= agreement["ci95"][0] <= agreement["top1_agreement"] <= agreement["ci95"][1]
    assert "top-1 agreement between the two" in (folder / "README.txt").read_text()
    return cfg


def _spec(manifest: dict):
    from effdeploy.data.preprocess import Preprocessing

    return Preprocessing.from_dict(manifest["model"]["preprocessing"])


def test_deepstream_per_channel_std_goes_inside_the_graph(tiny_bundle, tmp_path):
    """ImageNet's three std values cannot be one net-scale-factor: normalisation in the graph."""
    cfg = _check_deepstream(tiny_bundle, tmp_path / "ds", inside=True)
    assert cfg["offsets"] == "0.0;0.0;0.0"


def test_deepstream_one_std_is_scale_and_offsets(tmp_path):
    """Lite's (x - 127) / 128: exactly net-scale-factor 1/128 with offsets 127."""
    from effdeploy.pipeline import BuildRequest, build_bundle
    from effdeploy.profiles import load_profile

    b = tmp_path / "lite"
    build_bundle(BuildRequest(phi=0, variant="lite", resolution=64, profile=load_profile("cpu"), out=b, quiet=True))
    cfg = _check_deepstream(b, tmp_path / "ds", inside=False)
    assert (cfg["net-scale-factor"], cfg["offsets"]) == ("0.0078125", "127.0;127.0;127.0")
    again = run_cli("export", str(b), "--deepstream", str(tmp_path / "ds"), "--name", "m", "--onnx", "--force")
    assert again.returncode == 2 and "exists" in again.stderr
    run_cli("export", str(b), "--deepstream", str(tmp_path / "ds2"), "--name", "m", "--onnx", "--force")
    assert _read_config(tmp_path / "ds2" / "config_infer_primary_m.txt")["onnx-file"] == "m.onnx"


def test_engines_for_several_gpus_make_one_triton_model(tmp_path):
    """Engine manifests (engine.json beside opaque plan bytes: nothing here runs TensorRT) for an Orin
    (8.7) and a T4 (7.5): one model, a file per compute capability, batch bounded by the profile."""
    from effdeploy.backends.tensorrt.manifest import GpuInfo, write_engine_manifest
    from effdeploy.runtime.runner import resolve_artifact
    from tiny_bundle import engine_manifest

    (tmp_path / "orin").mkdir()
    (tmp_path / "t4").mkdir()
    orin, _ = engine_manifest(tmp_path / "orin")
    t4, m = engine_manifest(tmp_path / "t4")
    write_engine_manifest(t4, m.with_(gpu=GpuInfo("Tesla T4", "7.5").to_dict()))
    assert resolve_artifact(t4).manifest.gpu_info.compute_capability == "7.5"
    proc = run_cli("export", str(orin), str(t4), "--triton", str(tmp_path / "repo"), "--name", "b0", "--force")
    assert proc.returncode == 0, proc.stderr
    folder = tmp_path / "repo" / "b0"
    cfg = _config(folder)
    assert (cfg.platform, cfg.max_batch_size) == ("tensorrt_plan", 8)  # the engines' profile max
    assert dict(cfg.cc_model_filenames) == {"7.5": "model_sm75.plan", "8.7": "model_sm87.plan"}
    assert (folder / "1" / "model_sm87.plan").read_bytes() == orin.read_bytes()
    assert (folder / "1" / "model_sm75.plan").read_bytes() == t4.read_bytes() and not (folder / "1" / "model.plan").exists()
    assert [list(i.dims) for i in cfg.input] == [[3, 16, 16]]
    same = run_cli("export", str(orin), str(orin), "--triton", str(tmp_path / "r2"), "--force")
    assert same.returncode == 2 and "both for compute capability 8.7" in same.stderr
