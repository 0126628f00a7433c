"""SSD data augmentation as TensorFlow ops for the tf.data pipeline.

Each image goes through the steps of the SSD paper (Liu et al., 2016):
photometric distortion, then zoom-out onto a larger canvas, then one of three
crops chosen uniformly. The crop is the whole image, a patch whose IoU with at
least one object is at least 0.1, 0.3, 0.5, 0.7 or 0.9, or a random patch. A box is kept when its center lies in the patch and is
clipped to it. Then the patch is resized to the network input and flipped
horizontally with probability 0.5.

Zoom-out and crop are composed into one window in the coordinates of the
source image (it may reach outside [0, 1] after a zoom-out), cut and resized by
a single ``tf.image.crop_and_resize``; the canvas is never materialized. The
area outside the image is filled with the image's mean color.

Boxes are normalized ``[ymin, xmin, ymax, xmax]`` throughout.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from dl09_keras.boxes import iou_matrix


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Settings of the SSD augmentation.

    Args:
        photometric: random brightness, contrast, saturation and hue. Default True.
        zoom_out_probability: chance to place the image on a larger canvas. Default 0.5.
        zoom_out_max: largest canvas side relative to the image; 1 disables
            zoom-out. Default 4.0 (up to 16 times the area, as in SSD).
        crop: apply the random crop. Default True.
        min_ious: IoU bounds of the constrained patches. Default (0.1, 0.3, 0.5, 0.7, 0.9).
        crop_trials: patches sampled per image before falling back to the whole image. Default 50.
        min_patch_area: smallest patch area relative to the canvas. Default 0.1.
        max_patch_aspect: patch width/height ratio lies in [1/max, max]. Default 2.
        flip_probability: chance of a horizontal flip. Default 0.5.
    """

    photometric: bool = True
    zoom_out_probability: float = 0.5
    zoom_out_max: float = 4.0
    crop: bool = True
    min_ious: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
    crop_trials: int = 50
    min_patch_area: float = 0.1
    max_patch_aspect: float = 2.0
    flip_probability: float = 0.5

    def __post_init__(self):
        if self.zoom_out_max < 1.0:
            raise ValueError(f"Invalid zoom_out_max={self.zoom_out_max}: expected >= 1 (1 disables zoom-out).")
        if not 0.0 < self.min_patch_area <= 1.0:
            raise ValueError(f"Invalid min_patch_area={self.min_patch_area}: expected in (0, 1].")
        if self.max_patch_aspect < 1.0:
            raise ValueError(f"Invalid max_patch_aspect={self.max_patch_aspect}: expected >= 1.")
        object.__setattr__(self, "min_ious", tuple(float(v) for v in self.min_ious))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, config: dict) -> "AugmentConfig":
        return cls(**config)


NO_AUGMENTATION = AugmentConfig(
    photometric=False, zoom_out_probability=0.0, crop=False, flip_probability=0.0
)


def _uniform(shape=(), low=0.0, high=1.0):
    return tf.random.uniform(shape, low, high, dtype=tf.float32)


def zoom_out_canvas(config: AugmentConfig):
    """Sample the canvas as a window ``[y0, x0, y1, x1]`` in source-image coordinates."""
    apply = _uniform() < config.zoom_out_probability
    ratio = tf.where(apply, _uniform((), 1.0, config.zoom_out_max), 1.0)
    offset = _uniform((2,)) * (ratio - 1.0)
    start = -offset
    return tf.concat([start, start + ratio], axis=0)


def sample_patch(boxes, config: AugmentConfig, mode=None):
    """Choose a crop patch ``[y0, x0, y1, x1]`` in canvas coordinates.

    Args:
        boxes: float32 (G, 4) ground truth in canvas coordinates; G may be 0.
        config: the augmentation settings.
        mode: 0 whole image, 1 to len(min_ious) the IoU bound min_ious[mode - 1],
            len(min_ious) + 1 a random patch; None draws it uniformly.

    Returns:
        the patch, float32 (4,); the whole canvas when the chosen mode is "whole
        image" or no sampled patch meets the mode's IoU bound.
    """
    whole = tf.constant([0.0, 0.0, 1.0, 1.0])
    if not config.crop:
        return whole
    trials = config.crop_trials
    num_modes = len(config.min_ious) + 2
    if mode is None:
        mode = tf.random.uniform((), 0, num_modes, dtype=tf.int32)

    # Candidate patches: area in [min_patch_area, 1], aspect ratio in [1/max, max].
    area = _uniform((trials,), config.min_patch_area, 1.0)
    log_aspect = tf.math.log(config.max_patch_aspect)
    aspect = tf.exp(_uniform((trials,), -log_aspect, log_aspect))
    height = tf.minimum(tf.sqrt(area / aspect), 1.0)
    width = tf.minimum(tf.sqrt(area * aspect), 1.0)
    y0 = _uniform((trials,)) * (1.0 - height)
    x0 = _uniform((trials,)) * (1.0 - width)
    patches = tf.stack([y0, x0, y0 + height, x0 + width], axis=-1)

    # A constrained patch overlaps some object by the bound and contains its center.
    bounds = tf.constant((-1.0,) + config.min_ious + (-1.0,))
    min_iou = bounds[mode]
    iou = iou_matrix(patches, boxes)  # (T, G)
    centers = (boxes[:, :2] + boxes[:, 2:]) / 2
    inside = tf.reduce_all(
        (centers[None, :, :] > patches[:, None, :2]) & (centers[None, :, :] < patches[:, None, 2:]),
        axis=-1,
    )
    satisfied = tf.reduce_any((iou >= min_iou) & inside, axis=-1)
    is_random_patch = tf.equal(mode, num_modes - 1)
    valid = tf.logical_or(satisfied, is_random_patch)
    first_valid = tf.argmax(tf.cast(valid, tf.int32), output_type=tf.int32)
    use_patch = tf.logical_and(mode > 0, tf.reduce_any(valid))
    return tf.where(use_patch, patches[first_valid], whole)


def boxes_in_window(boxes, window):
    """Express boxes in the coordinates of ``window``; keep those whose center lies inside.

    Args:
        boxes: float32 (G, 4) in the window's parent coordinates.
        window: float32 (4,) ``[y0, x0, y1, x1]`` in the same coordinates.

    Returns:
        (new_boxes (K, 4) clipped to [0, 1], keep (G,) bool mask).
    """
    size = window[2:] - window[:2]
    centers = (boxes[:, :2] + boxes[:, 2:]) / 2
    keep = tf.reduce_all((centers > window[:2]) & (centers < window[2:]), axis=-1)
    origin = tf.tile(window[:2], [2])
    scale = tf.tile(size, [2])
    moved = tf.clip_by_value((tf.boolean_mask(boxes, keep) - origin) / scale, 0.0, 1.0)
    non_empty = (moved[:, 2] > moved[:, 0]) & (moved[:, 3] > moved[:, 1])
    keep = tf.tensor_scatter_nd_update(keep, tf.where(keep), non_empty)
    return tf.boolean_mask(moved, non_empty), keep


def photometric_distortion(image):
    """Randomly change brightness, contrast, saturation and hue of a float image in [0, 255]."""
    image = image / 255.0

    def maybe(fn, image):
        return tf.cond(_uniform() < 0.5, lambda: fn(image), lambda: image)

    image = maybe(lambda x: tf.image.random_brightness(x, 32.0 / 255.0), image)
    image = maybe(lambda x: tf.image.random_contrast(x, 0.5, 1.5), image)
    image = maybe(lambda x: tf.image.random_saturation(tf.clip_by_value(x, 0, 1), 0.5, 1.5), image)
    image = maybe(lambda x: tf.image.random_hue(tf.clip_by_value(x, 0, 1), 0.05), image)
    return tf.clip_by_value(image, 0.0, 1.0) * 255.0


def flip_horizontally(image, boxes):
    """Mirror an image (H, W, 3) and its boxes (G, 4)."""
    flipped = tf.stack([boxes[:, 0], 1.0 - boxes[:, 3], boxes[:, 2], 1.0 - boxes[:, 1]], axis=-1)
    return tf.reverse(image, axis=[1]), flipped


def augment(image, boxes, labels, output_size, config: AugmentConfig = AugmentConfig(), crop_mode=None):
    """Augment one sample and resize it to the network input.

    Args:
        image: uint8 (H, W, 3) RGB.
        boxes: float32 (G, 4) normalized corners; G may be 0.
        labels: int32 (G,).
        output_size: (height, width) of the network input.
        config: the augmentation settings.
        crop_mode: the crop of :func:`sample_patch` (0 whole image, then the IoU
            bounds, then a random patch); None draws it, as training does.

    Returns:
        image float32 (height, width, 3) in [0, 255], boxes (K, 4), labels (K,),
        with K <= G boxes whose centers stayed inside the crop.
    """
    boxes = tf.reshape(tf.cast(boxes, tf.float32), [-1, 4])
    canvas = zoom_out_canvas(config)
    canvas_boxes, _ = boxes_in_window(boxes, canvas)  # every box stays because the canvas contains the whole image
    patch = sample_patch(canvas_boxes, config, crop_mode)
    new_boxes, keep = boxes_in_window(canvas_boxes, patch)
    new_labels = tf.boolean_mask(labels, keep)

    # The patch in source-image coordinates: one crop_and_resize does zoom-out, crop and resize.
    canvas_size = canvas[2:] - canvas[:2]
    window = tf.concat([canvas[:2] + patch[:2] * canvas_size, canvas[:2] + patch[2:] * canvas_size], 0)
    pixels = tf.cast(image, tf.float32)
    mean = tf.reduce_mean(pixels, axis=[0, 1])
    resized = tf.image.crop_and_resize(
        (pixels - mean)[None], window[None], [0], output_size, extrapolation_value=0.0
    )[0] + mean

    if config.photometric:
        resized = photometric_distortion(resized)
    if config.flip_probability > 0:
        resized, new_boxes = tf.cond(
            _uniform() < config.flip_probability,
            lambda: flip_horizontally(resized, new_boxes),
            lambda: (resized, new_boxes),
        )
    resized = tf.ensure_shape(resized, (*output_size, 3))
    return resized, new_boxes, new_labels


def resize_for_model(image, output_size):
    """Resize without augmentation, as the inference pre-processing does (bilinear, half-pixel)."""
    resized = tf.image.resize(tf.cast(image, tf.float32), output_size, method="bilinear")
    return tf.ensure_shape(resized, (*output_size, 3))
