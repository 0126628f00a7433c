"""``dl09 detect``: run a trained detector on a camera, a video, an image or a folder.

Frames come from OpenCV (BGR); :class:`~dl09_keras.inference.Detector` converts
them for the model, and boxes are drawn on the original frame. In window mode
the annotated frames are shown with a frames-per-second overlay until q or Esc.
With ``--no-show`` they are written to ``--output`` and the speed is printed.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import sys
import threading
import time

import numpy as np

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
WINDOW_NAME = "dl09 detect"
QUIT_KEYS = (ord("q"), ord("Q"), 27)  # 27 is Esc


class CameraError(RuntimeError):
    """A camera or video that cannot be opened or read."""


def add_detect_arguments(parser: argparse.ArgumentParser):
    from dl09_keras.inference.runtimes import RUNTIMES, TFLITE_VARIANTS

    parser.add_argument("run_dir", help="run folder written by train.py (exported for onnxruntime, opencv, tflite).")
    parser.add_argument("--source", default="0",
                        help="camera index (0), video file, image file or folder of images. Default: 0.")
    parser.add_argument("--runtime", choices=RUNTIMES, default="onnxruntime", help="Default: onnxruntime.")
    parser.add_argument("--tflite-variant", choices=TFLITE_VARIANTS, default="fp32", help="Default: fp32.")
    parser.add_argument("--output", default=None,
                        help="annotated video file (for a camera or video) or folder (for images).")
    parser.add_argument("--no-show", action="store_true", help="no window: write --output and print frames/s.")
    parser.add_argument("--score", type=float, default=0.4, help="lowest score drawn. Default: 0.4.")
    parser.add_argument("--nms-iou", type=float, default=None,
                        help="per-class NMS IoU threshold. Default: 0.45, or the run's own for an R-CNN (0.3).")
    parser.add_argument("--max-frames", type=int, default=None, help="stop after this many frames.")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of ONNX Runtime and LiteRT.")
    parser.add_argument("--no-prefetch", action="store_true",
                        help="decode each frame only after the previous one is drawn (no reader thread).")


def class_colors(count: int) -> list[tuple[int, int, int]]:
    """Distinct BGR colors, one per class, stable across runs."""
    import cv2

    hues = np.linspace(0, 180, count, endpoint=False).astype(np.uint8)
    hsv = np.stack([hues, np.full(count, 220, np.uint8), np.full(count, 255, np.uint8)], axis=-1)[None]
    return [tuple(int(c) for c in bgr) for bgr in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0]]


def draw_detections(frame, detections, class_names, colors=None):
    """Draw boxes with class names and scores on a BGR frame, in place; return the frame."""
    import cv2

    from dl09_keras.boxes import to_pixels_xyxy

    colors = colors or class_colors(len(class_names))
    height, width = frame.shape[:2]
    thickness = max(1, round(min(height, width) / 300))
    for box, score, label in zip(to_pixels_xyxy(detections.boxes, width, height), detections.scores, detections.labels):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        color = colors[int(label)]
        cv2.rectangle(frame, (x1, y1), (x2, y2), color, thickness)
        text = f"{class_names[int(label)]} {score:.2f}"
        (text_width, text_height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        top = max(y1 - text_height - baseline, 0)
        cv2.rectangle(frame, (x1, top), (x1 + text_width, top + text_height + baseline), color, -1)
        cv2.putText(frame, text, (x1, top + text_height), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return frame


def draw_fps(frame, fps: float, model_ms: float):
    """Write the frame rate and the model time in white on a black band at the top left."""
    import cv2

    text = f"{fps:.1f} frames/s, model {model_ms:.1f} ms"
    (width, height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
    cv2.rectangle(frame, (0, 0), (width + 12, height + baseline + 10), (0, 0, 0), -1)
    cv2.putText(frame, text, (6, height + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return frame


def _source_kind(source: str) -> str:
    if source.isdigit():
        return "camera"
    if os.path.isdir(source):
        return "folder"
    if not os.path.exists(source):
        raise FileNotFoundError(f"Source {source!r} not found: pass a camera index, a video, an image or a folder.")
    return "image" if source.lower().endswith(IMAGE_EXTENSIONS) else "video"


def _open_capture(source: str, kind: str):
    import cv2

    capture = cv2.VideoCapture(int(source)) if kind == "camera" else cv2.VideoCapture(source)
    if not capture.isOpened():
        if kind == "camera":
            raise CameraError(
                f"Cannot open camera {source}: check that it is connected and not used by another "
                "program, try another index, or pass a video file with --source."
            )
        raise CameraError(f"Cannot open video {source}: the file is missing or OpenCV cannot decode it.")
    return capture


class FrameRate:
    """Frames per second over the last frames, smoothed exponentially."""

    def __init__(self, smoothing=0.9):
        self.smoothing = smoothing
        self.value = 0.0
        self.last = time.perf_counter()

    def tick(self) -> float:
        """Record the end of a frame; return the smoothed rate, the first frame's own rate at first."""
        now = time.perf_counter()
        current = 1.0 / max(now - self.last, 1e-9)
        self.value = current if self.value == 0 else self.smoothing * self.value + (1 - self.smoothing) * current
        self.last = now
        return self.value


def iterate_frames(source: str, kind: str, max_frames=None):
    """Yield (name, BGR frame) from a camera, video, image or folder."""
    from dl09_keras.inference.detector import read_image_bgr

    count = 0
    if kind in ("camera", "video"):
        capture = _open_capture(source, kind)
        try:
            while max_frames is None or count < max_frames:
                ok, frame = capture.read()
                if not ok:
                    if count == 0:
                        raise CameraError(f"{kind.capitalize()} {source} opened but delivered no frame.")
                    break
                yield f"frame{count:06d}", frame
                count += 1
        finally:
            capture.release()
        return
    paths = [source] if kind == "image" else sorted(
        os.path.join(source, f) for f in os.listdir(source) if f.lower().endswith(IMAGE_EXTENSIONS)
    )
    if not paths:
        raise FileNotFoundError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) in folder {source}.")
    for path in paths[:max_frames]:
        yield os.path.basename(path), read_image_bgr(path)


def prefetch_frames(frames, depth: int = 2, prepare=None):
    """Yield the items of the iterator ``frames`` while a thread reads the next ``depth`` ahead.

    Decoding (OpenCV releases the GIL) then overlaps the model call and drawing of the
    frame before. With ``prepare``, each (name, frame) item comes with ``prepare(frame)``
    as a third element, computed in the thread too (e.g. the model input). An exception
    in the reader reaches the caller at the frame where it happened; closing this
    generator early stops the reader.
    """
    if depth < 1:
        raise ValueError(f"Invalid prefetch depth {depth}: use 1 or more.")
    items = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read():
        try:
            for item in frames:
                if prepare is not None:
                    item = (*item, prepare(item[1]))
                if not put(item):
                    return
        except BaseException as error:  # handed to the consumer, raised there
            put(error)
            return
        finally:
            if stop.is_set() and hasattr(frames, "close"):
                frames.close()
        put(done)

    reader = threading.Thread(target=read, name="frame-reader", daemon=True)
    reader.start()
    try:
        while True:
            item = items.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        reader.join(timeout=5)


class _Writer:
    """Writes annotated frames: a video for camera/video sources, image files otherwise."""

    def __init__(self, output, kind, fps):
        self.output, self.kind, self.fps = output, kind, fps
        self.video = None
        if output and kind in ("folder", "image"):
            os.makedirs(output, exist_ok=True)

    def write(self, name, frame):
        import cv2

        if not self.output:
            return
        if self.kind in ("folder", "image"):
            cv2.imwrite(os.path.join(self.output, name), frame)
            return
        if self.video is None:
            parent = os.path.dirname(os.path.abspath(self.output))
            os.makedirs(parent, exist_ok=True)
            fourcc = cv2.VideoWriter_fourcc(*("mp4v" if self.output.lower().endswith(".mp4") else "MJPG"))
            self.video = cv2.VideoWriter(self.output, fourcc, self.fps, (frame.shape[1], frame.shape[0]))
            if not self.video.isOpened():
                raise ValueError(f"Cannot write video {self.output}: use a .mp4 or .avi file name.")
        self.video.write(frame)

    def close(self):
        if self.video is not None:
            self.video.release()


def run_detection(args) -> int:
    """Run ``dl09 detect``; return the process exit status."""
    from dl09_keras.inference import Detector, open_runtime
    from dl09_keras.run import RunFolder

    try:
        kind = _source_kind(args.source)
    except FileNotFoundError as error:
        logger.error("%s", error)
        return 2
    if not args.no_show and sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        # Without a display, Qt aborts the whole process when the window opens.
        logger.error("No display for the window (DISPLAY is not set): pass --no-show --output FILE "
                     "to write the annotated frames, or run under a desktop session or Xvfb.")
        return 2
    if args.no_show and not args.output:
        logger.info("No --output given: frames are processed and timed but not saved.")
    run = RunFolder(args.run_dir)
    class_names = run.class_names()
    if run.read_metadata().get("task") == "rcnn":
        from dl09_keras.rcnn.detector import RCNNDetector

        if args.runtime != "keras":
            logger.error("Run %s is an R-CNN, which runs in Keras only: pass --runtime keras.", run.path)
            return 2
        detector = RCNNDetector(run.path, score_threshold=args.score, iou_threshold=args.nms_iou)
    else:
        runtime = open_runtime(args.run_dir, args.runtime, args.tflite_variant, args.threads)
        detector = Detector(runtime, class_names, score_threshold=args.score,
                            iou_threshold=0.45 if args.nms_iou is None else args.nms_iou)
    colors = class_colors(len(class_names))

    source_fps = 30.0
    if kind == "video":
        import cv2

        probe = cv2.VideoCapture(args.source)
        source_fps = probe.get(cv2.CAP_PROP_FPS) or 30.0
        probe.release()
    writer = _Writer(args.output, kind, source_fps)
    rate = FrameRate()
    frames, model_seconds, start = 0, 0.0, time.perf_counter()
    try:
        frames_in = iterate_frames(args.source, kind, args.max_frames)
        if not args.no_prefetch:
            frames_in = prefetch_frames(frames_in, prepare=getattr(detector, "preprocess", None))
        for name, frame, *prepared in frames_in:
            detections = detector.detect(frame, *prepared)
            model_seconds += detector.last_model_seconds
            frames += 1
            draw_detections(frame, detections, class_names, colors)
            draw_fps(frame, rate.tick(), 1000 * detector.last_model_seconds)
            writer.write(name, frame)
            if not args.no_show and _show(frame, wait_ms=1 if kind in ("camera", "video") else 0):
                break
    except CameraError as error:
        logger.error("%s", error)
        return 2
    finally:
        writer.close()
        if not args.no_show:
            _close_window()
    elapsed = time.perf_counter() - start
    if frames:
        print(
            f"{frames} frames in {elapsed:.2f} s: {frames / elapsed:.1f} frames/s end to end, "
            f"model {1000 * model_seconds / frames:.2f} ms/frame ({args.runtime})"
        )
    if args.output:
        print(f"Annotated output: {os.path.abspath(args.output)}")
    return 0


def _show(frame, wait_ms: int) -> bool:
    """Show a frame; return True when the user asked to quit (q, Esc or closed window)."""
    import cv2

    cv2.imshow(WINDOW_NAME, frame)
    key = cv2.waitKey(wait_ms) & 0xFF
    if key in QUIT_KEYS:
        return True
    return cv2.getWindowProperty(WINDOW_NAME, cv2.WND_PROP_VISIBLE) < 1


def _close_window():
    import cv2

    try:
        cv2.destroyAllWindows()
    except cv2.error:
        pass  # no window was opened
