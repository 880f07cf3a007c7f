"""What this CPU's INT8 dot product is, read from ``/proc/cpuinfo``: with VNNI (AVX-512 VNNI,
AVX-VNNI) or AMX, U8 x S8 products accumulate in 32 bits; without it x86 kernels (ONNX Runtime's and
OpenVINO's) sum pairs of them in saturating 16 bits (``VPMADDUBSW``), which 8-bit weights overflow
(docs/int8.md, *Saturation*). A profile with ``target.vnni = true`` builds 8-bit weights and is
refused on CPUs without it. Written by hand: the flags line is all that is needed, and py-cpuinfo
would be a dependency for one field."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # /proc/cpuinfo names of a 32-bit INT8 dot product


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> tuple[str, ...] | None:
    """The first processor's flags, or None where the file is missing (not Linux) or has none."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    line = next((l for l in text.splitlines() if l.startswith("flags")), None)
    return tuple(line.split(":", 1)[1].split()) if line and ":" in line else None


def vnni_flags(flags: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """The VNNI/AMX flags among ``flags`` (this CPU's by default); empty where there are none or
    they cannot be read (then 8-bit weights are not known to be safe)."""
    flags = cpu_flags() if flags is None else flags
    return tuple(f for f in VNNI_FLAGS if f in (flags or ()))


def describe_int8_dot(flags: tuple[str, ...] | None = None) -> str:
    """One phrase for messages: which INT8 dot product this CPU has."""
    flags = cpu_flags() if flags is None else flags
    if flags is None:
        where = f"{platform.system()} {platform.machine()}".strip() or "this system"
        return f"an INT8 dot product of unknown kind (no x86 flags in /proc/cpuinfo on {where})"
    found = vnni_flags(flags)
    if found:
        return ", ".join(found)
    return "AVX2 without VNNI" if "avx2" in flags else "no AVX2 and no VNNI"


INTEGER_KERNELS = {"openvino": "OpenVINO", "onnxruntime": "ONNX Runtime"}


def saturates(manifest: Any, backend: str, flags: tuple[str, ...] | None = None) -> bool:
    """Whether ``backend`` would run this bundle's INT8 graph with integer kernels that saturate
    its weights on this CPU: 8-bit weights (``quantization.config.reduce_range`` false: the GPU
    dialect, the VNNI profiles, cpu-openvino bundles before 7-bit), no VNNI, and a runtime that runs
    them as INT8 (OpenVINO every Q/DQ graph; ONNX Runtime only the ort-cpu dialect, whose QLinear
    kernels it fuses; the other dialects it runs as DequantizeLinear + float convs)."""
    if manifest is None or getattr(manifest, "precision", None) != "int8":
        return False
    q = getattr(manifest, "quantization", None) or {}
    return kernels_saturate(not (q.get("config") or {}).get("reduce_range", True), q.get("dialect"), backend, flags)


def kernels_saturate(eight_bit: bool, dialect: str | None, backend: str, flags: tuple[str, ...] | None = None) -> bool:
    """The rule behind :func:`saturates`, for an INT8 graph of ``dialect`` with 8-bit (``eight_bit``)
    or 7-bit weights run by ``backend`` on this CPU (``flags``); doctor asks it of a profile."""
    if not eight_bit or (backend != "openvino" and not (backend == "onnxruntime" and dialect == "ort-cpu")):
        return False
    return not vnni_flags(flags)


def portable_profile(manifest: Any) -> str:
    """The profile with 7-bit weights for the same runtime: what to rebuild a saturating bundle with."""
    return "cpu" if (getattr(manifest, "quantization", None) or {}).get("dialect") == "ort-cpu" else "cpu-openvino"


def check_int8_dot(manifest: Any, path: Path, backend: str) -> None:
    """Refuse to run an INT8 bundle where :func:`saturates`: the logits would be wrong without an
    error (docs/int8.md, *Saturation*)."""
    from ..errors import EffdeployError

    if not saturates(manifest, backend):
        return
    profile = (getattr(manifest, "profile", None) or {})
    made_for = " (built for CPUs with VNNI or AMX)" if profile.get("vnni") else ""
    other = "" if backend == "onnxruntime" else ", or run it with --backend onnxruntime"
    raise EffdeployError(
        f"{path} has 8-bit INT8 weights{made_for}, which {INTEGER_KERNELS.get(backend, backend)}'s INT8 kernels "
        f"saturate on this CPU ({describe_int8_dot()}); rebuild it with --profile {portable_profile(manifest)} "
        f"(7-bit weights, any x86 CPU){other}")


def twin_profile(runtime: str, vnni: bool) -> str | None:
    """The built-in CPU profile for ``runtime`` with (``vnni``) or without 8-bit INT8 weights."""
    from ..profiles import all_profiles

    return next((p.name for p in all_profiles()
                 if p.device == "cpu" and p.vnni is vnni and p.target_runtime == runtime), None)


def int8_build_notes(profile: Any, flags: tuple[str, ...] | None = None) -> list[str]:
    """What an INT8 build for ``profile`` on this CPU should say about weight bits. A VNNI profile
    for OpenVINO builds anywhere (ONNX Runtime verifies its graph with float convs, exactly), but its
    bundle saturates on OpenVINO here. A portable CPU profile on a CPU with VNNI or AMX: the
    built-in twin with 8-bit weights measured more accurate on B0 (docs/int8.md, *Saturation*) where
    every CPU the bundle runs on has VNNI too; the build host is often the deployment host, and nothing else
    would tell the user that profile exists."""
    if profile.device != "cpu":
        return []
    found = vnni_flags(flags)
    runtime = profile.target_runtime
    if profile.vnni:
        if found or runtime == "onnxruntime":  # an onnxruntime VNNI build without VNNI is refused earlier
            return []
        return [f"this CPU has {describe_int8_dot(flags)}: the bundle's 8-bit weights run on {runtime} only on CPUs "
                "with VNNI or AMX"]
    from ..profiles import builtin_profile_names

    twin = twin_profile(runtime, vnni=True) if found else None
    if twin is None:
        return []
    own = "" if profile.name in builtin_profile_names() else f" (or target.vnni = true in {profile.name}'s file)"
    return [f"this CPU has {', '.join(found)}: if every CPU the bundle will run on has VNNI or AMX, --profile {twin}"
            f"{own} builds 8-bit INT8 weights, measured closer to FP32 on B0 (docs/int8.md, *Saturation*); "
            f"{profile.name}'s 7-bit weights run on any x86 CPU"]
