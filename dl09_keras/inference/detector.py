"""A detector = pre-processing + a runtime + the shared post-processing.

OpenCV delivers BGR frames; the models take RGB. :meth:`Detector.preprocess`
is the only place where the channel order is converted, and every image that
reaches a model (camera frames, video frames, image files, evaluation data)
passes through it.
"""

from __future__ import annotations

import time

import cv2
import numpy as np
from tqdm import tqdm

from dl09_keras.evaluation import GroundTruth, mean_average_precision
from dl09_keras.inference.postprocess import Detections, postprocess
from dl09_keras.inference.runtimes import Runtime


def read_image_bgr(path: str) -> np.ndarray:
    """Read an image file as OpenCV does (uint8 BGR); raise a clear error when that fails."""
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"Cannot read image {path}: the file is missing or not an image OpenCV decodes.")
    return image


class Detector:
    """Run a detector on BGR frames.

    Args:
        runtime: any :class:`Runtime`.
        class_names: names of the 0-based labels.
        score_threshold: lowest score kept. Default 0.4.
        iou_threshold: per-class NMS threshold. Default 0.45.
        max_detections: detections kept per frame. Default 100.
    """

    def __init__(self, runtime: Runtime, class_names, score_threshold=0.4, iou_threshold=0.45, max_detections=100):
        self.runtime = runtime
        self.class_names = list(class_names)
        self.score_threshold = float(score_threshold)
        self.iou_threshold = float(iou_threshold)
        self.max_detections = int(max_detections)
        self.last_seconds = {"preprocess": 0.0, "model": 0.0, "postprocess": 0.0}

    def preprocess(self, frame_bgr: np.ndarray) -> np.ndarray:
        """BGR uint8 (H, W, 3) to the model input float32 (1, h, w, 3) RGB in [0, 255]."""
        if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3:
            raise ValueError(f"Invalid frame shape {frame_bgr.shape}: expected (H, W, 3) BGR.")
        height, width = self.runtime.input_size
        resized = cv2.resize(frame_bgr, (width, height), interpolation=cv2.INTER_LINEAR)
        rgb = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)
        return rgb.astype(np.float32)[None]

    @property
    def last_model_seconds(self) -> float:
        """Seconds of the runtime call in the last :meth:`detect`."""
        return self.last_seconds["model"]

    def detect(self, frame_bgr: np.ndarray, batch: np.ndarray | None = None) -> Detections:
        """Detect objects in one frame; boxes stay normalized (multiply by the frame size to draw).

        ``batch`` is ``preprocess(frame_bgr)`` when the caller has computed it already.
        ``last_seconds`` then contains the seconds of each step: preprocess, model, postprocess.
        """
        start = time.perf_counter()
        batch = self.preprocess(frame_bgr) if batch is None else batch
        prepared = time.perf_counter()
        scores, boxes = self.runtime(batch)
        computed = time.perf_counter()
        detections = postprocess(
            scores[0], boxes[0], self.score_threshold, self.iou_threshold, self.max_detections
        )
        self.last_seconds = {"preprocess": prepared - start, "model": computed - prepared,
                             "postprocess": time.perf_counter() - computed}
        return detections


def detect_dataset(detector: Detector, dataset, progress=True) -> tuple[list[Detections], list[GroundTruth]]:
    """Run ``detector`` on every image of ``dataset``.

    Returns:
        (detections, ground truths): one :class:`Detections` and one
        :class:`~dl09_keras.evaluation.GroundTruth` per sample, in the dataset's order.
    """
    detections, ground_truths = [], []
    for sample in tqdm(dataset.samples, desc="Evaluating", unit="image", disable=not progress, leave=False):
        if sample.image is not None:
            image = cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR)  # in-memory samples are RGB
        else:
            image = read_image_bgr(sample.path)
        detections.append(detector.detect(image))
        ground_truths.append(GroundTruth(sample.boxes, sample.labels, sample.difficult))
    return detections, ground_truths


def evaluate_detector(detector: Detector, dataset, iou_threshold=0.5, progress=True) -> dict:
    """Run ``detector`` on every image of ``dataset`` and compute VOC mAP.

    Use a low ``detector.score_threshold`` (0.01) for mAP: the precision-recall
    curve needs the low-scoring detections too. :func:`detect_dataset` returns
    the per-image detections for callers that need them as well.
    """
    detections, ground_truths = detect_dataset(detector, dataset, progress)
    return mean_average_precision(detections, ground_truths, dataset.class_names, iou_threshold)
