"""Export of ProposalLayer and ROIMaxPooling to ONNX and TFLite, run in every runtime.

The tiny model has the shape of a Faster R-CNN: a stride-8 feature map, RPN
objectness and offsets, proposals, ROI max-pooling and a dense head. It is
exported as ``python -m export`` exports a run (tf2onnx ``from_function`` at
``ONNX_OPSET``, and TFLite from a ``model.export`` SavedModel). Then ONNX Runtime,
OpenCV DNN and LiteRT run it on two random images and must match Keras.

NOTE: the runtimes differ from Keras by about 1e-7. A different input could put
two scores, an IoU at 0.7 or a scaled roi edge at .5 within that distance, and
then a runtime may order, suppress or pool differently. On this input the
nearest roi edge is about 1e-3 away from .5.
"""

import numpy as np
import pytest
import tensorflow as tf
import keras

from dl09_keras.anchors import RPNAnchorConfig
from dl09_keras.layers import ProposalLayer, ROIMaxPooling
from export.convert import ONNX_OPSET

INPUT_SIZE = (64, 96)
FEATURE_SHAPE = (8, 12)
CHANNELS = 16
TOP_N = (64, 16)
OUTPUTS = ("objectness", "proposals", "scores", "logits")
TOLERANCE = 1e-4


def build_model():
    """Build image (B, 64, 96, 3) -> objectness (B, 864), proposals (B, 16, 4), scores (B, 16), logits (B, 16, 5)."""
    keras.utils.set_random_seed(0)
    # Anchors of 0.25 to 1 times the input side, 8 px apart, and small offsets
    # make neighbouring proposals overlap above IoU 0.7, so NMS has work to do.
    anchor_config = RPNAnchorConfig(sizes=(0.25, 0.5, 1.0))
    proposal_layer = ProposalLayer(
        FEATURE_SHAPE, INPUT_SIZE, anchor_config=anchor_config, test_top_n=TOP_N, nms_rounds=TOP_N[0] - 1
    )
    num_anchors = len(proposal_layer.anchors)
    per_cell = proposal_layer.anchor_config.anchors_per_location

    image = keras.Input((*INPUT_SIZE, 3), name="image")
    features = keras.layers.Conv2D(CHANNELS, 3, strides=8, padding="same", activation="relu")(image)
    objectness = keras.layers.Conv2D(per_cell, 1, activation="sigmoid")(features)
    objectness = keras.layers.Reshape((num_anchors,))(objectness)
    deltas = keras.layers.Conv2D(4 * per_cell, 1, kernel_initializer=keras.initializers.RandomNormal(stddev=0.05))(features)
    deltas = keras.layers.Reshape((num_anchors, 4))(deltas)

    proposals, scores = proposal_layer(objectness, deltas)
    pooled = ROIMaxPooling(7)(features, proposals)
    pooled = keras.layers.Reshape((TOP_N[1], 7 * 7 * CHANNELS))(pooled)
    logits = keras.layers.Dense(5)(pooled)
    outputs = {"objectness": objectness, "proposals": proposals, "scores": scores, "logits": logits}
    return keras.Model(image, outputs)


def serving_function(model):
    """Wrap the model as export/convert.py does, with named outputs."""
    signature = [tf.TensorSpec((None, *INPUT_SIZE, 3), tf.float32, name="image")]

    @tf.function(input_signature=signature)
    def serve(image):
        outputs = model(image, training=False)
        return {name: tf.identity(outputs[name], name=name) for name in OUTPUTS}

    return serve


def export_onnx(model, path):
    import tf2onnx

    serve = serving_function(model)
    tf2onnx.convert.from_function(serve, input_signature=serve.input_signature, opset=ONNX_OPSET, output_path=path)


def export_tflite(model, saved_model_dir, path):
    model.export(saved_model_dir, format="tf_saved_model", verbose=False)
    # The converter allows only built-in TFLite ops by default, so no Flex op can slip in.
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
    with open(path, "wb") as f:
        f.write(converter.convert())


def run_onnxruntime(path, image):
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return dict(zip(OUTPUTS, session.run(list(OUTPUTS), {"image": image})))


def run_opencv(path, image):
    import cv2

    net = cv2.dnn.readNetFromONNX(path)
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    net.setInput(image)
    return dict(zip(OUTPUTS, (np.asarray(v) for v in net.forward(list(OUTPUTS)))))


def run_litert(path, image):
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=path).get_signature_runner()
    (input_name,) = runner.get_input_details()
    # One image per call, as dl09_keras.inference.runtimes.LiteRTRuntime runs it.
    outputs = [runner(**{input_name: single[None]}) for single in image]
    return {name: np.concatenate([output[name] for output in outputs]) for name in OUTPUTS}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The Keras outputs on two random images and the paths of the ONNX and TFLite files."""
    folder = tmp_path_factory.mktemp("rpn_export")
    model = build_model()
    image = np.random.default_rng(0).uniform(0, 1, (2, *INPUT_SIZE, 3)).astype(np.float32)
    expected = {name: value.numpy() for name, value in model(image, training=False).items()}

    onnx_path = str(folder / "model.onnx")
    tflite_path = str(folder / "model.tflite")
    export_onnx(model, onnx_path)
    export_tflite(model, str(folder / "saved_model"), tflite_path)
    return image, expected, onnx_path, tflite_path


def test_keras_outputs_exercise_nms(exported):
    _, expected, _, _ = exported
    assert expected["proposals"].shape == (2, TOP_N[1], 4)
    assert expected["logits"].shape == (2, TOP_N[1], 5)
    # Every row contains a kept box, and NMS dropped some of the 16 highest-scoring
    # anchors, so the runtimes below are compared on a real suppression.
    assert np.all(expected["scores"] > 0)
    for scores, objectness in zip(expected["scores"], expected["objectness"]):
        top_objectness = np.sort(objectness)[::-1][:TOP_N[1]]
        assert not np.array_equal(scores, top_objectness)


def test_onnx_graph_has_no_loop_or_nms_op(exported):
    import onnx

    _, _, onnx_path, _ = exported
    op_types = {node.op_type for node in onnx.load(onnx_path).graph.node}
    assert not op_types & {"Loop", "If", "Scan", "NonMaxSuppression", "RoiAlign"}
    assert {"TopK", "MatMul"} <= op_types


@pytest.mark.parametrize("runtime", ["onnxruntime", "opencv", "litert"])
def test_runtime_matches_keras(exported, runtime):
    image, expected, onnx_path, tflite_path = exported
    if runtime == "onnxruntime":
        actual = run_onnxruntime(onnx_path, image)
    elif runtime == "opencv":
        actual = run_opencv(onnx_path, image)
    else:
        actual = run_litert(tflite_path, image)

    for name in OUTPUTS:
        assert actual[name].shape == expected[name].shape, name
        np.testing.assert_allclose(actual[name], expected[name], atol=TOLERANCE, rtol=0, err_msg=name)
