import numpy as np

from dl09_keras.boxes import decode_boxes
from dl09_keras.matching import TargetEncoder, match_default_boxes

# Four default boxes on a row; hand-made ground truths below are placed against them.
DEFAULTS = np.array([
    [0.0, 0.0, 0.5, 0.25],
    [0.0, 0.25, 0.5, 0.5],
    [0.0, 0.5, 0.5, 0.75],
    [0.0, 0.75, 0.5, 1.0],
], np.float32)


def match(boxes, labels, threshold=0.5):
    matched_boxes, matched_labels = match_default_boxes(np.array(boxes, np.float32).reshape(-1, 4),
                                                        np.array(labels, np.int32), DEFAULTS, threshold)
    return matched_boxes.numpy(), matched_labels.numpy()


def test_image_without_objects_is_all_background():
    boxes, labels = match(np.zeros((0, 4)), [])
    np.testing.assert_array_equal(labels, [0, 0, 0, 0])
    np.testing.assert_array_equal(boxes, DEFAULTS)


def test_tiny_object_still_gets_its_best_default_box():
    tiny = [[0.2, 0.55, 0.25, 0.6]]  # IoU with default box 2 is 0.0025 / 0.125 = 0.02
    _, labels = match(tiny, [3])
    np.testing.assert_array_equal(labels, [0, 0, 3, 0])


def test_threshold_rule_matches_boxes_at_or_above_half():
    # The ground truth covers box 1 fully and half of box 2's width: IoU 0.125/0.1875 = 2/3 with
    # box 1 (best) and 0.0625/0.1875 = 1/3 with box 2.
    _, labels = match([[0.0, 0.25, 0.5, 0.625]], [1])
    np.testing.assert_array_equal(labels, [0, 1, 0, 0])
    # Spanning boxes 1 and 2 exactly: IoU 0.5 with both; one is the best, the other meets 0.5.
    _, labels = match([[0.0, 0.25, 0.5, 0.75]], [2])
    np.testing.assert_array_equal(labels, [0, 2, 2, 0])
    # Just below 0.5 with box 2: only the best default box is matched.
    _, labels = match([[0.0, 0.25, 0.5, 0.749]], [2], threshold=0.5)
    assert labels.tolist().count(2) == 1


def test_shared_best_box_goes_to_later_gt():
    # Both ground truths have box 0 as their best default box (IoU 0.6 and 0.9), and
    # neither overlaps another box. The later one keeps box 0, so the earlier one is lost.
    a = [0.0, 0.0, 0.5, 0.15]
    b = [0.0, 0.0, 0.5, 0.225]
    _, labels = match([a, b], [1, 2])
    np.testing.assert_array_equal(labels, [2, 0, 0, 0])
    _, labels = match([b, a], [2, 1])
    np.testing.assert_array_equal(labels, [1, 0, 0, 0])


def test_two_objects_each_get_a_box():
    _, labels = match([[0.0, 0.0, 0.5, 0.25], [0.0, 0.75, 0.5, 1.0]], [1, 2])
    np.testing.assert_array_equal(labels, [1, 0, 0, 2])


def test_target_encoder_round_trip():
    encoder = TargetEncoder(DEFAULTS)
    gt = np.array([[0.05, 0.02, 0.45, 0.27]], np.float32)
    target = encoder(gt, np.array([0])).numpy()
    assert target.shape == (4, 5)
    np.testing.assert_array_equal(target[:, 4], [1, 0, 0, 0])  # label 0 becomes class 1
    decoded = decode_boxes(target[:1, :4], DEFAULTS[:1]).numpy()
    np.testing.assert_allclose(decoded, gt, atol=1e-6)
    np.testing.assert_array_equal(target[1:, :4], 0.0)
