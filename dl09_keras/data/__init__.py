"""Dataset readers, the synthetic shapes generator, augmentation and the tf.data pipeline."""

from dl09_keras.data.augment import AugmentConfig, augment
from dl09_keras.data.dataset import DetectionDataset, Sample
from dl09_keras.data.pipeline import sample_dataset, training_pipeline, validation_pipeline
from dl09_keras.data.shapes import generate_shapes
from dl09_keras.data.sources import SPEC_HELP, load_dataset, parse_spec

__all__ = [
    "AugmentConfig",
    "DetectionDataset",
    "SPEC_HELP",
    "Sample",
    "augment",
    "generate_shapes",
    "load_dataset",
    "parse_spec",
    "sample_dataset",
    "training_pipeline",
    "validation_pipeline",
]
