import numpy as np
import pytest
import tensorflow as tf

from dl09_keras.boxes import decode_boxes, encode_boxes, iou_matrix, iou_matrix_np, to_pixels_xyxy


def test_iou_of_hand_made_pairs():
    a = np.array([[0.0, 0.0, 0.5, 0.5]], np.float32)
    b = np.array([
        [0.0, 0.0, 0.5, 0.5],   # identical: 1
        [0.25, 0.0, 0.75, 0.5],  # half overlap: 0.125 / 0.375 = 1/3
        [0.5, 0.5, 1.0, 1.0],   # touching corner: 0
        [0.1, 0.1, 0.1, 0.3],   # zero area: 0
    ], np.float32)
    expected = [1.0, 1.0 / 3.0, 0.0, 0.0]
    np.testing.assert_allclose(iou_matrix(a, b).numpy()[0], expected, atol=1e-6)
    np.testing.assert_allclose(iou_matrix_np(a, b)[0], expected, atol=1e-12)


def test_iou_tf_matches_numpy_on_random_boxes():
    rng = np.random.default_rng(0)
    corners = np.sort(rng.uniform(0, 1, (60, 2, 2)), axis=1)
    boxes = np.concatenate([corners[:, 0], corners[:, 1]], axis=1).astype(np.float32)
    np.testing.assert_allclose(iou_matrix(boxes[:20], boxes).numpy(), iou_matrix_np(boxes[:20], boxes), atol=1e-6)


def test_encode_hand_computed_offsets():
    default = np.array([[0.4, 0.4, 0.6, 0.6]], np.float32)  # center 0.5, size 0.2
    box = np.array([[0.42, 0.4, 0.62, 0.8]], np.float32)    # center (0.52, 0.6), size (0.2, 0.4)
    offsets = encode_boxes(box, default).numpy()[0]
    expected = [0.02 / 0.2 / 0.1, 0.1 / 0.2 / 0.1, np.log(1.0) / 0.2, np.log(2.0) / 0.2]
    np.testing.assert_allclose(offsets, expected, atol=1e-5)


def test_decode_inverts_encode():
    rng = np.random.default_rng(1)
    centers = rng.uniform(0.2, 0.8, (100, 2))
    sizes = rng.uniform(0.05, 0.4, (100, 2))
    boxes = np.concatenate([centers - sizes / 2, centers + sizes / 2], axis=1).astype(np.float32)
    defaults = np.roll(boxes, 7, axis=0)
    decoded = decode_boxes(encode_boxes(boxes, defaults), tf.constant(defaults)).numpy()
    np.testing.assert_allclose(decoded, boxes, atol=1e-5)


def test_to_pixels_swaps_to_xyxy():
    pixels = to_pixels_xyxy(np.array([[0.1, 0.2, 0.5, 1.0]]), width=640, height=480)
    np.testing.assert_allclose(pixels, [[128.0, 48.0, 640.0, 240.0]])


@pytest.mark.parametrize("shape", [(0, 4), (3, 4)])
def test_iou_numpy_handles_empty_sets(shape):
    result = iou_matrix_np(np.zeros(shape), np.zeros((0, 4)))
    assert result.shape == (shape[0], 0)
