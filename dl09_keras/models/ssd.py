"""The SSD detector: backbone, optional top-down neck, per-map class and box heads.

The training model maps an RGB image, float32 (B, H, W, 3) in [0, 255], to raw
predictions (B, A, 4 + C + 1): the four encoded offsets of each default box,
then its C + 1 class logits (column 4 is the background). The inference model
appends :class:`DecodeDetections` and returns scores and corner boxes.
"""

from __future__ import annotations

import dataclasses
import re

import keras
from keras import layers

from dl09_keras.anchors import DefaultBoxConfig
from dl09_keras.layers import DecodeDetections
from dl09_keras.models.backbones import BACKBONES, batch_norm, build_backbone

from dl09_keras.training_args import NECKS
_BOX_HEAD = re.compile(r"^box_head_(\d+)$")


@dataclasses.dataclass
class SSDConfig:
    """Everything needed to rebuild an SSD.

    Args:
        num_classes: object classes, background not counted.
        input_size: (height, width) of the network input. Default (320, 320).
        backbone: one of ``BACKBONES``. Default "resnet".
        width: channel multiplier of the backbone. Default 1.0.
        num_maps: feature maps with heads, 4 or more. Default 5.
        neck: "none" (the SSD of Liu et al., 2016) or "fpn" (top-down merging of
            the maps, which helps small objects). Default "none".
        neck_channels: channels of every map after the FPN neck. Default 96.
        box_config: default-box settings.
    """

    num_classes: int
    input_size: tuple[int, int] = (320, 320)
    backbone: str = "resnet"
    width: float = 1.0
    num_maps: int = 5
    neck: str = "none"
    neck_channels: int = 96
    box_config: DefaultBoxConfig = dataclasses.field(default_factory=DefaultBoxConfig)

    def __post_init__(self):
        if isinstance(self.box_config, dict):
            self.box_config = DefaultBoxConfig.from_dict(self.box_config)
        self.input_size = tuple(int(v) for v in self.input_size)
        if self.num_classes < 1:
            raise ValueError(f"Invalid num_classes={self.num_classes}: expected at least 1.")
        if len(self.input_size) != 2 or min(self.input_size) < 64:
            raise ValueError(
                f"Invalid input_size={self.input_size}: expected (height, width), each >= 64."
            )
        if self.backbone not in BACKBONES:
            raise ValueError(f"Unknown backbone {self.backbone!r}: choose one of {BACKBONES}.")
        if self.neck not in NECKS:
            raise ValueError(f"Unknown neck {self.neck!r}: choose one of {NECKS}.")

    def to_dict(self) -> dict:
        config = dataclasses.asdict(self)
        config["input_size"] = list(self.input_size)
        config["box_config"] = self.box_config.to_dict()
        return config

    @classmethod
    def from_dict(cls, config: dict) -> "SSDConfig":
        return cls(**config)


def fpn_neck(maps, channels):
    """Merge each map with the upsampled sum of all coarser ones (Lin et al., 2017)."""
    laterals = [
        layers.Conv2D(channels, 1, name=f"fpn_lateral_{k}")(m) for k, m in enumerate(maps)
    ]
    merged = [laterals[-1]]
    for k in range(len(maps) - 2, -1, -1):
        # Doubling then cropping matches the "same"-padded stride-2 shapes (ceil(n / 2)) exactly.
        # It exports to ops that ONNX Runtime, OpenCV DNN and LiteRT all run, while a Resizing
        # layer to an odd size fails ONNX shape inference.
        upsampled = layers.UpSampling2D(2, interpolation="nearest", name=f"fpn_upsample_{k}")(merged[0])
        extra_rows = upsampled.shape[1] - laterals[k].shape[1]
        extra_cols = upsampled.shape[2] - laterals[k].shape[2]
        if extra_rows or extra_cols:
            upsampled = layers.Cropping2D(((0, extra_rows), (0, extra_cols)), name=f"fpn_crop_{k}")(upsampled)
        merged.insert(0, layers.Add(name=f"fpn_add_{k}")([laterals[k], upsampled]))
    outputs = []
    for k, m in enumerate(merged):
        m = layers.Conv2D(channels, 3, padding="same", use_bias=False, name=f"fpn_smooth_{k}")(m)
        m = batch_norm(f"fpn_smooth_{k}_bn")(m)
        outputs.append(layers.ReLU(name=f"fpn_smooth_{k}_relu")(m))
    return outputs


def build_ssd(config: SSDConfig) -> keras.Model:
    """Build the training model described by ``config``.

    Returns:
        a functional model, image (B, H, W, 3) float32 in [0, 255] to raw
        predictions (B, A, 4 + num_classes + 1).
    """
    height, width = config.input_size
    image = keras.Input((height, width, 3), name="image")
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="scale_to_unit_range")(image)

    maps = build_backbone(config.backbone, x, config.width, config.num_maps)
    if config.neck == "fpn":
        maps = fpn_neck(maps, config.neck_channels)

    k = config.box_config.boxes_per_location
    num_outputs = config.num_classes + 1
    offsets, logits = [], []
    for index, feature in enumerate(maps):
        box = layers.Conv2D(k * 4, 3, padding="same", name=f"box_head_{index}")(feature)
        cls = layers.Conv2D(k * num_outputs, 3, padding="same", name=f"class_head_{index}")(feature)
        offsets.append(layers.Reshape((-1, 4), name=f"box_flat_{index}")(box))
        logits.append(layers.Reshape((-1, num_outputs), name=f"class_flat_{index}")(cls))

    offsets = layers.Concatenate(axis=1, name="offsets")(offsets)
    logits = layers.Concatenate(axis=1, name="logits")(logits)
    # The predictions are float32 even under mixed precision, for a stable loss.
    raw = layers.Concatenate(axis=-1, name="predictions", dtype="float32")([offsets, logits])
    return keras.Model(image, raw, name=f"ssd_{config.backbone}")


def feature_shapes(model: keras.Model) -> list[tuple[int, int]]:
    """Return (height, width) of each head's feature map, read from the built model."""
    shapes = {}
    for layer in model.layers:
        match = _BOX_HEAD.match(layer.name)
        if match:
            shapes[int(match.group(1))] = tuple(int(v) for v in layer.output.shape[1:3])
    if not shapes:
        raise ValueError(
            f"Model {model.name!r} has no layer named box_head_<k>: it was not built by build_ssd."
        )
    return [shapes[k] for k in sorted(shapes)]


def build_inference_model(model: keras.Model, box_config: DefaultBoxConfig) -> keras.Model:
    """Append box decoding to a training model.

    Returns:
        a model from the image to ``{"scores": (B, A, C + 1), "boxes": (B, A, 4)}``,
        with no NMS inside.
    """
    image_size = tuple(int(v) for v in model.input.shape[1:3])
    decode = DecodeDetections(feature_shapes(model), image_size, box_config, name="decode")
    scores, boxes = decode(model.output)
    return keras.Model(model.input, {"scores": scores, "boxes": boxes}, name=f"{model.name}_detector")
