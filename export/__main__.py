"""``python -m export RUN_DIR --to onnx tflite``: convert a run and check parity with Keras."""

from __future__ import annotations

import argparse
import logging
import os
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="run folder written by train.py")
    parser.add_argument("--to", nargs="+", choices=("onnx", "tflite"), default=["onnx", "tflite"],
                        help="formats to write. Default: onnx tflite.")
    parser.add_argument("--tflite-variants", nargs="+", choices=("fp32", "fp16", "int8"),
                        default=["fp32", "fp16", "int8"], help="Default: fp32 fp16 int8.")
    parser.add_argument("--calibration-images", type=int, default=100,
                        help="training images for int8 calibration. Default: 100.")
    parser.add_argument("--parity-images", type=int, default=10,
                        help="validation images of the parity report (0 skips it). Default: 10.")
    parser.add_argument("--data", default=None, help="dataset of the parity images; default: the run's.")
    parser.add_argument("--split", default=None, help="split of the parity images; default: the run's validation split.")
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logger = logging.getLogger("export")

    from dl09_keras.run import RunFolder
    from export.convert import export_onnx, export_tflite
    from export.parity import parity_report

    run = RunFolder(args.run_dir)
    try:
        if run.read_metadata().get("task") == "rcnn":
            raise ValueError(f"Run {run.path} is an R-CNN: its selective search and SVMs are not one graph, so it "
                             "has no ONNX or TFLite export. dl09 evaluate and dl09 detect run it in Keras.")
        written, runtimes = [], []
        if "onnx" in args.to:
            written.append(export_onnx(run))
            runtimes += [("onnxruntime", None), ("opencv", None)]
        if "tflite" in args.to:
            written += export_tflite(run, args.tflite_variants, args.calibration_images)
            runtimes += [("tflite", variant) for variant in args.tflite_variants]
        if args.parity_images:
            report = parity_report(run, runtimes, args.parity_images, data=args.data, split=args.split)
            written.append(run.file("parity.json"))
            for name, entry in report["runtimes"].items():
                print(f"{name:<14} max |diff| scores {entry['max_abs_diff_scores']:.2e} "
                      f"boxes {entry['max_abs_diff_boxes']:.2e}  same detections: "
                      f"{entry['images_with_same_detections']}/{len(report['image_names'])} images, "
                      f"{entry['keras_detections_matched']} Keras detections matched")
    except (FileNotFoundError, ValueError) as error:
        logger.error("%s", error)
        return 2
    for path in written:
        print(f"Wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
