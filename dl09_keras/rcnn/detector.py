"""The R-CNN detector: proposals, region features, SVM scores, box regression, NMS per class.

It offers what :class:`~dl09_keras.inference.Detector` offers (``detect``,
``last_seconds``, ``class_names``), so ``dl09 detect`` and ``dl09 evaluate`` run it
the same way. Scores are the SVM margins passed through a sigmoid, so that 0.5 is
the SVM's boundary and ``--score`` keeps its meaning of a threshold in [0, 1].
"""

from __future__ import annotations

import time

import numpy as np

from dl09_keras.inference.postprocess import Detections, nms
from dl09_keras.rcnn.config import RCNNConfig
from dl09_keras.rcnn.proposals import ProposalCache, selective_search
from dl09_keras.rcnn.training import apply_regression, image_proposals, region_features, sample_images

PER_CLASS_CANDIDATES = 300


class RCNNDetector:
    """Load an R-CNN run folder and detect objects in BGR frames.

    Args:
        run_dir: folder written by ``train.py --model rcnn``.
        score_threshold: lowest score kept (sigmoid of the SVM margin). Default 0.4.
        iou_threshold: per-class NMS threshold; None uses the run's (0.3).
        max_detections: detections kept per image. Default 100.
    """

    def __init__(self, run_dir: str, score_threshold: float = 0.4, iou_threshold: float | None = None,
                 max_detections: int = 100):
        import keras

        from dl09_keras.rcnn.region_cnn import feature_function
        from dl09_keras.run import RunFolder

        run = RunFolder(run_dir)
        metadata = run.read_metadata()
        if metadata.get("task") != "rcnn":
            raise ValueError(f"Run {run.path} has task {metadata.get('task')!r}, not 'rcnn'.")
        self.config = RCNNConfig.from_dict(metadata["model"])
        self.class_names = list(metadata["class_names"])
        self.cache_root = metadata.get("proposal_cache")
        model = keras.saving.load_model(run.model_path, safe_mode=True)
        self.features_of = feature_function(model)
        svm = np.load(run.file("svm.npz"))
        self.svm_weights, self.svm_biases = svm["weights"], svm["biases"]
        self.feature_scale = float(svm["feature_scale"])
        self.regression = np.load(run.file("box_regression.npz"))["weights"]
        self.score_threshold = float(score_threshold)
        self.iou_threshold = self.config.nms_iou if iou_threshold is None else float(iou_threshold)
        self.max_detections = int(max_detections)
        self.last_seconds = {"proposals": 0.0, "model": 0.0, "postprocess": 0.0}

    @property
    def last_model_seconds(self) -> float:
        """Seconds of the region features and SVMs in the last :meth:`detect`."""
        return self.last_seconds["model"]

    def detect(self, frame_bgr: np.ndarray, proposals: np.ndarray | None = None) -> Detections:
        """Detect objects in one BGR uint8 frame (H, W, 3); boxes are normalized.

        ``proposals`` (N, 4) skips the selective search, e.g. with cached proposals.
        ``last_seconds`` then contains the seconds of each step.
        """
        import cv2

        start = time.perf_counter()
        if proposals is None:
            proposals = selective_search(frame_bgr, self.config.proposals)
        searched = time.perf_counter()
        rgb = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)
        features = region_features(self.features_of, rgb, proposals, self.config) * self.feature_scale
        margins = features @ self.svm_weights.T + self.svm_biases  # (N, C)
        computed = time.perf_counter()
        detections = self._select(proposals, features, margins)
        self.last_seconds = {"proposals": searched - start, "model": computed - searched,
                             "postprocess": time.perf_counter() - computed}
        return detections

    def _select(self, proposals, features, margins) -> Detections:
        """Regress, threshold and suppress per class; all classes then compete for ``max_detections``."""
        scores = 1.0 / (1.0 + np.exp(-margins))
        boxes, kept_scores, labels = [], [], []
        for c in range(len(self.class_names)):
            candidates = np.flatnonzero(scores[:, c] >= self.score_threshold)
            candidates = candidates[np.argsort(-scores[candidates, c])][:PER_CLASS_CANDIDATES]
            if not len(candidates):
                continue
            found = proposals[candidates]
            if self.config.box_regression:
                weights = self.regression[c]
                found = apply_regression(found, features[candidates] @ weights[:-1] + weights[-1])
            keep = nms(found, scores[candidates, c], self.iou_threshold)
            boxes.append(found[keep])
            kept_scores.append(scores[candidates[keep], c])
            labels.append(np.full(len(keep), c, np.int32))
        if not boxes:
            return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32))
        boxes, kept_scores, labels = np.concatenate(boxes), np.concatenate(kept_scores), np.concatenate(labels)
        order = np.argsort(-kept_scores, kind="stable")[: self.max_detections]
        return Detections(boxes[order].astype(np.float32), kept_scores[order].astype(np.float32), labels[order])


def detect_samples(detector: RCNNDetector, dataset, cache: ProposalCache | None = None, progress: bool = True):
    """Run ``detector`` on every sample, with cached proposals when ``cache`` is given.

    Returns:
        (detections, ground truths), one per sample in the dataset's order.
    """
    from tqdm import tqdm

    from dl09_keras.evaluation import GroundTruth

    detections, ground_truths = [], []
    for sample, _, bgr in tqdm(sample_images(dataset), total=len(dataset), desc="Evaluating", unit="image",
                               disable=not progress, leave=False):
        proposals = image_proposals(cache, sample, bgr) if cache is not None else None
        detections.append(detector.detect(bgr, proposals))
        ground_truths.append(GroundTruth(sample.boxes, sample.labels, sample.difficult))
    return detections, ground_truths


def open_cache(detector: RCNNDetector) -> ProposalCache | None:
    """Open the proposal cache the run was trained with; return None when it has none."""
    return ProposalCache(detector.cache_root, detector.config.proposals) if detector.cache_root else None
