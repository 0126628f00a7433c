"""The region CNN of R-CNN: a small classifier of warped regions, trained from scratch.

R-CNN fine-tunes an ImageNet network on warped proposals; nothing is downloaded here,
so a small residual network learns from the dataset's own regions instead. Its
penultimate layer (``features``, after global pooling and a dense layer) describes a
region for the SVMs. Input: uint8-range float (N, S, S, 3) RGB in [0, 255].
Output: (N, C + 1) class probabilities, column 0 the background.
"""

from __future__ import annotations

import keras
from keras import layers

from dl09_keras.models.backbones import conv_bn, residual_block

FEATURES_LAYER = "features"


def build_region_cnn(num_classes: int, size: int = 64, width: int = 16, feature_dim: int = 256) -> keras.Model:
    """Region classifier: three residual stages (strides 2, 4, 8), pooling, features, softmax.

    Args:
        num_classes: object classes; the output has one more column, the background.
        size: side of the warped regions in pixels.
        width: channels of the first stage, doubled at each stage.
        feature_dim: length of the feature vector given to the SVMs.
    """
    if size < 32:
        raise ValueError(f"Invalid region size {size}: use at least 32 pixels.")
    inputs = keras.Input((size, size, 3), name="regions")
    x = layers.RandomFlip("horizontal", name="flip")(inputs)  # active in training only
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="scale")(x)
    x = conv_bn(x, width, 3, 2, name="stem")
    for stage, filters in enumerate((width, 2 * width, 4 * width)):
        x = residual_block(x, filters, strides=1 if stage == 0 else 2, name=f"stage{stage}")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    features = layers.Dense(feature_dim, activation="relu", name=FEATURES_LAYER)(x)
    x = layers.Dropout(0.3, name="dropout")(features)
    outputs = layers.Dense(num_classes + 1, activation="softmax", name="classes")(x)
    return keras.Model(inputs, outputs, name="region_cnn")


def feature_model(region_cnn: keras.Model) -> keras.Model:
    """Cut the network at its penultimate layer: regions -> features (N, feature_dim)."""
    return keras.Model(region_cnn.input, region_cnn.get_layer(FEATURES_LAYER).output, name="region_features")


def feature_function(region_cnn: keras.Model):
    """Compiled inference function regions (N, S, S, 3) -> features (N, feature_dim).

    It passes ``training=False``: Keras' augmentation layers such as RandomFlip default to
    training mode when called without it, and would flip regions at random.
    """
    import tensorflow as tf

    features = feature_model(region_cnn)
    return tf.function(lambda regions: features(regions, training=False), reduce_retracing=True)
