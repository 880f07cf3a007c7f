"""The runtime side of frame-in graphs: which graph or engine a raw camera frame goes to
(``FrameRouter``), opened from a bundle's verified frame graphs or the frame engines beside a plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..backends import infer_in_batches_of
from ..backends.onnxrt import FrameSession
from ..data.frames import PATH_CPU, PATH_FRAME, FrameInput, usable_frame_graph
from ..errors import EffdeployError


@dataclass
class _Route:
    frame: FrameInput
    backend: Any  # FrameSession or a TensorRTRunner of a frame engine
    file: str

    def infer(self, frames: np.ndarray) -> np.ndarray:
        return infer_in_batches_of(self.backend, frames)


class FrameRouter:
    """The frame-in graphs (or engines) a Runner hands raw frames to, keyed by (height, width, order).

    Frames of another size or channel order take the CPU path (``preprocess()`` + the model);
    frames that are not HxWx3 uint8 are refused by :func:`effdeploy.data.preprocess.check_frame`.
    """

    def __init__(self, routes: Sequence[_Route] = ()) -> None:
        self._routes = {(r.frame.height, r.frame.width, r.frame.channel_order): r for r in routes}

    @property
    def inputs(self) -> tuple[FrameInput, ...]:
        return tuple(r.frame for r in self._routes.values())

    def key(self, frame: np.ndarray, bgr: bool) -> tuple[int, int, str] | None:
        """The route for one frame (checked first), or None for the CPU path."""
        from ..data.preprocess import check_frame

        check_frame(frame)
        k = (int(frame.shape[0]), int(frame.shape[1]), "bgr" if bgr else "rgb")
        return k if k in self._routes else None

    def route(self, key: tuple[int, int, str]) -> _Route:
        return self._routes[key]

    def describe(self, frame: np.ndarray, bgr: bool) -> str:
        """Which path a frame takes, in words (the camera example prints it)."""
        k = self.key(frame, bgr)
        if k is not None:
            r = self._routes[k]
            return f"{PATH_FRAME}: {r.file} takes {r.frame} frames ({r.backend.name}); preprocessing inside the graph"
        got = f"{frame.shape[1]}x{frame.shape[0]} {'bgr' if bgr else 'rgb'}"
        takes = ", ".join(str(f) for f in self.inputs) or "no frame-in graphs (build with --frame WxH)"
        return f"{PATH_CPU}: preprocess() on the CPU, then the model (frames are {got}; the artifact takes {takes})"

    def close(self) -> None:
        for r in self._routes.values():
            r.backend.close()
        self._routes = {}


def open_frame_routes(art: Any, threads: int | None = None, spin: bool = True) -> FrameRouter:
    """The verified frame-in graphs of a bundle (ONNX Runtime) or the frame engines beside an
    ``engine.plan`` (TensorRT); an empty router for anything else."""
    kind = getattr(art, "kind", None)
    if kind == "bundle" and art.manifest is not None:
        from ..backends.cpu_features import check_int8_dot
        from ..backends.onnxrt import manifest_optimize

        check_int8_dot(art.manifest, art.path, "onnxruntime")  # the frame graphs hold the INT8 model

        routes = []
        for entry in getattr(art.manifest, "frames", ()) or ():
            path = Path(art.path) / str(entry.get("file", ""))
            if not usable_frame_graph(entry) or not path.is_file():
                continue
            frame = FrameInput(int(entry["width"]), int(entry["height"]), str(entry.get("channel_order", "bgr")))
            session = FrameSession(path, threads=threads, optimize=manifest_optimize(art.manifest),
                                   session_config={"session.intra_op.allow_spinning": "1" if spin else "0"})
            routes.append(_Route(frame, session, path.name))
        return FrameRouter(routes)
    if kind == "engine":
        return FrameRouter([_Route(f, _open_trt(p), p.name) for f, p in frame_engines_beside(Path(art.model_path))])
    return FrameRouter()


def routes_for(art: Any, backend: Any, threads: int | None = None, spin: bool = True) -> FrameRouter:
    """The frame routes for a model opened on ``backend``. On OpenVINO none: frames take the CPU
    path (``preprocess()`` + the model on OpenVINO), because OpenVINO runs a frame-in graph's
    preprocessing slowly (B0 FP32, 1080p: frame-in 2.55x model-only against the CPU path's 1.23x,
    docs/runtime.md), and the graph on ONNX Runtime would take the model off OpenVINO."""
    if getattr(backend, "name", "") == "openvino":
        return FrameRouter()
    return open_frame_routes(art, threads, spin)


def _open_trt(path: Path) -> Any:
    from ..backends.tensorrt.runner import TensorRTRunner

    return TensorRTRunner.open(path)


def frame_engines_beside(plan_path: Path) -> list[tuple[FrameInput, Path]]:
    """The frame engines ``effdeploy compile`` wrote beside ``plan_path`` (engine.json ``frame``)."""
    from ..backends.tensorrt.manifest import load_engine_manifest

    out = []
    for p in sorted(plan_path.parent.glob(f"{plan_path.stem}-frame-*{plan_path.suffix}")):
        try:
            frame = dict(getattr(load_engine_manifest(p, verify=False), "frame", None) or {})
        except EffdeployError:
            continue
        if frame:
            out.append((FrameInput(int(frame["width"]), int(frame["height"]), str(frame["channel_order"])), p))
    return out
