"""Triton's model configuration schema, transcribed for the tests: the messages, field names,
numbers and types of ``inference.ModelConfig`` that an effdeploy export may write, as declared in
triton-inference-server/common ``protobuf/model_config.proto`` (read at commit 08365ea; proto3,
package ``inference``). Built with protobuf's descriptor API, so ``text_format.Parse`` rejects a
config.pbtxt with a field Triton does not have, a value of the wrong type or an unknown enum name —
the same parse Triton's model loader does. (tritonclient, which ships the generated module, is not
installable here.)"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

F = descriptor_pb2.FieldDescriptorProto
OPT, REP = F.LABEL_OPTIONAL, F.LABEL_REPEATED

DATA_TYPES = ["TYPE_INVALID", "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32", "TYPE_UINT64", "TYPE_INT8",
              "TYPE_INT16", "TYPE_INT32", "TYPE_INT64", "TYPE_FP16", "TYPE_FP32", "TYPE_FP64", "TYPE_STRING",
              "TYPE_BF16"]


def _enum(parent, name: str, values: list[tuple[str, int]]) -> None:
    e = parent.enum_type.add(name=name)
    for n, v in values:
        e.value.add(name=n, number=v)


def _field(msg, name: str, number: int, ftype: int, label: int = OPT, type_name: str = "") -> None:
    f = msg.field.add(name=name, number=number, type=ftype, label=label)
    if type_name:
        f.type_name = type_name


def _map(msg, name: str, number: int, entry: str, value_type: int, value_name: str = "") -> None:
    e = msg.nested_type.add(name=entry)
    e.options.map_entry = True
    _field(e, "key", 1, F.TYPE_STRING)
    _field(e, "value", 2, value_type, type_name=value_name)
    _field(msg, name, number, F.TYPE_MESSAGE, REP, f".inference.{msg.name}.{entry}")


def model_config_class():
    fd = descriptor_pb2.FileDescriptorProto(name="effdeploy_test_model_config.proto", package="inference",
                                            syntax="proto3")
    _enum(fd, "DataType", [(n, i) for i, n in enumerate(DATA_TYPES)])

    reshape = fd.message_type.add(name="ModelTensorReshape")
    _field(reshape, "shape", 1, F.TYPE_INT64, REP)

    inp = fd.message_type.add(name="ModelInput")
    _enum(inp, "Format", [("FORMAT_NONE", 0), ("FORMAT_NHWC", 1), ("FORMAT_NCHW", 2)])
    _field(inp, "name", 1, F.TYPE_STRING)
    _field(inp, "data_type", 2, F.TYPE_ENUM, type_name=".inference.DataType")
    _field(inp, "format", 3, F.TYPE_ENUM, type_name=".inference.ModelInput.Format")
    _field(inp, "dims", 4, F.TYPE_INT64, REP)
    _field(inp, "reshape", 5, F.TYPE_MESSAGE, type_name=".inference.ModelTensorReshape")
    _field(inp, "is_shape_tensor", 6, F.TYPE_BOOL)
    _field(inp, "allow_ragged_batch", 7, F.TYPE_BOOL)
    _field(inp, "optional", 8, F.TYPE_BOOL)

    out = fd.message_type.add(name="ModelOutput")
    _field(out, "name", 1, F.TYPE_STRING)
    _field(out, "data_type", 2, F.TYPE_ENUM, type_name=".inference.DataType")
    _field(out, "dims", 3, F.TYPE_INT64, REP)
    _field(out, "label_filename", 4, F.TYPE_STRING)
    _field(out, "reshape", 5, F.TYPE_MESSAGE, type_name=".inference.ModelTensorReshape")
    _field(out, "is_shape_tensor", 6, F.TYPE_BOOL)

    batching = fd.message_type.add(name="ModelDynamicBatching")
    _field(batching, "preferred_batch_size", 1, F.TYPE_INT32, REP)
    _field(batching, "max_queue_delay_microseconds", 2, F.TYPE_UINT64)
    _field(batching, "preserve_ordering", 3, F.TYPE_BOOL)

    group = fd.message_type.add(name="ModelInstanceGroup")
    _enum(group, "Kind", [("KIND_AUTO", 0), ("KIND_GPU", 1), ("KIND_CPU", 2), ("KIND_MODEL", 3)])
    _field(group, "name", 1, F.TYPE_STRING)
    _field(group, "count", 2, F.TYPE_INT32)
    _field(group, "gpus", 3, F.TYPE_INT32, REP)
    _field(group, "kind", 4, F.TYPE_ENUM, type_name=".inference.ModelInstanceGroup.Kind")

    policy = fd.message_type.add(name="ModelOptimizationPolicy")
    graph = policy.nested_type.add(name="Graph")
    _field(graph, "level", 1, F.TYPE_INT32)
    _field(policy, "graph", 1, F.TYPE_MESSAGE, type_name=".inference.ModelOptimizationPolicy.Graph")

    cfg = fd.message_type.add(name="ModelConfig")
    _field(cfg, "name", 1, F.TYPE_STRING)
    _field(cfg, "platform", 2, F.TYPE_STRING)
    _field(cfg, "max_batch_size", 4, F.TYPE_INT32)
    _field(cfg, "input", 5, F.TYPE_MESSAGE, REP, ".inference.ModelInput")
    _field(cfg, "output", 6, F.TYPE_MESSAGE, REP, ".inference.ModelOutput")
    _field(cfg, "instance_group", 7, F.TYPE_MESSAGE, REP, ".inference.ModelInstanceGroup")
    _field(cfg, "default_model_filename", 8, F.TYPE_STRING)
    _map(cfg, "cc_model_filenames", 9, "CcModelFilenamesEntry", F.TYPE_STRING)
    _field(cfg, "dynamic_batching", 11, F.TYPE_MESSAGE, type_name=".inference.ModelDynamicBatching")
    _field(cfg, "optimization", 12, F.TYPE_MESSAGE, type_name=".inference.ModelOptimizationPolicy")
    _field(cfg, "backend", 17, F.TYPE_STRING)

    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))
