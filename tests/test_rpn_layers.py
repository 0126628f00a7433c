"""ROIMaxPooling and ProposalLayer against plain NumPy references."""

import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from dl09_keras.anchors import RPNAnchorConfig, rpn_anchors
from dl09_keras.boxes import encode_boxes, iou_matrix_np
from dl09_keras.layers import ProposalLayer, ROIMaxPooling, parallel_greedy_nms

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ROI max-pooling reference ------------------------------------------------------------------


def round_half_away_from_zero(value):
    """C's round(): 2.5 to 3 and -2.5 to -3."""
    return int(math.copysign(math.floor(abs(value) + 0.5), value))


def roi_bins_np(roi, height, width, pool_size):
    """Yield (i, j, first row, end row, first column, end column) of each bin of one roi, as Caffe's ROIPooling.

    The bin edges use exact integer arithmetic. The roi edges are scaled in float32, as in the layer.
    """
    ymin, xmin, ymax, xmax = (np.float32(v) for v in roi)
    start_h = round_half_away_from_zero(float(ymin * np.float32(height)))
    end_h = round_half_away_from_zero(float(ymax * np.float32(height)))
    start_w = round_half_away_from_zero(float(xmin * np.float32(width)))
    end_w = round_half_away_from_zero(float(xmax * np.float32(width)))
    roi_height = max(end_h - start_h + 1, 1)
    roi_width = max(end_w - start_w + 1, 1)
    for i in range(pool_size):
        for j in range(pool_size):
            h0 = min(max(i * roi_height // pool_size + start_h, 0), height)
            h1 = min(max(-(-(i + 1) * roi_height // pool_size) + start_h, 0), height)
            w0 = min(max(j * roi_width // pool_size + start_w, 0), width)
            w1 = min(max(-(-(j + 1) * roi_width // pool_size) + start_w, 0), width)
            yield i, j, h0, h1, w0, w1


def argmax_cell_np(plane, h0, h1, w0, w1):
    """Return the first (row, column) in row-major order containing the max of plane[h0:h1, w0:w1], or None if empty."""
    best, cell = -np.inf, None
    for y in range(h0, h1):
        for x in range(w0, w1):
            if plane[y, x] > best:
                best, cell = plane[y, x], (y, x)
    return cell


def roi_max_pool_np(features, rois, pool_size):
    """Caffe's ROIPooling forward with plain loops: features (B, h, w, C), rois (B, R, 4) to (B, R, pool, pool, C)."""
    batch, height, width, channels = features.shape
    output = np.zeros((batch, rois.shape[1], pool_size, pool_size, channels), np.float32)
    for b in range(batch):
        for r, roi in enumerate(rois[b]):
            for i, j, h0, h1, w0, w1 in roi_bins_np(roi, height, width, pool_size):
                for c in range(channels):
                    cell = argmax_cell_np(features[b, :, :, c], h0, h1, w0, w1)
                    if cell is not None:
                        output[b, r, i, j, c] = features[b, cell[0], cell[1], c]
    return output


def roi_max_pool_gradient_np(features, rois, pool_size, upstream):
    """Caffe's ROIPooling backward: each bin's upstream gradient goes to its argmax cell."""
    batch, height, width, channels = features.shape
    gradient = np.zeros_like(features, dtype=np.float64)
    for b in range(batch):
        for r, roi in enumerate(rois[b]):
            for i, j, h0, h1, w0, w1 in roi_bins_np(roi, height, width, pool_size):
                for c in range(channels):
                    cell = argmax_cell_np(features[b, :, :, c], h0, h1, w0, w1)
                    if cell is not None:
                        gradient[b, cell[0], cell[1], c] += upstream[b, r, i, j, c]
    return gradient


SPECIAL_ROIS = [
    [0.30, 0.40, 0.32, 0.42],      # smaller than one cell
    [0.0, 0.0, 1.0, 1.0],          # the whole map
    [0.0, 0.5, 0.4, 1.0],          # touching the top and right borders
    [0.6, 0.0, 1.0, 0.3],          # touching the bottom and left borders
    [0.0, 0.0, 0.0, 0.0],          # zero-size padding: pools cell (0, 0)
    [0.3125, 0.375, 0.8125, 0.9],  # ymin * 8 = 2.5 and xmin * 12 = 4.5 round up
    [1.0, 1.0, 1.0, 1.0],          # starts past the map: every bin is empty
]


def random_rois(rng, count):
    corners = np.sort(rng.uniform(0, 1, (count, 2, 2)), axis=1)
    return np.concatenate([corners[:, 0], corners[:, 1]], axis=1)


@pytest.mark.parametrize("pool_size", [7, 3])
def test_roi_max_pooling_matches_reference(pool_size):
    rng = np.random.default_rng(0)
    # Negative features make a 0 from an empty bin differ from any max.
    features = rng.normal(size=(2, 8, 12, 5)).astype(np.float32)
    rois = np.stack([
        np.concatenate([SPECIAL_ROIS, random_rois(rng, 13)]),
        np.concatenate([random_rois(rng, 13), SPECIAL_ROIS[::-1]]),
    ]).astype(np.float32)

    actual = ROIMaxPooling(pool_size)(features, rois).numpy()
    expected = roi_max_pool_np(features, rois, pool_size)
    assert actual.shape == (2, 20, pool_size, pool_size, 5)
    np.testing.assert_array_equal(actual, expected)


def test_roi_max_pooling_graph_matches_eager():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(1, 8, 12, 3)).astype(np.float32)
    rois = np.concatenate([SPECIAL_ROIS, random_rois(rng, 9)])[None].astype(np.float32)
    layer = ROIMaxPooling(7)

    graph = tf.function(lambda f, r: layer(f, r))(tf.constant(features), tf.constant(rois)).numpy()
    np.testing.assert_array_equal(graph, roi_max_pool_np(features, rois, 7))


def test_roi_max_pooling_empty_bins_are_zero():
    features = -np.ones((1, 8, 12, 2), np.float32)
    rois = np.array([[[1.0, 1.0, 1.0, 1.0], [0.5, 1.0, 0.9, 1.0]]], np.float32)
    pooled = ROIMaxPooling(7)(features, rois).numpy()
    np.testing.assert_array_equal(pooled[0, 0], 0.0)
    # Starting at column 12 of 12, the second roi has no columns either.
    np.testing.assert_array_equal(pooled[0, 1], 0.0)


def test_roi_bins_exact_at_57_cells():
    # A roi over rows 0 to 56, 57 rows: the last of 7 bins is rows 48 to 56.
    # Caffe's float32 bin size gives ceil(7 * float32(57 / 7)) = 58, one row more.
    assert math.ceil(np.float32(7) * (np.float32(57) / np.float32(7))) == 58
    features = np.zeros((1, 64, 1, 1), np.float32)
    features[0, 57, 0, 0] = 100.0
    features[0, 56, 0, 0] = 1.0
    rois = np.array([[[0.0, 0.0, 56 / 64, 0.0]]], np.float32)

    pooled = ROIMaxPooling(7)(features, rois).numpy()
    assert pooled[0, 0, 6, 0, 0] == 1.0
    np.testing.assert_array_equal(pooled, roi_max_pool_np(features, rois, 7))


@pytest.mark.parametrize("compiled", [False, True])
def test_roi_max_pooling_gradient_matches_reference(compiled):
    rng = np.random.default_rng(2)
    # Whole numbers 0 to 3 make many equal values, so the choice among them is tested too.
    features = rng.integers(0, 4, (2, 8, 12, 3)).astype(np.float32)
    rois = np.stack([
        np.concatenate([SPECIAL_ROIS, random_rois(rng, 5)]),
        np.concatenate([random_rois(rng, 5), SPECIAL_ROIS]),
    ]).astype(np.float32)
    upstream = rng.normal(size=(2, 12, 7, 7, 3)).astype(np.float32)
    layer = ROIMaxPooling(7)

    def gradient_of(features):
        with tf.GradientTape() as tape:
            tape.watch(features)
            loss = tf.reduce_sum(layer(features, tf.constant(rois)) * upstream)
        return tape.gradient(loss, features)

    if compiled:
        gradient_of = tf.function(gradient_of)
    actual = gradient_of(tf.constant(features)).numpy()
    expected = roi_max_pool_gradient_np(features, rois, 7, upstream)
    np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=0)


def test_roi_max_pooling_rejects_dynamic_map_size():
    layer = ROIMaxPooling(7)
    function = tf.function(layer, input_signature=[
        tf.TensorSpec((1, None, None, 3)), tf.TensorSpec((1, 2, 4)),
    ])
    with pytest.raises(ValueError, match="requires a static feature-map size"):
        function.get_concrete_function()


def test_roi_max_pooling_rejects_zero_pool_size():
    with pytest.raises(ValueError, match="pool_size=0"):
        ROIMaxPooling(0)


# NMS and proposal references -----------------------------------------------------------------


def greedy_nms_np(boxes, iou_threshold):
    """Run greedy NMS on boxes sorted by descending score and return the kept indices."""
    kept = []
    for i in range(len(boxes)):
        if not kept or iou_matrix_np(boxes[i:i + 1], boxes[kept]).max() <= iou_threshold:
            kept.append(i)
    return kept


def decode_np(deltas, anchors):
    """Decode (A, 4) offsets (ty, tx, th, tw) against (A, 4) anchors, clamp th and tw, clip to [0, 1]."""
    deltas = deltas.astype(np.float64)
    anchors = anchors.astype(np.float64)
    anchor_h = anchors[:, 2] - anchors[:, 0]
    anchor_w = anchors[:, 3] - anchors[:, 1]
    center_y = deltas[:, 0] * anchor_h + (anchors[:, 0] + anchors[:, 2]) / 2
    center_x = deltas[:, 1] * anchor_w + (anchors[:, 1] + anchors[:, 3]) / 2
    height = np.exp(np.minimum(deltas[:, 2], math.log(1000 / 16))) * anchor_h
    width = np.exp(np.minimum(deltas[:, 3], math.log(1000 / 16))) * anchor_w
    boxes = np.stack([center_y - height / 2, center_x - width / 2, center_y + height / 2, center_x + width / 2], -1)
    return np.clip(boxes, 0.0, 1.0)


def proposals_np(objectness, deltas, anchors, image_size, top_n, nms_iou, min_size):
    """The Faster R-CNN proposal steps per image: decode, drop small boxes, top-N, greedy NMS, top-N."""
    before, after = top_n
    batch = objectness.shape[0]
    proposals = np.zeros((batch, after, 4), np.float64)
    scores = np.zeros((batch, after), np.float64)
    for b in range(batch):
        boxes = decode_np(deltas[b], anchors)
        heights = (boxes[:, 2] - boxes[:, 0]) * image_size[0]
        widths = (boxes[:, 3] - boxes[:, 1]) * image_size[1]
        large = np.nonzero((heights >= min_size) & (widths >= min_size))[0]
        order = large[np.argsort(-objectness[b, large], kind="stable")][:before]
        kept = order[greedy_nms_np(boxes[order], nms_iou)][:after]
        proposals[b, :len(kept)] = boxes[kept]
        scores[b, :len(kept)] = objectness[b, kept]
    return proposals, scores


def chain_boxes(count):
    """Boxes sliding right: neighbours overlap with IoU 0.778, boxes two apart with IoU 0.6."""
    left = 0.1 + 0.025 * np.arange(count)
    return np.stack([np.full(count, 0.2), left, np.full(count, 0.6), left + 0.2], -1).astype(np.float32)


def random_rpn_outputs(seed, anchors_count, batch=2, center_spread=0.1, size_spread=1.0):
    """Draw objectness (B, A) in [0, 1) and offsets (B, A, 4). The wide th, tw spread gives some tiny boxes."""
    rng = np.random.default_rng(seed)
    objectness = rng.uniform(size=(batch, anchors_count)).astype(np.float32)
    centers = rng.normal(0, center_spread, (batch, anchors_count, 2))
    sizes = rng.normal(0, size_spread, (batch, anchors_count, 2))
    return objectness, np.concatenate([centers, sizes], -1).astype(np.float32)


# NMS -------------------------------------------------------------------------------------------


def test_chain_shows_rounds_differ_from_greedy():
    boxes = chain_boxes(6)
    iou = iou_matrix_np(boxes, boxes)
    assert iou[0, 1] > 0.7
    assert iou[0, 2] < 0.7
    assert greedy_nms_np(boxes, 0.7) == [0, 2, 4]

    valid = tf.ones((1, 6), tf.bool)
    kept_by_rounds = {
        rounds: np.nonzero(parallel_greedy_nms(tf.constant(boxes[None]), valid, 0.7, rounds).numpy()[0])[0].tolist()
        for rounds in (1, 2, 3, 5, 99)
    }
    # Round 1 is Fast NMS: box 1 suppresses box 2 although greedy NMS suppresses box 1.
    assert kept_by_rounds[1] == [0]
    # Even rounds keep a superset of greedy NMS's boxes, odd rounds a subset.
    assert kept_by_rounds[2] == [0, 2, 3, 4, 5]
    assert kept_by_rounds[3] == [0, 2]
    # k - 1 = 5 rounds, or more, give exactly greedy NMS.
    assert kept_by_rounds[5] == [0, 2, 4]
    assert kept_by_rounds[99] == [0, 2, 4]


def test_nms_invalid_boxes_neither_kept_nor_suppress():
    boxes = tf.constant(chain_boxes(3)[None])
    valid = tf.constant([[False, True, True]])
    kept = parallel_greedy_nms(boxes, valid, 0.7, 3).numpy()[0]
    assert kept.tolist() == [False, True, False]


@pytest.mark.parametrize("rounds", [1, 3, 21])
def test_nms_kept_boxes_never_overlap_above_threshold(rounds):
    rng = np.random.default_rng(3)
    centers = rng.uniform(0.3, 0.7, (1, 200, 2))
    sizes = rng.uniform(0.2, 0.3, (1, 200, 2))
    boxes = np.concatenate([centers - sizes / 2, centers + sizes / 2], -1).astype(np.float32)
    kept = parallel_greedy_nms(tf.constant(boxes), tf.ones((1, 200), tf.bool), 0.5, rounds).numpy()[0]

    greedy = set(greedy_nms_np(boxes[0], 0.5))
    kept_indices = np.nonzero(kept)[0]
    iou = iou_matrix_np(boxes[0, kept_indices], boxes[0, kept_indices])
    np.fill_diagonal(iou, 0.0)
    assert iou.max() <= 0.5
    assert set(kept_indices.tolist()) <= greedy


# ProposalLayer ---------------------------------------------------------------------------------


FEATURE_SHAPE = (4, 6)
IMAGE_SIZE = (64, 96)
# Anchors up to the whole input side, 16 px apart: neighbours of the largest
# size overlap with IoU 0.76, so NMS suppresses boxes.
OVERLAPPING_ANCHORS = RPNAnchorConfig(sizes=(0.25, 0.5, 1.0))


def test_proposals_match_greedy_reference():
    # 99 rounds for 100 boxes make the NMS exactly greedy.
    layer = ProposalLayer(FEATURE_SHAPE, IMAGE_SIZE, OVERLAPPING_ANCHORS, test_top_n=(100, 30), min_size=6.0,
                          nms_rounds=99)
    objectness, deltas = random_rpn_outputs(0, len(layer.anchors))
    proposals, scores = layer(objectness, deltas)
    expected_proposals, expected_scores = proposals_np(
        objectness, deltas, layer.anchors, IMAGE_SIZE, (100, 30), 0.7, 6.0)

    assert proposals.shape == (2, 30, 4)
    assert scores.shape == (2, 30)
    np.testing.assert_allclose(proposals.numpy(), expected_proposals, atol=1e-6, rtol=0)
    np.testing.assert_allclose(scores.numpy(), expected_scores, atol=0, rtol=0)

    # The input exercises both filters: some of the 100 highest-scoring anchors
    # decode under 6 px, and NMS changes the 30 returned boxes.
    boxes = decode_np(deltas[0], layer.anchors)
    sides = (boxes[:, 2:] - boxes[:, :2]) * IMAGE_SIZE
    highest = np.argsort(-objectness[0])[:100]
    assert np.any(sides[highest].min(axis=1) < 6.0)
    unsuppressed, _ = proposals_np(objectness, deltas, layer.anchors, IMAGE_SIZE, (100, 30), 1.0, 6.0)
    assert not np.allclose(unsuppressed[0], expected_proposals[0])
    assert not np.allclose(unsuppressed[1], expected_proposals[1])


def test_default_rounds_match_greedy_on_sliding_anchors():
    # Zero offsets and a smooth score over the image: the proposals are the
    # clipped anchors, which form long chains of overlaps at IoU 0.7. All
    # 2000 boxes stay after NMS, so every decision of the NMS is compared.
    feature_shape, image_size, top_n = (19, 25), (300, 400), (2000, 2000)
    anchors = rpn_anchors(feature_shape, image_size)
    centers = (anchors[:, :2] + anchors[:, 2:]) / 2
    objectness = 0.9 * np.exp(-3 * ((centers - 0.5) ** 2).sum(-1))[None].astype(np.float32)
    objectness += np.random.default_rng(5).uniform(0, 0.1, objectness.shape).astype(np.float32)
    deltas = np.zeros((1, len(anchors), 4), np.float32)
    expected_proposals, expected_scores = proposals_np(objectness, deltas, anchors, image_size, top_n, 0.7, 2.0)

    proposals, scores = ProposalLayer(feature_shape, image_size, test_top_n=top_n)(objectness, deltas)
    np.testing.assert_allclose(proposals.numpy(), expected_proposals, atol=1e-6, rtol=0)
    np.testing.assert_allclose(scores.numpy(), expected_scores, atol=0, rtol=0)

    # This input needs 11 rounds: with 9, some boxes that greedy NMS keeps are dropped.
    _, few_scores = ProposalLayer(feature_shape, image_size, test_top_n=top_n, nms_rounds=9)(objectness, deltas)
    assert np.count_nonzero(few_scores.numpy()) < np.count_nonzero(expected_scores)
    _, enough_scores = ProposalLayer(feature_shape, image_size, test_top_n=top_n, nms_rounds=11)(objectness, deltas)
    np.testing.assert_allclose(enough_scores.numpy(), expected_scores, atol=0, rtol=0)


def test_proposals_with_few_rounds_drop_chain_boxes():
    # Anchors 0 to 5 decode to a chain of boxes, and every other anchor decodes under 2 px.
    layer_args = dict(feature_shape=(2, 2), image_size=(64, 64), test_top_n=(36, 10))
    anchors = ProposalLayer(**layer_args).anchors
    deltas = np.tile(np.array([0.0, 0.0, -10.0, -10.0], np.float32), (1, len(anchors), 1))
    chain = chain_boxes(6)
    deltas[0, :6] = encode_boxes(chain, anchors[:6], (1.0, 1.0, 1.0, 1.0)).numpy()
    objectness = np.full((1, len(anchors)), 0.95, np.float32)
    objectness[0, :6] = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]

    for rounds, expected_rows in [(1, [0]), (3, [0, 2]), (5, [0, 2, 4])]:
        proposals, scores = ProposalLayer(**layer_args, nms_rounds=rounds)(objectness, deltas)
        count = len(expected_rows)
        np.testing.assert_allclose(proposals.numpy()[0, :count], chain[expected_rows], atol=1e-6)
        np.testing.assert_allclose(scores.numpy()[0, :count], objectness[0, expected_rows])
        # The tiny boxes scored 0.95 are never returned, and the remaining rows are padding.
        np.testing.assert_array_equal(proposals.numpy()[0, count:], 0.0)
        np.testing.assert_array_equal(scores.numpy()[0, count:], 0.0)


def test_proposals_pad_few_anchors():
    layer = ProposalLayer((1, 1), IMAGE_SIZE)
    objectness, deltas = random_rpn_outputs(6, len(layer.anchors), size_spread=0.1)
    proposals, scores = layer(objectness, deltas)
    expected_proposals, expected_scores = proposals_np(
        objectness, deltas, layer.anchors, IMAGE_SIZE, (1000, 300), 0.7, 2.0)

    assert proposals.shape == (2, 300, 4)
    assert scores.shape == (2, 300)
    np.testing.assert_allclose(proposals.numpy(), expected_proposals, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(scores.numpy(), expected_scores.astype(np.float32))
    np.testing.assert_array_equal(proposals.numpy()[:, 9:], 0.0)


def test_proposals_training_uses_train_top_n():
    layer = ProposalLayer(FEATURE_SHAPE, IMAGE_SIZE, OVERLAPPING_ANCHORS, train_top_n=(80, 40), test_top_n=(60, 20),
                          nms_rounds=79)
    objectness, deltas = random_rpn_outputs(7, len(layer.anchors))
    train_proposals, train_scores = layer(objectness, deltas, training=True)
    test_proposals, _ = layer(objectness, deltas, training=False)
    expected_proposals, expected_scores = proposals_np(
        objectness, deltas, layer.anchors, IMAGE_SIZE, (80, 40), 0.7, 2.0)

    assert train_proposals.shape == (2, 40, 4)
    assert test_proposals.shape == (2, 20, 4)
    np.testing.assert_allclose(train_proposals.numpy(), expected_proposals, atol=1e-6, rtol=0)
    np.testing.assert_allclose(train_scores.numpy(), expected_scores, atol=0, rtol=0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(nms_rounds=4), "nms_rounds=4"),
    (dict(nms_rounds=0), "nms_rounds=0"),
    (dict(test_top_n=(100,)), "test_top_n"),
    (dict(train_top_n=(0, 10)), "train_top_n"),
    (dict(nms_iou=0.0), "nms_iou=0.0"),
    (dict(min_size=-1), "min_size=-1"),
])
def test_proposal_layer_rejects_invalid_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ProposalLayer(FEATURE_SHAPE, IMAGE_SIZE, **kwargs)


def test_proposal_layer_rejects_wrong_anchor_count():
    layer = ProposalLayer(FEATURE_SHAPE, IMAGE_SIZE)
    with pytest.raises(ValueError, match="expected 216 anchors"):
        layer(np.zeros((1, 100), np.float32), np.zeros((1, 100, 4), np.float32))


def test_proposal_layer_config_keeps_anchor_settings():
    config = RPNAnchorConfig(sizes=(0.2, 0.4), aspect_ratios=(1.0, 2.0))
    layer = ProposalLayer(FEATURE_SHAPE, IMAGE_SIZE, anchor_config=config, test_top_n=(50, 10))
    rebuilt = ProposalLayer.from_config(layer.get_config())
    assert rebuilt.anchor_config == config
    assert rebuilt.test_top_n == (50, 10)
    np.testing.assert_array_equal(rebuilt.anchors, rpn_anchors(FEATURE_SHAPE, IMAGE_SIZE, config))


# Save and reload ------------------------------------------------------------------------------


def build_tiny_model():
    """features (B, 4, 6, 8) -> proposals, scores and pooled features (B, 10, 3, 3, 8)."""
    keras.utils.set_random_seed(0)
    anchor_config = RPNAnchorConfig(sizes=(0.25, 0.5), aspect_ratios=(0.5, 1.0, 2.0))
    layer = ProposalLayer(FEATURE_SHAPE, IMAGE_SIZE, anchor_config=anchor_config, test_top_n=(40, 10))
    per_cell = anchor_config.anchors_per_location

    features = keras.Input((*FEATURE_SHAPE, 8))
    objectness = keras.layers.Conv2D(per_cell, 1, activation="sigmoid")(features)
    objectness = keras.layers.Reshape((len(layer.anchors),))(objectness)
    deltas = keras.layers.Conv2D(4 * per_cell, 1)(features)
    deltas = keras.layers.Reshape((len(layer.anchors), 4))(deltas)
    proposals, scores = layer(objectness, deltas)
    pooled = ROIMaxPooling(3)(features, proposals)
    return keras.Model(features, {"proposals": proposals, "scores": scores, "pooled": pooled})


def test_tiny_model_reloads_in_fresh_process(tmp_path):
    model = build_tiny_model()
    features = np.random.default_rng(8).normal(size=(2, *FEATURE_SHAPE, 8)).astype(np.float32)
    expected = {name: value.numpy() for name, value in model(features).items()}
    assert np.count_nonzero(expected["scores"]) > 0
    model.save(tmp_path / "tiny.keras")
    np.save(tmp_path / "input.npy", features)

    script = (
        "import sys, numpy as np, keras, dl09_keras\n"
        "model = keras.saving.load_model(sys.argv[1], safe_mode=True)\n"
        "outputs = model(np.load(sys.argv[2]))\n"
        "np.savez(sys.argv[3], **{name: value.numpy() for name, value in outputs.items()})\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "tiny.keras"), str(tmp_path / "input.npy"),
         str(tmp_path / "output.npz")],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]

    reloaded = np.load(tmp_path / "output.npz")
    for name, value in expected.items():
        np.testing.assert_array_equal(reloaded[name], value, err_msg=name)
