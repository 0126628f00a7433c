"""dl09 explain: the numbers behind each view against hand-computed values, and valid PNG files."""

import csv
import os

import numpy as np
import pytest
from PIL import Image

from dl09_keras.anchors import DefaultBoxConfig, RPNAnchorConfig
from dl09_keras.data.dataset import Sample
from dl09_keras.explain.layout import BoxLayout, rpn_layout, ssd_layout
from dl09_keras.explain.matching_view import match_ground_truths, ssd_assignment

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE, path
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert min(image.size) > 50


def two_box_layout(task="ssd"):
    """Two maps of one cell with one box each: the top-left and the bottom-right quarter."""
    boxes = np.array([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]], np.float32)
    return BoxLayout(task, (100, 100), [(1, 1), (1, 1)], [1, 1], boxes, ["a", "b"])


# Layouts


def test_ssd_layout_cell_boxes():
    config = DefaultBoxConfig(min_scale=0.2, max_scale=0.2, aspect_ratios=(1.0, 4.0), extra_box=False)
    layout = ssd_layout([(2, 2)], (100, 100), config)
    # Cell (1, 0) has its center at y 0.75, x 0.25; ratio 4 is 0.4 wide and 0.1 high.
    np.testing.assert_allclose(layout.cell_boxes(0, 1, 0), [[0.65, 0.15, 0.85, 0.35], [0.70, 0.05, 0.80, 0.45]],
                               atol=1e-6)
    assert layout.nearest_cell(0, (0.9, 0.1)) == (1, 0)
    assert layout.map_starts().tolist() == [0, 8]


def test_layout_rejects_wrong_count():
    with pytest.raises(ValueError, match="hold 2 boxes, but 3 boxes"):
        BoxLayout("ssd", (100, 100), [(1, 1), (1, 1)], [1, 1], np.zeros((3, 4), np.float32), ["a", "b"])


def test_rpn_layout_order():
    layout = rpn_layout("rpn", (2, 3), (64, 96), RPNAnchorConfig(sizes=(0.25,), aspect_ratios=(1.0,)))
    assert layout.boxes_per_cell == [1]
    # Cell (1, 2): center y 0.75, x 5/6; a square of side 0.25 * sqrt(64 * 96) px.
    side = 0.25 * np.sqrt(64 * 96)
    expected = [0.75 - side / 128, 5 / 6 - side / 192, 0.75 + side / 128, 5 / 6 + side / 192]
    np.testing.assert_allclose(layout.cell_boxes(0, 1, 2)[0], expected, atol=1e-6)


# Matching


def test_ssd_assignment_equals_tf_matcher():
    from dl09_keras.matching import match_default_boxes

    rng = np.random.default_rng(3)
    layout = ssd_layout([(4, 4), (2, 2)], (128, 128), DefaultBoxConfig(min_scale=0.2, max_scale=0.6))
    for _ in range(5):
        corners = rng.uniform(0, 1, (4, 2, 2))
        gt = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=-1).astype(np.float32)
        labels = rng.integers(0, 3, 4).astype(np.int32)
        assigned = ssd_assignment(gt, layout.boxes)
        _, tf_labels = match_default_boxes(gt, labels + 1, layout.boxes)
        expected = np.where(assigned >= 0, labels[np.maximum(assigned, 0)] + 1, 0)
        np.testing.assert_array_equal(tf_labels.numpy(), expected)


def test_matching_flags_forced_match():
    layout = two_box_layout()
    gt = np.array([[0.0, 0.0, 0.5, 0.5], [0.6, 0.6, 0.65, 0.65]], np.float32)
    matches, assigned = match_ground_truths(gt, np.array([0, 1]), layout)
    assert assigned.tolist() == [0, 1]
    assert matches[0].matched_per_map == [1, 0]
    assert matches[0].best_iou == pytest.approx(1.0)
    assert matches[0].flag == ""
    # 0.05 x 0.05 inside a 0.5 x 0.5 box: IoU 0.0025 / 0.25.
    assert matches[1].best_iou == pytest.approx(0.01, abs=1e-6)
    assert matches[1].matched_per_map == [0, 1]
    assert matches[1].flag == "forced only"


def test_matching_flags_stolen_box():
    layout = two_box_layout()
    # Both boxes' best default box is the first one; the later ground truth keeps it.
    gt = np.array([[0.0, 0.0, 0.4, 0.4], [0.0, 0.0, 0.45, 0.45]], np.float32)
    matches, _ = match_ground_truths(gt, np.array([0, 0]), layout)
    assert matches[0].flag == "unmatched"
    assert matches[1].matched == 1


def test_matching_rpn_rule():
    layout = two_box_layout("rpn")
    # IoU with the first anchor: 0.2 / 0.25 = 0.8 > 0.7. The second box's best IoU is 0.09 / 0.25 = 0.36.
    gt = np.array([[0.0, 0.0, 0.5, 0.4], [0.5, 0.5, 0.8, 0.8]], np.float32)
    matches, assigned = match_ground_truths(gt, np.array([1, 2]), layout)
    assert assigned.tolist() == [0, 1]
    assert matches[0].flag == ""
    assert matches[1].best_iou == pytest.approx(0.36, abs=1e-6)
    assert matches[1].flag == "forced only"


def test_matching_view_png(tmp_path):
    from dl09_keras.explain.matching_view import plot_matching

    image = np.full((60, 80, 3), 128, np.uint8)
    path, matches = plot_matching(image, [[0.1, 0.1, 0.5, 0.5]], [0], ["thing"], two_box_layout(),
                                  str(tmp_path / "m.png"))
    assert_png(path)
    assert len(matches) == 1


# Coverage


def test_coverage_table_counts():
    from dl09_keras.explain.coverage import coverage_table, format_coverage

    layout = two_box_layout()
    samples = [
        # Covered (IoU 1), scale 0.5; covered (IoU 0.7056), scale 0.42; not covered (IoU 0.0196), scale 0.07.
        Sample(None, [[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 0.92, 0.92], [0.6, 0.6, 0.67, 0.67]], [0, 1, 1],
               image=np.zeros((4, 4, 3), np.uint8)),
        # A difficult box is left out; a 0.12 x 0.12 box of class 0 (scale 0.12, IoU 0.0576) is not covered.
        Sample(None, [[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.12, 0.12]], [0, 0], difficult=[True, False],
               image=np.zeros((4, 4, 3), np.uint8)),
    ]
    rows = coverage_table(samples, ["a", "b"], {"two": layout.boxes, "none": np.zeros((1, 4), np.float32)})
    table = {(r.group, r.name): (r.boxes, r.covered["two"], r.covered["none"]) for r in rows}
    assert table[("class", "a")] == (2, 1, 0)
    assert table[("class", "b")] == (2, 1, 0)
    assert table[("size", "0.05-0.10")] == (1, 0, 0)
    assert table[("size", "0.10-0.20")] == (1, 0, 0)
    assert table[("size", "0.40-1.00")] == (2, 2, 0)
    assert table[("size", "0.00-0.05")] == (0, 0, 0)
    assert table[("all", "all")] == (4, 2, 0)
    assert "50.0%" in format_coverage(rows)


# Augmentation


def test_augment_tiles_steps(tmp_path):
    from dl09_keras.explain.augment_view import augment_steps, plot_augment

    image = np.zeros((40, 60, 3), np.uint8)
    image[:, 30:] = 200
    boxes = np.array([[0.1, 0.1, 0.5, 0.3], [0.5, 0.6, 0.9, 0.9]], np.float32)
    path, tiles = plot_augment(image, boxes, [0, 1], ["a", "b"], (64, 96), str(tmp_path / "aug.png"), draws=2)
    assert_png(path)
    assert len(tiles) == 2 * len(augment_steps())
    by_step = {(t.draw, t.step): t for t in tiles}
    np.testing.assert_allclose(by_step[(0, "resized")].boxes, boxes, atol=1e-6)
    mirrored = np.stack([boxes[:, 0], 1 - boxes[:, 3], boxes[:, 2], 1 - boxes[:, 1]], axis=-1)
    np.testing.assert_allclose(by_step[(1, "flip")].boxes, mirrored, atol=1e-6)
    # Zoom-out shrinks every box by the same factor and keeps all of them.
    zoomed = by_step[(0, "zoom-out")].boxes
    ratio = (zoomed[:, 2] - zoomed[:, 0]) / (boxes[:, 2] - boxes[:, 0])
    assert len(zoomed) == 2
    assert ratio.max() <= 1.0 + 1e-5
    np.testing.assert_allclose(ratio[0], ratio[1], rtol=1e-4)


# Training curves


def test_curves_from_history(tmp_path):
    from dl09_keras.explain.curves import history_columns, plot_training_curves

    history = tmp_path / "history.csv"
    with open(history, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "loss", "conf_loss", "loc_loss", "val_loss", "val_map"])
        writer.writerow([0, 3.0, 2.0, 1.0, 3.5, "nan"])
        writer.writerow([1, 2.0, 1.5, 0.5, 2.5, 0.25])
    columns = history_columns(str(history))
    assert columns["epoch"].tolist() == [1.0, 2.0]
    assert np.isnan(columns["val_map"][0])
    assert columns["val_map"][1] == 0.25
    assert_png(plot_training_curves(str(history), str(tmp_path / "curves.png")))


def test_curves_without_history(tmp_path):
    from dl09_keras.explain.curves import history_columns

    with pytest.raises(FileNotFoundError, match="has no complete epoch"):
        history_columns(str(tmp_path / "history.csv"))


def test_ssd_run_logs_loss_terms(tiny_run):
    from dl09_keras.explain.curves import history_columns

    columns = history_columns(os.path.join(tiny_run, "history.csv"))
    np.testing.assert_allclose(columns["conf_loss"] + columns["loc_loss"], columns["loss"], rtol=1e-4)
    np.testing.assert_allclose(columns["val_conf_loss"] + columns["val_loc_loss"], columns["val_loss"], rtol=1e-4)
    assert_png(os.path.join(tiny_run, "training_curves.png"))


# Views of trained runs


def test_mining_keeps_hardest(tiny_run):
    from dl09_keras.data import load_dataset
    from dl09_keras.explain.figures import sample_image
    from dl09_keras.explain.layout import layout_from_metadata
    from dl09_keras.explain.mining_view import mine_image
    from dl09_keras.run import RunFolder

    run = RunFolder(tiny_run)
    layout = layout_from_metadata(run.read_metadata())
    sample = load_dataset("shapes", "test").samples[0]
    result = mine_image(run.load_training_model(), layout, sample_image(sample), sample.boxes, sample.labels)

    positives = int(result.positive.sum())
    negatives = np.nonzero(~result.positive)[0]
    assert positives >= len(sample.labels)
    assert int(result.hard.sum()) == min(3 * positives, len(negatives))
    # NumPy reference: the 3P negatives with the highest loss.
    hardest = negatives[np.argsort(-result.loss[negatives], kind="stable")[:3 * positives]]
    assert set(np.nonzero(result.hard)[0]) == set(hardest)
    assert not (result.hard & result.easy).any()
    assert int(result.easy.sum()) == len(negatives) - int(result.hard.sum())


def test_explain_cli_views(tiny_run, tmp_path, capsys):
    from dl09_keras.cli import main

    for view in ("mining", "anchors", "matching", "coverage", "curves"):
        output = tmp_path / f"{view}.png"
        assert main(["explain", view, "--run", tiny_run, "--data", "shapes", "--split", "test",
                     "--output", str(output)]) == 0
        assert f"Wrote {output}" in capsys.readouterr().out, view
        assert_png(output)
    assert main(["explain", "mining", "--run", tiny_run, "--output", str(tmp_path / "m.png")]) == 0
    assert "hard negatives" in capsys.readouterr().out


def test_explain_cli_errors(tiny_run, tmp_path, caplog):
    from dl09_keras.cli import main

    assert main(["explain", "mining", "--output", str(tmp_path / "x.png")]) == 2
    assert "needs an SSD run: pass --run RUN_DIR" in caplog.text
    assert main(["explain", "proposals", "--run", tiny_run, "--output", str(tmp_path / "x.png")]) == 2
    assert "proposals need an RPN or Faster R-CNN run" in caplog.text
    assert main(["explain", "anchors", "--run", tiny_run, "--image", "999999"]) == 2
    assert "Image index 999999 is out of range" in caplog.text


def test_proposals_before_after_nms(tiny_rcnn_run, tmp_path, capsys):
    from dl09_keras.boxes import iou_matrix_np
    from dl09_keras.data import load_dataset
    from dl09_keras.explain.figures import sample_image
    from dl09_keras.explain.proposals_view import plot_proposals, proposal_sets
    from dl09_keras.models.faster_rcnn import FasterRCNNConfig
    from dl09_keras.run import RunFolder

    run = RunFolder(tiny_rcnn_run)
    config = FasterRCNNConfig.from_dict(run.read_metadata()["model"])
    sample = load_dataset("shapes", "test").samples[0]
    image = sample_image(sample)
    sets = proposal_sets(run.load_training_model(), config, image)

    assert 0 < len(sets.after_scores) <= min(config.test_top_n[1], len(sets.before_scores))
    assert np.all(np.diff(sets.before_scores) <= 0)
    assert np.all(np.diff(sets.after_scores) <= 0)
    # Every kept proposal comes from the set before NMS, and none overlaps a better one above 0.7.
    overlap = iou_matrix_np(sets.after_boxes, sets.before_boxes)
    assert np.all(overlap.max(axis=1) > 0.999)
    pairwise = iou_matrix_np(sets.after_boxes, sets.after_boxes)
    assert np.triu(pairwise, k=1).max() <= 0.7 + 1e-6
    assert_png(plot_proposals(image, sample.boxes, sets, config.input_size, str(tmp_path / "p.png")))

    from dl09_keras.cli import main

    assert main(["explain", "proposals", "--run", tiny_rcnn_run, "--output", str(tmp_path / "cli.png")]) == 0
    assert "proposals before NMS" in capsys.readouterr().out
    assert_png(tmp_path / "cli.png")


def test_explain_rejects_zero_draws(capsys):
    from dl09_keras.cli import main

    with pytest.raises(SystemExit):
        main(["explain", "augment", "--draws", "0"])
    assert "invalid count '0': expected a whole number >= 1" in capsys.readouterr().err
