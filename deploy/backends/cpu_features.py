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
        return f"its flags cannot be read on {platform.system() or 'this system'} {platform.machine()}"
    found = vnni_flags(flags)
    if found:
        return ", ".join(found)
    return "AVX2 without VNNI" if "avx2" in flags else "no AVX2 and no VNNI"


def check_int8_dot(manifest: Any, path: Path) -> None:
    """Refuse an INT8 bundle built for CPUs with VNNI (8-bit weights, ``target.vnni``) on a CPU
    without it: ONNX Runtime's and OpenVINO's kernels there saturate those weights and return
    wrong logits without an error (docs/int8.md, *Saturation*)."""
    from ..errors import EffdeployError

    profile = getattr(manifest, "profile", None) or {}
    if manifest.precision == "int8" and profile.get("vnni") and not vnni_flags():
        raise EffdeployError(
            f"{path} was built for CPUs with VNNI or AMX ({profile.get('name')}: 8-bit INT8 weights) and this CPU "
            f"has {describe_int8_dot()}, whose INT8 kernels saturate them; rebuild it here with --profile cpu "
            "(7-bit weights, any x86 CPU)")
