"""Settings of an R-CNN run, stored in its metadata.json."""

from __future__ import annotations

import dataclasses

from dl09_keras.rcnn.proposals import SelectiveSearchConfig


@dataclasses.dataclass
class RCNNConfig:
    """Settings an R-CNN run is trained and detects with.

    Args:
        num_classes: object classes.
        region_size: side in pixels of a warped region, the region CNN's input.
        context: border around each region, as a fraction of its size (R-CNN: about 0.08).
        width: channels of the region CNN's first stage.
        feature_dim: length of the feature vector the SVMs see.
        foreground_iou: a proposal with IoU >= this with a ground truth takes its class
            when the region CNN trains (R-CNN: 0.5).
        negative_iou: an SVM negative has IoU below this with every box of the class (0.3).
        regression_iou: proposals with IoU >= this with a ground truth train the box
            regression (R-CNN: 0.6).
        svm_c: penalty of the SVMs' margin violations.
        box_regression: refine each scored proposal by its class's regressor.
        nms_iou: per-class NMS threshold of the detections (R-CNN: 0.3).
        proposals: the selective-search settings.
    """

    num_classes: int
    region_size: int = 64
    context: float = 0.08
    width: int = 16
    feature_dim: int = 256
    foreground_iou: float = 0.5
    negative_iou: float = 0.3
    regression_iou: float = 0.6
    svm_c: float = 0.01
    box_regression: bool = True
    nms_iou: float = 0.3
    proposals: SelectiveSearchConfig = dataclasses.field(default_factory=SelectiveSearchConfig)

    def __post_init__(self):
        if isinstance(self.proposals, dict):
            self.proposals = SelectiveSearchConfig(**self.proposals)
        if not 0 < self.negative_iou <= self.foreground_iou <= 1:
            raise ValueError(f"Invalid IoU thresholds negative_iou={self.negative_iou}, "
                             f"foreground_iou={self.foreground_iou}: need 0 < negative <= foreground <= 1.")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "RCNNConfig":
        return cls(**values)
