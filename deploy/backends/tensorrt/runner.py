"""A TensorRT engine behind the runner interface :class:`effdeploy.backends.Runner`.

``infer(batch NCHW float32) -> logits`` with device buffers allocated once for the engine's
largest batch, one non-default CUDA stream, pinned host staging buffers, async copies, and an
optional CUDA graph per batch size. Memory and streams come from cuda-python (NVIDIA's bindings,
with aarch64 wheels for Jetson); torch is never imported. The plan is checked against its
``engine.json`` (hash, TensorRT release, GPU) before TensorRT deserializes it.

CUDA graphs follow TensorRT's documented recipe: after an input-shape change run
``execute_async_v3`` once and wait, then capture ``execute_async_v3`` on the (non-default) stream
and replay the graph; a graph fixes the shapes and tensor addresses, so one is kept per batch size
and the buffers never move. Engines that cannot be captured (e.g. some DLA engines) fall back to
plain ``execute_async_v3`` with a note.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .. import Runner
from .compat import (LogCapture, MISSING_TENSORRT, capture_log, host_code_refusal, import_tensorrt, new_runtime,
                     shared_logger)
from ...errors import EffdeployError, first_line
from .manifest import (
    EngineManifest, check_engine_runs_here, cuda_problem, cuda_runtime, load_engine_manifest, probe_cuda,
)


def runtime_dla_core(manifest: EngineManifest) -> int | None:
    """The DLA core an engine was built for (``build.dla_core`` in engine.json), None for GPU engines."""
    core = manifest.build.get("dla_core")
    return None if core is None else int(core)


def stream_handle(stream: Any) -> int:
    """The ``cudaStream_t`` value TensorRT's ``execute_async_v3`` takes.

    cuda-bindings 12.9.1 / 13.0 added ``cuda.bindings.utils.get_cuda_native_handle`` and deprecated
    ``int(cuda_obj)`` ("deprecated and subject to future removal", 13.0.0 release notes); older
    bindings only have ``int()``. ``getPtr()`` is the address of the wrapper, not the handle.
    """
    try:
        from cuda.bindings.utils import get_cuda_native_handle  # noqa: PLC0415
    except ImportError:
        return int(stream)
    return int(get_cuda_native_handle(stream))


class _Cuda:
    """The handful of CUDA runtime calls the runner needs, with errors turned into one line."""

    def __init__(self, rt: ModuleType) -> None:
        self.rt = rt

    def __call__(self, what: str, result: Any) -> Any:
        err, *values = result if isinstance(result, tuple) else (result,)
        if err != self.rt.cudaError_t.cudaSuccess:
            _, text = self.rt.cudaGetErrorString(err)
            msg = text.decode() if isinstance(text, (bytes, bytearray)) else str(text)
            raise EffdeployError(f"CUDA {what} failed: {msg}")
        if not values:
            return None
        return values[0] if len(values) == 1 else tuple(values)


class _Buffer:
    """One I/O tensor: device memory for the largest shape and a pinned host mirror."""

    def __init__(self, cuda: _Cuda, name: str, dtype: np.dtype, max_shape: tuple[int, ...]) -> None:
        self.name, self.dtype, self.max_shape = name, np.dtype(dtype), tuple(max_shape)
        count = int(np.prod(self.max_shape)) if self.max_shape else 1
        self.nbytes = max(count * self.dtype.itemsize, 1)
        self.device = int(cuda("cudaMalloc", cuda.rt.cudaMalloc(self.nbytes)))
        self.host_ptr = int(cuda("cudaMallocHost", cuda.rt.cudaMallocHost(self.nbytes)))
        raw = (ctypes.c_ubyte * self.nbytes).from_address(self.host_ptr)
        self.host = np.frombuffer(raw, dtype=self.dtype, count=count)

    def free(self, rt: ModuleType) -> None:
        self.host = None  # type: ignore[assignment]  # drop the view before the memory goes
        if self.host_ptr:
            rt.cudaFreeHost(self.host_ptr)
            self.host_ptr = 0
        if self.device:
            rt.cudaFree(self.device)
            self.device = 0


class TensorRTRunner(Runner):
    """Runs ``engine.plan`` (built by ``effdeploy compile``) on the local GPU."""

    name = "tensorrt"

    def __init__(self, plan_path: str | Path, cuda_graph: bool = False, check: bool = True,
                 allow_host_code: bool | None = None) -> None:
        plan = Path(plan_path)
        self.plan_path = plan
        self.manifest: EngineManifest = load_engine_manifest(plan, verify=True)  # hash before TensorRT
        refusal = host_code_refusal(plan, self.manifest.version_compatible, allow_host_code)
        if refusal:
            raise EffdeployError(refusal)
        self._allow_host_code = self.manifest.version_compatible
        trt = import_tensorrt()
        if trt is None:
            raise EffdeployError(f"{MISSING_TENSORRT} (needed to run {plan})")
        rt = cuda_runtime()
        probe = probe_cuda()
        if rt is None or probe.gpu is None:
            raise EffdeployError(f"cannot run {plan}: {cuda_problem(probe) or 'cuda-python sees no GPU'}")
        self.warnings: list[str] = []
        if check:
            self.warnings += check_engine_runs_here(self.manifest, plan, str(trt.__version__), probe.gpu)
        self._trt, self._rt, self._cuda = trt, rt, _Cuda(rt)
        self._buffers: dict[str, _Buffer] = {}
        self._graphs: dict[int, tuple[Any, Any]] = {}
        self._stream: Any = None
        self._engine: Any = None
        self._context: Any = None
        try:
            self._open(plan, cuda_graph)
        except BaseException:
            self.close()
            raise

    @classmethod
    def open(cls, plan_path: str | Path, cuda_graph: bool = False, check: bool = True,
             allow_host_code: bool | None = None) -> "TensorRTRunner":
        """Load a plan after its manifest checks pass; ``check=False`` skips the version/GPU rule
        (the hash check always runs); ``allow_host_code``: see ``compat.host_code_refusal``."""
        return cls(plan_path, cuda_graph=cuda_graph, check=check, allow_host_code=allow_host_code)

    def _open(self, plan: Path, cuda_graph: bool) -> None:
        trt, cuda = self._trt, self._cuda
        log = LogCapture()
        with capture_log(log):  # the process's one logger (a second one would be ignored by TensorRT)
            self._runtime = new_runtime(trt, shared_logger(trt), self.manifest.version_compatible,
                                        runtime_dla_core(self.manifest), allow_host_code=self._allow_host_code)
            self._engine = self._runtime.deserialize_cuda_engine(plan.read_bytes())
        if self._engine is None:
            detail = f" ({first_line(log.errors[-1])})" if log.errors else ""
            raise EffdeployError(
                f"TensorRT {trt.__version__} could not deserialize {plan}{detail}; rebuild it here with 'effdeploy compile'"
            )
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise EffdeployError(f"TensorRT could not create an execution context for {plan} (out of GPU memory?)")
        self._stream = cuda("cudaStreamCreate", self._rt.cudaStreamCreate())
        self._stream_handle = stream_handle(self._stream)

        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or not outputs:
            raise EffdeployError(f"{plan} has {len(inputs)} inputs and {len(outputs)} outputs; expected 1 image input")
        self.input_name = inputs[0]
        self.output_names = outputs
        mn, _opt, mx = (tuple(int(d) for d in s) for s in self._engine.get_tensor_profile_shape(self.input_name, 0))
        self.batch_min, self.batch_max = mn[0], mx[0]
        static = tuple(int(d) for d in self._engine.get_tensor_shape(self.input_name))
        self.input_shape = static if static[0] > 0 else (-1, *static[1:])
        self._in_dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(self.input_name)))

        # Size every buffer for the largest batch, once: addresses never change afterwards.
        if not self._context.set_input_shape(self.input_name, mx):
            raise EffdeployError(f"TensorRT refused input shape {mx} for {plan}")
        self._buffers[self.input_name] = _Buffer(cuda, self.input_name, self._in_dtype, mx)
        for name in outputs:
            shape = tuple(int(d) for d in self._context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise EffdeployError(f"output {name} of {plan} has a data-dependent shape {shape}; not supported")
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            self._buffers[name] = _Buffer(cuda, name, dtype, shape)
        for name, buf in self._buffers.items():
            if not self._context.set_tensor_address(name, buf.device):
                raise EffdeployError(f"TensorRT refused the device address for tensor {name}")
        self._shape: tuple[int, ...] = mx
        self.cuda_graph = bool(cuda_graph)

    # --- inference -------------------------------------------------------------------------------

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Logits for an NCHW batch; batches above the engine's maximum run in chunks."""
        x = np.asarray(batch)
        chw = tuple(self.input_shape[1:])
        if x.ndim != 4 or tuple(x.shape[1:]) != chw:
            raise EffdeployError(f"{self.plan_path} takes (N, {', '.join(map(str, chw))}) input; got {tuple(x.shape)}")
        if len(x) == 0:
            raise EffdeployError("empty batch: pass at least one image")
        parts = [self._infer_chunk(x[i : i + self.batch_max]) for i in range(0, len(x), self.batch_max)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)

    def _infer_chunk(self, x: np.ndarray) -> np.ndarray:
        n = len(x)
        run = max(n, self.batch_min)  # a chunk below the profile minimum is zero-padded
        shape = (run, *self.input_shape[1:])
        self._set_shape(shape)
        inp = self._buffers[self.input_name]
        count = int(np.prod(shape))
        staged = inp.host[:count].reshape(shape)
        staged[:n] = x.astype(self._in_dtype, copy=False)
        if run > n:
            staged[n:] = 0
        rt, cuda, stream = self._rt, self._cuda, self._stream
        h2d, d2h = rt.cudaMemcpyKind.cudaMemcpyHostToDevice, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        cuda("cudaMemcpyAsync", rt.cudaMemcpyAsync(inp.device, inp.host_ptr, count * inp.dtype.itemsize, h2d, stream))
        self._execute(run)
        out = self._buffers[self.output_names[0]]
        oshape = tuple(int(d) for d in self._context.get_tensor_shape(out.name))
        ocount = int(np.prod(oshape))
        cuda("cudaMemcpyAsync", rt.cudaMemcpyAsync(out.host_ptr, out.device, ocount * out.dtype.itemsize, d2h, stream))
        cuda("cudaStreamSynchronize", rt.cudaStreamSynchronize(stream))
        return np.array(out.host[:ocount].reshape(oshape)[:n], dtype=np.float32)

    def _set_shape(self, shape: tuple[int, ...]) -> None:
        if shape != self._shape:
            if not self._context.set_input_shape(self.input_name, shape):
                raise EffdeployError(f"TensorRT refused input shape {shape} (engine batch {self.batch_min}..{self.batch_max})")
            self._shape = shape

    def _enqueue(self) -> None:
        if not self._context.execute_async_v3(self._stream_handle):
            raise EffdeployError(f"TensorRT failed to run {self.plan_path}")

    def _execute(self, batch: int) -> None:
        if not self.cuda_graph:
            self._enqueue()
            return
        graph = self._graphs.get(batch) or self._capture(batch)
        if graph is None:
            self._enqueue()
            return
        self._cuda("cudaGraphLaunch", self._rt.cudaGraphLaunch(graph[1], self._stream))

    def _capture(self, batch: int) -> tuple[Any, Any] | None:
        """Capture ``execute_async_v3`` for the current shape; None (and graphs off) if impossible."""
        rt, cuda, stream = self._rt, self._cuda, self._stream
        # The input for this call is already on the stream; run once to settle shape-dependent
        # state (TensorRT's documented requirement), then capture the same call.
        self._enqueue()
        cuda("cudaStreamSynchronize", rt.cudaStreamSynchronize(stream))
        cuda("cudaStreamBeginCapture", rt.cudaStreamBeginCapture(stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal))
        ok = self._context.execute_async_v3(self._stream_handle)
        err, graph = rt.cudaStreamEndCapture(stream)
        if not ok or err != rt.cudaError_t.cudaSuccess or graph is None:
            self.cuda_graph = False
            self.warnings.append("this engine cannot be captured in a CUDA graph; running without one")
            return None
        exe = cuda("cudaGraphInstantiate", rt.cudaGraphInstantiate(graph, 0))
        self._graphs[batch] = (graph, exe)
        return self._graphs[batch]

    # --- lifetime --------------------------------------------------------------------------------

    def close(self) -> None:
        rt = getattr(self, "_rt", None)
        if rt is not None:
            if self._stream is not None:
                rt.cudaStreamSynchronize(self._stream)
            for graph, exe in self._graphs.values():
                rt.cudaGraphExecDestroy(exe)
                rt.cudaGraphDestroy(graph)
            self._graphs = {}
            for buf in self._buffers.values():
                buf.free(rt)
            self._buffers = {}
            if self._stream is not None:
                rt.cudaStreamDestroy(self._stream)
                self._stream = None
        self._context = None
        self._engine = None
