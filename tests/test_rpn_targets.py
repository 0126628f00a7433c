"""RPN anchor layout, RPN anchor labelling and sampling, and the head's ROI sampling."""

import math

import numpy as np
import pytest
import tensorflow as tf

from dl09_keras.anchors import rpn_anchors
from dl09_keras.boxes import DEFAULT_VARIANCES, decode_boxes, iou_matrix_np
from dl09_keras.matching import RPN_VARIANCES, RPNTargetEncoder, rpn_labels_np, sample_rois

# 6 x 6 cells x 9 anchors = 324 anchors, more than the 256 sampled per image.
GRID_ANCHORS = rpn_anchors((6, 6), (96, 96))


def full_height(*x_ranges):
    """Boxes that span the image height, so their IoU is the IoU of their x ranges."""
    return np.array([[0.0, x0, 1.0, x1] for x0, x1 in x_ranges], np.float32)


def encode(encoder, boxes):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    target = encoder(boxes, np.zeros(len(boxes), np.int32)).numpy()
    return target[:, :4], target[:, 4]


def unsampled_encoder(anchors):
    """An encoder whose sample keeps every labelled anchor, to compare with the reference."""
    return RPNTargetEncoder(anchors, samples_per_image=len(anchors), positive_fraction=1.0)


def near_ties(anchors, boxes, tolerance=1e-6):
    """Anchors whose float64 IoU is within ``tolerance`` of a ground truth's maximum, but not equal.

    The grid is symmetric, so two anchors can have IoUs with one box that differ
    by about 1e-8. They tie in float32, where the encoder computes, but not in the
    float64 reference, so the tie rule may label such anchors differently.
    """
    iou = iou_matrix_np(anchors, boxes)
    gap = iou.max(axis=0)[None, :] - iou
    return ((gap > 0) & (gap < tolerance)).any(axis=1)


def random_boxes(rng, count):
    """Boxes near randomly chosen grid anchors (IoU often > 0.7) and fully random ones."""
    near = GRID_ANCHORS[rng.choice(len(GRID_ANCHORS), count)]
    near = near + rng.uniform(-0.02, 0.02, near.shape)
    centers = rng.uniform(0.1, 0.9, (count, 2))
    sizes = rng.uniform(0.05, 0.6, (count, 2))
    loose = np.concatenate([centers - sizes / 2, centers + sizes / 2], axis=1)
    return np.concatenate([near, loose]).astype(np.float32)


# --- anchor layout ---

def test_rpn_anchor_layout_hand_values():
    anchors = rpn_anchors((2, 3), (100, 200))
    assert anchors.shape == (2 * 3 * 9, 4)

    side = math.sqrt(100 * 200)  # 141.42 px

    # Anchor 0: cell (0, 0), size 0.125, ratio 0.5. Center (25 px, 33.33 px).
    # Width 0.125 * sqrt(0.5) * side = 12.5 px, height 0.125 / sqrt(0.5) * side = 25 px.
    assert 0.125 * math.sqrt(0.5) * side == pytest.approx(12.5)
    expected = [(25 - 12.5) / 100, (200 / 6 - 6.25) / 200, (25 + 12.5) / 100, (200 / 6 + 6.25) / 200]
    np.testing.assert_allclose(anchors[0], expected, atol=1e-6)

    # Anchor 13 = cell (0, 1) * 9 + size 0.25 * 3 + ratio 1: a square of 0.25 * side = 35.36 px
    # centered on (25 px, 100 px).
    half = 0.25 * side / 2
    expected = [(25 - half) / 100, (100 - half) / 200, (25 + half) / 100, (100 + half) / 200]
    np.testing.assert_allclose(anchors[13], expected, atol=1e-6)

    # Anchor 53 = cell (1, 2) * 9 + size 0.5 * 3 + ratio 2: 100 px wide, 50 px high,
    # centered on (75 px, 166.67 px). It crosses the right border and is kept unclipped.
    expected = [(75 - 25) / 100, (500 / 3 - 50) / 200, (75 + 25) / 100, (500 / 3 + 50) / 200]
    np.testing.assert_allclose(anchors[53], expected, atol=1e-6)
    assert anchors[53, 3] > 1.0


# --- RPN anchor labelling ---

def test_rpn_thresholds_on_hand_made_anchors():
    # Ground truth x in [0, 0.4]. IoU with each anchor: 1, 0.8, 0.65, 0.35, 0.25, 0.
    anchors = full_height((0, 0.4), (0, 0.32), (0, 0.26), (0, 0.14), (0, 0.1), (0.5, 1.0))
    _, labels = encode(unsampled_encoder(anchors), full_height((0, 0.4)))
    np.testing.assert_array_equal(labels, [1, 1, -1, -1, 0, 0])


def test_rpn_thresholds_are_configurable():
    anchors = full_height((0, 0.4), (0, 0.32), (0, 0.26), (0, 0.14), (0, 0.1), (0.5, 1.0))
    encoder = RPNTargetEncoder(anchors, positive_iou=0.6, negative_iou=0.2, samples_per_image=6, positive_fraction=1.0)
    _, labels = encode(encoder, full_height((0, 0.4)))
    np.testing.assert_array_equal(labels, [1, 1, 1, -1, -1, 0])


def test_rpn_best_anchor_ties_are_all_positive():
    # Two identical anchors share the maximum IoU 0.5, and the third has IoU 0.25.
    anchors = full_height((0, 0.2), (0, 0.2), (0, 0.1))
    _, labels = encode(unsampled_encoder(anchors), full_height((0, 0.4)))
    np.testing.assert_array_equal(labels, [1, 1, 0])


def test_rpn_gt_below_negative_iou_gets_best_anchor():
    small = np.array([[0.2, 0.55, 0.25, 0.6]], np.float32)
    iou = iou_matrix_np(GRID_ANCHORS, small)[:, 0]
    assert iou.max() < 0.3

    offsets, labels = encode(RPNTargetEncoder(GRID_ANCHORS), small)
    assert np.flatnonzero(labels == 1).tolist() == [int(iou.argmax())]
    decoded = decode_boxes(offsets[labels == 1], GRID_ANCHORS[labels == 1], RPN_VARIANCES).numpy()
    np.testing.assert_allclose(decoded, small, atol=1e-5)


def test_rpn_image_without_objects_samples_only_negatives():
    offsets, labels = encode(RPNTargetEncoder(GRID_ANCHORS), np.zeros((0, 4)))
    assert (labels == 0).sum() == 256
    assert (labels == -1).sum() == len(GRID_ANCHORS) - 256
    assert not (labels == 1).any()
    np.testing.assert_array_equal(offsets, 0.0)


def test_rpn_degenerate_box_gives_no_positive():
    flat = np.array([[0.3, 0.3, 0.3, 0.6]], np.float32)  # zero height
    offsets, labels = encode(RPNTargetEncoder(GRID_ANCHORS), flat)
    assert np.isfinite(offsets).all()
    assert not (labels == 1).any()
    assert (labels == 0).sum() == 256

    # Beside a valid box it changes nothing.
    valid = np.array([[0.1, 0.1, 0.5, 0.4]], np.float32)
    encoder = unsampled_encoder(GRID_ANCHORS)
    offsets, labels = encode(encoder, np.concatenate([flat, valid]))
    _, labels_alone = encode(encoder, valid)
    assert np.isfinite(offsets).all()
    np.testing.assert_array_equal(labels, labels_alone)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rpn_labels_match_numpy_reference(seed):
    boxes = random_boxes(np.random.default_rng(seed), 3)
    expected, matched = rpn_labels_np(GRID_ANCHORS, boxes)
    best_iou = iou_matrix_np(GRID_ANCHORS, boxes).max(axis=1)
    # The case covers all three rules and the ignored band.
    assert (best_iou > 0.7).any()
    assert ((expected == 1) & (best_iou <= 0.7)).any()
    assert (expected == -1).any()
    assert (expected == 0).any()

    offsets, labels = encode(unsampled_encoder(GRID_ANCHORS), boxes)
    exact = ~near_ties(GRID_ANCHORS, boxes)
    assert exact.sum() >= len(GRID_ANCHORS) - 4
    np.testing.assert_array_equal(labels[exact], expected[exact])

    positive = labels == 1
    decoded = decode_boxes(offsets[positive], GRID_ANCHORS[positive], RPN_VARIANCES).numpy()
    np.testing.assert_allclose(decoded, boxes[matched[positive]], atol=1e-5)
    np.testing.assert_array_equal(offsets[~positive], 0.0)


@pytest.mark.parametrize("seed", [3, 4])
def test_rpn_sample_is_subset_of_labels(seed):
    boxes = random_boxes(np.random.default_rng(seed), 4)
    expected, _ = rpn_labels_np(GRID_ANCHORS, boxes)
    _, labels = encode(RPNTargetEncoder(GRID_ANCHORS), boxes)
    exact = ~near_ties(GRID_ANCHORS, boxes)
    assert (expected[exact & (labels == 1)] == 1).all()
    assert (expected[exact & (labels == 0)] == 0).all()
    # Positives are few here, so all are kept and negatives fill up to 256.
    assert (labels[exact] == 1).sum() == (expected[exact] == 1).sum()
    assert (labels >= 0).sum() == 256


def test_rpn_sampling_caps():
    gt = full_height((0.0, 0.2))
    far = full_height((0.6, 0.9))
    anchors = np.concatenate([np.repeat(gt, 300, 0), np.repeat(far, 300, 0)])
    encoder = RPNTargetEncoder(anchors)

    _, first = encode(encoder, gt)
    assert (first == 1).sum() == 128
    assert (first == 0).sum() == 128
    assert not (first[300:] == 1).any()

    # Each call draws a new sample.
    _, second = encode(encoder, gt)
    assert not np.array_equal(first, second)

    # Few positives: negatives fill the sample. Few negatives: the sample stays short.
    _, labels = encode(RPNTargetEncoder(anchors[290:]), gt)
    assert ((labels == 1).sum(), (labels == 0).sum()) == (10, 246)
    _, labels = encode(RPNTargetEncoder(anchors[:350]), gt)
    assert ((labels == 1).sum(), (labels == 0).sum()) == (128, 50)


def test_rpn_encoder_runs_in_dataset_map():
    samples = [np.zeros((0, 4), np.float32), np.array([[0.1, 0.1, 0.5, 0.4]], np.float32), random_boxes(np.random.default_rng(5), 2)]
    dataset = tf.data.Dataset.from_generator(lambda: iter(samples), output_signature=tf.TensorSpec([None, 4], tf.float32))
    encoder = RPNTargetEncoder(GRID_ANCHORS)
    targets = list(dataset.map(lambda boxes: encoder(boxes, tf.zeros([tf.shape(boxes)[0]], tf.int32))))

    for boxes, target in zip(samples, targets):
        labels = target.numpy()[:, 4]
        expected, _ = rpn_labels_np(GRID_ANCHORS, boxes)
        assert target.shape == (len(GRID_ANCHORS), 5)
        assert (labels >= 0).sum() == 256
        assert (expected[labels == 1] == 1).all()


def test_rpn_encoder_invalid_settings_name_the_value():
    with pytest.raises(ValueError, match="negative_iou=0.8"):
        RPNTargetEncoder(GRID_ANCHORS, negative_iou=0.8)
    with pytest.raises(ValueError, match="positive_fraction=1.5"):
        RPNTargetEncoder(GRID_ANCHORS, positive_fraction=1.5)
    with pytest.raises(ValueError, match="samples_per_image=0"):
        RPNTargetEncoder(GRID_ANCHORS, samples_per_image=0)


def test_rpn_labels_np_without_objects():
    labels, matched = rpn_labels_np(GRID_ANCHORS, np.zeros((0, 4)))
    assert labels.dtype == np.int8
    assert (labels == 0).all()
    assert (matched == -1).all()


# --- head ROI sampling ---

GT = np.array([[0.1, 0.1, 0.5, 0.5]], np.float32)


def near_gt(rng, count):
    """Proposals that jitter GT by at most 0.02, so their IoU with it is above 0.8."""
    return (GT + rng.uniform(-0.02, 0.02, (count, 4))).astype(np.float32)


def far_from_gt(rng, count):
    """Proposals in the lower right quarter, with IoU 0 with GT."""
    corners = rng.uniform(0.6, 0.7, (count, 2))
    return np.concatenate([corners, corners + 0.2], axis=1).astype(np.float32)


def sample(proposals, gt_boxes=GT, gt_labels=(2,), **kwargs):
    outputs = sample_rois(np.asarray(proposals, np.float32), np.asarray(gt_boxes, np.float32).reshape(-1, 4),
                          np.asarray(gt_labels, np.int32), **kwargs)
    return [output.numpy() for output in outputs]


def test_rois_foreground_fraction_cap():
    rng = np.random.default_rng(0)
    proposals = np.concatenate([near_gt(rng, 20), far_from_gt(rng, 20), np.zeros((5, 4), np.float32)])
    rois, classes, targets, weights = sample(proposals, num_rois=16)

    assert rois.shape == (16, 4)
    np.testing.assert_array_equal(classes, [3] * 4 + [0] * 12)
    np.testing.assert_array_equal(weights, 1.0)
    assert (np.abs(rois).sum(axis=1) > 0).all()  # no padding row of the proposals

    iou = iou_matrix_np(rois, GT)[:, 0]
    assert (iou[:4] >= 0.5).all()
    assert (iou[4:] < 0.5).all()
    decoded = decode_boxes(targets[:4], rois[:4], DEFAULT_VARIANCES).numpy()
    np.testing.assert_allclose(decoded, np.repeat(GT, 4, 0), atol=1e-5)
    np.testing.assert_array_equal(targets[4:], 0.0)


def test_rois_foreground_cap_rounds_half_to_even():
    rng = np.random.default_rng(1)
    proposals = np.concatenate([near_gt(rng, 10), far_from_gt(rng, 10)])
    _, classes, _, _ = sample(proposals, num_rois=10)  # round(2.5) = 2
    assert (classes > 0).sum() == 2
    _, classes, _, _ = sample(proposals, num_rois=12, foreground_fraction=0.5)
    assert (classes > 0).sum() == 6


def test_rois_padding_has_zero_weight():
    rng = np.random.default_rng(2)
    proposals = np.concatenate([near_gt(rng, 1), far_from_gt(rng, 1), np.zeros((2, 4), np.float32)])
    rois, classes, targets, weights = sample(proposals, num_rois=8)

    # Candidates: the near proposal and GT (foreground, cap 2), the far proposal (background).
    np.testing.assert_array_equal(weights, [1, 1, 1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(classes, [3, 3, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(rois[3:], 0.0)
    np.testing.assert_array_equal(targets[2:], 0.0)


def test_rois_include_appended_gt():
    rng = np.random.default_rng(3)
    rois, classes, targets, weights = sample(far_from_gt(rng, 6), num_rois=8)

    np.testing.assert_allclose(rois[0], GT[0])
    assert classes[0] == 3
    np.testing.assert_allclose(targets[0], 0.0, atol=1e-6)
    np.testing.assert_array_equal(classes[1:], 0)
    np.testing.assert_array_equal(weights, [1] * 7 + [0])


def test_rois_without_objects_are_background():
    rng = np.random.default_rng(4)
    proposals = np.concatenate([far_from_gt(rng, 5), np.zeros((2, 4), np.float32)])
    rois, classes, targets, weights = sample(proposals, np.zeros((0, 4)), [], num_rois=8)
    np.testing.assert_array_equal(classes, 0)
    np.testing.assert_array_equal(weights, [1] * 5 + [0] * 3)
    np.testing.assert_array_equal(targets, 0.0)
    assert (np.abs(rois[:5]).sum(axis=1) > 0).all()


def test_rois_classes_follow_best_gt():
    rng = np.random.default_rng(5)
    other = np.array([[0.55, 0.55, 0.95, 0.95]], np.float32)
    gt_boxes = np.concatenate([GT, other])
    proposals = np.concatenate([near_gt(rng, 4), other + rng.uniform(-0.02, 0.02, (4, 4)).astype(np.float32)])
    rois, classes, targets, weights = sample(proposals, gt_boxes, [0, 4], num_rois=16, foreground_fraction=1.0)

    foreground = classes > 0
    assert foreground.sum() == 10  # 8 proposals and the 2 appended ground truths
    best = iou_matrix_np(rois[foreground], gt_boxes).argmax(axis=1)
    np.testing.assert_array_equal(classes[foreground], np.array([1, 5])[best])
    decoded = decode_boxes(targets[foreground], rois[foreground], DEFAULT_VARIANCES).numpy()
    np.testing.assert_allclose(decoded, gt_boxes[best], atol=1e-5)


def test_rois_background_iou_range():
    gt = full_height((0.0, 0.4))
    # IoU with gt: 0.02 / 0.78 = 0.026 and 0.2 / 0.6 = 0.333.
    proposals = full_height((0.38, 0.78), (0.2, 0.6))
    rois, classes, _, weights = sample(proposals, gt, [0], num_rois=4, background_iou=(0.1, 0.5))
    np.testing.assert_array_equal(weights, [1, 1, 0, 0])
    np.testing.assert_array_equal(classes[:2], [1, 0])
    np.testing.assert_allclose(rois[1], proposals[1])


def test_rois_static_shapes_under_map_fn():
    rng = np.random.default_rng(6)
    proposals = np.stack([np.concatenate([near_gt(rng, 3), far_from_gt(rng, 3)])] * 2)
    # Batches pad ground truths with zero boxes of label -1, which must never be sampled.
    gt_boxes = np.stack([np.concatenate([GT, np.zeros((1, 4), np.float32)])] * 2)
    gt_labels = np.array([[2, -1], [2, -1]], np.int32)
    signature = (tf.TensorSpec([8, 4]), tf.TensorSpec([8], tf.int32), tf.TensorSpec([8, 4]), tf.TensorSpec([8]))

    @tf.function
    def sample_batch(proposals, gt_boxes, gt_labels):
        return tf.map_fn(lambda image: sample_rois(*image, num_rois=8), (proposals, gt_boxes, gt_labels),
                         fn_output_signature=signature)

    rois, classes, _, weights = sample_batch(proposals, gt_boxes, gt_labels)
    assert rois.shape == (2, 8, 4)
    assert classes.shape == (2, 8)
    # Foreground: 3 proposals and GT, capped at round(8 * 0.25) = 2. Background: 3.
    np.testing.assert_array_equal(weights.numpy().sum(axis=1), [5, 5])
    assert (classes.numpy() >= 0).all()
    assert (classes.numpy() > 0).sum(axis=1).tolist() == [2, 2]


def test_rois_compile_with_xla():
    # Keras 3 compiles train steps with XLA on GPU machines when jit_compile="auto" (the default).
    rng = np.random.default_rng(7)
    proposals = np.concatenate([near_gt(rng, 3), far_from_gt(rng, 3), np.zeros((2, 4), np.float32)])
    compiled = tf.function(lambda *image: sample_rois(*image, num_rois=8), jit_compile=True)
    rois, classes, targets, weights = [output.numpy() for output in compiled(proposals, GT, np.array([2], np.int32))]

    np.testing.assert_array_equal(classes, [3, 3, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(weights, [1, 1, 1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(rois[5:], 0.0)
    decoded = decode_boxes(targets[:2], rois[:2], DEFAULT_VARIANCES).numpy()
    np.testing.assert_allclose(decoded, np.repeat(GT, 2, 0), atol=1e-5)


def test_rois_without_candidates_are_padding():
    rois, classes, targets, weights = sample(np.zeros((0, 4)), np.zeros((0, 4)), [], num_rois=4)
    np.testing.assert_array_equal(weights, 0.0)
    np.testing.assert_array_equal(classes, 0)
    np.testing.assert_array_equal(rois, 0.0)
    np.testing.assert_array_equal(targets, 0.0)

    # A zero foreground fraction leaves only background, here none.
    _, classes, _, weights = sample(GT, foreground_fraction=0.0, num_rois=4)
    np.testing.assert_array_equal(classes, 0)
    np.testing.assert_array_equal(weights, 0.0)


def test_rois_invalid_settings_name_the_value():
    with pytest.raises(ValueError, match="num_rois=0"):
        sample(GT, num_rois=0)
    with pytest.raises(ValueError, match="background_iou"):
        sample(GT, background_iou=(0.5, 0.1))
    with pytest.raises(ValueError, match="foreground_fraction=2"):
        sample(GT, foreground_fraction=2)
