"""Custom Keras layers of the detectors."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from dl09_keras.anchors import DefaultBoxConfig, default_boxes
from dl09_keras.boxes import decode_boxes


@keras.saving.register_keras_serializable(package="dl09")
class DecodeDetections(keras.layers.Layer):
    """Turn raw SSD head outputs into class probabilities and corner boxes.

    The layer rebuilds its default boxes from the feature-map shapes, the input
    size and the default-box settings, so its config stays small and a reloaded
    model decodes exactly as the saved one. It does no NMS, so the exported graph
    runs in every runtime (NMS lives in :mod:`dl09_keras.inference.postprocess`).

    Args:
        feature_shapes: (height, width) of each feature map, highest resolution first.
        image_size: (height, width) of the network input in pixels.
        box_config: a :class:`DefaultBoxConfig` or its dict.

    Call:
        raw: (B, A, 4 + C + 1) offsets then class logits.

    Returns:
        scores: (B, A, C + 1) softmax probabilities, column 0 the background.
        boxes: (B, A, 4) normalized ``[ymin, xmin, ymax, xmax]``, not clipped.
    """

    def __init__(self, feature_shapes, image_size, box_config=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(box_config, dict):
            box_config = DefaultBoxConfig.from_dict(box_config)
        self.box_config = box_config or DefaultBoxConfig()
        self.feature_shapes = [tuple(int(v) for v in shape) for shape in feature_shapes]
        self.image_size = tuple(int(v) for v in image_size)
        self._default_boxes = default_boxes(self.feature_shapes, self.image_size, self.box_config)

    @property
    def default_boxes(self) -> np.ndarray:
        return self._default_boxes

    def call(self, raw):
        raw = tf.cast(raw, tf.float32)
        boxes = decode_boxes(raw[..., :4], tf.constant(self._default_boxes), self.box_config.variances)
        scores = tf.nn.softmax(raw[..., 4:], axis=-1)
        return scores, boxes

    def compute_output_shape(self, input_shape):
        batch, num_boxes, channels = input_shape
        return (batch, num_boxes, channels - 4), (batch, num_boxes, 4)

    def get_config(self):
        config = super().get_config()
        config.update(
            feature_shapes=[list(shape) for shape in self.feature_shapes],
            image_size=list(self.image_size),
            box_config=self.box_config.to_dict(),
        )
        return config
