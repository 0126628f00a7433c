import numpy as np
import tensorflow as tf

from dl09_keras.inference import Detector, postprocess
from dl09_keras.inference.postprocess import nms
from dl09_keras.inference.runtimes import Runtime


def random_boxes(rng, count):
    corners = rng.uniform(0, 0.8, (count, 2))
    sizes = rng.uniform(0.05, 0.3, (count, 2))
    return np.concatenate([corners, corners + sizes], axis=1).astype(np.float32)


def test_nms_matches_tensorflow():
    rng = np.random.default_rng(0)
    for threshold in (0.3, 0.45, 0.7):
        boxes = random_boxes(rng, 300)
        scores = rng.uniform(size=300).astype(np.float32)
        expected = tf.image.non_max_suppression(boxes, scores, 300, iou_threshold=threshold).numpy()
        np.testing.assert_array_equal(nms(boxes, scores, threshold), expected)


def test_postprocess_keeps_classes_apart_and_drops_background():
    boxes = np.array([[0.1, 0.1, 0.5, 0.5], [0.1, 0.1, 0.5, 0.51], [0.6, 0.6, 0.9, 0.9]], np.float32)
    scores = np.array([
        [0.1, 0.9, 0.0],   # class 1 (label 0)
        [0.1, 0.0, 0.9],   # same place, other class: kept
        [0.95, 0.05, 0.0],  # background: dropped
    ], np.float32)
    detections = postprocess(scores, boxes, score_threshold=0.4)
    assert len(detections) == 2
    np.testing.assert_array_equal(sorted(detections.labels), [0, 1])


def test_postprocess_suppresses_same_class_overlap_and_clips():
    boxes = np.array([[-0.1, 0.1, 0.5, 0.5], [-0.1, 0.1, 0.5, 0.52]], np.float32)
    scores = np.array([[0.2, 0.8], [0.3, 0.7]], np.float32)
    detections = postprocess(scores, boxes, score_threshold=0.4)
    assert len(detections) == 1
    assert detections.scores[0] == np.float32(0.8)
    assert detections.boxes.min() >= 0.0


def test_postprocess_limits_detections():
    rng = np.random.default_rng(1)
    boxes = random_boxes(rng, 1000)
    scores = np.stack([np.zeros(1000), rng.uniform(0.5, 1, 1000)], axis=1).astype(np.float32)
    detections = postprocess(scores, boxes, score_threshold=0.4, iou_threshold=1.0, max_detections=50,
                             pre_nms_top_k=100)
    assert len(detections) == 50
    assert np.all(np.diff(detections.scores) <= 0)
    assert detections.scores[-1] >= np.sort(scores[:, 1])[-100]


class Recorder(Runtime):
    """A runtime that records its input and returns fixed outputs."""

    name = "recorder"

    def __call__(self, batch):
        self.batch = batch
        return np.zeros((1, 1, 2), np.float32), np.zeros((1, 1, 4), np.float32)


def test_detector_converts_bgr_to_rgb_and_resizes():
    runtime = Recorder((4, 6))
    detector = Detector(runtime, ["thing"])
    frame = np.zeros((8, 12, 3), np.uint8)
    frame[..., 0] = 200  # blue in OpenCV's BGR order
    detector.detect(frame)
    assert runtime.batch.shape == (1, 4, 6, 3)
    assert runtime.batch.dtype == np.float32
    np.testing.assert_array_equal(runtime.batch[0, :, :, 2], 200.0)  # blue is the last RGB channel
    np.testing.assert_array_equal(runtime.batch[0, :, :, 0], 0.0)
