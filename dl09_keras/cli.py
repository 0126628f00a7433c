"""The ``dl09`` command: train, evaluate, export, detect, bench, check-data, anchors, augment-preview, optimizers.

Each subcommand's implementation module is imported only when that subcommand runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

logger = logging.getLogger("dl09")


def _setup_logging(verbose: bool = False):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def _train(args):
    from dl09_keras.training import train

    run = train(args)
    print(f"Run folder: {run.path}")
    return 0


def _evaluate(args):
    from dl09_keras.evaluate_run import evaluate_run

    result = evaluate_run(args.run_dir, args.data, args.split, args.runtime, args.tflite_variant, plots=args.plots)
    print(f"{result['data']} [{result['split']}], {result['images']} images, runtime {result['runtime']}")
    if "map" not in result:  # an RPN: proposal recall
        print(f"proposal recall over {result['num_ground_truths']} ground truths "
              f"({result['proposals_per_image_mean']:.0f} proposals per image on average):")
        for key, value in result.items():
            if key.startswith("recall@"):
                print(f"  {key:<20} {value:.4f}")
    else:
        print(f"mAP@0.5 = {result['map']:.4f}")
        for name, ap in result["ap"].items():
            print(f"  {name:<16} AP@0.5 = {ap:.4f}  ({result['num_ground_truths'][name]} ground truths)")
    print(f"Saved in {os.path.join(args.run_dir, 'evaluation.json')}")
    for path in result.get("plots", []):
        print(f"Wrote {path}")
    return 0


def _export(args):
    from export.__main__ import main as export_main

    forwarded = [args.run_dir, "--to", *args.to]
    if args.parity_images:
        forwarded += ["--parity-images", str(args.parity_images)]
    return export_main(forwarded)


def _detect(args):
    from dl09_keras.app import run_detection

    return run_detection(args)


def _anchors(args):
    import numpy as np

    from dl09_keras.anchors import DefaultBoxConfig, box_scales, default_boxes, match_coverage
    from dl09_keras.data import load_dataset
    from dl09_keras.models import SSDConfig, build_ssd, feature_shapes
    from dl09_keras.training import choose_box_config

    dataset = load_dataset(args.data, args.split)
    boxes = [s.boxes for s in dataset.samples]
    scales = np.concatenate([box_scales(b) for b in boxes])
    quantiles = np.quantile(scales, [0.0, 0.02, 0.25, 0.5, 0.75, 0.98, 1.0])
    print(dataset.describe())
    print("box scale sqrt(h*w) quantiles 0/2/25/50/75/98/100%: " + " ".join(f"{q:.3f}" for q in quantiles))
    model = build_ssd(SSDConfig(dataset.num_classes, args.input_size, num_maps=args.num_maps))
    shapes = feature_shapes(model)
    config = choose_box_config(args.scales, dataset, shapes, args.input_size)
    for label, candidate in (("SSD paper's scales", DefaultBoxConfig()), (f"--scales {args.scales}", config)):
        coverage = match_coverage(boxes, default_boxes(shapes, args.input_size, candidate))
        print(f"{label} {candidate.min_scale:.3f}..{candidate.max_scale:.3f}: {100 * coverage:.1f}% of the "
              f"boxes have a default box with IoU >= 0.5")
    print(f"{len(default_boxes(shapes, args.input_size, config))} default boxes on feature maps {shapes}")
    return 0


def _check_data(args):
    from dl09_keras.data.check import check_data

    exit_code, report = check_data(
        args.source, args.split, strict=args.strict, all_problems=args.all_problems,
        input_size=args.input_size, num_maps=args.num_maps, suggest=not args.no_suggestion,
    )
    print(report)
    return exit_code


def _augment_preview(args):
    from dl09_keras.viz import save_augmented_samples

    paths = save_augmented_samples(args.data, args.split, args.output, args.count, args.input_size, args.seed)
    print(f"Wrote {len(paths)} images with their boxes to {args.output}")
    return 0


def _explain(args):
    from dl09_keras.explain.commands import run_explain

    paths, report = run_explain(args)
    if report:
        print(report)
    for path in paths:
        print(f"Wrote {path}")
    return 0


def _throughput(args):
    from dl09_keras.throughput import main_throughput

    return main_throughput(args)


def _bench(args):
    from dl09_keras.bench import run_benchmark

    result = run_benchmark(args)
    if args.output == os.devnull:  # a child process of `--runtime all` reports to its parent
        print(json.dumps(result))
        return 0
    print(f"{'runtime':<14} {'model ms (median)':>18} {'model ms (p90)':>15} {'end-to-end frames/s':>20} "
          f"{'loop / model':>13}")
    for row in result["results"]:
        if "error" in row:
            print(f"{row['runtime']:<14} failed: {row['error']}")
            continue
        print(f"{row['runtime']:<14} {row['model_ms_median']:>18.2f} {row['model_ms_p90']:>15.2f} "
              f"{row['end_to_end_frames_per_second']:>20.1f} {row['loop_over_model']:>13.2f}")
    print(f"Saved in {args.output or os.path.join(args.run_dir, 'bench.json')}")
    return 0


def _optimizers_plot(args):
    from dl09_keras.optimizers.commands import run_plot

    for path in run_plot(args):
        print(f"Wrote {path}")
    return 0


def _optimizers_compare(args):
    from dl09_keras.optimizers.commands import run_compare

    print(run_compare(args))
    print(f"Wrote comparison.md, comparison.json and losses.png to {args.output}")
    return 0


def _optimizers_step_time(args):
    from dl09_keras.optimizers.commands import run_step_time

    print(run_step_time(args))
    print(f"Wrote step_time.md and step_time.json to {args.output}")
    return 0


def _demo(args):
    from dl09_keras.demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    from dl09_keras.inference.runtimes import RUNTIMES, TFLITE_VARIANTS

    parser = argparse.ArgumentParser(prog="dl09", description=__doc__.splitlines()[0].replace("``", ""))
    parser.add_argument("--debug", action="store_true", help="log at DEBUG level.")
    commands = parser.add_subparsers(dest="command", required=True)

    from dl09_keras.training_args import SPEC_HELP, add_training_arguments, parse_input_size

    train = commands.add_parser("train", help="train an SSD and write a run folder.")
    add_training_arguments(train)
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("evaluate", help="mAP@0.5 of a run on a dataset split.")
    evaluate.add_argument("run_dir", help="run folder written by train.py.")
    evaluate.add_argument("--data", default=None, help="dataset spec; default: the run's training data.")
    evaluate.add_argument("--split", default="test",
                          help="split to evaluate, e.g. test or valid (a VOC ImageSets list or a YOLO folder). "
                               "Default: test.")
    evaluate.add_argument("--runtime", choices=RUNTIMES, default="keras", help="Default: keras.")
    evaluate.add_argument("--tflite-variant", choices=TFLITE_VARIANTS, default="fp32")
    evaluate.add_argument("--plots", action="store_true",
                          help="also write PR curves per class, the confusion table and a gallery of the worst "
                               "images into RUN_DIR/plots/ (detectors only, not an RPN).")
    evaluate.set_defaults(handler=_evaluate)

    export = commands.add_parser("export", help="convert a run to ONNX and TFLite (same as python -m export).")
    export.add_argument("run_dir", help="run folder written by train.py.")
    export.add_argument("--to", nargs="+", choices=("onnx", "tflite"), default=["onnx", "tflite"])
    export.add_argument("--parity-images", type=int, default=10)
    export.set_defaults(handler=_export)

    detect = commands.add_parser("detect", help="run a trained detector on a camera, video, image or folder.")
    from dl09_keras.app import add_detect_arguments

    add_detect_arguments(detect)
    detect.set_defaults(handler=_detect)

    anchors = commands.add_parser("anchors", help="box-size statistics and default-box coverage of a dataset.")
    anchors.add_argument("--data", required=True, help=f"dataset spec: {SPEC_HELP}.")
    anchors.add_argument("--split", default="train", help="split whose boxes are measured. Default: train.")
    anchors.add_argument("--input-size", type=parse_input_size, default=(320, 320),
                         help="network input, SIDE or HEIGHTxWIDTH, as for train.py. Default: 320.")
    anchors.add_argument("--num-maps", type=int, default=5, help="feature maps with heads. Default: 5.")
    anchors.add_argument("--scales", default="auto", help="'auto' or MIN,MAX, as for train.py. Default: auto.")
    anchors.set_defaults(handler=_anchors)

    check = commands.add_parser(
        "check-data",
        help="read a dataset and report class counts, box sizes and every problem; exit 0 when trainable.",
    )
    check.add_argument("source", help=f"dataset spec: {SPEC_HELP}.")
    check.add_argument("--split", nargs="+", default=None,
                       help="splits to read; default: every split found (VOC: all annotation files).")
    check.add_argument("--all-problems", action="store_true",
                       help="list every problem, not only 3 examples per reason.")
    check.add_argument("--strict", action="store_true", help="exit 1 when any box or image is skipped.")
    check.add_argument("--input-size", type=parse_input_size, default=(320, 320),
                       help="SSD input size for the default-box scale suggestion. Default: 320.")
    check.add_argument("--num-maps", type=int, default=6, help="SSD feature maps for the suggestion. Default: 6.")
    check.add_argument("--no-suggestion", action="store_true", help="skip the default-box scale suggestion.")
    check.set_defaults(handler=_check_data)

    preview = commands.add_parser("augment-preview", help="save augmented training samples with their boxes drawn.")
    preview.add_argument("--data", default="shapes", help=f"dataset spec: {SPEC_HELP}. Default: shapes.")
    preview.add_argument("--split", default="train", help="Default: train.")
    preview.add_argument("--output", default="augmented", help="folder for the PNG files. Default: augmented.")
    preview.add_argument("--count", type=int, default=16, help="samples to save. Default: 16.")
    preview.add_argument("--input-size", type=parse_input_size, default=(320, 320),
                         help="network input, SIDE or HEIGHTxWIDTH. Default: 320.")
    preview.add_argument("--seed", type=int, default=0, help="seed of the sample choice and augmentation. Default: 0.")
    preview.set_defaults(handler=_augment_preview)

    explain = commands.add_parser("explain", help="draw how a detector sees: anchors, matching, mining, augmentation, "
                                                  "proposals, coverage or training curves (PNG).")
    from dl09_keras.explain.commands import add_explain_arguments

    add_explain_arguments(explain)
    explain.set_defaults(handler=_explain)

    bench = commands.add_parser("bench", help="time a run's runtimes (model only and end to end).")
    from dl09_keras.bench import add_bench_arguments

    add_bench_arguments(bench)
    bench.set_defaults(handler=_bench)

    throughput = commands.add_parser(
        "throughput", help="images/s of the input pipeline, training step and forward pass, and GFLOP/s "
                           "against a large matrix product.")
    from dl09_keras.throughput import add_throughput_arguments

    add_throughput_arguments(throughput)
    throughput.set_defaults(handler=_throughput)

    optimizers = commands.add_parser("optimizers",
                                     help="the optimizers on 2-D test surfaces, compared on the SSD, or timed.")
    optimizer_commands = optimizers.add_subparsers(dest="optimizers_command", required=True)
    from dl09_keras.optimizers.commands import add_compare_arguments, add_plot_arguments, add_step_time_arguments

    plot = optimizer_commands.add_parser("plot", help="trajectories over contour lines with loss curves (PNG, GIF, MP4).")
    add_plot_arguments(plot)
    plot.set_defaults(handler=_optimizers_plot)
    compare = optimizer_commands.add_parser("compare", help="train the SSD with each optimizer for the same budget.")
    add_compare_arguments(compare)
    compare.set_defaults(handler=_optimizers_compare)
    step_time = optimizer_commands.add_parser("step-time",
                                              help="time each optimizer's training step against its Keras built-in.")
    add_step_time_arguments(step_time)
    step_time.set_defaults(handler=_optimizers_step_time)

    demo = commands.add_parser("demo", help="train on shapes, export, detect on a generated video.")
    demo.add_argument("--output", default="demo", help="folder for every output. Default: demo.")
    demo.add_argument("--epochs", type=int, default=None, help="override the demo's epoch count.")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    _setup_logging("--debug" in argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        if args.debug:
            raise
        logger.error("%s", error)
        return 2


if __name__ == "__main__":
    sys.exit(main())
