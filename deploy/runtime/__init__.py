"""The device side, torch-free: the ``Runner`` a camera app embeds (``runner``: open a bundle or
engine, classify, stream), frame routing to frame-in graphs (``frames``), what ``bench`` feeds a
runner (``benchmark``) and what this machine can run (``doctor``)."""

from .. import lazy_exports

__getattr__ = lazy_exports(__name__, {
    "runner": ("KIND_BUNDLE", "KIND_ONNX", "KIND_ENGINE", "Prediction", "Artifact", "resolve_artifact",
               "check_status", "open_backend", "class_labels", "softmax", "top_k", "StreamResult", "Runner",
               "parse_source", "open_video", "video_frames"),
    "frames": ("FrameRouter", "open_frame_routes"),
})
