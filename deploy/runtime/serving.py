"""A bundle or engine handed to a serving framework: a Triton Inference Server model repository
(``config.pbtxt`` beside the model, written from the manifest so the shapes, the class names and
ONNX Runtime's optimisation level are the ones the bundle was verified with).

Triton does no preprocessing: the repository gets a ``preprocess.py`` that runs the bundle's own
preprocessing definition (effdeploy's ``preprocess()``), so a client sends exactly the tensors the
bundle was judged on.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import EffdeployError

# Triton's names (model_config.proto: DataType; the platforms of its ONNX Runtime and TensorRT backends)
TRITON_DTYPES = {"float32": "TYPE_FP32", "float": "TYPE_FP32", "float16": "TYPE_FP16", "half": "TYPE_FP16",
                 "uint8": "TYPE_UINT8", "int8": "TYPE_INT8"}
PLATFORM_ONNX = "onnxruntime_onnx"
PLATFORM_PLAN = "tensorrt_plan"
# Triton's ONNX Runtime backend maps optimization.graph.level 2 to ORT_DISABLE_ALL (-1 basic, 1 extended)
ORT_DISABLE_ALL_LEVEL = 2
LABELS = "labels.txt"


@dataclass(frozen=True)
class ServingExport:
    """What an export wrote, and what a person must know before deploying it."""

    target: str  # "triton"
    directory: Path
    files: tuple[str, ...]
    notes: tuple[str, ...] = ()
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "directory": str(self.directory), "files": list(self.files),
                "notes": list(self.notes), **dict(self.details)}


def _dims(shape: Any) -> tuple[bool, list[int]]:
    """(batched, dims without the batch axis) from a manifest shape like ['batch', 3, 224, 224]."""
    shape = list(shape)
    batched = bool(shape) and (not isinstance(shape[0], int) or shape[0] < 0)
    dims = shape[1:] if batched else shape
    if not all(isinstance(d, int) and d > 0 for d in dims):
        raise EffdeployError(f"the model's shape {shape} has a free axis other than the batch; Triton needs fixed dims")
    return batched, [int(d) for d in dims]


def _onnx_io(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The served graph's first input and output as Triton sees them (from the file, not a record)."""
    import onnx
    from onnx import helper

    graph = onnx.load(str(path), load_external_data=False).graph

    def one(v: Any) -> dict[str, Any]:
        t = v.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "batch") for d in t.shape.dim]
        return {"name": v.name, "dtype": helper.tensor_dtype_to_np_dtype(t.elem_type).name, "shape": shape}

    inits = {i.name for i in graph.initializer}
    return one(next(v for v in graph.input if v.name not in inits)), one(graph.output[0])


def _tensor(kind: str, io: Mapping[str, Any], extra: str = "") -> str:
    dtype = TRITON_DTYPES.get(str(io.get("dtype", "float32")).lower().rpartition(".")[2])
    if dtype is None:
        raise EffdeployError(f"tensor {io.get('name')} has dtype {io.get('dtype')}, which this export does not map")
    _, dims = _dims(io["shape"])
    return (f"{kind} [\n  {{\n    name: {json.dumps(str(io['name']))}\n    data_type: {dtype}\n"
            f"{extra}    dims: [ {', '.join(map(str, dims))} ]\n  }}\n]\n")


def triton_config(name: str, platform: str, inputs: Mapping[str, Any], outputs: Mapping[str, Any],
                  max_batch: int, optimize: bool) -> str:
    """``config.pbtxt`` (protobuf text format of Triton's ``inference.ModelConfig``)."""
    text = f"name: {json.dumps(name)}\nplatform: {json.dumps(platform)}\nmax_batch_size: {max_batch}\n"
    fmt = "    format: FORMAT_NCHW\n" if len(_dims(inputs["shape"])[1]) == 3 else ""
    text += _tensor("input", inputs, fmt)
    text += _tensor("output", outputs, f"    label_filename: {json.dumps(LABELS)}\n")
    if max_batch > 0:
        text += "dynamic_batching {\n  max_queue_delay_microseconds: 100\n}\n"
    if platform == PLATFORM_ONNX and not optimize:
        # the bundle was verified with ONNX Runtime's graph optimisation off (it rewrites these Q/DQ / FP16
        # graphs wrongly on CPU); Triton must run it the same way
        text += f"optimization {{\n  graph {{\n    level: {ORT_DISABLE_ALL_LEVEL}\n  }}\n}}\n"
    return text


def _preprocess_client(art: Any, name: str, input_name: str, frame_graphs: list[str]) -> str:
    pre = json.dumps(art.preprocessing.to_dict())
    frames = (f"# This bundle also has frame-in graphs ({', '.join(frame_graphs)}): preprocessing inside the graph,\n"
              "# raw uint8 HxWx3 frames in; serve one of those instead to skip this step.\n" if frame_graphs else "")
    return f'''"""Client-side preprocessing for the Triton model {name!r}: Triton does none, so the pixels must
be prepared exactly as the bundle was verified (effdeploy's preprocess(), the manifest's definition).
Needs effdeploy (torch-free: pip install effdeploy) and tritonclient[http]."""
{frames}
import sys

from effdeploy.data.preprocess import Preprocessing, load_image, preprocess

PREPROCESSING = Preprocessing.from_dict({pre})


def tensors(paths):
    """NCHW float32 batch for the model's input {input_name!r}."""
    return preprocess([load_image(p) for p in paths], PREPROCESSING)


if __name__ == "__main__":
    import tritonclient.http as http

    x = tensors(sys.argv[1:])
    client = http.InferenceServerClient("localhost:8000")
    inp = http.InferInput({input_name!r}, list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    out = client.infer({name!r}, [inp], outputs=[http.InferRequestedOutput("logits", class_count=5)])
    print(out.as_numpy("logits"))
'''


def export_triton(artifact: str | Path, out: str | Path, name: str | None = None, max_batch: int = 8) -> ServingExport:
    """``out/<name>/config.pbtxt`` + ``1/model.onnx`` (or ``model.plan`` from an engine) + labels +
    ``preprocess.py``; refused when ``out/<name>`` already holds something."""
    from ..backends.onnxrt import manifest_optimize
    from .runner import artifact_labels, resolve_artifact

    if max_batch < 0:
        raise EffdeployError(f"--max-batch must be >= 0 (0: no batching), got {max_batch}")
    art = resolve_artifact(artifact)
    name = name or f"{art.model_name}-{art.precision}"
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise EffdeployError(f"--name {name!r} is not a usable Triton model name (a folder name, no slashes)")
    folder = Path(out) / name
    if folder.exists() and any(folder.iterdir()):
        raise EffdeployError(f"{folder} exists and is not empty; choose another --name or --triton folder")
    engine = art.kind == "engine"
    inputs, outputs = (dict(art.manifest.inputs[0]), dict(art.manifest.outputs[0])) if engine else _onnx_io(art.model_path)
    batched, _ = _dims(inputs["shape"])
    if engine:  # the engine's optimisation profile bounds the batch
        max_batch = int((inputs.get("max") or [max_batch])[0]) if batched else 0
    elif not batched:
        max_batch = 0
    model_file = "model.plan" if engine else "model.onnx"
    (folder / "1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(art.model_path, folder / "1" / model_file)
    optimize = True if engine else manifest_optimize(art.manifest)
    config = triton_config(name, PLATFORM_PLAN if engine else PLATFORM_ONNX, inputs, outputs, max_batch, optimize)
    (folder / "config.pbtxt").write_text(config, encoding="utf-8")
    (folder / LABELS).write_text("".join(f"{n}\n" for n in artifact_labels(art)), encoding="utf-8")
    frames = [str(f.get("file")) for f in (getattr(art.manifest, "frames", ()) or ())]
    (folder / "preprocess.py").write_text(_preprocess_client(art, name, str(inputs["name"]), frames), encoding="utf-8")
    notes = ["Triton does no preprocessing: clients must send preprocess()'s tensors (preprocess.py)"]
    if not optimize:
        notes.append("ONNX Runtime graph optimisation off (optimization.graph.level 2), as the bundle was verified")
    return ServingExport("triton", folder, ("config.pbtxt", f"1/{model_file}", LABELS, "preprocess.py"), tuple(notes),
                         {"name": name, "max_batch_size": max_batch, "platform": PLATFORM_PLAN if engine else PLATFORM_ONNX})
