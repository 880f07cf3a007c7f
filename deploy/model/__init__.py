"""The network as the function its authors trained: the compound-scaling spec and stage table
(``spec``), known checkpoints' architectures and preprocessing (``archs``), weight loading
(``weights``), the PyTorch module (``network``) and the eager reference (``eager``). Only
``network``, ``weights`` and ``eager`` import torch, and only when used."""

from .. import lazy_exports

__getattr__ = lazy_exports(__name__, {
    "network": ("build_model", "EfficientNet", "MBConv", "SqueezeExcite", "ConvBN", "drop_path",
                "init_batchnorm_statistics"),
    "spec": ("model_spec", "ModelSpec", "parse_phi"),
})
