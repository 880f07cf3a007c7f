"""Triton's own model configuration schema for the tests: ``inference.ModelConfig`` from the
``model_config_pb2`` module that the tritonclient package ships (generated from Triton's
``model_config.proto``). It is loaded from its file, so the gRPC client package around it (and its
dependencies) need not import. ``text_format.Parse`` then rejects a config.pbtxt with a field Triton
does not have, a value of the wrong type or an unknown enum name, as Triton's model loader does."""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import pytest


@lru_cache(maxsize=1)
def model_config_class():
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("tritonclient (Triton's model_config schema) is not installed; make install adds it")
    path = Path(next(iter(spec.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
    module_spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.ModelConfig
