"""Calibration: data sources, activation-range calibrators and the calibration artifact.

Typical build use::

    plan = plan_calibration(source, 256, seed=0)            # cheap: lists and hashes files
    outcome = run_calibration(model_path, tensors, plan, spec, method="entropy")
    write_calibration_json(bundle / CALIBRATION_JSON, outcome.artifact)
    verify = load_calibration_set(source, 200, spec, exclude=outcome.ids)
"""

from effdeploy.cache import CACHE_ENV
from effdeploy.calibration.artifact import (
    ARTIFACT_FORMAT, CALIBRATION_JSON, DEFAULT_TRT_VERSION, TRT_CALIBRATION_CACHE, CalibrationArtifact,
    CalibrationOutcome, cache_entry_path, cache_lookup, cache_problem, cache_store, calibration_key,
    default_cache_dir, model_sha256, preprocessing_sha256, read_calibration_json, read_trt_calibration_cache,
    run_calibration, run_calibrations, trt_cache_header, trt_scale_hex, trt_version_code,
    write_calibration_json, write_trt_calibration_cache,
)
from effdeploy.calibration.calibrators import (
    DEFAULT_BATCH_SIZE, DEFAULT_METHOD, DEFAULT_PERCENTILE, DEFAULT_SAMPLES_PER_IMAGE, METHODS,
    ActivationStatistics, CalibrationResult, TensorRange, TensorStatistics, calibrate, calibrate_with_ort,
    check_method, collect_statistics, entropy_amax, method_parameters, mse_amax, per_channel_weight_scales,
    ranges_from_statistics, tensor_range, to_tensors_data,
)
from effdeploy.calibration.sources import (
    BUILTIN_VIEWS, IMAGE_SUFFIXES, VIDEO_SUFFIXES, CalibrationPlan, CalibrationSet, check_usable,
    complement_ids, list_items, load_calibration_set, load_plan, plan_calibration, source_kind,
)
from effdeploy.data.datasets import BUILTIN_IMAGES, builtin_image_dir

__all__ = [
    "ARTIFACT_FORMAT",
    "BUILTIN_IMAGES",
    "BUILTIN_VIEWS",
    "CACHE_ENV",
    "CALIBRATION_JSON",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_METHOD",
    "DEFAULT_PERCENTILE",
    "DEFAULT_SAMPLES_PER_IMAGE",
    "DEFAULT_TRT_VERSION",
    "IMAGE_SUFFIXES",
    "METHODS",
    "TRT_CALIBRATION_CACHE",
    "VIDEO_SUFFIXES",
    "ActivationStatistics",
    "CalibrationArtifact",
    "CalibrationOutcome",
    "CalibrationPlan",
    "CalibrationResult",
    "CalibrationSet",
    "TensorRange",
    "TensorStatistics",
    "builtin_image_dir",
    "cache_entry_path",
    "cache_lookup",
    "cache_problem",
    "cache_store",
    "calibrate",
    "calibrate_with_ort",
    "check_usable",
    "calibration_key",
    "check_method",
    "collect_statistics",
    "complement_ids",
    "default_cache_dir",
    "entropy_amax",
    "list_items",
    "load_calibration_set",
    "load_plan",
    "method_parameters",
    "model_sha256",
    "mse_amax",
    "per_channel_weight_scales",
    "plan_calibration",
    "preprocessing_sha256",
    "ranges_from_statistics",
    "read_calibration_json",
    "read_trt_calibration_cache",
    "run_calibration",
    "run_calibrations",
    "source_kind",
    "tensor_range",
    "to_tensors_data",
    "trt_cache_header",
    "trt_scale_hex",
    "trt_version_code",
    "write_calibration_json",
    "write_trt_calibration_cache",
]
