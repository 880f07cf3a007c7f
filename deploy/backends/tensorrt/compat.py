"""The one small module that knows how TensorRT 10 and TensorRT 11 differ.

Everything else (compile rules, builder, runner) asks this module instead of testing versions
itself, so a new TensorRT release means editing one table here. The version arithmetic is plain
Python (testable anywhere); the few helpers that touch the ``tensorrt`` module take it as an
argument and ``tensorrt`` is only ever imported inside :func:`import_tensorrt`.

Sources for the tables (checked against the documentation, see docs/tensorrt.md):

* Strongly typed networks: ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` exists in the 10.x
  Python API (Builder page); TensorRT 11.0 made every network strongly typed and kept the flag only
  as a deprecated no-op ("TensorRT 11.0.0 release notes", 11.0 Builder page). The flag first
  appeared in the 9.x releases, which were x86/SBSA-only LLM previews; 10.0 is the first release
  line that has it on every platform including JetPack, so 10.0 is our floor. TensorRT 8.x
  (JetPack 4 and 5) has no strongly typed mode at all.
* DLA: "TensorRT 10.7 was the last 10.x release that supported DLA"; "DLA was unavailable in
  TensorRT 11.0 through 11.3"; "11.4.0 supported DLA only on Windows on ARM"; 11.4.1 restores DLA
  on Jetson AGX Orin with JetPack 7.2.2+ ("Working with DLA", TensorRT 11.4.1).
* ``HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY`` was added in 10.9 (10.9.0 release notes;
  absent from the 10.3 bindings, present in 10.13 and 11.4).
* Version-compatible engines run on newer runtimes of the same major, and across majors only
  10 -> 11 and 8 -> 10 (TensorRT 11.4.1 support matrix, "Engine Portability").
"""

from __future__ import annotations

import re
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable, Iterator

from ...errors import EffdeployError

#: First TensorRT release line with strongly typed networks on every platform (see module doc).
MIN_STRONGLY_TYPED = "10.0"
#: Half-open version ranges [lo, hi) in which TensorRT can build DLA engines on Jetson.
DLA_RANGES: tuple[tuple[str, str | None], ...] = (("10.0", "10.8"), ("11.4.1", None))
#: First release with ``HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY``.
MIN_SAME_CC_HW_COMPAT = "10.9"
#: Cross-major pairs (built, runtime) for which version-compatible engines are supported.
VC_CROSS_MAJOR = {(10, 11), (8, 10)}
HARDWARE_COMPAT_LEVELS = ("none", "ampere_plus", "same_compute_capability")

MISSING_TENSORRT = (
    "TensorRT is not installed here; run the printed command on the target (Jetson: JetPack's "
    "python3-libnvinfer and pip install 'effdeploy[jetson]'; servers: pip install 'effdeploy[tensorrt]')"
)


@dataclass(frozen=True, order=True)
class TrtVersion:
    """A TensorRT version (``10.3.0``, ``11.4.0.106``); missing parts compare as 0."""

    major: int
    minor: int = 0
    patch: int = 0
    build: int = 0

    @staticmethod
    def parse(text: str | "TrtVersion") -> "TrtVersion":
        if isinstance(text, TrtVersion):
            return text
        s = str(text).strip()
        m = re.fullmatch(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:\.(\d+))?(?:[.+-]?[A-Za-z][\w.+-]*)?", s)
        if not m:
            raise EffdeployError(
                f"{text!r} is not a TensorRT version; use numbers like 10.3 or 11.4.1 (e.g. --trt-version 10.3)"
            )
        parts = [int(g) if g is not None else 0 for g in m.groups()]
        return TrtVersion(*parts)

    def __str__(self) -> str:
        parts = [self.major, self.minor, self.patch] + ([self.build] if self.build else [])
        return ".".join(str(p) for p in parts)

    def short(self) -> str:
        return f"{self.major}.{self.minor}"

    def in_range(self, lo: str, hi: str | None) -> bool:
        """``lo <= self < hi`` (``hi`` None = open-ended)."""
        return self >= TrtVersion.parse(lo) and (hi is None or self < TrtVersion.parse(hi))

    def same_build_as(self, other: "TrtVersion | str") -> bool:
        """Same release, ignoring a build number that one side does not report.

        JetPack's Python bindings report ``10.3.0`` while the pip wheels report ``10.3.0.30``;
        those are the same release and engines move between them.
        """
        o = TrtVersion.parse(other)
        if (self.major, self.minor, self.patch) != (o.major, o.minor, o.patch):
            return False
        return not (self.build and o.build) or self.build == o.build


def strongly_typed_supported(version: str | TrtVersion) -> bool:
    return TrtVersion.parse(version) >= TrtVersion.parse(MIN_STRONGLY_TYPED)


def dla_supported(version: str | TrtVersion) -> bool:
    v = TrtVersion.parse(version)
    return any(v.in_range(lo, hi) for lo, hi in DLA_RANGES)


def dla_gap_reason(version: str | TrtVersion) -> str:
    """Why DLA is missing in ``version`` (only meaningful when :func:`dla_supported` is False)."""
    v = TrtVersion.parse(version)
    if v < TrtVersion.parse("10.0"):
        return f"strongly typed DLA builds need TensorRT >= 10.0 (got {v})"
    if v.major == 10:
        return f"TensorRT 10.7 was the last 10.x release with DLA (got {v})"
    if v < TrtVersion.parse("11.4"):
        return f"DLA is unavailable in TensorRT 11.0-11.3 (got {v})"
    return f"TensorRT {v} has DLA only on Windows on ARM; Jetson DLA returns in 11.4.1 on JetPack 7.2.2+"


def same_cc_hw_compat_supported(version: str | TrtVersion) -> bool:
    return TrtVersion.parse(version) >= TrtVersion.parse(MIN_SAME_CC_HW_COMPAT)


def version_compatible_runs(built: str | TrtVersion, runtime: str | TrtVersion) -> bool:
    """Whether a version-compatible engine built by ``built`` may run on ``runtime``."""
    b, r = TrtVersion.parse(built), TrtVersion.parse(runtime)
    if r < b:
        return False
    return b.major == r.major or (b.major, r.major) in VC_CROSS_MAJOR


# --- the thin layer over the tensorrt module (imported lazily, never at module import) ----------


def import_tensorrt() -> ModuleType | None:
    """The ``tensorrt`` module, or None when it is not installed or its libraries do not load."""
    try:
        import tensorrt  # noqa: PLC0415 - deliberate lazy import

        return tensorrt
    except (ImportError, OSError):
        return None


def require_tensorrt(hint: str = "") -> ModuleType:
    trt = import_tensorrt()
    if trt is None:
        raise EffdeployError(MISSING_TENSORRT + (f": {hint}" if hint else ""))
    return trt


def installed_version() -> str | None:
    trt = import_tensorrt()
    return None if trt is None else str(trt.__version__)


def network_flags(trt: ModuleType) -> int:
    """Creation flags for a strongly typed network on this TensorRT.

    10.x: ``1 << STRONGLY_TYPED`` (without it the network is weakly typed). 11.x: 0 - every
    network is strongly typed and the flag is a deprecated no-op.
    """
    v = TrtVersion.parse(trt.__version__)
    if v.major >= 11:
        return 0
    if not strongly_typed_supported(v):
        raise EffdeployError(
            f"effdeploy builds strongly typed networks, which need TensorRT >= {MIN_STRONGLY_TYPED} (got {v})"
        )
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def adjust_parser_for_dla(trt: ModuleType, parser: Any) -> bool:
    """Set ``OnnxParserFlag.ADJUST_FOR_DLA`` where it exists (11.x bindings; absent from 10.3).

    The 11.4.1 "Strongly Typed Networks for DLA" page recommends it for DLA builds: the parser may
    reshape layers to make them DLA-friendly. Returns whether it was set.
    """
    flag = getattr(getattr(trt, "OnnxParserFlag", None), "ADJUST_FOR_DLA", None)
    if flag is None:
        return False
    parser.set_flag(flag)
    return True


def hardware_compat_level(trt: ModuleType, level: str) -> Any:
    names = {
        "none": "NONE",
        "ampere_plus": "AMPERE_PLUS",
        "same_compute_capability": "SAME_COMPUTE_CAPABILITY",
    }
    if level not in names:
        raise EffdeployError(f"hardware compatibility must be one of {', '.join(HARDWARE_COMPAT_LEVELS)} (got {level!r})")
    member = getattr(trt.HardwareCompatibilityLevel, names[level], None)
    if member is None:
        raise EffdeployError(
            f"TensorRT {trt.__version__} has no {level} hardware compatibility (needs >= {MIN_SAME_CC_HW_COMPAT})"
        )
    return member


HOST_CODE_ENV = "EFFDEPLOY_ALLOW_ENGINE_HOST_CODE"


def host_code_refusal(plan: Any, version_compatible: bool, allow: bool | None) -> str | None:
    """Why a plan is not opened, or None. A version-compatible plan carries TensorRT's lean runtime
    as host code that runs in this process; whoever made the plan also wrote its engine.json, so
    effdeploy lets TensorRT run that code only when the person running it says they trust the
    plan's source (``allow``; None reads ``$EFFDEPLOY_ALLOW_ENGINE_HOST_CODE=1``). A plan whose
    engine.json hides that it is version-compatible still meets TensorRT's own default: host code
    disallowed, so deserialization fails."""
    import os

    if allow is None:
        allow = os.environ.get(HOST_CODE_ENV, "") == "1"
    if version_compatible and not allow:
        return (f"{plan} is version-compatible: it carries TensorRT's lean runtime as host code, which runs in this "
                f"process; effdeploy runs it only for engines you trust: set {HOST_CODE_ENV}=1 (or "
                "TensorRTRunner.open(..., allow_host_code=True)), or compile the bundle here without "
                "--version-compatible")
    return None


def new_runtime(trt: ModuleType, logger: Any, version_compatible: bool, dla_core: int | None = None,
                allow_host_code: bool = False) -> Any:
    """A ``trt.Runtime``; version-compatible plans embed a lean runtime (host code) that the
    runtime refuses unless ``engine_host_code_allowed`` is set (same attribute in 10.x and 11.x).
    It is set only when ``allow_host_code`` (see :func:`host_code_refusal`).

    ``dla_core``: the core a DLA engine was built for. ``IRuntime.DLA_core`` defaults to -1 and must
    be set before deserializing a DLA engine (TensorRT's DLA samples do so; property in the 10.3 and
    11.x bindings)."""
    runtime = trt.Runtime(logger)
    if version_compatible and allow_host_code:
        runtime.engine_host_code_allowed = True
    if dla_core is not None and dla_core >= 0:
        runtime.DLA_core = int(dla_core)
    return runtime


# --- the one logger TensorRT gets ----------------------------------------------------------------
#
# TensorRT keeps a single logger pointer per process: a builder or runtime created with a different
# logger while another lives gets "The logger passed into createInferRuntime differs from one
# already provided ... TensorRT maintains only a single logger pointer at any given time, so the
# existing value ... will be used instead" (NVIDIA/TensorRT#1475; the Python Logger docs: "the
# logger is internally considered a singleton"). So effdeploy hands TensorRT one logger and routes
# its messages to whoever is listening (a build collecting errors, nothing for a runner).

_LOGGER_LOCK = threading.Lock()
_LOGGER: dict[str, Any] = {}
_SINKS: list[Callable[[str, str], None]] = []
SEVERITIES = ("INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE")


@dataclass(eq=False)
class LogCapture:
    """What TensorRT logs during one call: errors (for the failure line), warnings, and the
    ``[DlaLayer]`` / ``[GpuLayer]`` lines of a DLA build (INFO, as in TensorRT's sampleCudla)."""

    echo_warnings: bool = False
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    dla_layers: list[str] = field(default_factory=list)
    gpu_layers: list[str] = field(default_factory=list)

    def __call__(self, severity: str, msg: str) -> None:
        text = str(msg).strip()
        if severity in ("INTERNAL_ERROR", "ERROR"):
            self.errors.append(text)
        elif severity == "WARNING":
            self.warnings.append(text)
            if self.echo_warnings:
                print(f"  tensorrt: {text}", file=sys.stderr)
        elif severity == "INFO":
            for tag, into in (("[DlaLayer]", self.dla_layers), ("[GpuLayer]", self.gpu_layers)):
                if text.startswith(tag):
                    into.append(text[len(tag):].strip().rstrip(",").strip())


def dispatch_log(severity: str, msg: str) -> None:
    """Route one TensorRT message to the active captures; without one, errors and warnings go to stderr."""
    with _LOGGER_LOCK:
        sinks = list(_SINKS)
    if not sinks:
        if severity in ("INTERNAL_ERROR", "ERROR", "WARNING"):
            print(f"tensorrt: {str(msg).strip()}", file=sys.stderr)
        return
    for sink in sinks:
        try:
            sink(severity, msg)
        except Exception:  # a display problem must never break TensorRT's callback
            pass


@contextmanager
def capture_log(sink: Callable[[str, str], None]) -> Iterator[Callable[[str, str], None]]:
    """Listen to the shared logger for the duration of a ``with`` block."""
    with _LOGGER_LOCK:
        _SINKS.append(sink)
    try:
        yield sink
    finally:
        with _LOGGER_LOCK:
            for i, s in enumerate(_SINKS):
                if s is sink:  # by identity: two captures may hold equal messages
                    del _SINKS[i]
                    break


def shared_logger(trt: ModuleType) -> Any:
    """The process's single ``trt.ILogger`` (created on first use, then reused by every builder and runtime)."""
    with _LOGGER_LOCK:
        logger = _LOGGER.get("logger")
        if logger is not None:
            return logger
        names = {getattr(trt.ILogger.Severity, s): s for s in SEVERITIES if hasattr(trt.ILogger.Severity, s)}

        class _Shared(trt.ILogger):  # type: ignore[misc, name-defined]
            def __init__(self) -> None:
                trt.ILogger.__init__(self)

            def log(self, severity: Any, msg: str) -> None:
                dispatch_log(names.get(severity, "INFO"), msg)

        logger = _LOGGER["logger"] = _Shared()
        return logger


def make_progress_monitor(trt: ModuleType, on_event: Callable[[str, str, int, int, int], None]) -> Any:
    """An ``IProgressMonitor`` (10.0+, unchanged in 11.x) forwarding to ``on_event``.

    ``on_event(kind, phase, step, total, depth)`` with kind ``start``/``step``/``finish`` and depth
    0 for top-level phases. ``step_complete`` returns True so the build continues; display errors
    are swallowed because they must never abort a build.
    """

    class _Monitor(trt.IProgressMonitor):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._totals: dict[str, int] = {}
            self._depth: dict[str, int] = {}

        def _emit(self, kind: str, phase: str, step: int) -> None:
            try:
                on_event(kind, phase, step, self._totals.get(phase, 0), self._depth.get(phase, 0))
            except Exception:
                pass

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self._totals[phase_name] = int(num_steps)
            self._depth[phase_name] = self._depth.get(parent_phase, -1) + 1 if parent_phase else 0
            self._emit("start", phase_name, 0)

        def step_complete(self, phase_name: str, step: int) -> bool:
            self._emit("step", phase_name, int(step) + 1)
            return True

        def phase_finish(self, phase_name: str) -> None:
            self._emit("finish", phase_name, self._totals.get(phase_name, 0))

    return _Monitor()


def dtype_name(trt: ModuleType, dtype: Any) -> str:
    """``float32``/``float16``/``int8``... for a ``trt.DataType`` (names that numpy understands)."""
    try:
        import numpy as np

        return np.dtype(trt.nptype(dtype)).name
    except TypeError:  # bf16 / fp8 / fp4 have no numpy type
        return str(dtype).split(".")[-1].lower()
