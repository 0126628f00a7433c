"""Inference: runtimes, the shared pre- and post-processing, and evaluation of a detector."""

from dl09_keras.inference.detector import Detector, evaluate_detector, read_image_bgr
from dl09_keras.inference.postprocess import Detections, nms, postprocess
from dl09_keras.inference.runtimes import RUNTIMES, KerasRuntime, Runtime, open_runtime

__all__ = [
    "Detections",
    "Detector",
    "KerasRuntime",
    "RUNTIMES",
    "Runtime",
    "evaluate_detector",
    "nms",
    "open_runtime",
    "postprocess",
    "read_image_bgr",
]
