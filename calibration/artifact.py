"""The calibration artifact: ``calibration.json``, its on-disk cache and TensorRT's cache format.

``calibration.json`` records per-tensor {min, max, amax}, the method and its parameters, the
image count, and the sha256 of the simplified ONNX, of the preprocessing spec and of the image
list, so a bundle says exactly what its INT8 ranges were computed from.

The cache (default ``~/.cache/effdeploy/calibration``; ``$EFFDEPLOY_CACHE_DIR/calibration`` when
that variable is set; or the ``cache_dir`` argument) is keyed by those hashes plus method,
parameters and tensor list, so a rebuild with identical inputs skips calibration entirely.
Entries are written to a temporary file and renamed, so an interrupted calibration never leaves
an entry behind.

For users who still build with TensorRT's implicit-quantization calibrators
(``IInt8EntropyCalibrator2``), :func:`write_trt_calibration_cache` writes the same ranges in
TensorRT's text cache format.
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from effdeploy.cache import cache_folder, cache_problem as folder_problem, load, store, warn_unusable
from effdeploy.calibration.calibrators import (
    DEFAULT_BATCH_SIZE, DEFAULT_METHOD, DEFAULT_PERCENTILE, DEFAULT_SAMPLES_PER_IMAGE, METHODS,
    CalibrationResult, TensorRange, check_method, collect_statistics, method_parameters,
    ranges_from_statistics,
)
from effdeploy.calibration.sources import CalibrationPlan, load_plan
from effdeploy.data.preprocess import Preprocessing
from effdeploy.errors import EffdeployError
from effdeploy.files import atomic_write, sha256_file, sha256_json

ARTIFACT_FORMAT = 1
CALIBRATION_JSON = "calibration.json"
TRT_CALIBRATION_CACHE = "calibration.cache"
# JetPack 6.1/6.2 ship TensorRT 10.3 (profiles/jetson-orin.toml); TensorRT ignores a cache whose
# header names another version, so pass the version the engine is built with.
DEFAULT_TRT_VERSION = "10.3.0"
TRT_ALGORITHMS = ("EntropyCalibration2", "EntropyCalibration", "MinMaxCalibration", "LegacyCalibration")


@dataclass(frozen=True)
class CalibrationArtifact:
    """Everything ``calibration.json`` holds; ``key`` is its cache key."""

    method: str
    parameters: Mapping[str, Any]
    ranges: Mapping[str, TensorRange]
    image_count: int
    model_sha256: str
    preprocessing_sha256: str
    images_sha256: str  # the images used: source-relative names and file contents
    selection_sha256: str  # the candidates, their order and the count asked (known before decoding)
    images: tuple[str, ...]  # source-relative names of the images used
    source: str
    builtin: bool
    skipped: int = 0
    warnings: tuple[str, ...] = ()
    key: str = ""
    seconds: float = field(default=0.0, compare=False)
    created: str = field(default="", compare=False)
    format_version: int = ARTIFACT_FORMAT

    @property
    def tensors(self) -> tuple[str, ...]:
        return tuple(self.ranges)

    @property
    def result(self) -> CalibrationResult:
        return CalibrationResult(self.method, dict(self.parameters), dict(self.ranges), self.image_count, self.seconds)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "key": self.key,
            "method": self.method,
            "parameters": dict(self.parameters),
            "image_count": self.image_count,
            "model_sha256": self.model_sha256,
            "preprocessing_sha256": self.preprocessing_sha256,
            "images_sha256": self.images_sha256,
            "selection_sha256": self.selection_sha256,
            "source": self.source,
            "builtin": self.builtin,
            "skipped": self.skipped,
            "warnings": list(self.warnings),
            "seconds": round(self.seconds, 3),
            "created": self.created,
            "images": list(self.images),
            "tensors": {name: r.to_dict() for name, r in self.ranges.items()},
        }

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "CalibrationArtifact":
        if int(d.get("format_version", 0)) > ARTIFACT_FORMAT:
            raise EffdeployError(
                f"calibration.json format {d['format_version']} is newer than this effdeploy understands; upgrade effdeploy"
            )
        return CalibrationArtifact(
            method=str(d["method"]),
            parameters=dict(d["parameters"]),
            ranges={str(k): TensorRange.from_dict(v) for k, v in d["tensors"].items()},
            image_count=int(d["image_count"]),
            model_sha256=str(d["model_sha256"]),
            preprocessing_sha256=str(d["preprocessing_sha256"]),
            images_sha256=str(d["images_sha256"]),
            selection_sha256=str(d.get("selection_sha256", "")),
            images=tuple(str(i) for i in d.get("images", ())),
            source=str(d.get("source", "")),
            builtin=bool(d.get("builtin", False)),
            skipped=int(d.get("skipped", 0)),
            warnings=tuple(str(w) for w in d.get("warnings", ())),
            key=str(d.get("key", "")),
            seconds=float(d.get("seconds", 0.0)),
            created=str(d.get("created", "")),
            format_version=int(d.get("format_version", ARTIFACT_FORMAT)),
        )

    def manifest_entry(self) -> dict[str, Any]:
        """The summary a bundle manifest records (the full ranges live in calibration.json)."""
        return {
            "method": self.method,
            "parameters": dict(self.parameters),
            "image_count": self.image_count,
            "source": self.source,
            "builtin": self.builtin,
            "skipped": self.skipped,
            "images_sha256": self.images_sha256,
            "model_sha256": self.model_sha256,
            "preprocessing_sha256": self.preprocessing_sha256,
            "key": self.key,
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True)
class CalibrationOutcome:
    """What :func:`run_calibration` returns: the artifact, and whether it came from the cache.

    ``ids`` are the calibration items on this machine (pass them as ``exclude`` when drawing
    verification images); ``warnings`` are for the caller to print and record in the manifest.
    """

    artifact: CalibrationArtifact
    cache_hit: bool
    ids: tuple[str, ...]
    warnings: tuple[str, ...]
    cache_path: Path | None = None


# --- hashing and keys ----------------------------------------------------------------------


def model_sha256(model: Any) -> str:
    """sha256 of an ONNX file (plus its external-data files, if any) or of a ModelProto."""
    import onnx

    if isinstance(model, onnx.ModelProto):
        return sha256_json({"model_proto": _proto_sha256(model)})
    path = Path(model)
    if not path.is_file():
        raise EffdeployError(f"ONNX model {path} does not exist")
    digest = sha256_file(path)
    external = _external_data_files(path)
    if not external:
        return digest
    return sha256_json({"model": digest, "external": {n: sha256_file(path.parent / n) for n in external}})


def preprocessing_sha256(spec: Preprocessing) -> str:
    return sha256_json(spec.to_dict())


def calibration_key(
    model_sha: str,
    preprocessing_sha: str,
    selection_sha: str,
    method: str,
    parameters: Mapping[str, Any],
    tensors: Sequence[str],
) -> str:
    """The cache key: every input that can change the ranges."""
    return sha256_json(
        {
            "format": ARTIFACT_FORMAT,
            "model": model_sha,
            "preprocessing": preprocessing_sha,
            "images": selection_sha,
            "method": method,
            "parameters": dict(parameters),
            "tensors": sorted(tensors),
        }
    )


# --- calibration.json ----------------------------------------------------------------------


def write_calibration_json(path: str | Path, artifact: CalibrationArtifact) -> Path:
    """Write ``calibration.json`` atomically (temp file + rename)."""
    path = Path(path)
    atomic_write(path, json.dumps(artifact.to_dict(), indent=1) + "\n")
    return path


def read_calibration_json(path: str | Path) -> CalibrationArtifact:
    path = Path(path)
    try:
        return CalibrationArtifact.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise EffdeployError(f"{path} does not exist; run calibration first") from None
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise EffdeployError(f"{path} is not a valid calibration.json ({type(e).__name__}: {e}); recalibrate") from None


# --- the cache -----------------------------------------------------------------------------


def default_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir`` if given, else the build cache's calibration folder (``effdeploy.cache``)."""
    if cache_dir is not None and str(cache_dir) != "":
        return Path(cache_dir).expanduser()
    return cache_folder("calibration")


def cache_problem(cache_dir: str | Path | None = None) -> str | None:
    """Why the calibration cache folder cannot be used, or None (``effdeploy.cache.cache_problem``)."""
    return folder_problem(default_cache_dir(cache_dir))


def cache_entry_path(key: str, cache_dir: str | Path | None = None) -> Path:
    return default_cache_dir(cache_dir) / f"{key}.json"


def cache_lookup(key: str, cache_dir: str | Path | None = None) -> CalibrationArtifact | None:
    """The cached artifact for ``key``, or None (missing, unreadable or not matching the key)."""
    data = load(cache_entry_path(key, cache_dir))
    if data is None:
        return None
    try:
        artifact = CalibrationArtifact.from_dict(json.loads(data))
    except (ValueError, KeyError, TypeError, AttributeError, EffdeployError):  # e.g. written by a newer effdeploy
        return None
    return artifact if artifact.key == key else None


def cache_store(artifact: CalibrationArtifact, cache_dir: str | Path | None = None) -> Path | None:
    """Store under ``artifact.key``; returns None (and writes nothing) if the cache is not writable."""
    if not artifact.key:
        raise EffdeployError("cannot cache a calibration artifact without a key")
    path = cache_entry_path(artifact.key, cache_dir)
    if not store(path, json.dumps(artifact.to_dict(), indent=1) + "\n"):
        return None
    return path


# --- TensorRT's calibration cache ----------------------------------------------------------


def trt_version_code(version: str) -> int:
    """NV_TENSORRT_VERSION: major*10000 + minor*100 + patch from TensorRT 10 on, major*1000 + ... before."""
    parts = str(version).strip().split(".")
    try:
        nums = [int(p) for p in parts[:3]] + [0] * (3 - len(parts[:3]))
    except ValueError:
        raise EffdeployError(f"TensorRT version must look like 10.3.0 (got {version!r})") from None
    major, minor, patch = nums
    return major * (10000 if major >= 10 else 1000) + minor * 100 + patch


def trt_cache_header(trt_version: str = DEFAULT_TRT_VERSION, algorithm: str = "EntropyCalibration2") -> str:
    """E.g. ``TRT-100300-EntropyCalibration2`` (TensorRT 10.3), ``TRT-8601-EntropyCalibration2`` (8.6.1)."""
    if algorithm not in TRT_ALGORITHMS:
        raise EffdeployError(f"TensorRT calibration algorithm must be one of {', '.join(TRT_ALGORITHMS)}")
    return f"TRT-{trt_version_code(trt_version)}-{algorithm}"


def trt_scale_hex(scale: float) -> str:
    """The float32 scale's IEEE-754 bits as hex (big-endian), as TensorRT writes it (``0`` for 0)."""
    bits = struct.unpack(">I", struct.pack(">f", float(scale)))[0]
    return format(bits, "x")


def write_trt_calibration_cache(
    path: str | Path,
    ranges: Mapping[str, TensorRange] | CalibrationArtifact,
    trt_version: str = DEFAULT_TRT_VERSION,
    algorithm: str = "EntropyCalibration2",
) -> Path:
    """TensorRT's text calibration cache: a header line, then ``name: <hex scale>`` with scale = amax/127."""
    if isinstance(ranges, CalibrationArtifact):
        ranges = ranges.ranges
    lines = [trt_cache_header(trt_version, algorithm)]
    for name, r in ranges.items():
        if "\n" in name or "\r" in name:
            raise EffdeployError(f"tensor name {name!r} cannot be written to a TensorRT calibration cache")
        lines.append(f"{name}: {trt_scale_hex(float(r.amax) / 127.0)}")
    path = Path(path)
    atomic_write(path, "\n".join(lines) + "\n")
    return path


def read_trt_calibration_cache(path: str | Path) -> tuple[str, dict[str, float]]:
    """(header, {tensor: scale}) from a TensorRT calibration cache; amax = scale * 127."""
    path = Path(path)
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as e:
        raise EffdeployError(f"cannot read TensorRT calibration cache {path}: {e}") from None
    lines = text.splitlines()
    if not lines or not lines[0].startswith("TRT-"):
        raise EffdeployError(f"{path} is not a TensorRT calibration cache (no TRT-<version>-<algorithm> header)")
    scales = {}
    for line in lines[1:]:
        if not line.strip():
            continue
        name, sep, value = line.rpartition(":")
        try:
            scales[name] = struct.unpack(">f", struct.pack(">I", int(value.strip(), 16)))[0]
        except (ValueError, struct.error):
            raise EffdeployError(f"{path}: malformed line {line!r}") from None
        if not sep:
            raise EffdeployError(f"{path}: malformed line {line!r}")
    return lines[0], scales


# --- the one call the build makes ----------------------------------------------------------


def run_calibration(
    model: Any,
    tensor_names: Sequence[str],
    plan: CalibrationPlan,
    spec: Preprocessing,
    method: str = DEFAULT_METHOD,
    percentile: float = DEFAULT_PERCENTILE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    samples_per_image: int | None = DEFAULT_SAMPLES_PER_IMAGE,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    quiet: bool = False,
) -> CalibrationOutcome:
    """Calibrate ``model`` (the simplified FP32 ONNX) on ``plan``'s images, or reuse the cache.

    On a miss, one pass collects the statistics and all four methods are derived and cached
    (milliseconds each), so switching ``--calibration-method`` later is a cache hit too.
    """
    return run_calibrations(
        model, tensor_names, plan, spec, (method,), percentile, batch_size, samples_per_image,
        cache_dir, use_cache, quiet,
    )[method]


def run_calibrations(
    model: Any,
    tensor_names: Sequence[str],
    plan: CalibrationPlan,
    spec: Preprocessing,
    methods: Sequence[str] = METHODS,
    percentile: float = DEFAULT_PERCENTILE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    samples_per_image: int | None = DEFAULT_SAMPLES_PER_IMAGE,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    quiet: bool = False,
) -> dict[str, CalibrationOutcome]:
    """Several methods from at most one pass: {method: outcome}, cached ones straight from disk.

    Comparing methods (e.g. choosing the one with the lowest logit error) costs one calibration
    pass even when the cache is disabled or not writable.
    """
    methods = tuple(dict.fromkeys(methods))
    if not methods:
        raise EffdeployError("no calibration method requested")
    for m in methods:
        check_method(m, percentile)
    names = list(dict.fromkeys(tensor_names))
    if not names:
        raise EffdeployError("no tensors to calibrate")
    model_sha = model_sha256(model)
    prep_sha = preprocessing_sha256(spec)

    def key_for(m: str) -> tuple[dict[str, Any], str]:
        params = method_parameters(m, percentile, samples_per_image)
        return params, calibration_key(model_sha, prep_sha, plan.sha256, m, params, names)

    outcomes = _cached_outcomes(methods, plan, lambda m: key_for(m)[1], cache_dir) if use_cache else {}
    missing = [m for m in methods if m not in outcomes]
    if not missing:
        return outcomes

    calib_set = load_plan(plan, spec, quiet=quiet)
    stats = collect_statistics(model, names, calib_set, batch_size, samples_per_image, quiet=quiet)
    index = {item: k for k, item in enumerate(plan.items)}
    images = tuple(plan.names[index[i]] for i in calib_set.ids)
    created = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    unwritable = False
    # with a cache, derive every method (ms each) so a later switch of method is a hit too
    for m in dict.fromkeys([*missing, *(METHODS if use_cache else ())]):
        result = ranges_from_statistics(stats, m, percentile)
        m_params, m_key = key_for(m)
        artifact = CalibrationArtifact(
            method=m,
            parameters=m_params,
            ranges=result.ranges,
            image_count=len(calib_set),
            model_sha256=model_sha,
            preprocessing_sha256=prep_sha,
            images_sha256=calib_set.ids_sha256,
            selection_sha256=plan.sha256,
            images=images,
            source=calib_set.source,
            builtin=calib_set.builtin,
            skipped=calib_set.skipped,
            warnings=calib_set.warnings,
            key=m_key,
            seconds=result.seconds,
            created=created,
        )
        stored = cache_store(artifact, cache_dir) if use_cache else None
        unwritable = unwritable or (use_cache and stored is None)
        if m in missing:
            outcomes[m] = CalibrationOutcome(
                artifact=artifact, cache_hit=False, ids=calib_set.ids, warnings=calib_set.warnings, cache_path=stored
            )
    if unwritable:
        warn_unusable(default_cache_dir(cache_dir), "not writable", quiet)
    return {m: outcomes[m] for m in methods}


# --- helpers -------------------------------------------------------------------------------


def _cached_outcomes(methods: Sequence[str], plan: CalibrationPlan, key_of: Any,
                     cache_dir: str | Path | None) -> dict[str, CalibrationOutcome]:
    """The methods whose calibration is in the cache, straight from disk."""
    outcomes: dict[str, CalibrationOutcome] = {}
    for m in methods:
        key = key_of(m)
        hit = cache_lookup(key, cache_dir)
        if hit is not None:
            outcomes[m] = CalibrationOutcome(artifact=hit, cache_hit=True, ids=_ids_on_this_machine(plan, hit.images),
                                             warnings=hit.warnings, cache_path=cache_entry_path(key, cache_dir))
    return outcomes


def _ids_on_this_machine(plan: CalibrationPlan, names: Sequence[str]) -> tuple[str, ...]:
    where = {n: k for k, n in enumerate(plan.names)}
    return tuple(plan.items[where[n]] for n in names if n in where)


def _proto_sha256(model: Any) -> str:
    from effdeploy.files import sha256_proto

    return sha256_proto(model)


def _external_data_files(path: Path) -> list[str]:
    """Relative locations of the external-data files an ONNX file refers to (sorted, unique)."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError and friends
        raise EffdeployError(f"cannot read ONNX model {path}: {type(e).__name__}") from None
    files: set[str] = set()

    def visit(graph: Any) -> None:
        tensors = list(graph.initializer)
        for node in graph.node:
            for attr in node.attribute:
                tensors.extend([attr.t] if attr.HasField("t") else [])
                tensors.extend(attr.tensors)
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    visit(sub)
        for t in tensors:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                files.update(e.value for e in t.external_data if e.key == "location")

    visit(proto.graph)
    return sorted(files)
