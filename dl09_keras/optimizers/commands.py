"""``dl09 optimizers plot``, ``compare`` and ``step-time``: options and handlers."""

from __future__ import annotations

import argparse
import os


def parse_learning_rate_override(text: str) -> tuple[str, float]:
    """Parse ``NAME=VALUE`` of ``--learning-rate`` into (name, rate)."""
    name, equals, value = text.rpartition("=")
    try:
        rate = float(value)
    except ValueError:
        rate = None
    if not equals or not name or rate is None or not rate > 0:
        raise argparse.ArgumentTypeError(
            f"invalid learning rate {text!r}: expected OPTIMIZER=VALUE with VALUE > 0, e.g. dl09_adam=0.01"
        )
    return name, rate


def add_plot_arguments(parser: argparse.ArgumentParser):
    """Declare the options of ``dl09 optimizers plot``."""
    from dl09_keras.optimizers.surfaces import SURFACES

    parser.add_argument("--surfaces", nargs="+", choices=list(SURFACES), default=list(SURFACES),
                        help="surfaces to plot. Default: all.")
    parser.add_argument("--optimizers", nargs="+", default=None,
                        help="optimizer names as for train.py --optimizer, options included "
                             "(e.g. dl09_momentum dl09_nesterov). Default: sgd and the six dl09_* optimizers.")
    parser.add_argument("--learning-rate", type=parse_learning_rate_override, action="append", default=[],
                        metavar="OPTIMIZER=VALUE",
                        help="learning rate of one optimizer on every surface, by full or bare name; repeatable. "
                             "Default: a rate per surface and optimizer.")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per trajectory. Default: 300.")
    parser.add_argument("--output", default="optimizer-plots", help="folder for the figures. Default: optimizer-plots.")
    parser.add_argument("--prefix", default="optimizers_",
                        help="start of each file name, followed by the surface name. Default: optimizers_.")
    parser.add_argument("--title", default=None, help="title above the surface. Default: the surface's formula.")
    parser.add_argument("--animate", choices=("gif", "mp4"), default=None,
                        help="also save an animation of each figure in this format.")
    parser.add_argument("--frames", type=int, default=90, help="frames of an animation. Default: 90.")
    parser.add_argument("--fps", type=int, default=15, help="frames per second of an animation. Default: 15.")


def add_compare_arguments(parser: argparse.ArgumentParser):
    """Declare the options of ``dl09 optimizers compare``."""
    from dl09_keras.training_args import SPEC_HELP, parse_input_size

    parser.add_argument("--optimizers", nargs="+", default=None,
                        help="optimizer names as for train.py --optimizer, options included. "
                             "Default: the six dl09_* optimizers.")
    parser.add_argument("--learning-rate", type=parse_learning_rate_override, action="append", default=[],
                        metavar="OPTIMIZER=VALUE",
                        help="constant learning rate of one optimizer, by full or bare name; repeatable. "
                             "Default: a rate per optimizer (dl09_keras.optimizers.compare.DEFAULT_LEARNING_RATES).")
    parser.add_argument("--data", default="shapes", help=f"dataset: {SPEC_HELP}. Default: shapes.")
    parser.add_argument("--train-split", default="train", help="split to train on. Default: train.")
    parser.add_argument("--val-split", default="val", help="split for the final validation loss; 'none' skips it. "
                                                           "Default: val.")
    parser.add_argument("--steps", type=int, default=60, help="training steps per optimizer. Default: 60.")
    parser.add_argument("--log-every", type=int, default=5,
                        help="steps per point of the loss curve; --steps must be a multiple. Default: 5.")
    parser.add_argument("--batch-size", type=int, default=16, help="Default: 16.")
    parser.add_argument("--input-size", type=parse_input_size, default=(128, 128),
                        help="network input, SIDE or HEIGHTxWIDTH in pixels. Default: 128.")
    parser.add_argument("--width", type=float, default=0.25, help="backbone channel multiplier. Default: 0.25.")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the shuffle. Default: 0.")
    parser.add_argument("--output", default="optimizer-comparison",
                        help="folder for comparison.md, comparison.json and losses.png. "
                             "Default: optimizer-comparison.")


def add_step_time_arguments(parser: argparse.ArgumentParser):
    """Declare the options of ``dl09 optimizers step-time``."""
    from dl09_keras.optimizers.step_time import METHODS
    from dl09_keras.training_args import parse_input_size

    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS),
                        help="methods to time against their Keras built-in. Default: all six.")
    parser.add_argument("--input-size", type=parse_input_size, default=(288, 384),
                        help="SSD input, SIDE or HEIGHTxWIDTH in pixels. Default: 288x384.")
    parser.add_argument("--width", type=float, default=0.5, help="backbone channel multiplier. Default: 0.5.")
    parser.add_argument("--batch-size", type=int, default=16, help="Default: 16.")
    parser.add_argument("--rounds", type=int, default=15, help="rounds of turns; the median is kept. Default: 15.")
    parser.add_argument("--steps", type=int, default=5,
                        help="timed training steps per optimizer and round. Default: 5.")
    parser.add_argument("--update-steps", type=int, default=50,
                        help="timed updates alone per optimizer and round. Default: 50.")
    parser.add_argument("--output", default="optimizer-step-time",
                        help="folder for step_time.md and step_time.json. Default: optimizer-step-time.")


def run_step_time(args) -> str:
    """Time each method against its Keras built-in and return the Markdown table."""
    from dl09_keras.optimizers.step_time import StepTimeSettings, measure_step_times

    settings = StepTimeSettings(input_size=tuple(args.input_size), width=args.width, batch_size=args.batch_size,
                                rounds=args.rounds, steps=args.steps, update_steps=args.update_steps)
    measure_step_times(args.methods, settings, args.output)
    with open(os.path.join(args.output, "step_time.md")) as f:
        return f.read()


def run_plot(args) -> list[str]:
    """Compute the trajectories and save one figure (and animation) per surface; return the file paths."""
    from dl09_keras.optimizers import parse_optimizer_spec
    from dl09_keras.optimizers.surfaces import DEFAULT_OPTIMIZERS, get_surface, run_trajectory
    from dl09_keras.plots import animate_trajectories, plot_trajectories

    overrides = dict(args.learning_rate)
    optimizers = args.optimizers or list(DEFAULT_OPTIMIZERS)
    paths = []
    for name in args.surfaces:
        surface = get_surface(name)
        trajectories = []
        for spec in optimizers:
            rate = overrides.get(spec, overrides.get(parse_optimizer_spec(spec)[0].lower()))
            trajectories.append(run_trajectory(surface, spec, args.steps, rate))

        base = os.path.join(args.output, f"{args.prefix}{name}")
        paths.append(plot_trajectories(surface, trajectories, base + ".png", args.title))
        if args.animate:
            paths.append(animate_trajectories(surface, trajectories, f"{base}.{args.animate}", args.fps, args.frames,
                                              args.title))
    return paths


def run_compare(args) -> str:
    """Run the comparison and return the Markdown table."""
    from dl09_keras.optimizers.compare import DEFAULT_COMPARED, ComparisonSettings, comparison_table, compare_optimizers

    val_split = None if args.val_split.lower() == "none" else args.val_split
    settings = ComparisonSettings(
        data=args.data, train_split=args.train_split, val_split=val_split, steps=args.steps,
        log_every=args.log_every, batch_size=args.batch_size, input_size=tuple(args.input_size),
        width=args.width, seed=args.seed,
    )
    rows = compare_optimizers(args.optimizers or list(DEFAULT_COMPARED), settings, args.output,
                              dict(args.learning_rate))
    return comparison_table(rows, settings)
