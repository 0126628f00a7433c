"""``dl09 evaluate``: mAP@0.5 of a run on a dataset split, saved into the run folder."""

from __future__ import annotations

import json
import logging
import os
import time

from dl09_keras.atomic import write_json
from dl09_keras.data import load_dataset
from dl09_keras.data.sources import absolute_spec
from dl09_keras.inference import Detector, evaluate_detector, open_runtime
from dl09_keras.run import RunFolder

logger = logging.getLogger(__name__)

# mAP needs the low-scoring detections too, for the whole precision-recall curve.
EVALUATION_SCORE_THRESHOLD = 0.01


def evaluate_run(run_dir: str, data: str | None, split: str, runtime: str = "keras", tflite_variant: str = "fp32") -> dict:
    """Evaluate a run; store the result in ``evaluation.json`` and ``metadata.json``.

    Args:
        run_dir: the run folder.
        data: dataset spec; None uses the run's training source.
        split: split to evaluate, e.g. ``test``.
        runtime: runtime that computes the detections. Default "keras".
        tflite_variant: TFLite file for the tflite runtime. Default "fp32".

    Returns:
        the result of :func:`dl09_keras.evaluation.mean_average_precision` with the
        data, split, runtime and image count added.
    """
    run = RunFolder(run_dir)
    metadata = run.read_metadata()
    data = absolute_spec(data) if data else metadata["data"]["source"]
    dataset = load_dataset(data, split, metadata["class_names"])
    detector = Detector(open_runtime(run.path, runtime, tflite_variant), metadata["class_names"],
                        score_threshold=EVALUATION_SCORE_THRESHOLD)
    result = evaluate_detector(detector, dataset)
    runtime_name = runtime if runtime != "tflite" else f"tflite_{tflite_variant}"
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
    evaluations[key] = {"map": result["map"], "ap": result["ap"]}
    run.update_metadata(evaluation=evaluations)
    logger.info("%s: mAP@0.5 %.4f", key, result["map"])
    return result
