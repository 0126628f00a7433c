"""The ``dl09 evaluate --plots`` views: numbers checked on a hand-built case, PNG files checked as images.

The hand-built case has two classes (cat 0, dog 1) and four images, boxes normalized
[ymin, xmin, ymax, xmax]. The score threshold of the confusion table is 0.4.

- image 0: ground truths A (cat) and B (dog). Detections: cat 0.9 on A (correct),
  cat 0.8 on A shifted (duplicate), cat 0.7 on B (wrong class).
- image 1: ground truths C (cat), D (dog, difficult), E (dog). Detections: dog 0.95
  on D (ignored), dog 0.6 on empty ground (background), cat 0.3 on C (below 0.4).
- image 2: ground truth F (dog). Detection: dog 0.85 on F (correct).
- image 3: no ground truth. Detection: cat 0.5 (background).
"""

import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from dl09_keras.data.dataset import Sample
from dl09_keras.evaluation import GroundTruth, mean_average_precision, precision_recall
from dl09_keras.explain.evaluation_views import (
    ImageErrors,
    class_curves,
    confusion_table,
    plot_confusion,
    plot_pr_curves,
    plot_worst_images,
    worst_images,
    write_evaluation_plots,
)
from dl09_keras.explain.figures import PNG_SIGNATURE, save_png
from dl09_keras.inference import Detections

CLASS_NAMES = ["cat", "dog"]
A, B = [0.0, 0.0, 0.4, 0.4], [0.5, 0.5, 0.9, 0.9]
C, D, E = [0.1, 0.1, 0.5, 0.5], [0.6, 0.6, 0.9, 0.9], [0.0, 0.6, 0.3, 0.9]
F = [0.2, 0.2, 0.6, 0.6]


def det(boxes, scores, labels):
    return Detections(np.array(boxes, np.float32).reshape(-1, 4), np.array(scores, np.float32),
                      np.array(labels, np.int32))


def truth(boxes, labels, difficult=None):
    flags = None if difficult is None else np.array(difficult, bool)
    return GroundTruth(np.array(boxes, np.float64).reshape(-1, 4), np.array(labels, np.int32), flags)


def hand_case():
    """Detections and ground truths of the four images in the module docstring."""
    ground_truths = [
        truth([A, B], [0, 1]),
        truth([C, D, E], [0, 1, 1], [False, True, False]),
        truth([F], [1]),
        truth([], []),
    ]
    detections = [
        det([A, [0.0, 0.0, 0.4, 0.42], B], [0.9, 0.8, 0.7], [0, 0, 0]),
        det([D, [0.6, 0.0, 0.9, 0.3], C], [0.95, 0.6, 0.3], [1, 1, 0]),
        det([F], [0.85], [1]),
        det([[0.1, 0.1, 0.3, 0.3]], [0.5], [0]),
    ]
    return detections, ground_truths


def hand_samples(ground_truths):
    """In-memory samples (40 x 60 pixels) that carry the hand case's ground truth."""
    rng = np.random.default_rng(0)
    return [Sample(None, g.boxes, g.labels, g.difficult, image=rng.integers(0, 255, (40, 60, 3), np.uint8))
            for g in ground_truths]


def assert_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    with Image.open(path) as image:
        width, height = image.size
        assert image.format == "PNG"
    assert width > 0
    assert height > 0


# Cat, by falling score: 0.9 hit A, 0.8 duplicate of A, 0.7 on B (a dog), 0.5 on empty
# image 3, 0.3 hit C. There are two cat ground truths.
CAT_RECALL = [1 / 2, 1 / 2, 1 / 2, 1 / 2, 2 / 2]
CAT_PRECISION = [1 / 1, 1 / 2, 1 / 3, 1 / 4, 2 / 5]
# Envelope: precision 1 up to recall 0.5, then 0.4 up to recall 1.
CAT_AP = 0.5 * 1 + 0.5 * 0.4
# Dog: 0.95 on difficult D is dropped, 0.85 hit F, 0.6 on empty ground. There are three dog ground truths (B, E, F).
DOG_RECALL = [1 / 3, 1 / 3]
DOG_PRECISION = [1 / 1, 1 / 2]
DOG_AP = 1 / 3

# Rows: ground truth cat, dog, background. Columns: detected cat, dog, missed.
HAND_TABLE = np.array([
    [1, 0, 1],  # A found, C missed because its only detection scores 0.3
    [1, 1, 1],  # B found as a cat, F found, E missed, D difficult and not counted
    [2, 1, 0],  # cat duplicate on A, cat on empty image 3, dog on empty ground
])


def test_pr_points_of_cat():
    detections, ground_truths = hand_case()
    curve = precision_recall(detections, ground_truths, 0)
    np.testing.assert_allclose(curve.recall, CAT_RECALL, rtol=0, atol=1e-12)
    np.testing.assert_allclose(curve.precision, CAT_PRECISION, rtol=0, atol=1e-12)
    np.testing.assert_allclose(curve.scores, [0.9, 0.8, 0.7, 0.5, 0.3], rtol=0, atol=1e-6)
    assert curve.num_ground_truths == 2


def test_pr_points_of_dog_skip_difficult():
    detections, ground_truths = hand_case()
    curve = precision_recall(detections, ground_truths, 1)
    np.testing.assert_allclose(curve.recall, DOG_RECALL, rtol=0, atol=1e-12)
    np.testing.assert_allclose(curve.precision, DOG_PRECISION, rtol=0, atol=1e-12)
    np.testing.assert_allclose(curve.scores, [0.85, 0.6], rtol=0, atol=1e-6)
    assert curve.num_ground_truths == 3


def test_curve_ap_equals_map_result():
    detections, ground_truths = hand_case()
    cat, dog = class_curves(detections, ground_truths, 2)
    assert cat.average_precision() == pytest.approx(CAT_AP, abs=1e-12)
    assert dog.average_precision() == pytest.approx(DOG_AP, abs=1e-12)
    result = mean_average_precision(detections, ground_truths, CLASS_NAMES)
    assert result["ap"] == pytest.approx({"cat": CAT_AP, "dog": DOG_AP}, abs=1e-12)
    assert result["map"] == pytest.approx((CAT_AP + DOG_AP) / 2, abs=1e-12)


def test_curve_without_ground_truth():
    detections = [det([A], [0.9], [0])]
    curve = precision_recall(detections, [truth([A], [0])], 1)
    assert curve.num_ground_truths == 0
    assert len(curve.scores) == 0
    assert np.isnan(curve.average_precision())


def test_confusion_table_of_hand_case():
    detections, ground_truths = hand_case()
    table = confusion_table(detections, ground_truths, 2)
    assert table.shape == (3, 3)
    np.testing.assert_array_equal(table, HAND_TABLE)


def test_confusion_lower_threshold_takes_c():
    detections, ground_truths = hand_case()
    table = confusion_table(detections, ground_truths, 2, score_threshold=0.2)
    expected = HAND_TABLE.copy()
    expected[0] = [2, 0, 0]  # the cat at 0.3 now takes C
    np.testing.assert_array_equal(table, expected)


def test_confusion_rejects_unknown_label():
    detections = [det([A], [0.9], [2])]
    with pytest.raises(ValueError, match="Invalid detection label 2: labels must be 0..1"):
        confusion_table(detections, [truth([A], [0])], 2)


def test_worst_image_order():
    detections, ground_truths = hand_case()
    ranking = worst_images(detections, ground_truths, 2)
    # Image 1: C and E missed, the dog on empty ground. Image 0: duplicate and wrong class.
    # Image 3: one background box. Image 2 has no error and is left out.
    assert ranking == [ImageErrors(1, missed=2, false=1), ImageErrors(0, missed=0, false=2),
                       ImageErrors(3, missed=0, false=1)]
    assert worst_images(detections, ground_truths, 2, count=2) == ranking[:2]


def test_pr_curves_png(tmp_path):
    detections, ground_truths = hand_case()
    curves = class_curves(detections, ground_truths, 2)
    figure = plot_pr_curves(curves, CLASS_NAMES)
    axes = figure.axes[0]
    assert [text.get_text() for text in axes.get_legend().get_texts()] == ["cat (AP 0.700)", "dog (AP 0.333)"]
    assert axes.get_xlim() == (0.0, 1.0)
    assert axes.get_ylim() == (0.0, 1.0)
    cat_line = axes.get_lines()[0]
    np.testing.assert_allclose(cat_line.get_xdata(), CAT_RECALL, atol=1e-12)
    np.testing.assert_allclose(cat_line.get_ydata(), CAT_PRECISION, atol=1e-12)
    assert_png(save_png(figure, str(tmp_path / "pr_curves.png")))


def test_confusion_png(tmp_path):
    figure = plot_confusion(HAND_TABLE, CLASS_NAMES)
    axes = figure.axes[0]
    cells = [int(text.get_text()) for text in axes.texts]
    assert cells == HAND_TABLE.ravel().tolist()
    assert [label.get_text() for label in axes.get_xticklabels()] == ["cat", "dog", "missed"]
    assert [label.get_text() for label in axes.get_yticklabels()] == ["cat", "dog", "background"]
    assert_png(save_png(figure, str(tmp_path / "confusion.png")))


def test_worst_images_png(tmp_path):
    detections, ground_truths = hand_case()
    ranking = worst_images(detections, ground_truths, 2)
    figure = plot_worst_images(hand_samples(ground_truths), detections, ground_truths, ranking, CLASS_NAMES)
    titles = [axes.get_title() for axes in figure.axes]
    assert titles == ["#1 in memory: 2 missed, 1 false", "#0 in memory: 0 missed, 2 false",
                      "#3 in memory: 0 missed, 1 false"]
    legend = [text.get_text() for text in figure.legends[0].get_texts()]
    assert legend == ["ground truth", "detection (score >= 0.4)"]
    assert_png(save_png(figure, str(tmp_path / "worst_images.png")))


def test_write_evaluation_plots(tmp_path):
    detections, ground_truths = hand_case()
    folder = str(tmp_path / "plots")
    paths = write_evaluation_plots(folder, hand_samples(ground_truths), detections, ground_truths, CLASS_NAMES)
    assert [os.path.basename(p) for p in paths] == ["pr_curves.png", "confusion.png", "worst_images.png"]
    for path in paths:
        assert os.path.dirname(path) == folder
        assert_png(path)


def test_worst_images_without_errors(tmp_path):
    detections, ground_truths = [det([A], [0.9], [0])], [truth([A], [0])]
    assert worst_images(detections, ground_truths, 2) == []
    figure = plot_worst_images(hand_samples(ground_truths), detections, ground_truths, [], CLASS_NAMES)
    assert figure.texts[0].get_text() == "No image has a missed or false box at score >= 0.4."
    assert_png(save_png(figure, str(tmp_path / "worst_images.png")))


def test_rpn_run_rejects_plots(tmp_path):
    from dl09_keras.evaluate_run import evaluate_run

    run_dir = tmp_path / "rpn"
    run_dir.mkdir()
    metadata = {"format_version": 1, "task": "rpn", "class_names": ["circle", "rectangle", "triangle"],
                "data": {"source": "shapes"}}
    (run_dir / "metadata.json").write_text(json.dumps(metadata), encoding="utf-8")
    with pytest.raises(ValueError, match=r"is an RPN \(task 'rpn'\): --plots needs a detector run") as error:
        evaluate_run(str(run_dir), None, "test", plots=True)
    assert str(run_dir) in str(error.value)
    assert not (run_dir / "plots").exists()


def test_evaluate_plots_end_to_end(tiny_run):
    completed = run_cli("evaluate", tiny_run, "--split", "test", "--plots")
    folder = os.path.join(tiny_run, "plots", "shapes-test-keras")
    expected = [os.path.join(folder, name) for name in ("pr_curves.png", "confusion.png", "worst_images.png")]
    for path in expected:
        assert path in completed.stdout
        assert_png(path)

    results = json.load(open(os.path.join(tiny_run, "evaluation.json")))
    entry = results["shapes [test] keras"]
    assert 0.0 <= entry["map"] <= 1.0
    assert set(entry["ap"]) == {"circle", "rectangle", "triangle"}
    assert entry["plots"] == expected
