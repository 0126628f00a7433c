"""``dl09 evaluate``: mAP@0.5 of a run on a dataset split, saved into the run folder."""

from __future__ import annotations

import json
import logging
import os
import re
import time

import numpy as np

from dl09_keras.atomic import write_json
from dl09_keras.data import load_dataset
from dl09_keras.data.sources import absolute_spec, parse_spec
from dl09_keras.data.tfds import parse_tfds_path
from dl09_keras.evaluation import mean_average_precision
from dl09_keras.explain.evaluation_views import write_evaluation_plots
from dl09_keras.inference import Detector, open_runtime
from dl09_keras.inference.detector import detect_dataset
from dl09_keras.run import RunFolder

logger = logging.getLogger(__name__)

# mAP needs the low-scoring detections too, for the whole precision-recall curve.
EVALUATION_SCORE_THRESHOLD = 0.01


def evaluate_run(run_dir: str, data: str | None, split: str, runtime: str = "keras", tflite_variant: str = "fp32",
                 plots: bool = False) -> dict:
    """Evaluate a run; store the result in ``evaluation.json`` and ``metadata.json``.

    Args:
        run_dir: the run folder.
        data: dataset spec; None uses the run's training source.
        split: split to evaluate, e.g. ``test``.
        runtime: runtime that computes the detections. Default "keras".
        tflite_variant: TFLite file for the tflite runtime. Default "fp32".
        plots: also write the PR curves, the confusion table and the worst
            images as PNG files into the folder :func:`plots_folder` names
            (detector runs only). Default False.

    Returns:
        the result of :func:`dl09_keras.evaluation.mean_average_precision` with the
        data, split, runtime and image count added, and under "plots" the PNG
        paths when ``plots`` is set.

    Raises:
        ValueError: ``plots`` is set for an RPN run, which has no class detections to plot.
    """
    run = RunFolder(run_dir)
    metadata = run.read_metadata()
    if plots and metadata.get("task") == "rpn":
        raise ValueError(
            f"Run {run.path} is an RPN (task 'rpn'): --plots needs a detector run (SSD or Faster R-CNN). "
            "Evaluate this run without --plots to get its proposal recall."
        )

    data = absolute_spec(data) if data else metadata["data"]["source"]
    dataset = load_dataset(data, split, metadata["class_names"])
    runtime_name = runtime if runtime != "tflite" else f"tflite_{tflite_variant}"
    if metadata.get("task") == "rpn":
        result = _evaluate_proposals(run, dataset)
    else:
        if metadata.get("task") == "rcnn":
            from dl09_keras.rcnn.detector import RCNNDetector, detect_samples, open_cache

            if runtime != "keras":
                raise ValueError(f"Run {run.path} is an R-CNN, which runs in Keras only (its proposals and SVMs "
                                 f"are not one exported graph): drop --runtime {runtime}.")
            detector = RCNNDetector(run.path, score_threshold=EVALUATION_SCORE_THRESHOLD)
            detections, ground_truths = detect_samples(detector, dataset, open_cache(detector))
        else:
            detector = Detector(open_runtime(run.path, runtime, tflite_variant), metadata["class_names"],
                                score_threshold=EVALUATION_SCORE_THRESHOLD)
            detections, ground_truths = detect_dataset(detector, dataset)
        result = mean_average_precision(detections, ground_truths, dataset.class_names)
        if plots:
            folder = plots_folder(run, data, split, runtime_name)
            result["plots"] = write_evaluation_plots(folder, dataset.samples, detections, ground_truths,
                                                     dataset.class_names)
    result.update(data=data, split=split, runtime=runtime_name, images=len(dataset),
                  skipped=dataset.skipped, evaluated=time.strftime("%Y-%m-%dT%H:%M:%S"))

    path = run.file("evaluation.json")
    results = {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
    key = f"{data} [{split}] {runtime_name}"
    results[key] = result
    write_json(path, results)
    evaluations = metadata.get("evaluation", {})
    if "map" in result:
        evaluations[key] = {"map": result["map"], "ap": result["ap"]}
        logger.info("%s: mAP@0.5 %.4f", key, result["map"])
    else:
        evaluations[key] = {k: v for k, v in result.items() if k.startswith("recall@")}
        logger.info("%s: proposal recall %s", key, evaluations[key])
    run.update_metadata(evaluation=evaluations)
    return result


def plots_folder(run: RunFolder, data: str, split: str, runtime_name: str) -> str:
    """Return ``RUN_DIR/plots/KIND-NAME-SPLIT-RUNTIME``, e.g. ``plots/voc-bccd-test-keras``.

    NAME is the dataset folder's name, or the builder name for tfds, and is left out for shapes.
    NOTE: two datasets of the same kind in folders of the same name share a
    folder, so the plots of the later evaluation replace the earlier ones.
    """
    kind, path = parse_spec(data)
    if kind == "tfds":
        name = parse_tfds_path(path)[0]
    else:
        name = os.path.basename(os.path.normpath(path)) if path else ""
    parts = [part for part in (kind, name, split, runtime_name) if part]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(parts))
    return os.path.join(run.file("plots"), slug)


# Proposals per image for the recall of an RPN: (before NMS, after NMS).
RECALL_TOP_N = (2000, 1000)


def _evaluate_proposals(run: RunFolder, dataset) -> dict:
    """Recall of an RPN run's top 100, 300 and 1,000 proposals at IoU 0.5 and 0.7 (Keras runtime)."""
    from dl09_keras.models.faster_rcnn import FasterRCNNConfig

    config = FasterRCNNConfig.from_dict(run.read_metadata()["model"])
    return evaluate_proposals(run.load_training_model(), config, dataset)


def evaluate_proposals(model, config, dataset) -> dict:
    """Measure the proposal recall of an RPN training ``model`` on ``dataset`` (see :func:`proposal_recall`)."""
    from dl09_keras.evaluation import GroundTruth, proposal_recall
    from dl09_keras.inference import KerasRuntime, read_image_bgr
    from dl09_keras.models.faster_rcnn import build_inference_model

    runtime = KerasRuntime(build_inference_model(model, config, RECALL_TOP_N))
    preprocess = Detector(runtime, ["object"]).preprocess

    proposals, truths = [], []
    for sample in dataset.samples:
        image = read_image_bgr(sample.path) if sample.image is None else sample.image[..., ::-1]
        scores, boxes = runtime(preprocess(image))
        real = scores[0, :, 1] > 0  # rows past the surviving proposals are zero padding
        proposals.append(boxes[0][real])
        truths.append(GroundTruth(sample.boxes, sample.labels, sample.difficult))
    result = proposal_recall(proposals, truths)
    result["proposals_per_image_mean"] = float(np.mean([len(p) for p in proposals]))
    return result
