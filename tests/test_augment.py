import numpy as np
import pytest
import tensorflow as tf

from dl09_keras.boxes import iou_matrix_np
from dl09_keras.data import AugmentConfig, augment, generate_shapes, training_pipeline
from dl09_keras.data.augment import boxes_in_window, sample_patch
from dl09_keras.anchors import default_boxes
from dl09_keras.matching import TargetEncoder
from dl09_keras.boxes import decode_boxes

COLORS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], np.uint8)
GEOMETRY_ONLY = AugmentConfig(photometric=False)


def rectangles_image():
    """A black 200x300 image with four filled rectangles of distinct colors; returns image, boxes."""
    image = np.zeros((200, 300, 3), np.uint8)
    boxes_px = [(20, 30, 80, 120), (100, 40, 180, 90), (30, 180, 110, 280), (130, 150, 190, 260)]
    for color, (y0, x0, y1, x1) in zip(COLORS, boxes_px):
        image[y0:y1, x0:x1] = color
    boxes = np.array(boxes_px, np.float32) / [200, 300, 200, 300]
    return image, boxes


def test_augmented_boxes_cover_their_rectangles():
    """Drawing test: inside every kept box the image shows that box's color, around it none."""
    tf.random.set_seed(3)
    image, boxes = rectangles_image()
    labels = np.arange(4, dtype=np.int32)
    kept_total = 0
    for _ in range(40):
        out, out_boxes, out_labels = augment(image, boxes, labels, (160, 160), GEOMETRY_ONLY)
        out, out_boxes, out_labels = out.numpy(), out_boxes.numpy(), out_labels.numpy()
        assert out.shape == (160, 160, 3)
        for box, label in zip(out_boxes, out_labels):
            y0, x0, y1, x1 = np.round(box * 160).astype(int)
            if y1 - y0 < 6 or x1 - x0 < 6:
                continue  # too small to sample an interior
            interior = out[y0 + 2:y1 - 2, x0 + 2:x1 - 2].reshape(-1, 3)
            np.testing.assert_allclose(interior.mean(axis=0), COLORS[label], atol=25)
            kept_total += 1
            # Just outside the box (where still inside the image) the color must be gone.
            ring = []
            if y0 >= 3:
                ring.append(out[y0 - 3, x0 + 2:x1 - 2])
            if y1 + 3 < 160:
                ring.append(out[y1 + 2, x0 + 2:x1 - 2])
            for row in ring:
                assert np.abs(row - COLORS[label]).sum(axis=-1).min() > 60
    assert kept_total > 40


def test_flip_mirrors_boxes():
    image, boxes = rectangles_image()
    config = AugmentConfig(photometric=False, zoom_out_probability=0.0, crop=False, flip_probability=1.0)
    out, out_boxes, _ = augment(image, boxes, np.arange(4), (200, 300), config)
    expected = np.stack([boxes[:, 0], 1 - boxes[:, 3], boxes[:, 2], 1 - boxes[:, 1]], axis=1)
    np.testing.assert_allclose(out_boxes.numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(out.numpy()[:, ::-1], tf.image.resize(image, (200, 300)).numpy()[:, :], atol=1.0)


def test_box_kept_only_when_its_center_is_inside():
    boxes = tf.constant([[0.1, 0.1, 0.3, 0.3], [0.4, 0.4, 0.9, 0.9], [0.45, 0.0, 0.55, 0.2]])
    window = tf.constant([0.0, 0.0, 0.5, 0.5])
    moved, keep = boxes_in_window(boxes, window)
    np.testing.assert_array_equal(keep.numpy(), [True, False, False])
    np.testing.assert_allclose(moved.numpy(), [[0.2, 0.2, 0.6, 0.6]], atol=1e-6)
    window = tf.constant([0.0, 0.0, 0.7, 0.7])
    moved, keep = boxes_in_window(boxes, window)
    np.testing.assert_array_equal(keep.numpy(), [True, True, True])
    np.testing.assert_allclose(moved.numpy()[1], [0.4 / 0.7, 0.4 / 0.7, 1.0, 1.0], atol=1e-6)


@pytest.mark.parametrize("min_iou, boxes, min_crops", [
    (0.1, [[0.2, 0.2, 0.6, 0.7], [0.5, 0.1, 0.9, 0.4]], 25),
    (0.5, [[0.2, 0.2, 0.6, 0.7], [0.5, 0.1, 0.9, 0.4]], 15),
    (0.9, [[0.05, 0.1, 0.95, 0.9]], 3),  # a 0.9 bound is rarely met in 50 trials
])
def test_constrained_patch_meets_its_iou_bound(min_iou, boxes, min_crops):
    tf.random.set_seed(0)
    config = AugmentConfig(min_ious=(min_iou,))
    boxes = np.array(boxes, np.float32)
    centers = (boxes[:, :2] + boxes[:, 2:]) / 2
    cropped = 0
    for _ in range(30):
        patch = sample_patch(tf.constant(boxes), config, mode=1).numpy()
        if np.array_equal(patch, [0, 0, 1, 1]):
            continue  # no sampled patch met the bound: the whole image is kept
        cropped += 1
        iou = iou_matrix_np(patch[None], boxes)[0]
        inside = np.all((centers > patch[:2]) & (centers < patch[2:]), axis=1)
        assert np.any((iou >= min_iou) & inside), (patch, iou)
        area = (patch[2] - patch[0]) * (patch[3] - patch[1])
        assert area >= config.min_patch_area - 1e-6
    assert cropped >= min_crops


def test_whole_image_mode_keeps_the_image():
    patch = sample_patch(tf.constant([[0.2, 0.2, 0.4, 0.4]]), AugmentConfig(), mode=0).numpy()
    np.testing.assert_array_equal(patch, [0, 0, 1, 1])


def test_zoom_out_shrinks_and_fills_with_mean():
    tf.random.set_seed(1)
    image, boxes = rectangles_image()
    config = AugmentConfig(photometric=False, crop=False, flip_probability=0.0,
                           zoom_out_probability=1.0, zoom_out_max=3.0)
    out, out_boxes, out_labels = augment(image, boxes, np.arange(4), (200, 300), config)
    assert len(out_labels) == 4  # nothing leaves the canvas
    area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # noqa: E731
    assert np.all(area(out_boxes.numpy()) < area(boxes))
    mean = image.reshape(-1, 3).mean(axis=0)
    corners = out.numpy()[[0, 0, -1, -1], [0, -1, 0, -1]]
    # At least one corner lies on the canvas outside the image.
    assert np.min(np.abs(corners - mean).sum(axis=-1)) < 3


def test_empty_image_passes_through_every_mode():
    tf.random.set_seed(2)
    image = np.full((64, 64, 3), 90, np.uint8)
    for _ in range(20):
        out, out_boxes, out_labels = augment(image, np.zeros((0, 4), np.float32), np.zeros(0, np.int32), (32, 32))
        assert out.shape == (32, 32, 3)
        assert out_boxes.shape == (0, 4)


def test_pipeline_targets_decode_to_the_augmented_boxes():
    dataset = generate_shapes("val", num_images=16)
    anchors = default_boxes([(8, 8), (4, 4), (2, 2), (1, 1)], (64, 64))
    encoder = TargetEncoder(anchors)
    images, targets = next(iter(training_pipeline(dataset, encoder, (64, 64), 8)))
    assert images.shape == (8, 64, 64, 3)
    assert targets.shape == (8, len(anchors), 5)
    assert images.dtype == tf.float32
    assert float(tf.reduce_min(images)) >= 0
    assert float(tf.reduce_max(images)) <= 255
    positive = targets[..., 4].numpy() > 0
    assert positive.any()
    decoded = decode_boxes(targets[..., :4], anchors).numpy()[positive]
    # Positive targets decode to valid boxes inside the image.
    assert np.all(decoded[:, 2] > decoded[:, 0])
    assert np.all(decoded[:, 3] > decoded[:, 1])
    assert decoded.min() > -1e-4
    assert decoded.max() < 1 + 1e-4
