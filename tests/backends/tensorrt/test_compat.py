"""effdeploy.backends.tensorrt.compat: the TensorRT 10/11 version table and the one logger."""

from __future__ import annotations

import pytest

from effdeploy.backends.tensorrt.compat import (
    TrtVersion, dla_supported, same_cc_hw_compat_supported, strongly_typed_supported,
    version_compatible_runs,
)
from effdeploy.errors import EffdeployError

# --- versions ------------------------------------------------------------------------------------


def test_trt_version_parse_and_order():
    assert str(TrtVersion.parse("11.4.0.106")) == "11.4.0.106"
    assert str(TrtVersion.parse("10.3")) == "10.3.0"
    assert TrtVersion.parse("10.3.0") < TrtVersion.parse("10.3.0.30") < TrtVersion.parse("10.13") < TrtVersion.parse("11.0")
    assert TrtVersion.parse("10.3.0").same_build_as("10.3.0.30")  # JetPack bindings omit the build number
    assert not TrtVersion.parse("10.3.0.30").same_build_as("10.3.0.26")
    assert TrtVersion.parse("11.4.1").in_range("11.4.1", None) and not TrtVersion.parse("11.4.0").in_range("11.4.1", None)
    for bad in ("", "ten", "10..3", "latest"):
        with pytest.raises(EffdeployError, match="not a TensorRT version"):
            TrtVersion.parse(bad)


@pytest.mark.parametrize("version, ok", [("8.6", False), ("9.3", False), ("10.0", True), ("10.3", True), ("11.4.1", True)])
def test_strongly_typed_floor(version, ok):
    assert strongly_typed_supported(version) is ok


# Each case is a sentence of TensorRT's release notes or its "Working with DLA" page, at the
# version it names (and the ones on either side), not a copy of compat.DLA_RANGES.
DLA_FACTS = [
    ("JetPack 6.x ships 10.3 with DLA", "10.3", True),
    ("TensorRT 10.7 was the last 10.x release that supported DLA", "10.7.0", True),
    ("... so 10.8 has none", "10.8", False),
    ("... nor any later 10.x", "10.13.3", False),
    ("DLA was unavailable in TensorRT 11.0 through 11.3", "11.0", False),
    ("DLA was unavailable in TensorRT 11.0 through 11.3", "11.3.9", False),
    ("11.4.0 supported DLA only on Windows on ARM", "11.4.0", False),
    ("11.4.1 restores DLA on Jetson AGX Orin with JetPack 7.2.2+", "11.4.1", True),
    ("... and later 11.x keep it", "11.5", True),
    ("strongly typed networks (our only kind) need TensorRT 10", "8.5.2", False),
]


@pytest.mark.parametrize("fact, version, ok", DLA_FACTS, ids=[f"{v}" for _, v, _ in DLA_FACTS])
def test_dla_version_table(fact, version, ok):
    assert dla_supported(version) is ok, fact


def test_version_compatible_and_same_cc_tables():
    assert version_compatible_runs("10.3", "10.13") and version_compatible_runs("10.3", "11.4.1")
    assert not version_compatible_runs("10.13", "10.3")  # never backwards
    assert not version_compatible_runs("11.0", "12.0") and not version_compatible_runs("8.6", "11.0")
    assert not same_cc_hw_compat_supported("10.3") and same_cc_hw_compat_supported("10.9")


def test_one_logger_routes_tensorrt_messages_to_the_active_build():
    """TensorRT keeps one logger per process (item 4): effdeploy's single logger forwards each message
    to the captures listening now; a DLA build's [DlaLayer]/[GpuLayer] INFO lines become lists."""
    from effdeploy.backends.tensorrt.compat import LogCapture, capture_log, dispatch_log

    with capture_log(LogCapture()) as outer:
        with capture_log(LogCapture()) as build:
            dispatch_log("ERROR", "  [network.cpp::validate] Error Code 4: bad input  ")
            dispatch_log("INFO", "--------------- Layers running on DLA:")
            dispatch_log("INFO", "[DlaLayer] {ForeignNode[/stem/conv/Conv...Relu]},")
            dispatch_log("INFO", "[GpuLayer] SHUFFLE: /head/flatten")
            dispatch_log("VERBOSE", "[DlaLayer] not at INFO: ignored")
        dispatch_log("ERROR", "after the build")
    assert build.errors == ["[network.cpp::validate] Error Code 4: bad input"]
    assert build.dla_layers == ["{ForeignNode[/stem/conv/Conv...Relu]}"] and build.gpu_layers == ["SHUFFLE: /head/flatten"]
    assert outer.errors[-1] == "after the build" and len(outer.errors) == 2


def test_engine_host_code_runs_only_when_the_person_running_it_allows_it(monkeypatch):
    """A version-compatible plan carries host code; its engine.json was written by whoever made it,
    so the runner refuses it unless told the source is trusted (argument, or the environment)."""
    from effdeploy.backends.tensorrt.compat import HOST_CODE_ENV, host_code_refusal

    monkeypatch.delenv(HOST_CODE_ENV, raising=False)
    assert host_code_refusal("e.plan", False, None) is None  # no host code: TensorRT's default stands
    refusal = host_code_refusal("e.plan", True, None)
    assert refusal and HOST_CODE_ENV in refusal and "\n" not in refusal
    assert host_code_refusal("e.plan", True, True) is None
    monkeypatch.setenv(HOST_CODE_ENV, "1")
    assert host_code_refusal("e.plan", True, None) is None
    assert host_code_refusal("e.plan", True, False) is not None  # an explicit no wins over the environment
    monkeypatch.setenv(HOST_CODE_ENV, "yes")
    assert host_code_refusal("e.plan", True, None) is not None  # only "1" opts in
