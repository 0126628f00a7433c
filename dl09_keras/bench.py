"""``dl09 bench``: speed of a run's runtimes, model only and end to end.

Model only: the runtime call on one preprocessed frame at batch 1, median over
``--repeats`` calls after warm-up. End to end: frames/s over the frames of
``--source`` (decode, preprocess, model, NMS, drawing; no window, no writing).
With ``--runtime all`` every runtime runs in a process of its own, because two
runtimes in one process slow each other down.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time

logger = logging.getLogger(__name__)

BENCH_RUNTIMES = ("keras", "savedmodel", "onnxruntime", "opencv", "tflite_fp32", "tflite_fp16", "tflite_int8")


def add_bench_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("run_dir", help="run folder written by train.py (exported for onnxruntime, opencv, tflite).")
    parser.add_argument("--runtime", default="all", choices=("all",) + BENCH_RUNTIMES, help="Default: all.")
    parser.add_argument("--source", required=True, help="video file or folder of images for the end-to-end timing.")
    parser.add_argument("--frames", type=int, default=200, help="frames timed end to end. Default: 200.")
    parser.add_argument("--repeats", type=int, default=200, help="model-only calls timed. Default: 200.")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of ONNX Runtime and LiteRT.")
    parser.add_argument("--output", default=None, help="JSON file for the results; default RUN_DIR/bench.json.")
    parser.add_argument("--no-prefetch", action="store_true",
                        help="end to end: decode each frame only after the previous one is drawn.")


def _split_runtime(name: str) -> tuple[str, str]:
    if name.startswith("tflite_"):
        return "tflite", name.split("_", 1)[1]
    return name, "fp32"


def bench_one(run_dir, runtime_name, source, frames, repeats, threads=None, prefetch=True) -> dict:
    """Time one runtime in this process.

    ``loop_over_model`` is the end-to-end time per frame over the model-only median:
    what decoding, resizing, NMS and drawing add. ``wait_for_frame`` is the time the
    loop waits for the next decoded frame, which is all of the decoding without ``prefetch``.
    With ``prefetch`` the reader thread also preprocesses, so ``preprocess`` is near 0.
    """
    from dl09_keras.app import _source_kind, draw_detections, iterate_frames, prefetch_frames
    from dl09_keras.inference import Detector, open_runtime
    from dl09_keras.run import RunFolder

    name, variant = _split_runtime(runtime_name)
    if RunFolder(run_dir).read_metadata().get("task") == "rcnn":
        raise ValueError(f"Run {run_dir} is an R-CNN, which has no exported runtimes to compare: time it with "
                         "dl09 detect RUN_DIR --source FOLDER --no-show, which prints seconds per image.")
    class_names = RunFolder(run_dir).class_names()
    detector = Detector(open_runtime(run_dir, name, variant, threads), class_names)
    kind = _source_kind(source)
    first = next(iterate_frames(source, kind, 1))[1]
    batch = detector.preprocess(first)
    for _ in range(10):
        detector.runtime(batch)
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        detector.runtime(batch)
        timings.append(time.perf_counter() - start)

    # End to end, as `dl09 detect --no-show` runs: each step's mean milliseconds per frame.
    steps = dict.fromkeys(("wait_for_frame", "preprocess", "model", "postprocess", "draw"), 0.0)
    frames_in = iterate_frames(source, kind, frames)
    frames_in = frames_in if not prefetch else prefetch_frames(frames_in, prepare=detector.preprocess)
    count, start = 0, time.perf_counter()
    while True:
        waited = time.perf_counter()
        try:
            _, frame, *prepared = next(frames_in)
        except StopIteration:
            break
        steps["wait_for_frame"] += time.perf_counter() - waited
        detections = detector.detect(frame, *prepared)
        for name, seconds in detector.last_seconds.items():
            steps[name] += seconds
        drawing = time.perf_counter()
        draw_detections(frame, detections, class_names)
        steps["draw"] += time.perf_counter() - drawing
        count += 1
    elapsed = time.perf_counter() - start
    model_ms = 1000 * statistics.median(timings)
    return {
        "runtime": runtime_name,
        "model_ms_median": round(model_ms, 3),
        "model_ms_p90": round(1000 * sorted(timings)[int(0.9 * (len(timings) - 1))], 3),
        "end_to_end_frames_per_second": round(count / elapsed, 2),
        "loop_over_model": round(1000 * elapsed / count / model_ms, 2),
        "loop_ms_per_frame": {name: round(1000 * seconds / count, 3) for name, seconds in steps.items()},
        "prefetch": bool(prefetch),
        "frames": count,
        "frame_size": list(first.shape[:2]),
        "threads": threads,
    }


def run_benchmark(args) -> dict:
    """Run ``dl09 bench``; return and save the results."""
    names = BENCH_RUNTIMES if args.runtime == "all" else (args.runtime,)
    results = []
    for name in names:
        if args.runtime == "all":
            command = [sys.executable, "-m", "dl09_keras.cli", "bench", args.run_dir, "--runtime", name,
                       "--source", args.source, "--frames", str(args.frames), "--repeats", str(args.repeats),
                       "--output", os.devnull]
            if args.threads:
                command += ["--threads", str(args.threads)]
            if args.no_prefetch:
                command += ["--no-prefetch"]
            completed = subprocess.run(command, capture_output=True, text=True)
            if completed.returncode != 0:
                logger.error("Benchmark of %s failed:\n%s", name, completed.stderr[-2000:])
                results.append({"runtime": name, "error": completed.stderr.strip().splitlines()[-1:]})
                continue
            results.append(json.loads(completed.stdout[completed.stdout.index("{"):])["results"][0])
        else:
            results.append(bench_one(args.run_dir, name, args.source, args.frames, args.repeats, args.threads,
                                     prefetch=not args.no_prefetch))
        logger.info("%s", results[-1])
    report = {
        "run_dir": os.path.abspath(args.run_dir),
        "source": os.path.abspath(args.source),
        "cpu_count": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "results": results,
    }
    output = args.output or os.path.join(args.run_dir, "bench.json")
    if output != os.devnull:
        with open(output, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    return report
