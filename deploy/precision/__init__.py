"""Reduced precision written into the graph: the INT8 dialects, Q/DQ insertion and FP16 typing
(``qdq``), the exact shift of lopsided activations (``transforms``), the INT8 stage that picks the
calibration method and activation form (``int8_stage``) and the bias reconstruction
(``reconstruct``). Calibration itself is ``effdeploy.calibration``."""

from .. import lazy_exports

__getattr__ = lazy_exports(__name__, {
    "qdq": ("TENSORRT", "ORT_CPU", "OPENVINO", "RUNTIME_DIALECTS", "dialect_named", "GPU_OPSET", "QuantConfig", "Dialect", "DIALECTS", "default_float_parts",
            "dialect_of", "config_for", "weight_qmax", "op_types", "excluded_nodes", "calibration_tensors",
            "quantize", "drop_non_residual_add_qdq", "FP16_SCALE_FLOOR", "FP16_MIN_NORMAL",
            "refit_tiny_weight_scales", "to_fp16", "check_typed", "needs_unoptimized_ort", "precision_summary",
            "apply_initializers"),
    "int8_stage": ("run_int8", "choose_method"),
})
