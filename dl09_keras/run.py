"""The run folder: everything a later stage needs, so export and detect take only its path.

Layout::

    RUN_DIR/
      model.keras          training model (raw head outputs), reloads in safe mode
      saved_model/         inference graph (image -> scores, boxes) from model.export
      metadata.json        classes, input size, preprocessing, default boxes, command, metrics
      history.csv          one row of losses and metrics per epoch
      training_curves.png  the losses and the validation mAP of history.csv, drawn at the end
      logs/                TensorBoard event files
      checkpoints/         last.keras after every epoch
      backup/              training state after the last completed epoch, while a run is unfinished
      evaluation.json      written by ``dl09 evaluate``
      plots/               written by ``dl09 evaluate --plots``
      model.onnx, model_fp32.tflite, model_fp16.tflite, model_int8.tflite, parity.json
                           written by ``python -m export``

Training writes each of its files here atomically (see :mod:`dl09_keras.atomic`)
and saves model.keras last, so model.keras exists only in a finished run.
NOTE: logs/ is the exception. TensorBoard appends to its event files, so a
killed run can leave a cut last record there, which TensorBoard skips.
"""

from __future__ import annotations

import json
import os
from typing import Any

import keras

from dl09_keras.anchors import DefaultBoxConfig
from dl09_keras.atomic import write_json
from dl09_keras.models.ssd import SSDConfig, build_inference_model

METADATA_VERSION = 1

# The image preparation every runtime must apply, recorded in metadata.json for other tools.
PREPROCESSING = {
    "color_order": "RGB",
    "resize": "stretch to the input size, bilinear, without keeping the aspect ratio",
    "input_dtype": "float32",
    "input_range": [0.0, 255.0],
    "input_layout": "NHWC",
    "note": "the model scales to [-1, 1] itself",
}


class RunFolder:
    """Paths of a run folder and its metadata."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def model_path(self) -> str:
        return self.file("model.keras")

    @property
    def saved_model_path(self) -> str:
        return self.file("saved_model")

    @property
    def metadata_path(self) -> str:
        return self.file("metadata.json")

    def exists(self) -> bool:
        return os.path.isfile(self.metadata_path)

    def read_metadata(self) -> dict[str, Any]:
        if not self.exists():
            raise FileNotFoundError(
                f"No metadata.json in {self.path}: pass the folder a training run wrote "
                "(train.py prints it when it ends)."
            )
        with open(self.metadata_path, encoding="utf-8") as f:
            metadata = json.load(f)
        version = metadata.get("format_version")
        if version != METADATA_VERSION:
            raise ValueError(
                f"{self.metadata_path} has format_version={version!r}; this version of dl09 "
                f"reads {METADATA_VERSION}."
            )
        return metadata

    def write_metadata(self, metadata: dict[str, Any]):
        """Replace metadata.json atomically, creating the run folder if needed."""
        write_json(self.metadata_path, metadata)

    def update_metadata(self, **entries):
        metadata = self.read_metadata()
        metadata.update(entries)
        self.write_metadata(metadata)
        return metadata

    def ssd_config(self) -> SSDConfig:
        return SSDConfig.from_dict(self.read_metadata()["model"])

    def class_names(self) -> list[str]:
        """Return the names of the labels the run's detector outputs: the dataset's classes, or "object" for an RPN."""
        metadata = self.read_metadata()
        if metadata.get("task") == "rpn":
            return ["object"]
        return list(metadata["class_names"])

    def load_training_model(self) -> keras.Model:
        """Load model.keras in safe mode (the custom objects are registered by dl09_keras)."""
        if not os.path.isfile(self.model_path):
            raise FileNotFoundError(f"{self.model_path} not found: the training run did not finish.")
        return keras.saving.load_model(self.model_path, safe_mode=True)

    def load_inference_model(self) -> keras.Model:
        """Build the inference model (image -> scores, boxes) of the run's detector from model.keras."""
        metadata = self.read_metadata()
        task = metadata.get("task", "ssd")
        if task in ("rpn", "faster_rcnn"):
            from dl09_keras.models.faster_rcnn import FasterRCNNConfig
            from dl09_keras.models.faster_rcnn import build_inference_model as build_two_stage_inference

            return build_two_stage_inference(self.load_training_model(), FasterRCNNConfig.from_dict(metadata["model"]))
        box_config = DefaultBoxConfig.from_dict(metadata["model"]["box_config"])
        return build_inference_model(self.load_training_model(), box_config)
