"""Eager model -> ONNX (torch dynamo exporter) -> simplified ONNX, checked against eager.

Node names are rewritten to the module path that produced them (``/blocks.5.2.dw/Conv``) so
drift and sensitivity reports can name an MBConv block; exporter metadata (stack traces with
local paths) is dropped from the portable graph.
"""

from __future__ import annotations

import ast
import contextlib
import io
import logging
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..errors import EffdeployError, first_line


OPSET = 18
EXPORT_CACHE_ENTRIES = 8  # most recently used exports kept (a B1 graph is 31 MB)
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def _module_scope(node: onnx.NodeProto) -> str | None:
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(p.value)
            except (ValueError, SyntaxError):
                return None
            modules = [s for s in scopes[:-1] if s]
            return modules[-1] if modules else None
    return None


def rename_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Name nodes after their module path and drop exporter metadata."""
    seen: dict[str, int] = {}
    for node in model.graph.node:
        scope = _module_scope(node) or "graph"
        base = f"/{scope}/{node.op_type}"
        k = seen.get(base, 0)
        seen[base] = k + 1
        node.name = base if k == 0 else f"{base}_{k}"
        del node.metadata_props[:]
    for vi in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        del vi.metadata_props[:]
    for init in model.graph.initializer:
        del init.metadata_props[:]
    del model.metadata_props[:]
    return model


def export_onnx(model: Any, resolution: int, opset: int = OPSET) -> onnx.ModelProto:
    """torch.onnx.export with the dynamo exporter, a dynamic batch and the weights inline."""
    import torch

    if opset < 18:
        raise EffdeployError("opset must be >= 18")
    # The exporter logs one warning per missing torchvision op at import; they are noise here.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    x = torch.randn(2, 3, resolution, resolution)
    batch = torch.export.Dim("batch", min=1, max=4096)
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model.eval(), (x,), dynamo=True, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},), external_data=False, verbose=False, optimize=True,
            )
    except Exception as e:  # the exporter raises a zoo of types; the log has the details
        raise EffdeployError(f"ONNX export failed: {first_line(e, 200)}") from None
    proto = program.model_proto
    return rename_nodes(proto)


def export_key(model: Any, resolution: int, opset: int = OPSET) -> str:
    """Everything the simplified graph depends on: the weights and buffers (hashed tensor by
    tensor, ~0.1 s for B1), the spec, the exporter and simplifier versions and the source of the
    modules that build and export the network."""
    import hashlib
    import importlib.metadata as md

    import torch

    from .. import __version__
    from ..files import sha256_json

    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    package = Path(__file__).parents[1]
    code = {f: hashlib.sha256((package / f).read_bytes()).hexdigest()
            for f in ("model/network.py", "model/spec.py", "export/exporter.py")}

    def version(dist: str) -> str:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return "absent"

    return sha256_json({
        "tensors": h.hexdigest(), "spec": model.spec.to_dict(), "resolution": resolution, "opset": opset,
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxsim": version("onnxsim"),
                     "onnxscript": version("onnxscript"), "effdeploy": __version__},
        "code": code,
    })


def export_cache_dir() -> Path:
    from ..cache import cache_folder

    return cache_folder("export")


def cached_export(model: Any, resolution: int, opset: int = OPSET, use_cache: bool = True) -> tuple[onnx.ModelProto, bool]:
    """``simplify(export_onnx(...))``, reused when the same weights, spec and toolchain were exported
    before (the dynamo exporter is most of a rebuild's export time). Parity against eager is still checked on
    every build, so a stale or corrupt entry cannot pass unnoticed; a corrupt one is re-exported."""
    import os

    from ..cache import load, store

    path = export_cache_dir() / f"{export_key(model, resolution, opset)}.onnx" if use_cache else None
    data = load(path) if path is not None else None
    if data is not None:
        try:
            proto = onnx.load_from_string(data)
            onnx.checker.check_model(proto)
            os.utime(path)  # least recently used goes first when the cache is pruned
            return proto, True
        except Exception:  # truncated or foreign file: export again and overwrite it
            pass
    proto = simplify(export_onnx(model, resolution, opset))
    if path is not None and store(path, proto.SerializeToString()):
        try:
            entries = sorted(path.parent.glob("*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
            for old in entries[EXPORT_CACHE_ENTRIES:]:
                old.unlink(missing_ok=True)
        except OSError:
            pass  # pruning is best effort: another build may be pruning the same folder
    return proto, False


def simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxsim: constant folding and dead-node removal; the graph must stay equivalent."""
    from onnxsim import simplify as onnxsim_simplify

    names = {n.output[0]: n.name for n in model.graph.node if n.output}
    try:
        simplified, ok = onnxsim_simplify(model, check_n=0)
    except Exception as e:
        raise EffdeployError(f"onnxsim failed: {first_line(e, 200)}") from None
    if not ok:
        raise EffdeployError("onnxsim could not validate the simplified graph")
    for node in simplified.graph.node:  # keep module-path names where onnxsim renamed
        if node.output and node.output[0] in names and not node.name.startswith("/"):
            node.name = names[node.output[0]]
    onnx.checker.check_model(simplified)
    return simplified


def graph_summary(model: onnx.ModelProto) -> dict[str, Any]:
    """Op histogram, parameter count and I/O: what `inspect` prints and the manifest records."""
    from collections import Counter

    ops = Counter(n.op_type for n in model.graph.node)
    params = int(sum(int(np.prod(i.dims)) if i.dims else 1 for i in model.graph.initializer))

    def io(values: Any) -> list[dict[str, Any]]:
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_param or d.dim_value for d in t.shape.dim]
            out.append({"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, "shape": dims})
        return out

    return {
        "nodes": len(model.graph.node),
        "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0),
        "ops": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        "initializer_parameters": params,
        "inputs": io(model.graph.input),
        "outputs": io(model.graph.output),
    }


def count_macs(model: onnx.ModelProto) -> int:
    """Multiply-accumulates of Conv/Gemm/MatMul for batch 1, from ONNX shape inference."""
    return sum(macs_per_node(model).values())


def macs_per_node(model: onnx.ModelProto) -> dict[str, int]:
    """Batch-1 multiply-accumulates of each Conv/Gemm/MatMul node, by node name."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for inp in m.graph.input:
        dim = inp.type.tensor_type.shape.dim
        if dim and not dim[0].dim_value:
            dim[0].ClearField("dim_param")
            dim[0].dim_value = 1
    del m.graph.value_info[:]
    for node in m.graph.node:  # ONNX's shape inference does not know ORT's QuickGelu (ort-cpu's swish): same shape out
        if node.domain == "com.microsoft" and node.op_type == "QuickGelu":
            node.op_type, node.domain = "Identity", ""
            del node.attribute[:]
    m = onnx.shape_inference.infer_shapes(m)
    shapes: dict[str, list[int]] = {}
    for v in [*m.graph.input, *m.graph.output, *m.graph.value_info]:
        shapes[v.name] = [d.dim_value for d in v.type.tensor_type.shape.dim]
    for init in m.graph.initializer:
        shapes[init.name] = list(init.dims)
    macs: dict[str, int] = {}
    for node in m.graph.node:
        if node.op_type == "Conv" and node.output[0] in shapes and node.input[1] in shapes:
            w = shapes[node.input[1]]  # (Cout, Cin/groups, kh, kw)
            out = shapes[node.output[0]]  # (N, Cout, H, W)
            macs[node.name] = int(np.prod(out)) * int(np.prod(w[1:]))
        elif node.op_type in ("Gemm", "MatMul") and node.input[1] in shapes and node.output[0] in shapes:
            w = shapes[node.input[1]]
            trans_b = any(a.name == "transB" and a.i for a in node.attribute)
            reduce_dim = w[1] if trans_b else w[0]
            macs[node.name] = int(np.prod(shapes[node.output[0]])) * int(reduce_dim)
    return macs


_BLOCK = re.compile(r"^/(blocks\.\d+\.\d+)[./]")


def block_of(node_name: str) -> str | None:
    m = _BLOCK.match(node_name)
    return m.group(1) if m else None
