"""Command-line options of training, kept free of TensorFlow imports so ``--help`` is quick."""

from __future__ import annotations

import argparse

BACKBONES = ("resnet", "mobilenetv2")
NECKS = ("none", "fpn")
STRATEGIES = ("none", "mirrored", "multiworker")
SPEC_HELP = (
    "voc:PATH (Pascal VOC folder), yolo:PATH (YOLO txt folder with data.yaml), coco:PATH (COCO JSON "
    "folder or file), tfds:NAME[@DATA_DIR] (a prepared tensorflow-datasets set, e.g. tfds:voc/2007) "
    "or shapes (synthetic)"
)


def parse_input_size(text: str) -> tuple[int, int]:
    """Parse ``320`` or ``HEIGHTxWIDTH`` (e.g. ``240x320``) into (height, width)."""
    try:
        parts = [int(v) for v in str(text).lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 64:
        raise argparse.ArgumentTypeError(
            f"invalid input size {text!r}: expected SIDE or HEIGHTxWIDTH in pixels, each >= 64"
        )
    return parts[0], parts[1]


def add_training_arguments(parser: argparse.ArgumentParser):
    """Declare the options of ``train.py`` and ``dl09 train``."""
    data = parser.add_argument_group("data")
    data.add_argument("--data", default="shapes", help=f"dataset: {SPEC_HELP}. Default: shapes.")
    data.add_argument("--train-split", default="train", help="split to train on. Default: train.")
    data.add_argument("--val-split", default=None, help="split for validation loss and mAP; none by default.")
    data.add_argument("--max-side", type=int, default=None,
                      help="downscale images whose longer side exceeds this many pixels before caching "
                           "(default: twice the larger input side).")

    add_model_arguments(parser)

    baseline = parser.add_argument_group("R-CNN (--model rcnn)")
    baseline.add_argument("--proposal-mode", choices=("fast", "quality"), default="fast",
                          help="selective-search mode. Default: fast.")
    baseline.add_argument("--max-proposals", type=int, default=1000, help="proposals per image. Default: 1000.")
    baseline.add_argument("--proposal-cache", default=None,
                          help="folder of cached proposals. Default: proposal-cache beside the run folder.")
    baseline.add_argument("--region-size", type=int, default=64, help="side of a warped region in pixels. Default: 64.")
    baseline.add_argument("--region-width", type=int, default=16,
                          help="channels of the region CNN's first stage (doubled at each of 3 stages). Default: 16.")
    baseline.add_argument("--region-batch", type=int, default=128,
                          help="regions per batch of the region CNN. Default: 128.")
    baseline.add_argument("--no-box-regression", action="store_true", help="keep the proposals' boxes as they are.")

    fit = parser.add_argument_group("training")
    fit.add_argument("--epochs", type=int, default=30, help="Default: 30.")
    fit.add_argument("--batch-size", type=int, default=16, help="Default: 16.")
    fit.add_argument("--optimizer", default="adam",
                     help="optimizer name, optionally with options as NAME:KEY=VALUE,...: the Keras built-ins sgd, "
                          "momentum, nesterov, adam, adamw, rmsprop, adagrad, adadelta, or this package's "
                          "dl09_momentum, dl09_nesterov, dl09_adagrad, dl09_adadelta, dl09_rmsprop, dl09_adam "
                          "(e.g. dl09_adam:granularity=neuron). Default: adam.")
    fit.add_argument("--learning-rate", type=float, default=None,
                     help="peak learning rate. Default: 1.0 for Adadelta (Zeiler's rule has none), else 0.002.")
    fit.add_argument("--weight-decay", type=float, default=None, help="decoupled weight decay of the optimizer.")
    fit.add_argument("--warmup-epochs", type=float, default=1.0, help="linear warm-up length. Default: 1.")
    fit.add_argument("--no-zoom-out", action="store_true", help="disable the zoom-out augmentation.")
    fit.add_argument("--no-augment", action="store_true", help="train on resized images only.")
    fit.add_argument("--map-every", type=int, default=0,
                     help="compute validation mAP@0.5 every N epochs (0: only at the end).")
    fit.add_argument("--stop-at-map", type=float, default=None,
                     help="stop once the validation mAP@0.5 computed by --map-every reaches this value.")
    fit.add_argument("--time-limit", type=float, default=None,
                     help="stop after this many minutes of training, keeping the model so far.")
    fit.add_argument("--seed", type=int, default=0, help="seed of weights and shuffling. Default: 0.")

    scale = parser.add_argument_group("devices and speed")
    scale.add_argument("--strategy", choices=STRATEGIES, default="none",
                       help="'mirrored': one replica per local GPU (or per logical CPU device); 'multiworker': "
                            "replicas on several machines, described by the TF_CONFIG environment variable. "
                            "--batch-size is the global batch, split across replicas. Default: none.")
    scale.add_argument("--mixed-precision", action="store_true",
                       help="compute in float16 on a GPU, bfloat16 on a CPU, keeping the weights in float32.")
    scale.add_argument("--jit", action="store_true", help="compile the training step with XLA (jit_compile).")

    out = parser.add_argument_group("output")
    out.add_argument("--run-dir", default=None,
                     help="run folder; an unfinished run there resumes. Default: runs/<data>-<time>.")
    out.add_argument("--overwrite", action="store_true", help="replace a finished run in --run-dir.")
    out.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2), help="Keras progress: 0, 1 (bar), 2 (line).")


def add_model_arguments(parser: argparse.ArgumentParser):
    """Declare the model options of ``train.py``, which ``dl09 explain`` shares."""
    model = parser.add_argument_group("model")
    model.add_argument("--model", choices=("ssd", "rpn", "faster_rcnn", "rcnn"), default="ssd",
                       help="detector: the SSD, a Region Proposal Network alone, the two-stage "
                            "Faster R-CNN, or the R-CNN baseline (selective search, region CNN, SVMs). "
                            "Default: ssd.")
    model.add_argument("--input-size", type=parse_input_size, default=(320, 320),
                       help="network input, SIDE or HEIGHTxWIDTH in pixels. Default: 320.")
    model.add_argument("--backbone", choices=BACKBONES, default="resnet", help="Default: resnet.")
    model.add_argument("--width", type=float, default=1.0, help="backbone channel multiplier. Default: 1.0.")
    model.add_argument("--num-maps", type=int, default=5, help="feature maps with heads (>= 4). Default: 5.")
    model.add_argument("--neck", choices=NECKS, default="none",
                       help="'fpn' merges coarse maps into fine ones (helps small objects). Default: none.")
    model.add_argument("--neck-channels", type=int, default=96, help="channels of the FPN neck. Default: 96.")
    model.add_argument("--scales", default="auto",
                       help="default-box scales MIN,MAX as fractions of the input side, or 'auto' to choose "
                            "them among quantiles of the training box sizes (2-20%% for MIN, 95-99.5%% for MAX) "
                            "by the share of boxes that get a default box with IoU >= 0.5. Default: auto.")

    rcnn = parser.add_argument_group("RPN and Faster R-CNN")
    rcnn.add_argument("--feature-stride", type=int, choices=(8, 16, 32), default=16,
                      help="stride of the backbone feature map the RPN and the head share. Default: 16.")
    rcnn.add_argument("--anchor-sizes", default="auto",
                      help="RPN anchor sizes S1,S2,S3 as fractions of sqrt(height * width) of the input, or "
                           "'auto' to spread them over the 5%%-95%% range of the training box sizes. Default: auto.")
    rcnn.add_argument("--rpn-normalization", choices=("sampled", "paper"), default="sampled",
                      help="RPN loss: 'sampled' divides both terms by the sampled anchors (lambda 1); 'paper' "
                           "divides the box term by the anchor locations with lambda 10. Default: sampled.")
    rcnn.add_argument("--rpn-channels", type=int, default=256, help="channels of the RPN's 3x3 layer. Default: 256.")
