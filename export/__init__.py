"""Conversion of a trained run to ONNX and TFLite, with a parity report.

``python -m export RUN_DIR --to onnx tflite`` writes ``model.onnx``,
``model_fp32.tflite``, ``model_fp16.tflite``, ``model_int8.tflite`` and
``parity.json`` into the run folder. The exported graphs end at per-default-box
scores and decoded boxes; NMS runs in the shared post-processing, because
combined NMS needs LiteRT's Flex delegate, which is not shipped.
"""

from export.convert import export_onnx, export_tflite
from export.parity import parity_report

__all__ = ["export_onnx", "export_tflite", "parity_report"]
