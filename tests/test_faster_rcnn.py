"""The RPN and Faster R-CNN models: shapes, decoding, training, saving, and every later stage."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO, run_cli
from dl09_keras.anchors import RPNAnchorConfig
from dl09_keras.data import generate_shapes
from dl09_keras.evaluation import GroundTruth, proposal_recall
from dl09_keras.models.faster_rcnn import (
    HEAD_VARIANCES,
    DecodeFasterRCNN,
    FasterRCNNConfig,
    build_faster_rcnn,
    build_inference_model,
)
from dl09_keras.training_rcnn import choose_anchor_sizes

TINY = dict(num_classes=2, input_size=(64, 96), width=0.25, rpn_channels=16, head_units=32,
            train_top_n=(64, 32), test_top_n=(64, 16), rois_per_image=16)


def tiny_batch(batch=2):
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (batch, 64, 96, 3)).astype(np.float32)
    boxes = np.tile(np.array([[[0.1, 0.1, 0.6, 0.5], [0.0, 0.0, 0.0, 0.0]]], np.float32), (batch, 1, 1))
    labels = np.tile(np.array([[1, -1]], np.int32), (batch, 1))
    return {"image": image, "gt_boxes": boxes, "gt_labels": labels}


def test_config_round_trip_and_errors():
    config = FasterRCNNConfig(**TINY, anchor_config=RPNAnchorConfig((0.1, 0.2), (1.0,)))
    again = FasterRCNNConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    with pytest.raises(ValueError, match="Unknown model 'yolo'"):
        FasterRCNNConfig(num_classes=2, model="yolo")
    with pytest.raises(ValueError, match="Invalid feature_stride=4"):
        FasterRCNNConfig(num_classes=2, feature_stride=4)


def test_training_model_outputs_and_head_loss():
    config = FasterRCNNConfig(**TINY)
    model = build_faster_rcnn(config)
    outputs = model(tiny_batch(), training=True)
    k = config.anchor_config.anchors_per_location
    assert outputs["rpn"].shape == (2, 4 * 6 * k, 6)  # stride 16 on 64 x 96
    assert outputs["head"].shape == (2, 16, 3 * 5)
    assert len(model.losses) == 1
    assert np.isfinite(float(model.losses[0]))
    assert float(model.losses[0]) > 0


def test_fpn_neck_feeds_the_shared_map():
    model = build_faster_rcnn(FasterRCNNConfig(**TINY, feature_stride=8, neck="fpn", neck_channels=24))
    assert model.get_layer("rpn_conv").input.shape[1:] == (8, 12, 24)
    assert model.get_layer("fpn_add_0") is not None
    with pytest.raises(ValueError, match="Unknown neck 'bifpn'"):
        FasterRCNNConfig(num_classes=2, neck="bifpn")


def test_inference_models_output_the_ssd_format():
    config = FasterRCNNConfig(**TINY)
    image = tiny_batch()["image"]
    outputs = build_inference_model(build_faster_rcnn(config), config)(image)
    assert outputs["scores"].shape == (2, 16 * 2, 3)
    assert outputs["boxes"].shape == (2, 16 * 2, 4)
    np.testing.assert_allclose(tf.reduce_sum(outputs["scores"], -1), 1.0, atol=1e-5)

    rpn_config = FasterRCNNConfig(**{**TINY, "model": "rpn"})
    rpn = build_inference_model(build_faster_rcnn(rpn_config), rpn_config)(image)
    assert rpn["scores"].shape == (2, 16, 2)
    np.testing.assert_allclose(tf.reduce_sum(rpn["scores"], -1), 1.0, atol=1e-6)
    assert float(tf.reduce_min(rpn["boxes"])) >= 0.0
    assert float(tf.reduce_max(rpn["boxes"])) <= 1.0


def test_decode_matches_a_numpy_reference():
    rng = np.random.default_rng(1)
    classes, rois_count = 3, 5
    corners = np.sort(rng.uniform(0, 1, (1, rois_count, 2, 2)), axis=2)
    rois = np.stack([corners[..., 0, 0], corners[..., 0, 1], corners[..., 1, 0], corners[..., 1, 1]], -1)
    head = rng.normal(0, 1, (1, rois_count, (classes + 1) * 5)).astype(np.float32)
    scores, boxes = DecodeFasterRCNN(classes)(rois.astype(np.float32), head)

    logits = head[0, :, : classes + 1]
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    variances = np.array(HEAD_VARIANCES)
    for r in range(rois_count):
        ymin, xmin, ymax, xmax = rois[0, r]
        height, width = ymax - ymin, xmax - xmin
        for c in range(classes):
            row = r * classes + c
            ty, tx, th, tw = head[0, r, classes + 1 + 4 * (c + 1): classes + 1 + 4 * (c + 2)] * variances
            cy, cx = ymin + height / 2 + ty * height, xmin + width / 2 + tx * width
            h, w = height * np.exp(th), width * np.exp(tw)
            expected = np.clip([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], 0, 1)
            np.testing.assert_allclose(boxes[0, row], expected, atol=1e-5)
            expected_scores = np.zeros(classes + 1)
            expected_scores[c + 1] = probabilities[r, c + 1]
            expected_scores[0] = 1 - probabilities[r, c + 1]
            np.testing.assert_allclose(scores[0, row], expected_scores, atol=1e-6)


def test_fit_lowers_loss_and_reloads(tmp_path):
    from dl09_keras.losses import RPNLoss
    from dl09_keras.matching import RPNTargetEncoder
    from dl09_keras.anchors import rpn_anchors

    config = FasterRCNNConfig(**TINY)
    model = build_faster_rcnn(config)
    anchors = rpn_anchors((4, 6), config.input_size, config.anchor_config)
    batch = tiny_batch()
    target = RPNTargetEncoder(anchors)(tf.constant(batch["gt_boxes"][0, :1]), tf.constant([1]))
    y = {"rpn": tf.stack([target, target])}
    model.compile(optimizer="adam", loss={"rpn": RPNLoss()})
    losses = [float(model.train_on_batch(batch, y)) for _ in range(15)]
    assert np.all(np.isfinite(losses))
    assert losses[-1] < losses[0]

    path = str(tmp_path / "model.keras")
    model.save(path)
    np.save(tmp_path / "image.npy", batch["image"])
    script = (
        "import sys, numpy as np, keras, dl09_keras\n"
        "from dl09_keras.models.faster_rcnn import FasterRCNNConfig, build_inference_model\n"
        "model = keras.saving.load_model(sys.argv[1], safe_mode=True)\n"
        f"config = FasterRCNNConfig(**{TINY!r})\n"
        "outputs = build_inference_model(model, config)(np.load(sys.argv[2]))\n"
        "np.save(sys.argv[3], outputs['scores'].numpy())\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script, path, str(tmp_path / "image.npy"), str(tmp_path / "scores.npy")],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    expected = build_inference_model(model, config)(batch["image"])["scores"]
    np.testing.assert_allclose(np.load(tmp_path / "scores.npy"), expected, atol=1e-5)


def test_proposal_recall_counts_top_n_and_iou():
    truth = GroundTruth(np.array([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0, 0, 0.1, 0.1]]),
                        np.array([0, 0, 0]), np.array([False, False, True]))
    proposals = np.array([
        [0.0, 0.0, 0.5, 0.4],    # IoU 0.8 with the first box
        [0.5, 0.5, 0.9, 0.9],    # IoU 0.64 with the second
        [0.5, 0.5, 1.0, 1.0],    # IoU 1 with the second
    ])
    result = proposal_recall([proposals], [truth], counts=(1, 2, 3), iou_thresholds=(0.5, 0.7))
    assert result["num_ground_truths"] == 2  # the difficult box is left out
    assert result["recall@1_iou0.5"] == 0.5
    assert result["recall@2_iou0.5"] == 1.0
    assert result["recall@2_iou0.7"] == 0.5
    assert result["recall@3_iou0.7"] == 1.0


def test_auto_anchor_sizes_span_the_box_scales():
    data = generate_shapes("val", num_images=40)
    scales = np.concatenate([np.sqrt((s.boxes[:, 2] - s.boxes[:, 0]) * (s.boxes[:, 3] - s.boxes[:, 1]))
                             for s in data.samples])
    low, high = np.quantile(scales, [0.05, 0.95])
    sizes = choose_anchor_sizes("auto", data).sizes
    np.testing.assert_allclose(sizes, [low, np.sqrt(low * high), high], atol=1e-4)
    assert choose_anchor_sizes("0.1,0.3", data).sizes == (0.1, 0.3)
    with pytest.raises(ValueError, match="Invalid --anchor-sizes 'big'"):
        choose_anchor_sizes("big", data)


# Every later stage on tiny trained runs


def test_faster_rcnn_run_exports_with_parity(tiny_rcnn_run):
    metadata = json.load(open(os.path.join(tiny_rcnn_run, "metadata.json")))
    assert metadata["task"] == "faster_rcnn"
    assert metadata["status"] == "finished"
    assert 0.0 <= metadata["evaluation"]["shapes [test] keras"]["map"] <= 1.0
    report = json.load(open(os.path.join(tiny_rcnn_run, "parity.json")))
    for name in ("onnxruntime", "opencv", "tflite_fp32"):
        entry = report["runtimes"][name]
        assert entry["max_abs_diff_scores"] <= 1e-4, name
        assert entry["max_abs_diff_boxes"] <= 1e-4, name


@pytest.mark.parametrize("runtime", ["keras", "onnxruntime", "opencv", "tflite"])
def test_faster_rcnn_detects_with_every_runtime(tiny_rcnn_run, tmp_path, runtime):
    import cv2

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        cv2.imwrite(str(folder / f"img{i}.png"), np.full((96, 128, 3), 60 * i, np.uint8))
    output = tmp_path / "annotated"
    completed = run_cli("detect", tiny_rcnn_run, "--source", str(folder), "--runtime", runtime,
                        "--no-show", "--output", str(output), "--score", "0.0")
    assert "2 frames in" in completed.stdout
    assert sorted(os.listdir(output)) == ["img0.png", "img1.png"]


def test_faster_rcnn_evaluate_reports_map(tiny_rcnn_run):
    completed = run_cli("evaluate", tiny_rcnn_run, "--split", "test", "--runtime", "onnxruntime")
    assert "mAP@0.5 = " in completed.stdout
    assert "triangle" in completed.stdout


def test_rpn_run_evaluates_proposal_recall(tmp_path):
    run_dir = str(tmp_path / "rpn")
    run_cli(
        "train", "--model", "rpn", "--data", "shapes", "--train-split", "val", "--val-split", "test",
        "--input-size", "64", "--width", "0.25", "--rpn-channels", "16", "--epochs", "1", "--batch-size", "16",
        "--rpn-normalization", "paper", "--run-dir", run_dir, "--verbose", "2",
    )
    metadata = json.load(open(os.path.join(run_dir, "metadata.json")))
    assert metadata["training"]["loss"]["rpn"]["normalization"] == "paper"
    at_end = metadata["evaluation"]["shapes [test] keras"]
    assert at_end["when"] == "end of training"

    completed = run_cli("evaluate", run_dir, "--split", "test")
    assert "proposal recall over 385 ground truths" in completed.stdout
    evaluation = json.load(open(os.path.join(run_dir, "evaluation.json")))
    result = evaluation["shapes [test] keras"]
    for count in (100, 300, 1000):
        assert 0.0 <= result[f"recall@{count}_iou0.5"] <= 1.0
    # More proposals never lower the recall.
    assert result["recall@100_iou0.5"] <= result["recall@300_iou0.5"] <= result["recall@1000_iou0.5"]
    assert at_end["recall@300_iou0.5"] == result["recall@300_iou0.5"]


def test_rpn_rejects_map_options():
    completed = run_cli("train", "--model", "rpn", "--data", "shapes", "--map-every", "2", check=False)
    assert completed.returncode == 2
    assert "an RPN is measured by its proposal recall" in completed.stderr
