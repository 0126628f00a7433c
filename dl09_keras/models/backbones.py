"""Backbones that produce the SSD's feature maps, trained from scratch.

Each builder takes the preprocessed input tensor and returns a list of feature
maps of falling resolution, at strides 8, 16, 32, 64 and 128 of the input.
No builder loads pretrained weights: nothing is downloaded.
"""

from __future__ import annotations

import keras
from keras import layers

from dl09_keras.training_args import BACKBONES


@keras.saving.register_keras_serializable(package="dl09")
class FusedBatchNormalization(layers.BatchNormalization):
    """Batch normalization whose training step runs TensorFlow's fused kernel.

    Keras 3 computes a training-mode batch norm from separate moments, multiply and
    add ops, and their gradients (Tile, Mul, Sum) took about 16% of the SSD's training
    op time on a CPU. ``FusedBatchNormV3`` computes the same function in one op per
    direction. The layer, its weights and its inference path are those of
    ``keras.layers.BatchNormalization``. Inputs that the fused kernel does not take
    (not rank 4 NHWC, not float32, a mask, renorm, synchronized statistics) go
    through the Keras computation.
    """

    def _fusable(self, inputs, training, mask) -> bool:
        return (bool(training) and self.trainable and mask is None and not self.renorm and not self.synchronized
                and len(inputs.shape) == 4 and self.axis in (-1, 3) and inputs.dtype == "float32")

    def call(self, inputs, training=None, mask=None):
        import tensorflow as tf

        if not self._fusable(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        channels = inputs.shape[-1]
        scale = self.gamma if self.scale else tf.ones((channels,), inputs.dtype)
        offset = self.beta if self.center else tf.zeros((channels,), inputs.dtype)
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            inputs, scale, offset, epsilon=self.epsilon, data_format="NHWC", is_training=True
        )
        # The kernel returns the unbiased variance, n / (n - 1) times the batch's; Keras tracks the biased one.
        count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:-1]), inputs.dtype)
        variance = variance * (count - 1.0) / tf.maximum(count, 2.0)
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return outputs


def batch_norm(name: str) -> layers.BatchNormalization:
    """Return a batch normalization layer, synchronized across replicas when built under a multi-replica strategy.

    With a global batch split over N replicas, each replica's batch statistics would
    come from 1/N of the batch. Synchronized statistics keep the single-device step.
    On one replica the layer is a :class:`FusedBatchNormalization`.
    """
    import tensorflow as tf

    if tf.distribute.get_strategy().num_replicas_in_sync > 1:
        return layers.BatchNormalization(name=name, synchronized=True)
    return FusedBatchNormalization(name=name)


def conv_bn(x, filters, kernel_size=3, strides=1, name=None):
    """Convolution without bias, batch normalization and ReLU."""
    x = layers.Conv2D(
        filters, kernel_size, strides=strides, padding="same", use_bias=False, name=f"{name}_conv"
    )(x)
    x = batch_norm(f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def residual_block(x, filters, strides=1, name=None):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut."""
    shortcut = x
    y = conv_bn(x, filters, 3, strides, name=f"{name}_a")
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_b_conv")(y)
    y = batch_norm(f"{name}_b_bn")(y)
    if strides != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv2D(
            filters, 1, strides=strides, use_bias=False, name=f"{name}_proj_conv"
        )(x)
        shortcut = batch_norm(f"{name}_proj_bn")(shortcut)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.ReLU(name=f"{name}_out")(y)


def extra_feature_maps(x, filters, count, name="extra"):
    """Append ``count`` maps, each halving the resolution (SSD's extra layers)."""
    maps = []
    for i in range(count):
        x = conv_bn(x, filters // 2, 1, 1, name=f"{name}{i + 1}_reduce")
        x = conv_bn(x, filters, 3, 2, name=f"{name}{i + 1}_down")
        maps.append(x)
    return maps


def resnet_backbone(x, width=1.0, num_maps=5):
    """Build a small residual network: stem at stride 4, stages at strides 8, 16 and 32.

    Args:
        x: input tensor (B, H, W, 3), already scaled.
        width: multiplier of every channel count. Default 1.0 (32 to 256 channels).
        num_maps: feature maps returned, 4 or more; maps past stride 32 come from
            extra layers. Default 5.
    """
    channels = [max(8, int(round(c * width))) for c in (32, 64, 128, 256)]
    x = conv_bn(x, channels[0] // 2, 3, 2, name="stem1")
    x = conv_bn(x, channels[0], 3, 2, name="stem2")
    x = residual_block(x, channels[0], name="stage1_block1")

    maps = []
    for stage, filters in enumerate(channels[1:], start=2):
        x = residual_block(x, filters, strides=2, name=f"stage{stage}_block1")
        x = residual_block(x, filters, name=f"stage{stage}_block2")
        maps.append(x)
    maps += extra_feature_maps(x, channels[-1], num_maps - len(maps))
    return maps[:num_maps]


def mobilenetv2_backbone(x, width=1.0, num_maps=5):
    """Keras' MobileNetV2 with random weights, cut at strides 8, 16 and 32."""
    base = keras.applications.MobileNetV2(
        input_tensor=x, include_top=False, weights=None, alpha=width
    )
    names = ("block_6_expand_relu", "block_13_expand_relu", "out_relu")
    maps = [base.get_layer(name).output for name in names]
    maps += extra_feature_maps(maps[-1], 256, num_maps - len(maps))
    return maps[:num_maps]


def build_backbone(name, x, width=1.0, num_maps=5):
    """Build the backbone called ``name`` on input tensor ``x``; return its feature maps."""
    if num_maps < 4:
        raise ValueError(f"Invalid num_maps={num_maps}: the SSD uses at least 4 feature maps.")
    if name == "resnet":
        return resnet_backbone(x, width, num_maps)
    if name == "mobilenetv2":
        return mobilenetv2_backbone(x, width, num_maps)
    raise ValueError(f"Unknown backbone {name!r}: choose one of {', '.join(BACKBONES)}.")
