"""Detector builders: the SSD and its backbones."""

from dl09_keras.models.ssd import (
    SSDConfig,
    build_inference_model,
    build_ssd,
    feature_shapes,
)

__all__ = ["SSDConfig", "build_inference_model", "build_ssd", "feature_shapes"]
