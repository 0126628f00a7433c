import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from dl09_keras.evaluation import GroundTruth, average_precision, mean_average_precision
from dl09_keras.inference import Detections


def det(boxes, scores, labels):
    return Detections(np.array(boxes, np.float32).reshape(-1, 4), np.array(scores, np.float32),
                      np.array(labels, np.int32))


def test_area_ap_of_a_hand_made_ranking():
    # Two ground truths; ranked detections: hit, miss, hit.
    gts = [GroundTruth(np.array([[0, 0, 0.2, 0.2], [0.5, 0.5, 0.7, 0.7]]), np.array([0, 0]))]
    dets = [det([[0, 0, 0.2, 0.2], [0.8, 0.8, 0.9, 0.9], [0.5, 0.5, 0.7, 0.7]], [0.9, 0.8, 0.7], [0, 0, 0])]
    result = mean_average_precision(dets, gts, ["cell"])
    # Precision 1 up to recall 0.5, then 2/3 up to recall 1: AP = 0.5 + 0.5 * 2/3.
    assert result["map"] == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_duplicate_detection_is_a_false_positive():
    gts = [GroundTruth(np.array([[0, 0, 0.2, 0.2]]), np.array([0]))]
    dets = [det([[0, 0, 0.2, 0.2], [0, 0, 0.2, 0.21]], [0.9, 0.8], [0, 0])]
    assert mean_average_precision(dets, gts, ["a"])["map"] == pytest.approx(1.0)
    dets = [det([[0, 0, 0.2, 0.21], [0, 0, 0.2, 0.2]], [0.9, 0.95], [0, 0])]
    assert mean_average_precision(dets, gts, ["a"])["map"] == pytest.approx(1.0)
    # Missing ground truth: AP is recall-limited.
    gts = [GroundTruth(np.array([[0, 0, 0.2, 0.2], [0.4, 0.4, 0.6, 0.6]]), np.array([0, 0]))]
    assert mean_average_precision(dets, gts, ["a"])["map"] == pytest.approx(0.5)


def test_difficult_ground_truth_is_ignored():
    gts = [GroundTruth(np.array([[0, 0, 0.2, 0.2], [0.5, 0.5, 0.7, 0.7]]), np.array([0, 0]),
                       np.array([False, True]))]
    dets = [det([[0.5, 0.5, 0.7, 0.7], [0, 0, 0.2, 0.2]], [0.9, 0.8], [0, 0])]
    result = mean_average_precision(dets, gts, ["a"])
    assert result["map"] == pytest.approx(1.0)
    assert result["num_ground_truths"]["a"] == 1


def test_class_without_ground_truth_is_nan():
    gts = [GroundTruth(np.array([[0, 0, 0.2, 0.2]]), np.array([0]))]
    dets = [det([[0, 0, 0.2, 0.2]], [0.9], [0])]
    result = mean_average_precision(dets, gts, ["a", "b"])
    assert np.isnan(result["ap"]["b"])
    assert result["map"] == pytest.approx(1.0)


def test_eleven_point_ap():
    recall = np.array([0.5, 0.5, 1.0])
    precision = np.array([1.0, 0.5, 2 / 3])
    # Recall thresholds 0..0.5 see precision 1; 0.6..1.0 see 2/3.
    assert average_precision(recall, precision, "11point") == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)


def random_scene(rng, num_images=30, num_classes=3):
    """Ground truths on a grid (no two overlap) and noisy detections with random scores."""
    gts, dets = [], []
    for _ in range(num_images):
        cells = rng.choice(16, size=rng.integers(1, 7), replace=False)
        y, x = (cells // 4) * 0.25, (cells % 4) * 0.25
        boxes = np.stack([y + 0.03, x + 0.03, y + 0.2, x + 0.2], axis=1)
        labels = rng.integers(0, num_classes, len(boxes))
        gts.append(GroundTruth(boxes, labels))
        found = rng.uniform(size=len(boxes)) < 0.8
        jitter = rng.normal(0, 0.02, (int(found.sum()), 4))
        false_boxes = rng.uniform(0, 0.8, (rng.integers(0, 4), 2))
        false_boxes = np.concatenate([false_boxes, false_boxes + 0.15], axis=1)
        det_boxes = np.concatenate([boxes[found] + jitter, false_boxes])
        det_labels = np.concatenate([labels[found], rng.integers(0, num_classes, len(false_boxes))])
        dets.append(det(np.clip(det_boxes, 0, 1), rng.uniform(0.05, 1, len(det_boxes)), det_labels))
    return gts, dets


def coco_ap50(gts, dets, num_classes, size=1000):
    """AP@0.5 per class from pycocotools on the same boxes (scaled to pixels)."""
    images = [{"id": i + 1, "width": size, "height": size} for i in range(len(gts))]
    annotations, results = [], []
    for image_id, (gt, dt) in enumerate(zip(gts, dets), start=1):
        for box, label in zip(gt.boxes * size, gt.labels):
            y0, x0, y1, x1 = box
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label) + 1,
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
        for box, score, label in zip(dt.boxes * size, dt.scores, dt.labels):
            y0, x0, y1, x1 = (float(v) for v in box)
            results.append({"image_id": image_id, "category_id": int(label) + 1,
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(score)})
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations,
                    "categories": [{"id": c + 1, "name": str(c)} for c in range(num_classes)]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(results), "bbox")
        evaluator.params.iouThrs = np.array([0.5])
        evaluator.evaluate()
        evaluator.accumulate()
    # precision: (iou thresholds, recall points, classes, area ranges, max detections)
    precision = evaluator.eval["precision"][0, :, :, 0, -1]
    return precision.mean(axis=0)


def test_ap50_matches_pycocotools_on_the_same_detections():
    rng = np.random.default_rng(0)
    gts, dets = random_scene(rng)
    coco = coco_ap50(gts, dets, 3)
    ours_101 = mean_average_precision(dets, gts, ["a", "b", "c"], method="101point")
    np.testing.assert_allclose(list(ours_101["ap"].values()), coco, atol=1e-6)
    # The VOC area method integrates the same curve exactly; on 50+ points per class the
    # 101-point sampling differs from it by well under 0.01.
    ours_area = mean_average_precision(dets, gts, ["a", "b", "c"], method="area")
    np.testing.assert_allclose(list(ours_area["ap"].values()), coco, atol=0.01)
    assert ours_area["map"] == pytest.approx(float(np.mean(coco)), abs=0.01)
