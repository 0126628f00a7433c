"""``dl09 explain VIEW``: options and dispatch of the explain views.

Every view but ``curves`` draws the boxes of a detector. They come from a
finished run (``--run``), or ``train.py`` builds them from the same model options
(``--model``, ``--input-size``, ``--scales``, ...). With 'auto' scales or sizes,
they are fitted to the ``--train-split`` boxes.
"""

from __future__ import annotations

import argparse
import logging
import os

logger = logging.getLogger(__name__)

VIEWS = ("anchors", "matching", "mining", "augment", "proposals", "coverage", "curves")
NEEDS_RUN = {"mining": "an SSD run", "proposals": "an RPN or Faster R-CNN run", "curves": "a run"}


def parse_point(text: str) -> tuple[float, float]:
    """Parse ``Y,X`` (normalized, e.g. 0.5,0.5) for ``--point``."""
    try:
        y, x = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid point {text!r}: expected Y,X in [0, 1], such as 0.5,0.5") from None
    return y, x


def positive_int(text: str) -> int:
    """Parse a count of at least 1 for ``--draws`` and ``--top``."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: expected a whole number >= 1")
    return value


def add_explain_arguments(parser: argparse.ArgumentParser):
    """Declare the options of ``dl09 explain``."""
    from dl09_keras.training_args import SPEC_HELP, add_model_arguments

    parser.add_argument("view", choices=VIEWS,
                        help="anchors: cell centers and the k boxes of one cell per map; matching: the boxes each "
                             "ground truth wins; mining: hard negatives of a trained SSD; augment: a grid of "
                             "augmentation steps; proposals: RPN proposals before and after NMS; coverage: the "
                             "share of ground truths some box fits, by class and size; curves: a run's losses "
                             "and mAP per epoch.")
    parser.add_argument("--run", default=None,
                        help="run folder: take its detector, boxes and data (required by mining, proposals, curves).")
    parser.add_argument("--data", default=None, help=f"dataset spec: {SPEC_HELP}. Default: the run's data, else shapes.")
    parser.add_argument("--split", default=None,
                        help="split of the image, or of every box for coverage. Default: the run's validation "
                             "split, else its training split; train without --run.")
    parser.add_argument("--image", default=None,
                        help="image to explain: an index in the split or a file name. Default: the first image "
                             "with a box.")
    parser.add_argument("--output", default=None,
                        help="PNG file to write. Default: RUN/explain/VIEW.png with --run, else explain_VIEW.png.")
    parser.add_argument("--point", type=parse_point, default=(0.5, 0.5),
                        help="anchors: normalized Y,X of the cell whose boxes are drawn on every map. Default: 0.5,0.5.")
    parser.add_argument("--draws", type=positive_int, default=2, help="augment: rows of independent draws. Default: 2.")
    parser.add_argument("--top", type=positive_int, default=100, help="proposals: proposals drawn per panel. Default: 100.")
    parser.add_argument("--seed", type=int, default=0, help="augment, mining: random seed. Default: 0.")
    parser.add_argument("--train-split", default="train",
                        help="without --run: split whose boxes fit 'auto' scales and anchor sizes. Default: train.")
    add_model_arguments(parser)


class _Context:
    """Shared inputs of the views: the dataset split, its class names, the box layout and the run, if any."""

    def __init__(self, args):
        from dl09_keras.data import load_dataset
        from dl09_keras.data.sources import absolute_spec
        from dl09_keras.run import RunFolder

        self.run = RunFolder(args.run) if args.run else None
        metadata = self.run.read_metadata() if self.run else None
        if args.view in NEEDS_RUN and metadata is None:
            raise ValueError(f"dl09 explain {args.view} needs {NEEDS_RUN[args.view]}: pass --run RUN_DIR.")
        self.metadata = metadata
        if args.view == "curves":
            return
        if metadata:
            data = absolute_spec(args.data) if args.data else metadata["data"]["source"]
            split = args.split or metadata["data"].get("val_split") or metadata["data"]["train_split"]
            self.dataset = load_dataset(data, split, metadata["class_names"])
        else:
            data, split = args.data or "shapes", args.split or "train"
            self.dataset = load_dataset(data, split)
        self.description = f"{data} [{split}]"
        self.layout = self._layout(args, data, split)

    def _layout(self, args, data, split):
        from dl09_keras.data import load_dataset
        from dl09_keras.explain.layout import layout_from_metadata, layout_from_recipe

        task = self.metadata.get("task") if self.metadata else args.model
        if task == "rcnn":
            raise ValueError("dl09 explain draws anchors and default boxes, which an R-CNN (--model rcnn) has "
                             "none of: its regions come from selective search. Use ssd, rpn or faster_rcnn.")
        if self.metadata:
            return layout_from_metadata(self.metadata)
        train_data = self.dataset if args.train_split == split else load_dataset(data, args.train_split)
        if args.model == "ssd":
            from dl09_keras.training import ssd_recipe

            return layout_from_recipe(ssd_recipe(args, train_data))
        from dl09_keras.training_rcnn import two_stage_recipe

        return layout_from_recipe(two_stage_recipe(args, train_data))


def _output(args, context) -> str:
    if args.output:
        return args.output
    if context.run:
        return context.run.file(os.path.join("explain", f"{args.view}.png"))
    return f"explain_{args.view}.png"


def run_explain(args) -> tuple[list[str], str]:
    """Draw the view ``args.view``; return (written PNG paths, a text report for the terminal)."""
    context = _Context(args)
    path = _output(args, context)
    if args.view == "curves":
        from dl09_keras.explain.curves import plot_training_curves

        return [plot_training_curves(context.run.file("history.csv"), path)], ""
    if args.view == "coverage":
        return _coverage(context, path)

    from dl09_keras.explain.figures import pick_sample, sample_image

    sample = pick_sample(context.dataset, args.image)
    image = sample_image(sample)
    keep = ~sample.difficult
    boxes, labels = sample.boxes[keep], sample.labels[keep]
    name = os.path.basename(sample.path) if sample.path else f"image {context.dataset.samples.index(sample)}"
    report = f"{context.description}, {name}: {len(labels)} ground truths"
    class_names = context.dataset.class_names
    if args.view == "anchors":
        from dl09_keras.explain.anchors_view import plot_anchors

        return [plot_anchors(image, context.layout, path, args.point)], report
    if args.view == "matching":
        from dl09_keras.explain.matching_view import format_matches, plot_matching

        written, matches = plot_matching(image, boxes, labels, class_names, context.layout, path)
        return [written], report + "\n" + format_matches(matches, class_names, context.layout)
    if args.view == "augment":
        from dl09_keras.explain.augment_view import plot_augment

        written, _ = plot_augment(image, boxes, labels, class_names, context.layout.input_size, path,
                                  args.draws, args.seed)
        return [written], report
    model = context.run.load_training_model()
    if args.view == "mining":
        from dl09_keras.explain.mining_view import mine_image, mining_counts, plot_mining

        result = mine_image(model, context.layout, image, boxes, labels)
        counts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in mining_counts(result).items())
        return [plot_mining(image, boxes, result, context.layout, path, args.seed)], f"{report}\n{counts}"
    from dl09_keras.explain.proposals_view import covered_ground_truths, plot_proposals, proposal_sets
    from dl09_keras.models.faster_rcnn import FasterRCNNConfig

    if context.layout.task == "ssd":
        raise ValueError(f"{context.run.path} is an SSD run: proposals need an RPN or Faster R-CNN run.")
    sets = proposal_sets(model, FasterRCNNConfig.from_dict(context.metadata["model"]), image)
    covered = covered_ground_truths(sets.after_boxes, boxes)
    report += (f"\n{len(sets.before_scores)} proposals before NMS, {len(sets.after_scores)} after; "
               f"{covered}/{len(labels)} ground truths covered at IoU >= 0.5 after NMS")
    return [plot_proposals(image, boxes, sets, context.layout.input_size, path, args.top)], report


def _coverage(context, path) -> tuple[list[str], str]:
    """Measure how well the chosen boxes and the default ones cover the whole split.

    The defaults are the SSD scales 0.2 to 0.9 of Liu et al. (2016), or the RPN sizes of RPNAnchorConfig.
    """
    from dl09_keras.anchors import DefaultBoxConfig, RPNAnchorConfig
    from dl09_keras.explain.coverage import coverage_table, format_coverage, plot_coverage
    from dl09_keras.explain.layout import rpn_layout, ssd_layout

    layout = context.layout
    if layout.task == "ssd":
        paper = ssd_layout(layout.feature_shapes, layout.input_size, DefaultBoxConfig())
        layouts = {f"chosen {layout.summary}": layout.boxes, f"paper {paper.summary}": paper.boxes}
    else:
        default = rpn_layout(layout.task, layout.feature_shapes[0], layout.input_size, RPNAnchorConfig())
        layouts = {f"chosen {layout.summary}": layout.boxes, f"default {default.summary}": default.boxes}
    rows = coverage_table(context.dataset.samples, context.dataset.class_names, layouts)
    title = f"Default-box coverage of {context.description}, {layout.input_size[0]} x {layout.input_size[1]} input"
    return [plot_coverage(rows, path, title)], format_coverage(rows)
