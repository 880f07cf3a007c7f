"""``effdeploy doctor``: it runs on any machine (here: no TensorRT, no GPU) and its verdicts follow the
compile rules. The verdict tests feed :func:`effdeploy.runtime.doctor.assess` the facts a Jetson or a server
would report (plain data: versions, a GPU name, an L4T line); nothing imitates TensorRT or CUDA."""

from __future__ import annotations

import dataclasses
import json

import pytest
from cli_errors import assert_one_line_error, run_cli

from effdeploy.backends.tensorrt.compat import import_tensorrt
from effdeploy.backends.tensorrt.manifest import CudaProbe, GpuInfo, L4tRelease, cuda_problem
from effdeploy.runtime.doctor import CpuInfo, Facts, TensorRTInfo, assess, rows, tensorrt_origin
from effdeploy.profiles import load_profile

HAS_TRT = import_tensorrt() is not None

ORIN = GpuInfo("Orin", "8.7")
JETPACK_62 = L4tRelease(36, "4.3")
CUDA_126 = CudaProbe(bindings="12.6.2", runtime_version=12060, driver_version=12060, gpus=(ORIN,),
                     free_bytes=20 * 2**30, total_bytes=30 * 2**30)


def facts(trt: str | None = "10.3.0", cuda: CudaProbe = CUDA_126, l4t: L4tRelease | None = JETPACK_62, dla: int = 2) -> Facts:
    info = TensorRTInfo(version=trt, origin="system package (JetPack: python3-libnvinfer)", dla_cores=dla) if trt \
        else TensorRTInfo(error="not installed (No module named 'tensorrt')")
    return Facts(python="3.10.12", machine="Linux aarch64", tensorrt=info, cuda=cuda, l4t=l4t)


def test_doctor_runs_here_and_says_what_is_missing():
    r = run_cli("doctor", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out) == {"facts", "verdict"}
    assert {"tensorrt", "cuda", "l4t"} <= set(out["facts"]) and isinstance(out["verdict"]["problems"], list)
    if not HAS_TRT:
        assert out["facts"]["tensorrt"]["version"] is None
        assert any(p.startswith("TensorRT is not installed") for p in out["verdict"]["problems"])
    table = run_cli("doctor", "--profile", "jetson-orin")
    assert table.returncode == 0, table.stderr
    assert "TensorRT" in table.stdout and "compile for jetson-orin" in table.stdout
    if not HAS_TRT:
        assert "compile for jetson-orin  no" in table.stdout


def test_doctor_bad_profile_is_one_line():
    assert_one_line_error(run_cli("doctor", "--profile", "no-such-board"), "unknown profile")


def test_a_ready_jetson_can_compile():
    v = assess(facts(), load_profile("jetson-orin"))
    assert v.can_compile is True and v.problems == ()
    text = "\n".join(f"{k} {val}" for k, val in rows(facts(), v))
    assert "Orin (compute capability 8.7)" in text and "JetPack 6.1+" in text and "20.00 / 30.00 GiB" in text


def test_cuda_python_13_on_jetpack6_says_pin_12():
    """cuda-bindings 13 carries the CUDA 13 runtime; JetPack 6's driver supports CUDA 12.6."""
    cuda13 = CudaProbe(bindings="13.0.3", runtime_version=13000, driver_version=12060,
                       error="cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version")
    line = cuda_problem(cuda13)
    assert "CUDA 13.0 runtime" in line and "CUDA 12.6" in line and "cuda-python>=12.0,<13" in line
    assert "cudaErrorInsufficientDriver" in line
    v = assess(facts(cuda=cuda13), load_profile("jetson-orin"))
    assert v.can_compile is False and any("cuda-python>=12.0,<13" in p for p in v.problems)
    assert not any("no CUDA GPU is visible" in p for p in v.problems)  # the real error, not a guess


def test_other_cuda_errors_are_said_as_they_are():
    p = CudaProbe(bindings="12.6.2", runtime_version=12060, driver_version=12060,
                  error="cudaErrorNoDevice: no CUDA-capable device is detected")
    assert cuda_problem(p) == "CUDA reports cudaErrorNoDevice: no CUDA-capable device is detected"
    assert "not installed" in cuda_problem(CudaProbe())
    assert cuda_problem(CUDA_126) is None


def test_tensorrt_11_on_jetpack6_and_jetpack_6_0():
    v = assess(facts(trt="11.4.1"), load_profile("jetson-orin"))
    assert v.can_compile is False and any("does not run on JetPack 6" in p for p in v.problems)
    old = assess(facts(trt="8.6.2", l4t=L4tRelease(36, "3.0")), load_profile("jetson-orin"))
    assert old.can_compile is False and any("JetPack 6.1+" in p for p in old.problems)


def test_wrong_gpu_for_the_profile_and_no_tensorrt():
    v = assess(facts(l4t=None), load_profile("t4"))
    assert v.can_compile is False and any("compute capability" in p for p in v.problems)
    none = assess(facts(trt=None), load_profile("jetson-orin"))
    assert none.can_compile is False and any(p.startswith("TensorRT is not installed") for p in none.problems)
    assert assess(facts(), None).can_compile is None  # no profile: no verdict, only problems


def test_dla_notes():
    v = assess(facts(dla=0), load_profile("jetson-orin"))
    assert any("TensorRT sees 0 DLA core(s)" in n for n in v.notes)
    eleven = assess(facts(trt="11.2.0", l4t=L4tRelease(39, "2.0")), load_profile("jetson-orin"))
    assert any("builds no DLA engines" in n for n in eleven.notes)


@pytest.mark.parametrize("location, dist, version, expected", [
    ("/usr/lib/python3.10/dist-packages/tensorrt", None, None, "system package (JetPack: python3-libnvinfer)"),
    ("/venv/lib/python3.12/site-packages/tensorrt", "tensorrt-cu12", "10.13.3.9", "pip wheel tensorrt-cu12 10.13.3.9"),
])
def test_tensorrt_origin(location, dist, version, expected):
    assert tensorrt_origin(location, dist, version) == expected


AVX2_HOST = CpuInfo(model="AMD EPYC", int8_dot="AVX2 without VNNI", onnxruntime="1.32.0")
AMX_HOST = CpuInfo(model="Intel(R) Xeon(R) Processor", int8_dot="avx512_vnni, amx_int8",
                   vnni_flags=("avx512_vnni", "amx_int8"), onnxruntime="1.32.0", openvino="2026.4.1")


def test_a_cpu_profile_is_judged_by_the_cpu_and_its_runtime_not_by_tensorrt():
    """A CPU profile needs neither TensorRT nor a GPU: doctor says whether its bundles open here, and
    whether its INT8 bundles do (8-bit weights saturate without VNNI on the runtime they would open
    on, as Runner.open refuses), and names the 8-bit twin on a VNNI CPU, as the build does."""
    no_gpu = dict(trt=None, cuda=CudaProbe(), l4t=None)
    avx2 = dataclasses.replace(facts(**no_gpu), cpu=AVX2_HOST)
    avx2_ov = dataclasses.replace(facts(**no_gpu), cpu=dataclasses.replace(AVX2_HOST, openvino="2026.4.1"))
    amx = dataclasses.replace(facts(**no_gpu), cpu=AMX_HOST)
    v = assess(avx2, load_profile("cpu"))
    assert (v.problems, v.can_run, v.can_run_int8, v.can_compile, v.notes) == ((), True, True, None, ())
    # ort-cpu dialect with 8-bit weights: ONNX Runtime's QLinear kernels saturate them; FP32 bundles run
    v = assess(avx2, load_profile("cpu-vnni"))
    assert (v.can_run, v.can_run_int8, len(v.problems)) == (True, False, 1)
    assert "saturate on this CPU (AVX2 without VNNI)" in v.problems[0] and "--profile cpu " in v.problems[0]
    # no OpenVINO: the bundles fall back to ONNX Runtime, which runs the openvino dialect's convs in float
    v = assess(dataclasses.replace(amx, cpu=dataclasses.replace(AMX_HOST, openvino=None)), load_profile("cpu-openvino-vnni"))
    assert (v.can_run, v.can_run_int8) == (True, True) and len(v.problems) == 1
    assert v.problems[0].startswith("OpenVINO is not installed: pip install 'effdeploy[openvino]'; its bundles run on ONNX")
    # ... and without VNNI installing OpenVINO would get its INT8 bundles refused: doctor must not advise it bare
    v = assess(avx2, load_profile("cpu-openvino-vnni"))
    assert (v.can_run, v.can_run_int8) == (True, True) and len(v.problems) == 1
    assert "installing OpenVINO would not help its INT8 bundles" in v.problems[0]
    assert "--profile cpu-openvino " in v.problems[0] and not v.problems[0].startswith("OpenVINO is not installed")
    # with OpenVINO they open there, and its INT8 kernels saturate the 8-bit weights
    v = assess(avx2_ov, load_profile("cpu-openvino-vnni"))
    assert (v.can_run, v.can_run_int8, len(v.problems)) == (True, False, 1)
    assert "--profile cpu-openvino " in v.problems[0] and "--backend onnxruntime" in v.problems[0]
    nothing = dataclasses.replace(facts(**no_gpu), cpu=dataclasses.replace(AVX2_HOST, onnxruntime=None))
    v = assess(nothing, load_profile("cpu"))
    assert (v.can_run, v.can_run_int8) == (False, False) and "ONNX Runtime is not installed" in v.problems[0]
    v = assess(amx, load_profile("cpu-openvino"))
    assert (v.can_run, v.can_run_int8, v.problems) == (True, True, ()) and "--profile cpu-openvino-vnni" in v.notes[0]
    assert assess(amx, load_profile("cpu-vnni")).notes == ()
    table = dict(rows(amx, assess(amx, load_profile("cpu"))))
    assert table["run cpu bundles here"] == "yes, INT8 too"
    assert table["CPU"] == "Intel(R) Xeon(R) Processor (INT8 dot product: avx512_vnni, amx_int8)"
    assert table["ONNX Runtime / OpenVINO"] == "1.32.0 / 2026.4.1" and "compile for cpu" not in table
    assert dict(rows(avx2, assess(avx2, load_profile("cpu-vnni"))))["run cpu-vnni bundles here"] == \
        "yes, but not its INT8 bundles"
    # facts without the CPU (an older --json): no verdict, rather than TensorRT's for a CPU profile
    v = assess(facts(**no_gpu), load_profile("cpu"))
    assert (v.can_run, v.can_compile, v.problems) == (None, None, ()) and "not examined" in v.notes[0]
    assert not any(k.startswith(("compile for", "run cpu")) for k, _ in rows(facts(**no_gpu), v))


def test_runtime_versions_come_from_whichever_distribution_provides_the_module():
    """onnxruntime-gpu and onnxruntime-openvino install the same ``onnxruntime`` module; doctor must not
    call ONNX Runtime absent because the distribution has another name."""
    from effdeploy.runtime.doctor import module_version

    from importlib import metadata

    assert module_version("onnxruntime") == metadata.version("onnxruntime")  # this venv's, by its module
    # a module provided by a distribution of another name (onnx stands in for onnxruntime-gpu), after one
    # that is listed but not installed
    assert module_version("onnxruntime", {"onnxruntime": ["no-such-dist-xyz", "onnx"]}) == metadata.version("onnx")
    assert module_version("onnxruntime", {"onnxruntime": ["no-such-dist-xyz"]}) is None
    assert module_version("openvino", {}) is None


def test_doctor_reads_this_cpu():
    from effdeploy.backends.cpu_features import describe_int8_dot

    r = run_cli("doctor", "--profile", "cpu", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["facts"]["cpu"]["int8_dot"] == describe_int8_dot() and out["facts"]["cpu"]["onnxruntime"]
    assert out["verdict"]["can_run"] is True and out["verdict"]["problems"] == []
