"""effdeploy.runtime: a bundle or a TensorRT engine inside an application, without torch.

    from effdeploy.runtime import Runner

    with Runner.open("bundles/efficientnet-lite0-fp32-cpu") as runner:
        for class_id, label, score in runner.classify(frame_bgr, top_k=3, bgr=True):
            print(label, score)

The preprocessing comes from the artifact's manifest and runs through :mod:`effdeploy.data.preprocess`,
the same function calibration and verification used, so the numbers match the build side.
Backends: ONNX Runtime for a bundle (or an ``.onnx`` inside one), TensorRT for an ``engine.plan``
(imported only then). Nothing here imports torch.

**Thread safety.** A Runner is thread-safe: :meth:`Runner.infer` and :meth:`Runner.classify` may
be called from several threads. Inference is serialised by one lock per Runner (a Runner owns one
ONNX Runtime session or one TensorRT execution context, and a TensorRT context must not run
concurrently), while preprocessing runs outside the lock, in parallel. For parallel inference open
one Runner per thread. :meth:`Runner.stream` overlaps capture, preprocessing and inference for video.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

import numpy as np

from ..backends import infer_in_batches_of
from ..data.preprocess import CROP_PCT, Preprocessing, check_frame, preprocess
from ..errors import EffdeployError, first_line


KIND_BUNDLE = "bundle"
KIND_ONNX = "onnx"
KIND_ENGINE = "engine"


class Prediction(NamedTuple):
    """One of the top-k classes of a frame: a plain ``(class_id, label, score)`` tuple."""

    class_id: int
    label: str
    score: float  # softmax probability


@dataclass(frozen=True)
class Artifact:
    """What :meth:`Runner.open` resolved a path to, before any backend is loaded."""

    path: Path  # as given: bundle directory, .onnx or .plan
    kind: str  # "bundle" | "onnx" | "engine"
    model_path: Path  # the file the backend loads
    preprocessing: Preprocessing
    status: str  # "verified" | "failed-parity" | "unverified" | "unknown"
    precision: str
    model_name: str
    num_classes: int
    manifest: Any = None  # the bundle Manifest or EngineManifest, when there is one


def _bundle_artifact(path: Path, model_path: Path | None = None) -> Artifact:
    from ..bundle import load_bundle

    bundle = load_bundle(path)
    m = bundle.manifest
    return Artifact(
        path=path, kind=KIND_BUNDLE if model_path is None else KIND_ONNX,
        model_path=model_path or bundle.model_path, preprocessing=m.preprocessing, status=m.status,
        precision=m.precision, model_name=m.model.name, num_classes=m.model.num_classes, manifest=m,
    )


def _engine_artifact(path: Path) -> Artifact:
    from ..backends.tensorrt.manifest import load_engine_manifest

    m = load_engine_manifest(path, verify=True)
    if not m.preprocessing:
        raise EffdeployError(f"{path}: its engine manifest has no preprocessing; compile it again with 'effdeploy compile'")
    try:
        pre = Preprocessing.from_dict(m.preprocessing)
    except (KeyError, TypeError, ValueError) as e:
        raise EffdeployError(f"{path}: the preprocessing in its engine manifest is invalid ({e}); compile it again") from None
    outputs = m.outputs
    shape = outputs[0].get("shape", []) if outputs else []
    num_classes = int(shape[-1]) if shape and isinstance(shape[-1], int) and shape[-1] > 0 else 1000
    model = m.bundle.get("model", "model")
    model_name = model.get("name", "model") if isinstance(model, dict) else str(model)
    # `effdeploy compile` only compiles verified bundles; a status, when recorded, wins.
    status = str(getattr(m, "status", None) or m.bundle.get("status") or "verified")
    return Artifact(path=path, kind=KIND_ENGINE, model_path=path, preprocessing=pre, status=status,
                    precision=m.precision, model_name=model_name, num_classes=num_classes, manifest=m)


def _onnx_input_preprocessing(path: Path) -> tuple[Preprocessing, int]:
    """For a bare .onnx (benchmarks only): ImageNet preprocessing sized from the input shape."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and friends
        raise EffdeployError(f"cannot read ONNX {path}: {first_line(e, 160)}; is it truncated?") from None
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[1] != 3 or dims[2] <= 0 or dims[2] != dims[3]:
        raise EffdeployError(f"{path} takes input of shape {dims}; expected (N, 3, R, R) images")
    out_dims = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    classes = out_dims[-1] if out_dims and out_dims[-1] > 0 else 1000
    res = int(dims[2])
    return Preprocessing(resolution=res, resize=int(res / CROP_PCT)), int(classes)


def resolve_artifact(path: str | Path, preprocessing: Preprocessing | None = None,
                     guess_preprocessing: bool = False) -> Artifact:
    """A bundle directory, an ``.onnx`` (in a bundle, or with explicit preprocessing) or an ``engine.plan``.

    ``guess_preprocessing`` lets a bare ``.onnx`` through with ImageNet defaults sized from its
    input: right for timing, wrong for accuracy, so only ``effdeploy bench`` uses it.
    """
    from ..bundle import MANIFEST, is_bundle

    p = Path(path)
    if not p.exists():
        raise EffdeployError(f"{p} does not exist; pass a bundle directory, an .onnx file or an engine.plan")
    if p.is_dir():
        if not is_bundle(p):
            raise EffdeployError(f"{p} is not a bundle (no {MANIFEST}); pass a directory written by 'effdeploy build'")
        art = _bundle_artifact(p)
    elif p.suffix == ".plan":
        art = _engine_artifact(p)
    elif p.suffix == ".onnx":
        if is_bundle(p.parent):
            art = _bundle_artifact(p.parent, model_path=p)
            art = replace(art, path=p)
        elif preprocessing is not None or guess_preprocessing:
            guessed, classes = _onnx_input_preprocessing(p)
            art = Artifact(path=p, kind=KIND_ONNX, model_path=p, preprocessing=preprocessing or guessed,
                           status="unknown", precision="unknown", model_name=p.stem, num_classes=classes)
        else:
            raise EffdeployError(
                f"{p} is a bare ONNX file without a manifest, so its preprocessing is unknown; pass the bundle "
                "directory, or Runner.open(path, preprocessing=Preprocessing(...))"
            )
    else:
        raise EffdeployError(f"{p} is not a bundle directory, an .onnx file or an engine.plan")
    if preprocessing is not None:
        art = replace(art, preprocessing=preprocessing)
    return art


def check_status(art: Artifact, force: bool = False) -> str | None:
    """Refuse a bundle that missed its accuracy budget unless forced; the one-line warning for a
    usable bundle that is not ``verified`` (``checked``, ``benchmark-only``), else None."""
    from ..bundle import status_warning

    if art.status == "failed-parity" and not force:
        raise EffdeployError(
            f"{art.path} has status failed-parity (it missed its accuracy budget; see 'effdeploy inspect "
            f"{art.path}'): rebuild it, or pass --force (Runner.open(..., force=True)) to run it anyway"
        )
    return status_warning(art.status)


def _app_onnxruntime_runner(model_path: Path, threads: int | None, optimize: bool, spin: bool) -> Any:
    """``OnnxRuntimeRunner`` with ONNX Runtime's intra-op spinning chosen by the caller.

    ORT's worker threads busy-wait after every run by default. On a machine the application has to
    itself that is the fast choice; where other processes compete for the cores, spinning threads
    fight them and the median latency can more than double, so ``spin=False`` is offered for
    shared or oversubscribed CPUs (the figures are in docs/runtime.md).
    """
    from ..backends.onnxrt import OnnxRuntimeRunner

    runner = OnnxRuntimeRunner(model_path, threads=threads, optimize=optimize,
                               session_config={"session.intra_op.allow_spinning": "1" if spin else "0"})
    runner.spin = spin  # type: ignore[attr-defined]
    return runner


def open_backend(art: Artifact, threads: int | None = None, spin: bool = True, backend: str | None = None,
                 ov_precision: str = "f32") -> Any:
    """The inference backend for an artifact: TensorRT for an engine; for a bundle ONNX Runtime
    (``backend=None``: the profile's runtime, see :func:`profile_backend`), ``"openvino"``, or ``"auto"`` (the faster of the
    CPU runtimes installed, timed once and cached; see :mod:`effdeploy.runtime.backend_choice`).

    ``spin``: ONNX Runtime's threads busy-wait between calls (its default: lowest latency when the
    cores are yours); ``False`` for CPUs shared with other busy processes. Ignored by the others.
    ``ov_precision``: OpenVINO's inference precision, f32 unless bf16 is asked for.
    """
    from .backend_choice import check_backend_name

    check_backend_name(backend)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise EffdeployError(f"threads must be an integer >= 1, or None for every core (got {threads!r})")
    if art.kind == KIND_ENGINE and backend in ("onnxruntime", "openvino"):
        raise EffdeployError(f"{art.path} is a TensorRT engine; --backend {backend} runs the bundle it came from "
                             f"({(art.manifest.bundle or {}).get('path', 'its bundle directory')})")
    if art.kind != KIND_ENGINE and backend is None:
        backend = profile_backend(art)
    if art.kind != KIND_ENGINE:  # 8-bit weights on a CPU whose INT8 kernels would saturate them
        from ..backends.cpu_features import check_int8_dot

        check_int8_dot(art.manifest, art.path, "onnxruntime" if backend in (None, "auto") else backend)
    if art.kind != KIND_ENGINE and backend is not None and backend != "onnxruntime":
        return _cpu_backend(art, threads, spin, backend, ov_precision)
    if art.kind == KIND_ENGINE:
        from ..backends.tensorrt.compat import MISSING_TENSORRT, import_tensorrt

        if import_tensorrt() is None:
            raise EffdeployError(
                f"{MISSING_TENSORRT} (needed to run {art.path}); or run the bundle directory with ONNX Runtime"
            )
        from ..backends.tensorrt.runner import TensorRTRunner

        return TensorRTRunner.open(art.model_path)
    from ..backends.onnxrt import manifest_optimize

    return _app_onnxruntime_runner(art.model_path, threads, manifest_optimize(art.manifest), spin)


def profile_backend(art: Artifact) -> str | None:
    """A bundle built for an OpenVINO profile (``target.runtime = "openvino"``: its INT8 graph is in
    the openvino dialect, which ONNX Runtime runs as float convs) opens on OpenVINO where it is
    installed; elsewhere, and for every other bundle, None (ONNX Runtime), with a warning."""
    profile = getattr(art.manifest, "profile", None) or {}
    if profile.get("runtime") != "openvino":
        return None
    from ..backends.openvino import MISSING_OPENVINO, import_openvino

    if import_openvino() is None:
        import warnings

        warnings.warn(f"{art.path} was built for OpenVINO ({profile.get('name')}); {MISSING_OPENVINO}. Running it on "
                      "ONNX Runtime: the same function, its INT8 convs in float, slower", stacklevel=3)
        return None
    return "openvino"


def _cpu_backend(art: Artifact, threads: int | None, spin: bool, backend: str, ov_precision: str) -> Any:
    """OpenVINO by name, or ``auto``'s choice between it and ONNX Runtime."""
    from ..backends.cpu_features import describe_int8_dot, saturates
    from ..backends.onnxrt import manifest_optimize
    from ..backends.openvino import OpenVinoRunner
    from .backend_choice import choose_backend

    def open_runner(name: str) -> Any:
        if name == "openvino":
            return OpenVinoRunner(art.model_path, threads=threads, precision=ov_precision)
        return _app_onnxruntime_runner(art.model_path, threads, manifest_optimize(art.manifest), spin)

    if backend == "auto" and saturates(art.manifest, "openvino"):
        import warnings

        warnings.warn(f"{art.path}: OpenVINO's INT8 kernels would saturate its 8-bit weights on this CPU "
                      f"({describe_int8_dot()}); --backend auto runs it on ONNX Runtime", stacklevel=3)
        backend = "onnxruntime"
    if backend == "auto":
        backend, record = choose_backend(Path(art.model_path), threads, ov_precision, open_runner)
        runner = open_runner(backend)
        runner.choice = record  # type: ignore[attr-defined]  # why auto chose it (bench prints it)
        return runner
    return open_runner(backend)


def class_labels(num_classes: int) -> tuple[str, ...]:
    """ImageNet names for 1000-class models (shipped with the package), ``class N`` otherwise."""
    if num_classes == 1000:
        from ..data.labels import imagenet_labels

        return tuple(imagenet_labels())
    return tuple(f"class {i}" for i in range(num_classes))


def artifact_labels(art: Artifact) -> tuple[str, ...]:
    """The bundle's own class names (``build --labels``; hashed with the bundle), else
    :func:`class_labels`. An ``.onnx`` inside a bundle has its bundle's names."""
    name = getattr(art.manifest, "labels", None)
    if name:
        from ..data.labels import read_labels

        names = read_labels(Path(art.model_path).parent / name)
        if len(names) == art.num_classes:
            return names
    return class_labels(art.num_classes)


def softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def top_k(logits: np.ndarray, k: int, labels: Sequence[str]) -> list[list[Prediction]]:
    """Per row of logits, the ``k`` best classes with softmax scores, best first (ties: lower id).

    Only the k winners are sorted and only the normaliser touches all classes: this runs once per
    frame in a video loop, where a full softmax and argsort of 1000 classes would cost a
    noticeable share of the frame (docs/runtime.md).
    """
    if k < 1:
        raise EffdeployError(f"top_k must be at least 1 (got {k})")
    x = np.atleast_2d(np.asarray(logits, dtype=np.float32))
    k = min(k, x.shape[1])
    out = []
    for row in x:
        top = row.max()
        log_norm = float(top) + float(np.log(np.exp(row - top, dtype=np.float64).sum()))
        cand = np.argpartition(-row, k - 1)[:k] if k < len(row) else np.arange(len(row))
        # ties broken towards the lower class id, like a stable sort of the full row
        threshold = row[cand].min()
        cand = np.union1d(cand, np.flatnonzero(row == threshold))
        cand = sorted(cand.tolist(), key=lambda c: (-float(row[c]), c))[:k]
        out.append([Prediction(c, labels[c] if c < len(labels) else f"class {c}",
                               float(np.exp(float(row[c]) - log_norm))) for c in cand])
    return out


@dataclass(frozen=True)
class StreamResult:
    """One frame out of :meth:`Runner.stream`."""

    index: int  # position in the source, counting dropped frames
    frame: np.ndarray  # as captured
    predictions: tuple[Prediction, ...]
    latency_s: float  # capture -> predictions
    dropped: int  # frames skipped so far (only with drop_frames=True)
    path: str = "cpu"  # "frame-in" (the frame went to a frame-in graph or engine) or "cpu" (preprocess())


class _End:
    pass


@dataclass(frozen=True)
class _Failure:
    error: BaseException


def _put(q: "queue.Queue[Any]", item: Any, stop: threading.Event) -> bool:
    """Blocking put that gives up when the consumer has stopped."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


def _put_dropping_oldest(q: "queue.Queue[Any]", item: Any) -> int:
    """Put without waiting, dropping the oldest queued items to make room; how many were dropped."""
    dropped = 0
    while True:
        try:
            q.put_nowait(item)
            return dropped
        except queue.Full:
            try:
                q.get_nowait()
                dropped += 1
            except queue.Empty:
                pass


class Runner:
    """Preprocessing from the manifest + one backend; see the module docstring for thread safety."""

    def __init__(self, backend: Any, artifact: Artifact, labels: Sequence[str] | None = None,
                 frames: Any = None) -> None:
        from .frames import FrameRouter

        self.backend = backend
        self.frames: FrameRouter = frames if frames is not None else FrameRouter()  # frame-in graphs by size
        self.artifact = artifact
        self.preprocessing: Preprocessing = artifact.preprocessing
        self.labels: tuple[str, ...] = tuple(labels) if labels is not None else artifact_labels(artifact)
        self._lock = threading.Lock()

    @classmethod
    def open(cls, artifact: str | Path, *, threads: int | None = None, force: bool = False,
             preprocessing: Preprocessing | None = None, spin: bool = True, backend: str | None = None,
             ov_precision: str = "f32") -> "Runner":
        """Open a bundle directory, an ``.onnx`` inside one, or an ``engine.plan``.

        A bundle with status ``failed-parity`` is refused unless ``force``. ``threads`` sets the
        runtime's intra-op threads (default: all cores); ``spin=False`` makes ONNX Runtime's sleep
        between calls, for CPUs shared with other busy processes. ``backend``: ``"onnxruntime"``
        (the default for bundles, what they are verified with, except those built for an OpenVINO
        profile: :func:`profile_backend`), ``"openvino"`` or ``"auto"``
        (see :func:`open_backend`).
        """
        art = resolve_artifact(artifact, preprocessing=preprocessing)
        warning = check_status(art, force)
        if warning:
            import warnings

            warnings.warn(f"{art.path}: {warning}", stacklevel=2)
        from .frames import routes_for

        backend_ = open_backend(art, threads=threads, spin=spin, backend=backend, ov_precision=ov_precision)
        return cls(backend_, art, frames=routes_for(art, backend_, threads, spin))  # where the model runs

    # --- properties ------------------------------------------------------------------------------

    @property
    def backend_name(self) -> str:
        return str(getattr(self.backend, "name", type(self.backend).__name__))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.backend.input_shape)

    @property
    def status(self) -> str:
        return self.artifact.status

    @property
    def frame_sizes(self) -> tuple[Any, ...]:
        """The frames (``FrameInput``: width, height, channel order) that go to a frame-in graph."""
        return self.frames.inputs

    # --- inference -------------------------------------------------------------------------------

    def preprocess(self, frames: np.ndarray | Sequence[np.ndarray], bgr: bool = False) -> np.ndarray:
        """Frames (RGB, or BGR with ``bgr=True``; uint8, any size) -> the model's NCHW float32 batch."""
        return preprocess(frames, self.preprocessing, bgr=bgr)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Logits for a preprocessed NCHW float32 batch (any batch size; fixed-batch models are chunked)."""
        x = np.asarray(batch)
        res = self.preprocessing.resolution
        if x.ndim != 4 or x.shape[1:] != (3, res, res):
            raise EffdeployError(f"infer takes an (N, 3, {res}, {res}) float32 batch, got shape {tuple(x.shape)}; "
                                 "use classify() for images")
        if len(x) == 0:
            raise EffdeployError("empty batch: pass at least one image")
        x = np.ascontiguousarray(x, dtype=np.float32)
        with self._lock:
            return infer_in_batches_of(self.backend, x)

    def classify(self, frames: np.ndarray | Sequence[np.ndarray], top_k: int = 5,
                 bgr: bool = False, frame_graph: bool = True) -> list[Prediction] | list[list[Prediction]]:
        """Top-k ``(class_id, label, score)`` for uint8 frames of any size.

        One HxWx3 frame gives a list of predictions; a sequence (or an NxHxWx3 array) gives one list
        per frame. ``bgr=True`` for OpenCV frames. Frames whose size and channel order match a
        frame-in graph (:attr:`frame_sizes`) go to it whole; the rest are preprocessed on the CPU
        (``frame_graph=False``: all of them).
        """
        single = isinstance(frames, np.ndarray) and frames.ndim == 3
        preds = _top_k(self.frame_logits(frames, bgr, frame_graph), top_k, self.labels)
        return preds[0] if single else preds

    def frame_logits(self, frames: np.ndarray | Sequence[np.ndarray], bgr: bool = False,
                     frame_graph: bool = True) -> np.ndarray:
        """Logits for uint8 frames, each through a matching frame-in graph or the CPU path."""
        items = frames[None] if isinstance(frames, np.ndarray) and frames.ndim == 3 else frames  # a view, no copy
        if isinstance(items, np.ndarray) and items.ndim == 4 and len(items):
            keys = [self.frames.key(items[0], bgr)] * len(items)  # one size and dtype for all
        else:
            items = list(items)
            keys = [self.frames.key(f, bgr) for f in items]  # refuses non-uint8 / non-HxWx3 frames
        if not frame_graph or not any(keys):
            return self.infer(self.preprocess(items, bgr=bgr))
        out: np.ndarray | None = None
        for key in dict.fromkeys(keys):
            idx = [i for i, k in enumerate(keys) if k == key]
            if key is None:
                logits = self.infer(self.preprocess([items[i] for i in idx], bgr=bgr))
            else:
                x = items if len(idx) == len(items) and isinstance(items, np.ndarray) else np.stack([items[i] for i in idx])
                with self._lock:
                    logits = self.frames.route(key).infer(x)
            out = np.empty((len(keys), logits.shape[1]), np.float32) if out is None else out
            out[idx] = logits
        return out  # type: ignore[return-value]

    def stream(self, frames: Iterable[np.ndarray], *, top_k: int = 1, bgr: bool = True, queue_size: int = 2,
               drop_frames: bool = False) -> Iterator[StreamResult]:
        """Classify a video: capture, preprocessing and inference run in three overlapped stages.

        ``frames`` is any iterable of frames (e.g. :func:`video_frames`); it is consumed on a
        capture thread, preprocessing runs on a second thread and inference in the caller's thread,
        with bounded queues of ``queue_size`` between them, so each stage works on a different frame
        (NumPy, OpenCV and the backends release the GIL). With ``drop_frames=True`` a live source
        never waits: when inference falls behind, the oldest waiting frame is dropped (lower latency);
        without it every frame is classified in order. Stopping the iteration stops the threads and
        closes ``frames`` if it is a generator.
        """
        if queue_size < 1:
            raise EffdeployError(f"queue_size must be at least 1 (got {queue_size})")
        stop = threading.Event()
        captured: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        ready: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        dropped = [0]

        def capture() -> None:
            try:
                for index, frame in enumerate(frames):
                    if stop.is_set():
                        return
                    item = (index, time.perf_counter(), frame)
                    if drop_frames:
                        dropped[0] += _put_dropping_oldest(captured, item)
                    elif not _put(captured, item, stop):
                        return
            except BaseException as e:  # the source failed: hand the error to the caller
                _put(captured, _Failure(e), stop)
                return
            _put(captured, _End(), stop)

        def prepare() -> None:
            while not stop.is_set():
                try:
                    item = captured.get(timeout=0.05)
                except queue.Empty:
                    continue
                if not isinstance(item, tuple):
                    _put(ready, item, stop)
                    return
                index, t0, frame = item
                try:  # a frame a frame-in graph takes goes to inference as it is
                    batch = frame[None] if self.frames.key(frame, bgr) else self.preprocess(frame, bgr=bgr)
                except BaseException as e:
                    _put(ready, _Failure(e), stop)
                    return
                if not _put(ready, (index, t0, frame, batch), stop):
                    return

        workers = [threading.Thread(target=capture, name="effdeploy-capture", daemon=True),
                   threading.Thread(target=prepare, name="effdeploy-preprocess", daemon=True)]
        for w in workers:
            w.start()
        try:
            while True:
                item = ready.get()
                if isinstance(item, _End):
                    return
                if isinstance(item, _Failure):
                    raise item.error
                index, t0, frame, batch = item
                raw = batch.dtype == np.uint8
                preds = _top_k(self.frame_logits(batch, bgr) if raw else self.infer(batch), top_k, self.labels)[0]
                yield StreamResult(index, frame, tuple(preds), time.perf_counter() - t0, dropped[0],
                                   "frame-in" if raw else "cpu")
        finally:
            stop.set()
            for w in workers:
                w.join(timeout=5.0)
            close = getattr(frames, "close", None)
            if callable(close) and not any(w.is_alive() for w in workers):
                close()

    # --- lifetime --------------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self.frames.close()
            if self.backend is not None:
                self.backend.close()
                self.backend = None

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Runner({str(self.artifact.path)!r}, backend={self.backend_name}, model={self.artifact.model_name}, "
                f"status={self.status})")


_top_k = top_k  # Runner.classify/stream have a parameter named top_k


# --- video sources ---------------------------------------------------------------------------------


def parse_source(source: str | int) -> str | int:
    """``"0"`` -> camera 0; anything else (a file, ``rtsp://...``) unchanged."""
    if isinstance(source, int):
        return source
    s = str(source).strip()
    return int(s) if s.isdigit() else s


def open_video(source: str | int) -> Any:
    """An opened ``cv2.VideoCapture`` for a device index, a file or a URL; one clear line if not."""
    import cv2

    src = parse_source(source)
    if isinstance(src, str) and "://" not in src and not Path(src).exists():
        raise EffdeployError(f"video source {src} does not exist; pass a camera index (0), a video file or an rtsp:// URL")
    # OpenCV logs its own multi-line warnings for sources it cannot open; the error below says it once.
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        cap = cv2.VideoCapture(src)
    finally:
        cv2.utils.logging.setLogLevel(level)
    if not cap.isOpened():
        cap.release()
        what = f"camera {src}" if isinstance(src, int) else str(src)
        raise EffdeployError(f"cannot open video source {what}: no such device, unsupported file or unreachable stream")
    return cap


def video_frames(source: str | int, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """BGR uint8 frames from a device index, a file or a URL until it ends; the capture is released
    when the iteration stops (also when abandoned early)."""
    cap = open_video(source)
    try:
        n = 0
        while max_frames is None or n < max_frames:
            ok, frame = cap.read()
            if not ok or frame is None:
                if n == 0:
                    raise EffdeployError(f"video source {source} opened but delivered no frames")
                return
            if frame.ndim == 2:  # some cameras deliver grayscale
                import cv2

                frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
            check_frame(frame)
            yield frame
            n += 1
    finally:
        cap.release()


__all__ = [
    "Artifact", "Prediction", "Runner", "StreamResult", "check_status", "class_labels", "open_backend",
    "open_video", "parse_source", "resolve_artifact", "softmax", "top_k", "video_frames",
]
