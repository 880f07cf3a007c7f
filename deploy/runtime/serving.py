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


def engines_by_cc(arts: list[Any]) -> dict[str, Any]:
    """Engines of one bundle for several GPUs: compute capability -> engine. Triton picks the file
    for the GPU it runs on (``cc_model_filenames``); two engines for one CC, or engines of different
    graphs, are refused."""
    out: dict[str, Any] = {}
    for a in arts:
        if a.kind != "engine":
            raise EffdeployError(f"{a.path}: several artifacts make one Triton model only as engines of one bundle "
                                 "for different GPUs; export a bundle on its own")
        cc = str(a.manifest.gpu_info.compute_capability)
        if cc in out:
            raise EffdeployError(f"{out[cc].path} and {a.path} are both for compute capability {cc}; give one per GPU")
        out[cc] = a
    graphs = {a.manifest.onnx_sha256 for a in out.values()}
    if len(graphs) > 1:
        raise EffdeployError("these engines were compiled from different graphs; one Triton model serves one function")
    return out


def _resolved(artifact: Any) -> Any:
    """An :class:`effdeploy.runtime.runner.Artifact` as given, or the one a path resolves to (each
    resolution loads the manifest and hashes every artifact: done once per export)."""
    from .runner import Artifact, resolve_artifact

    return artifact if isinstance(artifact, Artifact) else resolve_artifact(artifact)


def export_triton(artifact: Any, out: str | Path, name: str | None = None, max_batch: int = 8) -> ServingExport:
    """``out/<name>/config.pbtxt`` + ``1/model.onnx`` (or ``model.plan`` from an engine; with engines
    for several GPUs, ``model_sm<cc>.plan`` each and ``cc_model_filenames``) + labels +
    ``preprocess.py``; refused when ``out/<name>`` already holds something."""
    from ..backends.onnxrt import manifest_optimize
    from .runner import artifact_labels

    if max_batch < 0:
        raise EffdeployError(f"--max-batch must be >= 0 (0: no batching), got {max_batch}")
    many = [_resolved(a) for a in artifact] if isinstance(artifact, (list, tuple)) else None
    ccs = engines_by_cc(many) if many and len(many) > 1 else {}
    art = many[0] if many else _resolved(artifact)
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
    per_cc = {cc: f"model_sm{cc.replace('.', '')}.plan" for cc in sorted(ccs)}
    for cc, file in per_cc.items():
        shutil.copyfile(ccs[cc].model_path, folder / "1" / file)
    if not per_cc:
        shutil.copyfile(art.model_path, folder / "1" / model_file)
    optimize = True if engine else manifest_optimize(art.manifest)
    config = triton_config(name, PLATFORM_PLAN if engine else PLATFORM_ONNX, inputs, outputs, max_batch, optimize)
    config += "".join(f"cc_model_filenames [\n  {{\n    key: {json.dumps(cc)}\n    value: {json.dumps(f)}\n  }}\n]\n"
                      for cc, f in per_cc.items())
    (folder / "config.pbtxt").write_text(config, encoding="utf-8")
    (folder / LABELS).write_text("".join(f"{n}\n" for n in artifact_labels(art)), encoding="utf-8")
    frames = [str(f.get("file")) for f in (getattr(art.manifest, "frames", ()) or ())]
    (folder / "preprocess.py").write_text(_preprocess_client(art, name, str(inputs["name"]), frames), encoding="utf-8")
    notes = ["Triton does no preprocessing: clients must send preprocess()'s tensors (preprocess.py)"]
    if not optimize:
        notes.append("ONNX Runtime graph optimisation off (optimization.graph.level 2), as the bundle was verified")
    files = tuple(f"1/{f}" for f in per_cc.values()) or (f"1/{model_file}",)
    if per_cc:
        notes.append("Triton loads the engine for its GPU's compute capability: " + ", ".join(
            f"{cc} -> {f}" for cc, f in per_cc.items()) + "; another GPU fails to load (no model.plan fallback)")
    return ServingExport("triton", folder, ("config.pbtxt", *files, LABELS, "preprocess.py"), tuple(notes),
                         {"name": name, "max_batch_size": max_batch, "platform": PLATFORM_PLAN if engine else PLATFORM_ONNX})


# --- DeepStream (Gst-nvinfer) ---------------------------------------------------------------------

# The keys Gst-nvinfer's config parser reads in [property] (gstnvinfer_property_parser.h, DeepStream
# 6.x: CONFIG_GROUP_INFER_*); every key the export writes must be one of them, or nvinfer ignores it.
NVINFER_KEYS = frozenset({
    "gie-unique-id", "process-mode", "interval", "labelfile-path", "gpu-id", "secondary-reinfer-interval",
    "output-tensor-meta", "enable-dla", "use-dla-core", "batch-size", "tensor-meta-pool-size", "network-mode",
    "model-engine-file", "int8-calib-file", "workspace-size", "output-blob-names", "is-classifier", "network-type",
    "force-implicit-batch-dim", "infer-dims", "output-io-formats", "layer-device-precision", "model-color-format",
    "net-scale-factor", "offsets", "mean-file", "maintain-aspect-ratio", "symmetric-padding", "scaling-filter",
    "scaling-compute-hw", "network-input-order", "input-tensor-from-meta", "custom-lib-path", "parse-bbox-func-name",
    "parse-bbox-instance-mask-func-name", "engine-create-func-name", "parse-classifier-func-name",
    "custom-network-config", "model-file", "proto-file", "uff-file", "uff-input-order", "input-dims",
    "uff-input-dims", "uff-input-blob-name", "tlt-encoded-model", "tlt-model-key", "onnx-file",
    "num-detected-classes", "enable-dbscan", "cluster-mode", "classifier-type", "classifier-threshold",
    "classifier-async-mode", "segmentation-threshold", "segmentation-output-order", "output-instance-mask",
    "input-object-min-width", "input-object-min-height", "input-object-max-width", "input-object-max-height",
    "operate-on-gie-id", "operate-on-class-ids", "filter-out-class-ids",
})
NETWORK_MODE = {"fp32": 0, "int8": 1, "fp16": 2}  # nvinfer's network-mode
SCALING_BILINEAR, SCALING_ON_GPU = 1, 1  # NvBufSurfTransformInter_Bilinear; scaling-compute-hw GPU
PROBABILITIES = "probabilities"


def deepstream_graph(model: Any, pre: Any) -> tuple[Any, float, tuple[float, float, float], bool]:
    """The bundle's graph as nvinfer feeds it: a Softmax on the logits (nvinfer's classifier reads
    probabilities) and, where one scale for all channels cannot express the normalisation
    (ImageNet's per-channel std), the normalisation inside the graph, its input then 0-255 RGB.
    Returns the graph, net-scale-factor, offsets and whether the normalisation is in the graph."""
    import onnx
    from onnx import helper, numpy_helper

    import numpy as np

    g = onnx.ModelProto()
    g.CopyFrom(model)
    graph = g.graph
    logits = graph.output[0]
    graph.node.append(helper.make_node("Softmax", [logits.name], [PROBABILITIES], axis=-1, name="/deepstream/Softmax"))
    prob = onnx.ValueInfoProto()
    prob.CopyFrom(logits)
    prob.name = PROBABILITIES
    del graph.output[:]
    graph.output.append(prob)
    if len(set(pre.std)) == 1:  # exact: y = scale * (x - offset) per channel
        return g, 1.0 / float(pre.std[0]), tuple(float(m) for m in pre.mean), False
    inp = graph.input[0].name
    raw = f"{inp}_0_255"
    mean = numpy_helper.from_array(np.asarray(pre.mean, np.float32).reshape(1, 3, 1, 1), "/deepstream/mean")
    inv = numpy_helper.from_array((1.0 / np.asarray(pre.std, np.float64)).astype(np.float32).reshape(1, 3, 1, 1),
                                  "/deepstream/inv_std")
    graph.initializer.extend([mean, inv])
    for node in graph.node:
        node.input[:] = [raw + "_normalised" if i == inp else i for i in node.input]
    graph.node.insert(0, helper.make_node("Mul", [raw + "_centred", inv.name], [raw + "_normalised"], name="/deepstream/Mul"))
    graph.node.insert(0, helper.make_node("Sub", [raw, mean.name], [raw + "_centred"], name="/deepstream/Sub"))
    graph.input[0].name = raw
    return g, 1.0, (0.0, 0.0, 0.0), True


def nvinfer_config(name: str, precision: str, pre: Any, batch: int, scale: float, offsets: tuple[float, float, float],
                   num_classes: int, process_mode: int, threshold: float, onnx_file: str | None) -> str:
    """config_infer_*.txt: every choice explicit (scaling, colour order, aspect ratio), so nothing
    falls back to a default that changes the pixels."""
    props = {
        "gpu-id": 0, "gie-unique-id": 1 if process_mode == 1 else 2, "process-mode": process_mode,
        "network-type": 1, "network-mode": NETWORK_MODE[precision], "batch-size": batch,
        "model-engine-file": f"{name}.engine", "labelfile-path": f"labels_{name}.txt",
        "infer-dims": f"3;{pre.resolution};{pre.resolution}", "network-input-order": 0, "model-color-format": 0,
        "net-scale-factor": repr(scale), "offsets": ";".join(repr(o) for o in offsets),
        "maintain-aspect-ratio": 0, "scaling-filter": SCALING_BILINEAR, "scaling-compute-hw": SCALING_ON_GPU,
        "output-blob-names": PROBABILITIES, "classifier-threshold": repr(threshold), "classifier-async-mode": 0,
    }
    if onnx_file:  # only when asked: nvinfer would otherwise rebuild an engine silently from it
        props["onnx-file"] = onnx_file
    bad = sorted(set(props) - NVINFER_KEYS)
    if bad:  # a guard on this function itself: nvinfer ignores keys it does not know
        raise EffdeployError(f"internal: nvinfer has no key(s) {', '.join(bad)}")
    lines = [f"# Gst-nvinfer config for {name} ({num_classes} classes), written by effdeploy export --deepstream",
             "[property]"] + [f"{k}={v}" for k, v in props.items()]
    return "\n".join(lines) + "\n"


def nvinfer_agreement(art: Any, paths: list[Path], source: str) -> dict[str, Any]:
    """What nvinfer's preprocessing changes, measured: the bundle's top-1 on the whole image scaled
    to the network size (bilinear, no centre crop; emulated with OpenCV's INTER_LINEAR, which, like
    the GPU scaler, does not antialias) against its top-1 on its own preprocessing, same graph."""
    import cv2
    import numpy as np

    from ..data.preprocess import load_image, normalize, preprocess
    from ..report import wilson_interval
    from .runner import open_backend

    pre, res = art.preprocessing, art.preprocessing.resolution
    runner = open_backend(art, backend="onnxruntime")  # ONNX Runtime, as the bundle was verified
    agree = 0
    try:
        for i in range(0, len(paths), 16):
            images = [load_image(p) for p in paths[i:i + 16]]
            own = runner.infer(preprocess(images, pre)).argmax(1)
            scaled = np.stack([cv2.resize(im, (res, res), interpolation=cv2.INTER_LINEAR) for im in images])
            agree += int((runner.infer(normalize(scaled, pre)).argmax(1) == own).sum())
    finally:
        runner.close()
    n = len(paths)
    lo, hi = wilson_interval(agree, n)
    return {"images": n, "source": source, "top1_agreement": agree / n, "ci95": [lo, hi],
            "nvinfer_preprocessing": f"whole image -> {res}x{res}, bilinear, no crop (maintain-aspect-ratio=0)",
            "bundle_preprocessing": f"shorter side -> {pre.resize} ({pre.interpolation}), centre crop {res}"}


def agreement_images(art: Any, data: str | None, count: int) -> tuple[list[Path], str]:
    """--data, else the images the bundle was verified on where they are on this machine, else the
    built-in ones."""
    from ..data.datasets import builtin_image_paths, list_images

    if data:
        return list_images(data)[:count], str(data)
    judged = [Path(p) for p in ((getattr(art.manifest, "parity", {}) or {}).get("verify", {}) or {}).get("images", ())]
    here = [p for p in judged if p.is_file()]
    if here:
        return here[:count], "the bundle's verification images"
    return builtin_image_paths()[:count], "built-in images (pass --data for images from the deployment)"


def export_deepstream(artifact: Any, out: str | Path, name: str | None = None, batch: int = 1,
                      process_mode: str = "primary", threshold: float = 0.0, with_onnx: bool = False,
                      data: str | None = None, images: int = 200) -> ServingExport:
    """``config_infer_<mode>_<name>.txt``, ``labels_<name>.txt`` (nvinfer's ``;``-separated
    classifier format), ``<name>.onnx`` (the DeepStream graph: Softmax, normalisation where needed)
    and ``README.txt`` with the engine command and the measured preprocessing agreement."""
    import onnx

    from .runner import artifact_labels

    art = _resolved(artifact)
    if art.kind == "engine":
        raise EffdeployError("export the bundle this engine was compiled from: nvinfer needs an engine of the "
                             "DeepStream graph (Softmax, normalisation) that the export writes")
    if batch < 1 or images < 1:
        raise EffdeployError("--batch and --images must be at least 1")
    name = name or f"{art.model_name}-{art.precision}"
    folder = Path(out)
    config = folder / f"config_infer_{process_mode}_{name}.txt"
    if config.exists():
        raise EffdeployError(f"{config} exists; choose another --name or --deepstream folder")
    pre = art.preprocessing
    graph, scale, offsets, inside = deepstream_graph(onnx.load(str(art.model_path)), pre)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(graph, str(folder / f"{name}.onnx"))
    labels = artifact_labels(art)
    (folder / f"labels_{name}.txt").write_text(";".join(labels) + "\n", encoding="utf-8")
    config.write_text(nvinfer_config(name, art.precision, pre, batch, scale, offsets, len(labels),
                                     1 if process_mode == "primary" else 2, threshold,
                                     f"{name}.onnx" if with_onnx else None), encoding="utf-8")
    paths, source = agreement_images(art, data, images)
    measured = nvinfer_agreement(art, paths, source) if paths else {"images": 0, "source": source}
    readme = _deepstream_readme(name, graph.graph.input[0].name, pre, batch, scale, inside, measured)
    (folder / "README.txt").write_text(readme, encoding="utf-8")
    notes = [f"nvinfer's preprocessing agrees with the bundle's on {100 * measured['top1_agreement']:.1f} % of top-1 "
             f"(95 % CI {100 * measured['ci95'][0]:.1f}-{100 * measured['ci95'][1]:.1f} %, {measured['images']} "
             f"images: {source})" if measured["images"] else "no images to measure nvinfer's preprocessing on"]
    if inside:
        notes.append("per-channel std: the normalisation is inside the DeepStream graph (input 0-255 RGB)")
    files = (config.name, f"labels_{name}.txt", f"{name}.onnx", "README.txt")
    return ServingExport("deepstream", folder, files, tuple(notes), {"name": name, "agreement": measured})


def _deepstream_readme(name: str, input_name: str, pre: Any, batch: int, scale: float, inside: bool,
                       measured: Mapping[str, Any]) -> str:
    res = pre.resolution
    shape = f"{{}}x3x{res}x{res}"
    lines = [
        f"{name} for DeepStream (Gst-nvinfer), written by effdeploy export --deepstream.",
        "",
        f"1. Build the engine the config names, on the target, from {name}.onnx (precision is in the graph):",
        f"   trtexec --onnx={name}.onnx --stronglyTyped --saveEngine={name}.engine "
        f"--minShapes={input_name}:{shape.format(1)} --optShapes={input_name}:{shape.format(batch)} "
        f"--maxShapes={input_name}:{shape.format(batch)}",
        "   The config has no onnx-file (unless exported with --onnx), so a missing or mismatched engine fails",
        "   loudly instead of being rebuilt unverified.",
        "",
        "2. What the target's preprocessing changes:",
        f"   bundle:  {measured.get('bundle_preprocessing', '')}",
        f"   nvinfer: {measured.get('nvinfer_preprocessing', '')}",
    ]
    if measured.get("images"):
        lo, hi = measured["ci95"]
        lines.append(f"   top-1 agreement between the two: {100 * measured['top1_agreement']:.1f} % "
                     f"(95 % CI {100 * lo:.1f}-{100 * hi:.1f} %) on {measured['images']} images ({measured['source']}).")
    lines += [
        "   Where that is too low, crop upstream to the bundle's centre crop (nvdspreprocess with an ROI), or",
        "   use the bundle's frame-in graph (effdeploy build --frame WxH), which has the exact preprocessing.",
        f"   net-scale-factor {scale!r}: "
        + ("the per-channel normalisation is inside the graph (input 0-255 RGB)." if inside
           else "one scale and per-channel offsets express the bundle's normalisation exactly."),
    ]
    return "\n".join(lines) + "\n"
