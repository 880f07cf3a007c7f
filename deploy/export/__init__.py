"""Eager model -> ONNX: the export with node names by module path and its cache (``exporter``),
the frame-in graphs with preprocessing as ONNX ops (``frames``), and the logits of an exported
graph on ONNX Runtime, cached (``logits``)."""

from .. import lazy_exports

__getattr__ = lazy_exports(__name__, {
    "exporter": ("OPSET", "EXPORT_CACHE_ENTRIES", "INPUT_NAME", "OUTPUT_NAME", "rename_nodes", "export_onnx",
                 "export_key", "export_cache_dir", "cached_export", "simplify", "graph_summary", "count_macs",
                 "macs_per_node", "block_of"),
    "logits": ("ort_logits", "cached_logits", "reference_logits", "relative_mse", "run_batched"),
    "frames": ("preprocessing_model", "frame_model"),
})
