"""What goes in and comes out, shared by every stage and by the device: image sources and labelled
sets (``datasets``), the one preprocessing definition and its implementation (``preprocess``),
camera-frame formats (``frames``), ImageNet class labels (``labels``, ``imagenet-synsets.tsv``).
Torch-free; imports nothing from the stages after it."""

from .. import lazy_exports

__getattr__ = lazy_exports(__name__, {
    "preprocess": ("Preprocessing", "preprocess", "preprocess_files", "load_image"),
    "datasets": ("labelled_images", "list_images", "builtin_image_paths"),
    "frames": ("FrameInput", "parse_frames"),
    "labels": ("imagenet_labels",),
})
