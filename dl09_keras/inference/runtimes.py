"""One interface over the runtimes that execute a trained detector.

Every runtime takes the same input, float32 (B, H, W, 3) RGB in [0, 255], and
returns the same outputs as NumPy arrays: scores (B, A, C + 1) and normalized
corner boxes (B, A, 4). Pre- and post-processing live outside, in
:mod:`dl09_keras.inference.detector` and :mod:`dl09_keras.inference.postprocess`.
"""

from __future__ import annotations

import logging
import os

import numpy as np

logger = logging.getLogger(__name__)

RUNTIMES = ("keras", "savedmodel", "onnxruntime", "opencv", "tflite")
TFLITE_VARIANTS = ("fp32", "fp16", "int8")


class Runtime:
    """Base class: ``runtime(batch) -> (scores, boxes)``."""

    name = "runtime"

    def __init__(self, input_size):
        self.input_size = tuple(int(v) for v in input_size)

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _check(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, np.float32)
        if batch.ndim != 4 or batch.shape[1:] != (*self.input_size, 3):
            raise ValueError(
                f"{self.name}: invalid input shape {batch.shape}, expected (B, {self.input_size[0]}, "
                f"{self.input_size[1]}, 3); resize with Detector.preprocess."
            )
        return batch


class KerasRuntime(Runtime):
    """A Keras inference model called through one compiled ``tf.function``.

    The function has a fixed input signature, so it is traced once; calling the
    eager model per frame would be several times slower.
    """

    name = "keras"

    def __init__(self, inference_model):
        import tensorflow as tf

        super().__init__(inference_model.input.shape[1:3])
        self.model = inference_model
        signature = tf.TensorSpec((None, *self.input_size, 3), tf.float32)
        self._function = tf.function(lambda x: inference_model(x, training=False), input_signature=[signature])

    def __call__(self, batch):
        outputs = self._function(self._check(batch))
        return outputs["scores"].numpy(), outputs["boxes"].numpy()


class SavedModelRuntime(Runtime):
    """The run's TensorFlow SavedModel (``saved_model/``, written by train.py), called through ``serve``.

    It needs TensorFlow but not Keras or this package's layers: the graph is stored whole.
    """

    name = "savedmodel"

    def __init__(self, path, input_size):
        import tensorflow as tf

        super().__init__(input_size)
        self.module = tf.saved_model.load(path)
        self._function = self.module.serve

    def __call__(self, batch):
        outputs = self._function(self._check(batch))
        if isinstance(outputs, dict):
            return outputs["scores"].numpy(), outputs["boxes"].numpy()
        scores, boxes = outputs
        return scores.numpy(), boxes.numpy()


class OnnxRuntime(Runtime):
    """ONNX Runtime on the CPU."""

    name = "onnxruntime"

    def __init__(self, model_path, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
        input_meta = self.session.get_inputs()[0]
        super().__init__(input_meta.shape[1:3])
        self.input_name = input_meta.name

    def __call__(self, batch):
        scores, boxes = self.session.run(["scores", "boxes"], {self.input_name: self._check(batch)})
        return scores, boxes


class OpenCVRuntime(Runtime):
    """OpenCV DNN reading the ONNX file (needs OpenCV 5.1 or newer for tf2onnx graphs)."""

    name = "opencv"

    def __init__(self, model_path, input_size):
        import cv2

        super().__init__(input_size)
        self.net = cv2.dnn.readNetFromONNX(model_path)
        self.net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        self.net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)

    def __call__(self, batch):
        self.net.setInput(self._check(batch))
        scores, boxes = self.net.forward(["scores", "boxes"])
        return np.asarray(scores), np.asarray(boxes)


class LiteRTRuntime(Runtime):
    """LiteRT (TensorFlow Lite) through ``ai_edge_litert``; batch size 1 per call."""

    name = "tflite"

    def __init__(self, model_path, threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=model_path, num_threads=threads)
        self.runner = self.interpreter.get_signature_runner()
        input_details = self.runner.get_input_details()
        (self.input_name, detail), = input_details.items()
        super().__init__(detail["shape"][1:3])

    def __call__(self, batch):
        batch = self._check(batch)
        scores, boxes = [], []
        for image in batch:
            outputs = self.runner(**{self.input_name: image[None]})
            scores.append(outputs["scores"])
            boxes.append(outputs["boxes"])
        return np.concatenate(scores), np.concatenate(boxes)


def tflite_path(run_dir: str, variant: str = "fp32") -> str:
    if variant not in TFLITE_VARIANTS:
        raise ValueError(f"Unknown TFLite variant {variant!r}: choose one of {TFLITE_VARIANTS}.")
    return os.path.join(run_dir, f"model_{variant}.tflite")


def open_runtime(run_dir: str, name: str = "onnxruntime", tflite_variant: str = "fp32", threads: int | None = None) -> Runtime:
    """Open the runtime ``name`` on the files of a run folder.

    Args:
        run_dir: a run folder; ONNX and TFLite files come from ``python -m export``.
        name: one of ``RUNTIMES``.
        tflite_variant: "fp32", "fp16" or "int8", for the tflite runtime.
        threads: CPU threads for ONNX Runtime and LiteRT; None lets them choose.
    """
    from dl09_keras.run import RunFolder

    run = RunFolder(run_dir)
    metadata = run.read_metadata()
    if name == "keras":
        return KerasRuntime(run.load_inference_model())
    if name == "savedmodel":
        if not os.path.isfile(os.path.join(run.saved_model_path, "saved_model.pb")):
            raise FileNotFoundError(f"{run.saved_model_path} not found: train.py writes it when a run finishes.")
        return SavedModelRuntime(run.saved_model_path, metadata["input_size"])
    if name in ("onnxruntime", "opencv"):
        path = run.file("model.onnx")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found: run `python -m export {run_dir} --to onnx` first.")
        if name == "onnxruntime":
            return OnnxRuntime(path, threads)
        return OpenCVRuntime(path, metadata["model"]["input_size"])
    if name == "tflite":
        path = tflite_path(run.path, tflite_variant)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found: run `python -m export {run_dir} --to tflite` first.")
        return LiteRTRuntime(path, threads)
    raise ValueError(f"Unknown runtime {name!r}: choose one of {', '.join(RUNTIMES)}.")
