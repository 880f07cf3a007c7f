"""Target profiles: TOML data, one file per device (``<name>.toml`` beside this file), and their
loader (``load_profile``, ``Profile``): what a target runs, its precisions, TensorRT release and DLA."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from ..backends.tensorrt.compat import TrtVersion
from ..errors import EffdeployError


if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class TensorRTRelease:
    """A TensorRT line available on the target (e.g. JetPack 6.x -> TensorRT 10.3)."""

    platform: str
    min_version: str
    max_version: str | None = None  # exclusive; None = open-ended
    dla: bool = False

    def contains(self, version: "str | TrtVersion") -> bool:
        """``min_version <= version < max_version`` (TrtVersion's comparison, the only one)."""
        return TrtVersion.parse(version).in_range(self.min_version, self.max_version)


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    device: str  # "cpu" or "gpu"
    precisions: tuple[str, ...]
    default_precision: str = "fp32"
    architecture: str | None = None
    compute_capability: str | None = None
    memory_gb: float | None = None
    dla_cores: int = 0
    dla_precisions: tuple[str, ...] = ()
    tensorrt: tuple[TensorRTRelease, ...] = ()
    workspace_mb: int = 1024
    builder_optimization_level: int = 3
    batch_min: int = 1
    batch_opt: int = 1
    batch_max: int = 8
    hardware_compatibility: str = "none"  # "none" | "ampere_plus" | "same_compute_capability"
    version_compatible: bool = False
    source: str = ""
    path: str = ""
    runtime: str = ""  # what runs the bundle: tensorrt (gpu); onnxruntime or openvino (cpu); "" = the device's default
    # a CPU target whose INT8 dot product accumulates in 32 bits (AVX-512 VNNI, AVX-VNNI or AMX): its INT8
    # graphs take 8-bit weights, and building or running them on a CPU without VNNI is refused
    vnni: bool = False

    @property
    def is_gpu(self) -> bool:
        return self.device == "gpu"

    @property
    def target_runtime(self) -> str:
        """The runtime the target runs bundles with: ``target.runtime``, else tensorrt on a GPU and
        onnxruntime on a CPU. It picks the INT8 dialect (effdeploy.precision.qdq.RUNTIME_DIALECTS)."""
        runtime = self.runtime or ("tensorrt" if self.is_gpu else "onnxruntime")
        if runtime not in RUNTIMES.get(self.device, ()):  # a Profile made in Python skips _validate
            raise EffdeployError(f"profile {self.name}: target.runtime of a {self.device} profile must be one of "
                                 f"{', '.join(RUNTIMES.get(self.device, ()))} (got {runtime!r})")
        return runtime

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "Profile":
        d = dict(d)
        d["precisions"] = tuple(d.get("precisions", ()))
        d["dla_precisions"] = tuple(d.get("dla_precisions", ()))
        d["tensorrt"] = tuple(
            r if isinstance(r, TensorRTRelease) else TensorRTRelease(**r) for r in d.get("tensorrt", ())
        )
        return Profile(**d)


def builtin_profile_names() -> list[str]:
    root = resources.files("effdeploy.profiles")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


def _parse(text: str, origin: str) -> Profile:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise EffdeployError(f"profile {origin} is not valid TOML: {e}") from None
    try:
        target = raw.get("target", {})
        gpu = raw.get("gpu", {})
        prec = raw.get("precision", {})
        build = raw.get("build", {})
        releases = tuple(
            TensorRTRelease(
                platform=str(r["platform"]),
                min_version=str(r["min_version"]),
                max_version=(str(r["max_version"]) if r.get("max_version") else None),
                dla=bool(r.get("dla", False)),
            )
            for r in raw.get("tensorrt", [])
        )
        profile = Profile(
            name=str(target["name"]),
            description=str(target.get("description", "")),
            device=str(target["device"]),
            source=str(target.get("source", "")),
            architecture=gpu.get("architecture"),
            compute_capability=(str(gpu["compute_capability"]) if "compute_capability" in gpu else None),
            memory_gb=gpu.get("memory_gb", target.get("memory_gb")),
            dla_cores=int(gpu.get("dla_cores", 0)),
            dla_precisions=tuple(gpu.get("dla_precisions", ())),
            precisions=tuple(prec["supported"]),
            default_precision=str(prec.get("default", prec["supported"][0])),
            tensorrt=releases,
            workspace_mb=int(build.get("workspace_mb", 1024)),
            builder_optimization_level=int(build.get("builder_optimization_level", 3)),
            batch_min=int(build.get("batch_min", 1)),
            batch_opt=int(build.get("batch_opt", 1)),
            batch_max=int(build.get("batch_max", 8)),
            hardware_compatibility=str(build.get("hardware_compatibility", "none")),
            version_compatible=bool(build.get("version_compatible", False)),
            path=origin,
            runtime=str(target.get("runtime", "")),
            vnni=_boolean(target.get("vnni", False), "target.vnni"),
        )
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise EffdeployError(f"profile {origin} is missing or has a bad field ({e}); see profiles/cpu.toml") from None
    _validate(profile, origin)
    return profile


RUNTIMES = {"gpu": ("tensorrt",), "cpu": ("onnxruntime", "openvino")}


def _boolean(value: Any, key: str) -> bool:
    """A TOML boolean (``bool("false")`` would be True)."""
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, got {value!r}")
    return value


def _validate(p: Profile, origin: str) -> None:
    if p.device not in ("cpu", "gpu"):
        raise EffdeployError(f"profile {origin}: target.device must be 'cpu' or 'gpu' (got {p.device!r})")
    bad = [x for x in p.precisions if x not in PRECISIONS]
    if bad or not p.precisions:
        raise EffdeployError(f"profile {origin}: precision.supported must be a subset of {PRECISIONS}")
    if p.default_precision not in p.precisions:
        raise EffdeployError(f"profile {origin}: precision.default must be one of precision.supported")
    p.target_runtime  # refuses a runtime the device cannot have, in one line
    if p.vnni and p.device != "cpu":
        raise EffdeployError(f"profile {origin}: target.vnni describes a CPU's INT8 dot product; a {p.device} "
                             "profile cannot have it")
    if p.device == "gpu" and not p.compute_capability:
        raise EffdeployError(f"profile {origin}: a gpu profile needs gpu.compute_capability")
    if not (1 <= p.batch_min <= p.batch_opt <= p.batch_max):
        raise EffdeployError(f"profile {origin}: need 1 <= batch_min <= batch_opt <= batch_max")


def load_profile(name_or_path: str | Path) -> Profile:
    """A built-in name (``jetson-orin``) or a path to a user's TOML file."""
    text_name = str(name_or_path)
    path = Path(text_name)
    if not text_name.strip():
        raise EffdeployError(f"--profile is empty; known profiles: {', '.join(builtin_profile_names())} "
                             "(or pass a path to a .toml file)")
    if path.is_dir():
        raise EffdeployError(f"profile {text_name} is a directory; pass a built-in profile name or a .toml file "
                             "(see 'effdeploy profiles')")
    if text_name.endswith(".toml") or path.is_file():
        if not path.is_file():
            raise EffdeployError(f"profile file {text_name} does not exist")
        try:
            return _parse(path.read_text(encoding="utf-8"), str(path))
        except OSError as e:
            raise EffdeployError(f"cannot read profile file {text_name}: {e.strerror}") from None
    names = builtin_profile_names()
    if text_name not in names:
        raise EffdeployError(
            f"unknown profile {text_name!r}; known profiles: {', '.join(names)} (or pass a path to a .toml file)"
        )
    text = resources.files("effdeploy.profiles").joinpath(f"{text_name}.toml").read_text(encoding="utf-8")
    return _parse(text, text_name)


def all_profiles() -> list[Profile]:
    return [load_profile(n) for n in builtin_profile_names()]
