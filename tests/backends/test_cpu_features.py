"""8-bit INT8 weights only where the CPU accumulates in 32 bits: the flags are read from
/proc/cpuinfo, a ``target.vnni`` profile builds 8-bit weights (every other CPU profile 7-bit), and
building or running such a bundle on a CPU without VNNI is refused in one line, because its kernels
would saturate and return wrong logits without an error."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from conftest import read_manifest, run_cli
import effdeploy.backends.cpu_features as cpu
from effdeploy.errors import EffdeployError
from effdeploy.profiles import load_profile

ZEN2 = "fpu vme sse4_2 avx f16c avx2 sha_ni"
SAPPHIRE_RAPIDS = "fpu avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8"


def test_the_flags_line_says_whether_the_int8_dot_product_saturates(tmp_path):
    for flags, found, said in ((ZEN2, (), "AVX2 without VNNI"),
                               (SAPPHIRE_RAPIDS, ("avx512_vnni", "amx_int8"), "avx512_vnni, amx_int8"),
                               ("fpu avx2 avx_vnni", ("avx_vnni",), "avx_vnni")):
        info = tmp_path / "cpuinfo"
        info.write_text(f"processor\t: 0\nmodel name\t: some CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
        assert cpu.cpu_flags(info) == tuple(flags.split())
        assert cpu.vnni_flags(cpu.cpu_flags(info)) == found and cpu.describe_int8_dot(cpu.cpu_flags(info)) == said
    assert cpu.cpu_flags(tmp_path / "missing") is None and cpu.vnni_flags(()) == ()


def test_unreadable_flags_are_said_as_unknown_and_never_taken_for_vnni(monkeypatch):
    monkeypatch.setattr(cpu, "cpu_flags", lambda cpuinfo="/proc/cpuinfo": None)  # macOS, Windows: no /proc/cpuinfo
    assert cpu.vnni_flags() == () and cpu.describe_int8_dot().startswith("an INT8 dot product of unknown kind")


def _manifest(dialect: str, reduce_range: bool, precision: str = "int8", vnni: bool = False) -> SimpleNamespace:
    return SimpleNamespace(precision=precision, profile={"vnni": vnni},
                           quantization={"dialect": dialect, "config": {"reduce_range": reduce_range}})


def test_which_runtime_saturates_which_graph():
    """OpenVINO runs every Q/DQ graph as INT8 convolutions; ONNX Runtime only the ort-cpu dialect
    (QLinear fusions), the others as DequantizeLinear + float convs: 8-bit weights saturate only
    there, and only on a CPU without VNNI."""
    avx2, vnni = tuple(ZEN2.split()), tuple(SAPPHIRE_RAPIDS.split())
    cases = {  # (dialect, reduce_range, backend): saturates on the AVX2 CPU
        ("ort-cpu", False, "onnxruntime"): True, ("ort-cpu", False, "openvino"): True,
        ("ort-cpu", True, "onnxruntime"): False, ("openvino", True, "openvino"): False,
        ("openvino", False, "openvino"): True, ("openvino", False, "onnxruntime"): False,
        ("tensorrt", False, "openvino"): True, ("tensorrt", False, "onnxruntime"): False,
    }
    for (dialect, bits7, backend), expected in cases.items():
        m = _manifest(dialect, bits7)
        assert cpu.saturates(m, backend, avx2) is expected, (dialect, bits7, backend)
        assert cpu.saturates(m, backend, vnni) is False
    assert not cpu.saturates(_manifest("ort-cpu", False, precision="fp32"), "onnxruntime", avx2)
    assert not cpu.saturates(None, "openvino", avx2)  # a bare .onnx: nothing recorded, nothing refused
    assert cpu.portable_profile(_manifest("ort-cpu", False)) == "cpu"
    assert cpu.portable_profile(_manifest("openvino", False)) == "cpu-openvino"


def test_an_int8_build_names_the_8_bit_twin_where_the_cpu_has_vnni():
    """On a VNNI CPU a build with a portable CPU profile names the profile with 8-bit weights for the
    same runtime; without VNNI it says nothing, except that a VNNI OpenVINO bundle will not run here.
    GPU profiles never get either note."""
    avx2, vnni = tuple(ZEN2.split()), tuple(SAPPHIRE_RAPIDS.split())
    notes = {name: (cpu.int8_build_notes(load_profile(name), avx2), cpu.int8_build_notes(load_profile(name), vnni))
             for name in ("cpu", "cpu-openvino", "cpu-vnni", "cpu-openvino-vnni", "jetson-orin")}
    for name, twin in (("cpu", "cpu-vnni"), ("cpu-openvino", "cpu-openvino-vnni")):
        assert notes[name][0] == []
        assert len(notes[name][1]) == 1 and f"--profile {twin} builds 8-bit" in notes[name][1][0]
        assert "avx512_vnni, amx_int8" in notes[name][1][0]
    assert notes["cpu-vnni"] == ([], [])  # without VNNI that build is refused before any note
    assert notes["cpu-openvino-vnni"][1] == []
    assert "AVX2 without VNNI" in notes["cpu-openvino-vnni"][0][0] and "openvino only on CPUs" in notes["cpu-openvino-vnni"][0][0]
    assert notes["jetson-orin"] == ([], [])
    own = dataclasses.replace(load_profile("cpu-openvino"), name="factory-pc")  # a user's own file
    [line] = cpu.int8_build_notes(own, vnni)
    assert "--profile cpu-openvino-vnni (or target.vnni = true in factory-pc's file)" in line


def test_only_a_vnni_profile_builds_8_bit_weights(tmp_path):
    from effdeploy.pipeline import BuildRequest, int8_config

    bits = {name: 7 if int8_config(BuildRequest(phi=0, profile=load_profile(name), precision="int8"), "b").reduce_range else 8
            for name in ("cpu", "cpu-openvino", "cpu-vnni", "cpu-openvino-vnni", "jetson-orin")}
    assert bits == {"cpu": 7, "cpu-openvino": 7, "cpu-vnni": 8, "cpu-openvino-vnni": 8, "jetson-orin": 8}
    p = load_profile("cpu-vnni")
    assert p.vnni and p.target_runtime == "onnxruntime" and not load_profile("cpu").vnni
    body = (cpu.Path(__file__).resolve().parents[2] / "profiles" / "cpu-vnni.toml").read_text()
    for bad, message in ((body.replace("vnni = true", 'vnni = "yes"'), "target.vnni must be true or false"),
                         (body.replace('device = "cpu"', 'device = "gpu"') + '\n[gpu]\ncompute_capability = "8.7"\n',
                          "target.vnni describes a CPU")):
        path = tmp_path / "bad.toml"
        path.write_text(bad)
        with pytest.raises(EffdeployError, match=message):
            load_profile(path)


def _vnni_bundle(out, monkeypatch):
    """A tiny INT8 B0 for cpu-vnni, built as on a VNNI CPU (its verification ran this CPU's kernels:
    random weights, so only numbers are gated, and the parity outcome is allowed to fail)."""
    from effdeploy.pipeline import BuildRequest, build_bundle

    with monkeypatch.context() as m:
        m.setattr(cpu, "vnni_flags", lambda flags=None: ("avx512_vnni",))
        build_bundle(BuildRequest(phi=0, resolution=64, precision="int8", profile=load_profile("cpu-vnni"), out=out,
                                  calib_images=8, calib_method="max", verify_images=8, reconstruct=False,
                                  repair=False, allow_parity_failure=True, quiet=True))
    return out


def test_a_vnni_bundle_is_built_and_run_only_where_the_cpu_has_vnni(tmp_path, monkeypatch):
    from effdeploy.backends.onnxrt import bundle_runner
    from effdeploy.bundle import load_bundle
    from effdeploy.pipeline import BuildRequest, build_bundle
    from effdeploy.runtime import Runner

    out = _vnni_bundle(tmp_path / "b0-vnni", monkeypatch)
    model = onnx.load(str(out / "model.onnx"))
    weights = [numpy_helper.to_array(i) for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8
               and len(i.dims) == 4]
    assert weights and max(int(np.abs(w).max()) for w in weights) == 127  # 8-bit, not 7-bit's 64

    assert read_manifest(out)["quantization"]["weights"].endswith("8-bit (|q| <= 127)")

    monkeypatch.setattr(cpu, "vnni_flags", lambda flags=None: ())  # the same bundle on an AVX2-only CPU
    # force: random weights whose build verified on this CPU's kernels may have failed parity
    with pytest.raises(EffdeployError, match=r"8-bit INT8 weights \(built for CPUs with VNNI or AMX\), which ONNX "
                                             r"Runtime's INT8 kernels saturate .*--profile cpu \(7-bit"):
        Runner.open(out, force=True)
    with pytest.raises(EffdeployError, match="saturate"):
        bundle_runner(load_bundle(out))
    with pytest.raises(EffdeployError, match="saturate"):
        Runner.open(out, force=True, backend="auto")  # ONNX Runtime would saturate too: nothing to fall back to
    with pytest.raises(EffdeployError, match="builds 8-bit INT8 weights for CPUs with VNNI.*--profile cpu"):
        build_bundle(BuildRequest(phi=0, resolution=64, precision="int8", profile=load_profile("cpu-vnni"),
                                  out=tmp_path / "refused", calib_images=8, quiet=True))
    assert not (tmp_path / "refused").exists()
    monkeypatch.setattr(cpu, "vnni_flags", lambda flags=None: ("avx_vnni",))
    with Runner.open(out, threads=1, force=True) as r:
        assert r.classify(np.zeros((64, 64, 3), np.uint8)) is not None


@pytest.mark.skipif(bool(cpu.vnni_flags()), reason="this CPU has VNNI: a cpu-vnni build is not refused here")
def test_on_a_cpu_without_vnni_the_cli_refuses_a_vnni_build_in_one_line(tmp_path):
    proc = run_cli("build", "--phi", "0", "--resolution", "64", "--precision", "int8", "--profile", "cpu-vnni",
                   "--calib-images", "8", "--out", str(tmp_path / "b"))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("effdeploy: error: profile cpu-vnni builds 8-bit")
    assert not (tmp_path / "b").exists()
