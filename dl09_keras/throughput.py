"""``dl09 throughput``: where the training and inference time of a detector goes, against the machine's limit.

Five figures from one process, each after warm-up:

- input pipeline: batches of the augmented training pipeline per second, without the model;
- training step: ``train_on_batch`` on ``--steps`` batches already in memory, so no input
  work is timed;
- training end to end: ``model.fit`` on the real pipeline;
- forward pass: the compiled inference function at batch 1 and at the training batch, with
  its floating-point operations counted by TensorFlow's profiler, as achieved GFLOP/s;
- the machine's limit: GFLOP/s of a large float32 matrix product (``--matmul-size``).

Speeds are images/s; the matrix product counts ``2 n^3`` operations, the profiler counts a
multiply and an add as two operations as well. ``--profile LOGDIR`` also traces the training
step with ``tf.profiler`` (TensorBoard reads the trace) and sums the op time by op type and by
part of the step (forward, loss, backward, optimizer).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import time

logger = logging.getLogger(__name__)


def add_throughput_arguments(parser: argparse.ArgumentParser):
    from dl09_keras.training_args import SPEC_HELP, add_model_arguments

    parser.add_argument("--data", default="shapes", help=f"dataset: {SPEC_HELP}. Default: shapes.")
    parser.add_argument("--train-split", default="train", help="Default: train.")
    add_model_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=16, help="Default: 16.")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps. Default: 20.")
    parser.add_argument("--warmup", type=int, default=5, help="untimed training steps first. Default: 5.")
    parser.add_argument("--repeats", type=int, default=50, help="timed forward calls. Default: 50.")
    parser.add_argument("--matmul-size", type=int, default=4096, help="side of the square matrices. Default: 4096.")
    parser.add_argument("--no-zoom-out", action="store_true", help="disable the zoom-out augmentation.")
    parser.add_argument("--no-augment", action="store_true", help="resize only.")
    parser.add_argument("--mixed-precision", action="store_true", help="bfloat16 on a CPU, float16 on a GPU.")
    parser.add_argument("--jit", action="store_true", help="compile the training step with XLA.")
    parser.add_argument("--seed", type=int, default=0, help="Default: 0.")
    parser.add_argument("--profile", default=None, metavar="LOGDIR",
                        help="also trace --steps training steps with tf.profiler into LOGDIR and report the "
                             "time per op type.")
    parser.add_argument("--output", default=None, help="JSON file for the results.")


def forward_flops(function, input_shape) -> int:
    """Floating-point operations of one call of ``function`` on a float32 input of ``input_shape``.

    Counted by ``tf.compat.v1.profiler`` on the traced graph; every shape must be static.
    """
    import tensorflow as tf

    concrete = tf.function(function).get_concrete_function(tf.TensorSpec(input_shape, tf.float32))
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    profile = tf.compat.v1.profiler.profile(graph=concrete.graph, options=options)
    if profile is None or profile.total_float_ops <= 0:
        raise RuntimeError(f"The profiler counted no operations for input shape {input_shape}.")
    return int(profile.total_float_ops)


def matmul_gflops(size: int, repeats: int = 5) -> float:
    """Best GFLOP/s of a float32 ``size`` x ``size`` matrix product in a compiled function."""
    import tensorflow as tf

    if size < 64:
        raise ValueError(f"Invalid --matmul-size {size}: use at least 64 (4096 measures a CPU's peak).")
    a = tf.random.uniform((size, size))
    b = tf.random.uniform((size, size))
    product = tf.function(lambda x, y: tf.reduce_sum(tf.matmul(x, y)))
    product(a, b).numpy()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        product(a, b).numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def _median_seconds(call, repeats: int) -> float:
    for _ in range(3):
        call()
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def _step_part(node: str) -> str:
    """Name the part of a training step (forward, loss, backward, optimizer) that graph node ``node`` belongs to."""
    if "gradient_tape" in node:
        return "backward"
    if "compile_loss" in node:
        return "loss"
    if "/adam/" in node.lower() or "optimizer" in node.lower():
        return "optimizer"
    return "forward and other"


def op_type_times(logdir: str, top: int = 12) -> dict:
    """Sum the CPU time of the TensorFlow ops in the newest profile trace under ``logdir``.

    Reads the ``*.xplane.pb`` that ``tf.profiler.experimental`` wrote. Op events, named
    ``node:OpType``, sit on the executor threads (``tf_Compute``). Ops run on several
    threads at once, so shares are of the summed op time, not of the wall time.

    Returns:
        ``{"op_types": [...], "parts": {...}}``: the ``top`` op types, most time first, and
        the time of the forward pass, loss, backward pass and optimizer update.
    """
    import glob
    import os

    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    traces = sorted(glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb")), key=os.path.getmtime)
    if not traces:
        raise FileNotFoundError(f"No profile trace (*.xplane.pb) under {logdir}/plugins/profile.")
    space = xplane_pb2.XSpace()
    with open(traces[-1], "rb") as f:
        space.ParseFromString(f.read())
    by_type, by_part = {}, {}
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                node, _, op_type = name.rpartition(":")
                if not node or "::" in name:  # executor bookkeeping such as ExecutorState::Process
                    continue
                by_type[op_type] = by_type.get(op_type, 0) + event.duration_ps
                part = _step_part(node)
                by_part[part] = by_part.get(part, 0) + event.duration_ps
    total = sum(by_type.values())
    if not total:
        raise RuntimeError(f"The trace {traces[-1]} contains no TensorFlow op events.")
    ranked = sorted(by_type.items(), key=lambda item: -item[1])[:top]
    return {
        "op_types": [{"op_type": name, "ms": round(ps / 1e9, 1), "share": round(ps / total, 3)} for name, ps in ranked],
        "parts": {name: {"ms": round(ps / 1e9, 1), "share": round(ps / total, 3)}
                  for name, ps in sorted(by_part.items(), key=lambda item: -item[1])},
    }


def _fit_seconds(model, dataset, steps: int) -> float:
    start = time.perf_counter()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    return time.perf_counter() - start


def run_throughput(args) -> dict:
    """Measure the five figures for the model of ``args``; return them as a dict."""
    import keras
    import tensorflow as tf

    from dl09_keras.data.pipeline import training_pipeline
    from dl09_keras.data.sources import load_dataset
    from dl09_keras.distribute import set_precision
    from dl09_keras.optimizers import get_optimizer
    from dl09_keras.training import augment_settings, ssd_recipe

    if args.model == "rcnn":
        raise ValueError("dl09 throughput measures models trained with model.fit on whole images: "
                         "use --model ssd, rpn or faster_rcnn, not rcnn.")
    precision = set_precision(args.mixed_precision)
    keras.utils.set_random_seed(args.seed)
    data = load_dataset(args.data, args.train_split)
    if args.model == "ssd":
        recipe = ssd_recipe(args, data)
    else:
        from dl09_keras.training_rcnn import two_stage_recipe

        recipe = two_stage_recipe(args, data)
    batch = args.batch_size
    pipeline = training_pipeline(data, recipe.encoder, args.input_size, batch, augment_settings(args),
                                 2 * max(args.input_size), seed=args.seed, make_example=recipe.make_example)

    # 1. The input pipeline alone. The first pass decodes and caches the images, as epoch 1 does.
    iterator = iter(pipeline)
    for _ in range(max(1, len(data) // batch)):
        next(iterator)
    start = time.perf_counter()
    for _ in range(args.steps):
        next(iterator)
    pipeline_rate = batch * args.steps / (time.perf_counter() - start)
    logger.info("Input pipeline: %.1f images/s", pipeline_rate)

    # 2. The training step on batches already in memory; 3. the training step fed by the pipeline.
    model = recipe.model
    model.compile(optimizer=get_optimizer("adam", 2e-3), loss=recipe.loss, jit_compile=args.jit)
    batches = [next(iterator) for _ in range(args.steps)]
    for x, y in batches[: args.warmup]:
        model.train_on_batch(x, y)
    start = time.perf_counter()
    for x, y in batches:
        model.train_on_batch(x, y)
    step_rate = batch * args.steps / (time.perf_counter() - start)
    logger.info("Training step, batches in memory: %.1f images/s", step_rate)
    _fit_seconds(model, pipeline, args.warmup)
    fed_rate = batch * args.steps / _fit_seconds(model, pipeline, args.steps)
    logger.info("Training fed by the pipeline: %.1f images/s", fed_rate)
    profile = None
    if args.profile:
        tf.profiler.experimental.start(args.profile)
        for x, y in batches:
            model.train_on_batch(x, y)
        tf.profiler.experimental.stop()
        profile = {"logdir": args.profile, "steps": args.steps, **op_type_times(args.profile)}
        logger.info("Training step profile (TensorBoard reads %s): %s; %s", args.profile, profile["parts"],
                    profile["op_types"][:5])

    # 4. The compiled forward pass of the inference model, and its operation count.
    inference = recipe.build_inference(model)
    height, width = args.input_size
    forward = {}
    for size in (1, batch):
        flops = forward_flops(lambda x: inference(x, training=False), (size, height, width, 3))
        compiled = tf.function(lambda x: inference(x, training=False))
        images = tf.random.uniform((size, height, width, 3), 0, 255)
        seconds = _median_seconds(lambda: tf.nest.map_structure(lambda t: t.numpy(), compiled(images)), args.repeats)
        forward[f"batch_{size}"] = {
            "ms": round(1000 * seconds, 2), "images_per_second": round(size / seconds, 1),
            "gflops_per_image": round(flops / size / 1e9, 3),
            "achieved_gflops_per_second": round(flops / seconds / 1e9, 1),
        }
        logger.info("Forward pass, batch %d: %s", size, forward[f"batch_{size}"])

    # 5. The machine's limit.
    peak = matmul_gflops(args.matmul_size)
    logger.info("Matrix product %d x %d: %.1f GFLOP/s", args.matmul_size, args.matmul_size, peak)
    for item in forward.values():
        item["share_of_matmul_peak"] = round(item["achieved_gflops_per_second"] / peak, 3)

    return {
        "model": args.model, "data": args.data, "train_split": args.train_split, "images": len(data),
        "input_size": list(args.input_size), "batch_size": batch, "width": args.width, "neck": args.neck,
        "parameters": int(model.count_params()), "precision": precision, "jit_compile": bool(args.jit),
        "pipeline_images_per_second": round(pipeline_rate, 1),
        "train_step_images_per_second": round(step_rate, 1),
        "train_fed_images_per_second": round(fed_rate, 1),
        "pipeline_over_train_step": round(pipeline_rate / step_rate, 2),
        "forward": forward,
        "training_step_profile": profile,
        "matmul": {"size": args.matmul_size, "gflops_per_second": round(peak, 1)},
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        "threads": {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                    "inter_op": tf.config.threading.get_inter_op_parallelism_threads()},
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def main_throughput(args) -> int:
    report = run_throughput(args)
    text = json.dumps(report, indent=2)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    print(text)
    return 0
