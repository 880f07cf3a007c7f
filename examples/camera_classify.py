#!/usr/bin/env python3
"""Classify a live camera, a video file or an RTSP stream with an effdeploy bundle or engine.

    python examples/camera_classify.py bundles/efficientnet-lite0-fp32-cpu --source 0
    python examples/camera_classify.py engine.plan --source rtsp://camera.local/stream
    python examples/camera_classify.py bundles/efficientnet-lite0-fp32-cpu --source clip.mp4 --headless

Shows the frame with the top-1 label and the FPS (press q or Esc to quit), or with ``--headless``
prints one line per frame. Capture, preprocessing and inference overlap (``Runner.stream``); for
live sources stale frames are dropped so the label follows the scene, for files every frame is
classified. Frames whose size matches a frame-in graph of the bundle (``effdeploy build --frame``) go
to it raw, preprocessing included; the first line on stderr says which path the frames take.
Torch is never imported.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
import warnings
from typing import Sequence


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artifact", help="bundle directory (ONNX Runtime) or engine.plan (TensorRT)")
    p.add_argument("--source", default="0", help="camera index, video file or rtsp:// URL [0]")
    p.add_argument("--headless", action="store_true", help="print labels and FPS instead of opening a window")
    p.add_argument("--top-k", type=int, default=1, help="classes per frame [1]")
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads [all cores]")
    drop = p.add_mutually_exclusive_group()
    drop.add_argument("--drop-frames", dest="drop", action="store_true", default=None,
                      help="drop stale frames when inference falls behind [default for cameras and URLs]")
    drop.add_argument("--no-drop-frames", dest="drop", action="store_false",
                      help="classify every frame [default for files]")
    p.add_argument("--force", action="store_true", help="run a bundle whose status is failed-parity")
    return p.parse_args(argv)


def overlay(frame, text: str, fps: float):  # type: ignore[no-untyped-def]
    """Top-1 label and FPS in a dark band at the top of the frame (in place)."""
    import cv2

    h, w = frame.shape[:2]
    scale = max(0.5, w / 1280)
    band = int(40 * scale)
    frame[:band] = (frame[:band] * 0.4).astype(frame.dtype)
    cv2.putText(frame, text, (10, int(band * 0.7)), cv2.FONT_HERSHEY_SIMPLEX, 0.8 * scale, (255, 255, 255),
                max(1, int(2 * scale)), cv2.LINE_AA)
    label = f"{fps:5.1f} FPS"
    (tw, _), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.8 * scale, max(1, int(2 * scale)))
    cv2.putText(frame, label, (w - tw - 10, int(band * 0.7)), cv2.FONT_HERSHEY_SIMPLEX, 0.8 * scale, (0, 255, 0),
                max(1, int(2 * scale)), cv2.LINE_AA)
    return frame


def check_gui() -> None:
    """opencv-python-headless has no windows: say so before opening the camera."""
    import cv2

    from effdeploy.errors import EffdeployError

    try:
        cv2.namedWindow("effdeploy")
    except cv2.error:
        raise EffdeployError(
            "this OpenCV build has no GUI (opencv-python-headless); run with --headless, or pip install opencv-python"
        ) from None


def run(args: argparse.Namespace) -> int:
    from effdeploy.errors import EffdeployError
    from effdeploy.runtime.runner import Runner, parse_source, resolve_artifact, video_frames

    if args.top_k < 1:
        raise EffdeployError(f"--top-k must be at least 1 (got {args.top_k})")
    if args.max_frames is not None and args.max_frames < 1:
        raise EffdeployError(f"--max-frames must be at least 1 (got {args.max_frames}); leave it out to run until "
                             "the source ends")
    if args.threads is not None and args.threads < 1:
        raise EffdeployError(f"--threads must be at least 1 (got {args.threads}); leave it out to use every core")
    source = parse_source(args.source)
    live = isinstance(source, int) or "://" in str(source)
    drop = live if args.drop is None else args.drop
    if not args.headless:
        check_gui()
    classes = resolve_artifact(args.artifact).num_classes  # checked before opening warns about status
    if args.top_k > classes:
        raise EffdeployError(f"--top-k {args.top_k} is more than the model's {classes} classes; "
                             f"use --top-k {classes} or less")
    with Runner.open(args.artifact, threads=args.threads, force=args.force) as runner:
        frames = video_frames(source, max_frames=args.max_frames)  # opens now: a bad source fails here
        stamps: collections.deque[float] = collections.deque(maxlen=30)
        count, start = 0, time.perf_counter()
        for result in runner.stream(frames, top_k=args.top_k, bgr=True, drop_frames=drop):
            stamps.append(time.perf_counter())
            fps = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0
            best = result.predictions[0]
            text = f"{best.label} {best.score:.2f}"
            if count == 0:
                print(f"path: {runner.frames.describe(result.frame, bgr=True)}", file=sys.stderr, flush=True)
            count += 1
            if args.headless:
                rest = "  ".join(f"{p.label} {p.score:.2f}" for p in result.predictions[1:])
                print(f"frame {result.index:5d}  {fps:6.1f} fps  {1000 * result.latency_s:6.1f} ms  {text}"
                      + (f"  | {rest}" if rest else ""), flush=True)
            else:
                import cv2

                cv2.imshow("effdeploy", overlay(result.frame.copy(), text, fps))
                if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                    break
        elapsed = time.perf_counter() - start
        if count == 0:
            raise EffdeployError(f"video source {args.source} delivered no frames")
        dropped = f", {result.dropped} dropped" if drop else ""
        print(f"{count} frames in {elapsed:.1f} s ({count / elapsed:.1f} FPS{dropped}) with {runner.backend_name}",
              file=sys.stderr)
    if not args.headless:
        import cv2

        cv2.destroyAllWindows()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # FFmpeg prints its own lines for sources it cannot open; the error below says it once.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    from effdeploy.errors import EffdeployError

    # The runner warns about a bundle that is not 'verified'; say it as one line, not a source location.
    warnings.showwarning = lambda message, *_a, **_k: print(f"camera_classify: warning: {message}", file=sys.stderr)
    try:
        return run(args)
    except EffdeployError as e:
        print(f"camera_classify: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
