"""ONNX (tf2onnx) and TFLite (fp32, fp16, int8) conversion of a run's inference model.

Both formats take ``image`` float32 (B, H, W, 3) RGB in [0, 255] and return
``scores`` (B, A, C + 1) and ``boxes`` (B, A, 4), as the Keras model does.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import tensorflow as tf

from dl09_keras.atomic import atomic_path
from dl09_keras.run import RunFolder

logger = logging.getLogger(__name__)

ONNX_OPSET = 17


def serving_function(inference_model):
    """Wrap the Keras inference model in a tf.function with named inputs and outputs."""
    height, width = inference_model.input.shape[1:3]
    signature = [tf.TensorSpec((None, height, width, 3), tf.float32, name="image")]

    @tf.function(input_signature=signature)
    def serve(image):
        outputs = inference_model(image, training=False)
        return {
            "scores": tf.identity(outputs["scores"], name="scores"),
            "boxes": tf.identity(outputs["boxes"], name="boxes"),
        }

    return serve


def export_onnx(run: RunFolder, inference_model=None) -> str:
    """Write ``model.onnx`` with tf2onnx (opset 17); return its path."""
    import tf2onnx

    inference_model = inference_model or run.load_inference_model()
    serve = serving_function(inference_model)
    path = run.file("model.onnx")
    start = time.monotonic()
    with atomic_path(path) as temporary:
        tf2onnx.convert.from_function(
            serve, input_signature=serve.input_signature, opset=ONNX_OPSET, output_path=temporary
        )
    logger.info("Wrote %s in %.1f s", path, time.monotonic() - start)
    return path


def representative_images(run: RunFolder, count: int = 100):
    """Yield up to ``count`` training images, preprocessed like every runtime's input.

    int8 calibration needs the input range of real use, so it reads the run's
    own training split, without augmentation.
    """
    from dl09_keras.data import load_dataset
    from dl09_keras.inference import Detector, Runtime

    metadata = run.read_metadata()
    data = metadata["data"]
    dataset = load_dataset(data["source"], data["train_split"], metadata["class_names"])
    preprocess = Detector(Runtime(metadata["input_size"]), dataset.class_names).preprocess
    rng = np.random.default_rng(0)
    indices = rng.permutation(len(dataset))[:count]
    for index in indices:
        sample = dataset.samples[int(index)]
        if sample.image is not None:
            import cv2

            image = cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR)
        else:
            from dl09_keras.inference import read_image_bgr

            image = read_image_bgr(sample.path)
        yield preprocess(image)


def export_tflite(run: RunFolder, variants=("fp32", "fp16", "int8"), calibration_images: int = 100) -> list[str]:
    """Convert ``saved_model/`` to TFLite files; return their paths.

    Variants: ``fp32`` (plain), ``fp16`` (weights stored as float16), and
    ``int8`` (weights and activations quantized with the run's training images
    as representative data). The int8 model keeps float32 input and outputs,
    and ops without an int8 kernel fall back to float.
    """
    if not os.path.isdir(run.saved_model_path):
        raise FileNotFoundError(f"{run.saved_model_path} not found: the training run did not finish.")
    paths = []
    for variant in variants:
        converter = tf.lite.TFLiteConverter.from_saved_model(run.saved_model_path)
        if variant == "fp16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif variant == "int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            images = list(representative_images(run, calibration_images))
            converter.representative_dataset = lambda: ([image] for image in images)
        elif variant != "fp32":
            raise ValueError(f"Unknown TFLite variant {variant!r}: choose fp32, fp16 or int8.")
        start = time.monotonic()
        flatbuffer = converter.convert()
        path = run.file(f"model_{variant}.tflite")
        with atomic_path(path) as temporary, open(temporary, "wb") as f:
            f.write(flatbuffer)
        logger.info("Wrote %s (%.1f MB) in %.1f s", path, len(flatbuffer) / 1e6, time.monotonic() - start)
        paths.append(path)
    return paths
