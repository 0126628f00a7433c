"""R-CNN: region labelling by IoU, warping, the SVM step, box regression, the proposal cache."""

import os
import time

import numpy as np
import pytest

from dl09_keras.rcnn.proposals import ProposalCache, SelectiveSearchConfig
from dl09_keras.rcnn.regions import BACKGROUND, label_regions, svm_negatives, warp_regions
from dl09_keras.rcnn.svm import LinearSVM, fit_svm, fit_svm_hard_negatives
from dl09_keras.rcnn.training import apply_regression, fit_ridge, regression_targets

GT = np.array([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]], np.float32)
GT_LABELS = np.array([2, 0])


# Labelling by IoU, on boxes whose IoU is known by hand.

def test_labels_follow_best_iou():
    proposals = np.array([
        [0.0, 0.0, 0.5, 0.5],     # the first box itself: IoU 1
        [0.0, 0.0, 0.5, 0.25],    # half of it: IoU 0.5, on the threshold
        [0.0, 0.0, 0.5, 0.2],     # 40% of it: IoU 0.4
        [0.5, 0.5, 1.0, 0.9],     # 80% of the second box: IoU 0.8
        [0.0, 0.6, 0.3, 0.9],     # touches neither: IoU 0
    ], np.float32)
    labels, best_iou = label_regions(proposals, GT, GT_LABELS, foreground_iou=0.5)
    assert labels.tolist() == [2, 2, BACKGROUND, 0, BACKGROUND]
    np.testing.assert_allclose(best_iou, [1.0, 0.5, 0.4, 0.8, 0.0], atol=1e-6)


def test_labels_without_ground_truth():
    labels, best_iou = label_regions(np.array([[0.1, 0.1, 0.4, 0.4]]), np.zeros((0, 4)), np.zeros(0))
    assert labels.tolist() == [BACKGROUND]
    assert best_iou.tolist() == [0.0]


def test_svm_negatives_ignore_other_classes():
    proposals = np.array([
        [0.0, 0.0, 0.5, 0.2],     # IoU 0.4 with the class-2 box: neither positive nor negative for class 2
        [0.0, 0.0, 0.5, 0.1],     # IoU 0.2 with it: a negative
        [0.5, 0.5, 1.0, 1.0],     # the class-0 box: a negative for class 2
    ], np.float32)
    assert svm_negatives(proposals, GT, GT_LABELS, class_id=2).tolist() == [False, True, True]
    assert svm_negatives(proposals, GT, GT_LABELS, class_id=0).tolist() == [True, True, False]
    assert svm_negatives(proposals, GT, GT_LABELS, class_id=1).tolist() == [True, True, True]  # class absent


# Warping.

def test_warp_whole_image_is_identity():
    image = np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    warped = warp_regions(image, np.array([[0.0, 0.0, 1.0, 1.0]]), size=24)
    np.testing.assert_array_equal(warped[0], image)


def test_warp_shows_only_the_box():
    image = np.zeros((40, 80, 3), np.uint8)
    image[:, :40] = (200, 10, 10)
    image[:, 40:] = (10, 10, 200)
    left, right = warp_regions(image, np.array([[0.0, 0.0, 1.0, 0.4], [0.1, 0.6, 0.9, 1.0]]), size=32)
    assert (left == (200, 10, 10)).all()
    assert (right == (10, 10, 200)).all()


# The SVM step.

def test_svm_maximum_margin_toy_set():
    # The widest margin separates x = 1 from x = -1: w = (1, 0), b = 0, margin 1 on both.
    features = np.array([[1.0, 0.0], [2.0, 1.0], [1.5, -2.0], [-1.0, 0.0], [-2.0, -1.0], [-1.5, 2.0]])
    targets = np.array([1, 1, 1, -1, -1, -1])
    svm = fit_svm(features, targets, c=1000.0, epochs=500, tolerance=1e-6)
    np.testing.assert_allclose(svm.weights, [1.0, 0.0], atol=1e-3)
    assert abs(svm.bias) < 1e-3
    assert np.all(targets * svm.score(features) >= 1 - 1e-3)


def test_svm_separates_two_clouds():
    rng = np.random.default_rng(1)
    positives = rng.normal([3, 3, 0], 0.5, (100, 3))
    negatives = rng.normal([-3, -3, 0], 0.5, (300, 3))
    svm = fit_svm(np.vstack([positives, negatives]), np.r_[np.ones(100), -np.ones(300)], c=10.0)
    assert (svm.score(positives) > 0).all()
    assert (svm.score(negatives) < 0).all()


def test_hard_negative_mining_adds_violators():
    rng = np.random.default_rng(2)
    positives = rng.normal([2, 0], 0.3, (50, 2))
    easy = rng.normal([-4, 0], 0.3, (500, 2))
    hard = rng.normal([0.3, 2.5], 0.2, (20, 2))  # closer to the positives than to the easy negatives
    negatives = np.vstack([easy, hard])
    svm, record = fit_svm_hard_negatives(positives, negatives, c=10.0, first_negatives=100, rounds=4, seed=0)
    first = record["rounds"][0]
    assert first["new"] > 0, record  # the first SVM, trained without them, lets hard ones into its margin
    assert (svm.score(hard) < 0).all()
    assert (svm.score(positives) > 0).all()


def test_svm_rejects_one_class_only():
    with pytest.raises(ValueError, match="0 negatives"):
        fit_svm(np.ones((3, 2)), np.ones(3))


def test_linear_svm_scores_are_the_margins():
    svm = LinearSVM(np.array([2.0, -1.0], np.float32), 0.5)
    np.testing.assert_allclose(svm.score(np.array([[1.0, 1.0], [0.0, 2.0]])), [1.5, -1.5])


# Box regression.

def test_regression_targets_undo_exactly():
    rng = np.random.default_rng(3)
    corners, sizes = rng.uniform(0.1, 0.4, (20, 2)), rng.uniform(0.1, 0.4, (20, 2))
    proposals = np.hstack([corners, corners + sizes]).astype(np.float32)
    truth = (proposals + rng.normal(0, 0.02, proposals.shape)).astype(np.float32)
    np.testing.assert_allclose(apply_regression(proposals, regression_targets(proposals, truth)), truth, atol=1e-5)


def test_ridge_regression_recovers_a_linear_map():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(500, 6))
    true = rng.normal(size=(6, 4))
    weights = fit_ridge(x, x @ true + 0.25, ridge=1e-6)
    np.testing.assert_allclose(weights[:-1], true, atol=1e-4)
    np.testing.assert_allclose(weights[-1], 0.25, atol=1e-4)


# The proposal cache.

@pytest.fixture
def counted_search(monkeypatch):
    calls = []

    def fake_search(image_bgr, config):
        calls.append(config)
        return np.array([[0.1, 0.1, 0.5, 0.5]], np.float32) * (1 + len(calls) / 10)

    monkeypatch.setattr("dl09_keras.rcnn.proposals.selective_search", fake_search)
    return calls


def write_image(path):
    import cv2

    cv2.imwrite(str(path), np.full((32, 48, 3), 127, np.uint8))


def test_cache_hit_skips_search(tmp_path, counted_search):
    image = tmp_path / "a.png"
    write_image(image)
    cache = ProposalCache(str(tmp_path / "cache"))
    first = cache.proposals(str(image))
    second = ProposalCache(str(tmp_path / "cache")).proposals(str(image))  # a second run
    assert len(counted_search) == 1
    np.testing.assert_array_equal(first, second)


def test_cache_invalidated_by_settings(tmp_path, counted_search):
    image = tmp_path / "a.png"
    write_image(image)
    for config in (SelectiveSearchConfig(), SelectiveSearchConfig(mode="quality"),
                   SelectiveSearchConfig(max_proposals=10), SelectiveSearchConfig(max_side=200)):
        ProposalCache(str(tmp_path / "cache"), config).proposals(str(image))
    assert len(counted_search) == 4
    assert len(os.listdir(tmp_path / "cache")) == 4  # one folder per setting
    ProposalCache(str(tmp_path / "cache"), SelectiveSearchConfig(mode="quality")).proposals(str(image))
    assert len(counted_search) == 4


def test_cache_invalidated_by_image_change(tmp_path, counted_search):
    image = tmp_path / "a.png"
    write_image(image)
    cache = ProposalCache(str(tmp_path / "cache"))
    cache.proposals(str(image))
    later = time.time() + 5
    os.utime(image, (later, later))
    cache.proposals(str(image))
    assert len(counted_search) == 2


def test_invalid_settings_name_value():
    with pytest.raises(ValueError, match="'slow'"):
        SelectiveSearchConfig(mode="slow")
    with pytest.raises(ValueError, match="max_proposals 0"):
        SelectiveSearchConfig(max_proposals=0)


# Selective search itself (OpenCV's contrib module).

def test_selective_search_finds_rectangles():
    import cv2

    from dl09_keras.rcnn.proposals import selective_search

    image = np.full((120, 160, 3), 230, np.uint8)
    cv2.rectangle(image, (10, 20), (60, 90), (30, 30, 200), -1)
    cv2.rectangle(image, (90, 40), (150, 110), (40, 160, 40), -1)
    proposals = selective_search(image, SelectiveSearchConfig(max_proposals=200))
    assert proposals.dtype == np.float32
    assert proposals.shape[1] == 4
    assert (proposals[:, 2] > proposals[:, 0]).all()
    assert (proposals[:, 3] > proposals[:, 1]).all()
    truth = np.array([[20 / 120, 10 / 160, 91 / 120, 61 / 160], [40 / 120, 90 / 160, 111 / 120, 151 / 160]])
    _, best_iou = label_regions(truth, proposals, np.zeros(len(proposals), int))
    assert (best_iou >= 0.8).all(), best_iou


# End to end: train.py --model rcnn, then dl09 evaluate and dl09 detect, on a small VOC folder.

def write_shapes_voc(root, split, count, seed):
    """Write ``count`` shapes images as a VOC folder split; return the list of stems."""
    import cv2

    from dl09_keras.data.shapes import SHAPE_CLASSES, generate_shapes

    dataset = generate_shapes(split="train", num_images=count, size=160, seed=seed)
    os.makedirs(os.path.join(root, "JPEGImages"), exist_ok=True)
    os.makedirs(os.path.join(root, "Annotations"), exist_ok=True)
    os.makedirs(os.path.join(root, "ImageSets", "Main"), exist_ok=True)
    stems = []
    for i, sample in enumerate(dataset.samples):
        stem = f"{split}{i:03d}"
        stems.append(stem)
        cv2.imwrite(os.path.join(root, "JPEGImages", f"{stem}.jpg"), cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR))
        objects = "".join(
            f"<object><name>{SHAPE_CLASSES[label]}</name><difficult>0</difficult><bndbox>"
            f"<xmin>{x0 * 160:.0f}</xmin><ymin>{y0 * 160:.0f}</ymin><xmax>{x1 * 160:.0f}</xmax>"
            f"<ymax>{y1 * 160:.0f}</ymax></bndbox></object>"
            for (y0, x0, y1, x1), label in zip(sample.boxes, sample.labels))
        with open(os.path.join(root, "Annotations", f"{stem}.xml"), "w", encoding="utf-8") as f:
            f.write(f"<annotation><filename>{stem}.jpg</filename><size><width>160</width><height>160</height>"
                    f"<depth>3</depth></size>{objects}</annotation>")
    with open(os.path.join(root, "ImageSets", "Main", f"{split}.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(stems) + "\n")
    return stems


@pytest.mark.slow
def test_rcnn_train_evaluate_detect(tmp_path):
    import json

    from conftest import run_cli

    voc = str(tmp_path / "voc")
    write_shapes_voc(voc, "train", 40, seed=11)
    write_shapes_voc(voc, "test", 12, seed=12)
    run_dir = str(tmp_path / "runs" / "rcnn")
    cache = str(tmp_path / "cache")
    common = ("--model", "rcnn", "--data", f"voc:{voc}", "--max-proposals", "150", "--proposal-cache", cache,
              "--region-size", "32", "--region-width", "8", "--epochs", "2", "--verbose", "0")
    run_cli("train", *common, "--train-split", "train", "--val-split", "test", "--run-dir", run_dir)
    for name in ("model.keras", "svm.npz", "box_regression.npz", "metadata.json"):
        assert os.path.isfile(os.path.join(run_dir, name)), name
    metadata = json.load(open(os.path.join(run_dir, "metadata.json")))
    assert metadata["task"] == "rcnn"
    rounds = metadata["training"]["svm"]["hard_negative_mining"]
    assert set(rounds) == set(metadata["class_names"])
    (cache_folder,) = os.listdir(cache)
    assert len([f for f in os.listdir(os.path.join(cache, cache_folder)) if f.endswith(".npy")]) == 52

    # A second run with the same proposal settings reads every proposal from the cache.
    completed = run_cli("train", *common, "--train-split", "train", "--run-dir", str(tmp_path / "runs" / "again"))
    assert "40 from the cache" in completed.stderr
    assert "0 searched" in completed.stderr

    evaluation = run_cli("evaluate", run_dir, "--data", f"voc:{voc}", "--split", "test")
    assert "mAP@0.5" in evaluation.stdout
    result = json.load(open(os.path.join(run_dir, "evaluation.json")))
    (entry,) = [v for k, v in result.items() if k.endswith("[test] keras")]
    assert 0.0 <= entry["map"] <= 1.0
    assert entry["images"] == 12

    detected = run_cli("detect", run_dir, "--source", os.path.join(voc, "JPEGImages"), "--runtime", "keras",
                       "--no-show", "--output", str(tmp_path / "annotated"), "--max-frames", "3")
    assert "3 frames" in detected.stdout
    assert len(os.listdir(tmp_path / "annotated")) == 3

    rejected = run_cli("evaluate", run_dir, "--split", "test", "--runtime", "onnxruntime", check=False)
    assert rejected.returncode != 0
    assert "runs in Keras only" in rejected.stderr


def test_region_features_deterministic():
    from dl09_keras.rcnn.region_cnn import build_region_cnn, feature_function

    features = feature_function(build_region_cnn(3, size=32, width=8, feature_dim=16))
    regions = np.random.default_rng(5).uniform(0, 255, (8, 32, 32, 3)).astype(np.float32)
    first, second = np.asarray(features(regions)), np.asarray(features(regions))
    assert first.shape == (8, 16)
    np.testing.assert_array_equal(first, second)  # no random flip outside training
