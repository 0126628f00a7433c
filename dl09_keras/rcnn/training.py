"""``train.py --model rcnn``: the three training stages of R-CNN on one dataset.

1. Selective-search proposals for every training image (cached on disk).
2. The region CNN learns from warped regions: ground-truth boxes and proposals with
   IoU >= 0.5 take their class, a sample of the other proposals is background.
3. Its penultimate features train one linear SVM per class (positives: the ground-truth
   boxes; negatives: proposals with IoU < 0.3 with every box of the class, with hard
   negative mining) and, optionally, one box regressor per class (proposals with
   IoU >= 0.6).

The run folder contains ``model.keras`` (the region CNN), ``svm.npz``, ``box_regression.npz``
and ``metadata.json`` with ``task: rcnn``.
"""

from __future__ import annotations

import logging
import os
import sys
import time

import numpy as np

from dl09_keras.rcnn.config import RCNNConfig
from dl09_keras.rcnn.proposals import ProposalCache, SelectiveSearchConfig, check_selective_search
from dl09_keras.rcnn.regions import BACKGROUND, best_matches, label_regions, svm_negatives, warp_regions

logger = logging.getLogger(__name__)

FOREGROUND_PER_IMAGE = 32
BACKGROUND_PER_IMAGE = 64
REGRESSION_RIDGE = 100.0


def sample_images(dataset):
    """Yield (sample, RGB uint8 image, BGR uint8 image) for each sample of ``dataset``."""
    import cv2

    from dl09_keras.inference.detector import read_image_bgr

    for sample in dataset.samples:
        if sample.image is not None:
            rgb = sample.image
            bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        else:
            bgr = read_image_bgr(sample.path)
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        yield sample, rgb, bgr


def image_proposals(cache: ProposalCache, sample, image_bgr) -> np.ndarray:
    """Proposals of one sample: from the cache for a file, searched anew for an in-memory image."""
    from dl09_keras.rcnn.proposals import selective_search

    if sample.path is None:
        return selective_search(image_bgr, cache.config)
    return cache.proposals(sample.path, image_bgr)


def classifier_regions(dataset, cache: ProposalCache, config: RCNNConfig, seed: int, progress: bool = True):
    """Warped regions and labels (0 background, class + 1 otherwise) for the region CNN."""
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    crops, labels = [], []
    images = tqdm(sample_images(dataset), total=len(dataset), desc="Proposals and regions", unit="image",
                  disable=not progress)
    for sample, rgb, bgr in images:
        proposals = image_proposals(cache, sample, bgr)
        region_labels, _ = label_regions(proposals, sample.boxes, sample.labels, config.foreground_iou)
        foreground = np.flatnonzero(region_labels != BACKGROUND)
        background = np.flatnonzero(region_labels == BACKGROUND)
        foreground = rng.permutation(foreground)[:FOREGROUND_PER_IMAGE]
        background = rng.permutation(background)[:BACKGROUND_PER_IMAGE]
        boxes = np.concatenate([sample.boxes, proposals[foreground], proposals[background]])
        classes = np.concatenate([sample.labels + 1, region_labels[foreground] + 1, np.zeros(len(background), int)])
        crops.append(warp_regions(rgb, boxes, config.region_size, config.context))
        labels.append(classes.astype(np.int32))
    return np.concatenate(crops), np.concatenate(labels)


def region_features(feature_function, rgb, boxes, config: RCNNConfig, batch: int = 256) -> np.ndarray:
    """Features (N, D) of the warped ``boxes`` of one image."""
    if len(boxes) == 0:
        return np.zeros((0, config.feature_dim), np.float32)
    crops = warp_regions(rgb, boxes, config.region_size, config.context)
    parts = [np.asarray(feature_function(crops[i:i + batch].astype(np.float32))) for i in range(0, len(crops), batch)]
    return np.concatenate(parts)


def regression_targets(proposals: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
    """R-CNN's box regression targets (ty, tx, th, tw) from proposals (N, 4) to their boxes (N, 4)."""
    ph, pw = proposals[:, 2] - proposals[:, 0], proposals[:, 3] - proposals[:, 1]
    gh, gw = gt_boxes[:, 2] - gt_boxes[:, 0], gt_boxes[:, 3] - gt_boxes[:, 1]
    py, px = proposals[:, 0] + ph / 2, proposals[:, 1] + pw / 2
    gy, gx = gt_boxes[:, 0] + gh / 2, gt_boxes[:, 1] + gw / 2
    return np.stack([(gy - py) / ph, (gx - px) / pw, np.log(gh / ph), np.log(gw / pw)], axis=1)


def apply_regression(proposals: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Move proposals (N, 4) by targets (N, 4), the inverse of :func:`regression_targets`; clip to [0, 1]."""
    ph, pw = proposals[:, 2] - proposals[:, 0], proposals[:, 3] - proposals[:, 1]
    py, px = proposals[:, 0] + ph / 2, proposals[:, 1] + pw / 2
    cy, cx = py + targets[:, 0] * ph, px + targets[:, 1] * pw
    h, w = ph * np.exp(np.clip(targets[:, 2], -4, 4)), pw * np.exp(np.clip(targets[:, 3], -4, 4))
    return np.clip(np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=1), 0, 1).astype(np.float32)


def fit_ridge(features: np.ndarray, targets: np.ndarray, ridge: float = REGRESSION_RIDGE) -> np.ndarray:
    """Least squares with an L2 penalty on the weights (not the bias); returns (D + 1, K), bias last."""
    x = np.hstack([features, np.ones((len(features), 1))]).astype(np.float64)
    penalty = ridge * np.eye(x.shape[1])
    penalty[-1, -1] = 0.0
    return np.linalg.solve(x.T @ x + penalty, x.T @ targets).astype(np.float32)


def svm_and_regression_data(dataset, cache, feature_function, config: RCNNConfig, progress: bool = True):
    """Features of every ground-truth box and proposal, with what the SVMs and regressors need."""
    from tqdm import tqdm

    gt_features, gt_labels, proposal_features, negative_masks = [], [], [], []
    regression = {c: ([], []) for c in range(config.num_classes)}
    for sample, rgb, bgr in tqdm(sample_images(dataset), total=len(dataset), desc="Region features", unit="image",
                                 disable=not progress):
        proposals = image_proposals(cache, sample, bgr)
        features = region_features(feature_function, rgb, np.concatenate([sample.boxes, proposals]), config)
        own, found = features[:len(sample.boxes)], features[len(sample.boxes):]
        gt_features.append(own)
        gt_labels.append(sample.labels)
        proposal_features.append(found)
        negative_masks.append(np.stack([svm_negatives(proposals, sample.boxes, sample.labels, c, config.negative_iou)
                                        for c in range(config.num_classes)], axis=1))
        # Box regression learns from the proposals close to a ground truth, towards that box.
        nearest, best_iou = best_matches(proposals, sample.boxes)
        close = best_iou >= config.regression_iou
        nearest_labels = sample.labels[nearest] if len(sample.boxes) else np.full(len(proposals), -1)
        for c in range(config.num_classes):
            chosen = np.flatnonzero(close & (nearest_labels == c))
            regression[c][0].append(found[chosen])
            regression[c][1].append(regression_targets(proposals[chosen], sample.boxes[nearest[chosen]]))
    return {
        "gt_features": np.concatenate(gt_features), "gt_labels": np.concatenate(gt_labels),
        "proposal_features": np.concatenate(proposal_features), "negatives": np.concatenate(negative_masks),
        "regression": {c: (np.concatenate(x) if x else np.zeros((0, config.feature_dim), np.float32),
                           np.concatenate(t) if t else np.zeros((0, 4), np.float32))
                       for c, (x, t) in regression.items()},
    }


def train_rcnn(args):
    """Train an R-CNN as described by parsed ``train.py`` arguments; return its run folder."""
    import keras
    import tensorflow as tf

    from dl09_keras.atomic import atomic_path, write_json
    from dl09_keras.data.sources import absolute_spec, load_dataset
    from dl09_keras.rcnn.region_cnn import build_region_cnn, feature_function
    from dl09_keras.rcnn.svm import fit_svm_hard_negatives
    from dl09_keras.run import METADATA_VERSION
    from dl09_keras.training import _check_run_folder

    check_selective_search()
    for option in ("strategy", "mixed_precision", "jit", "map_every", "stop_at_map", "time_limit"):
        value = getattr(args, option, None)
        if value not in (None, False, 0, "none"):
            raise ValueError(f"--{option.replace('_', '-')} is not supported with --model rcnn (got {value!r}).")
    args.data = absolute_spec(args.data)
    run = _check_run_folder(args)
    keras.utils.set_random_seed(args.seed)
    started = time.monotonic()

    train_data = load_dataset(args.data, args.train_split)
    val_data = load_dataset(args.data, args.val_split, train_data.class_names) if args.val_split else None
    config = RCNNConfig(
        num_classes=train_data.num_classes, region_size=args.region_size, width=args.region_width,
        proposals=SelectiveSearchConfig(mode=args.proposal_mode, max_proposals=args.max_proposals),
        box_regression=not args.no_box_regression,
    )
    cache_root = os.path.abspath(args.proposal_cache or os.path.join(os.path.dirname(run.path), "proposal-cache"))
    cache = ProposalCache(cache_root, config.proposals)
    progress = args.verbose > 0

    # 1 and 2: proposals, then the region CNN on labelled regions.
    crops, labels = classifier_regions(train_data, cache, config, args.seed, progress)
    logger.info("Region CNN: %d training regions, %.1f%% background", len(labels), 100 * np.mean(labels == 0))
    validation = None
    if val_data is not None:
        validation = classifier_regions(val_data, cache, config, args.seed + 1, progress)
    model = build_region_cnn(config.num_classes, config.region_size, config.width, config.feature_dim)
    steps = int(np.ceil(len(labels) / args.region_batch)) * args.epochs
    schedule = keras.optimizers.schedules.CosineDecay(args.learning_rate or 2e-3, steps)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    history = model.fit(crops.astype(np.float32), labels, batch_size=args.region_batch, epochs=args.epochs,
                        validation_data=(validation[0].astype(np.float32), validation[1]) if validation else None,
                        verbose=args.verbose, shuffle=True)
    del crops

    # 3: features of every ground truth and proposal, then the SVMs and the box regressors.
    features_of = feature_function(model)
    data = svm_and_regression_data(train_data, cache, features_of, config, progress)
    logger.info("Proposals: %s", cache.summary())
    norms = np.linalg.norm(data["proposal_features"], axis=1)
    scale = float(20.0 / max(norms.mean(), 1e-6))  # R-CNN scales features to a mean norm of 20
    weights, biases, mining = [], [], {}
    for c, name in enumerate(train_data.class_names):
        positives = data["gt_features"][data["gt_labels"] == c] * scale
        negatives = data["proposal_features"][data["negatives"][:, c]] * scale
        if len(positives) == 0:
            raise ValueError(f"Class {name!r} has no box in split {args.train_split!r} of {args.data}: its SVM "
                             "needs positives. Train on a split that contains every class.")
        svm, record = fit_svm_hard_negatives(positives, negatives, c=config.svm_c, seed=args.seed)
        weights.append(svm.weights)
        biases.append(svm.bias)
        mining[name] = record
        logger.info("SVM %s: %d positives, %d negatives, hard-negative rounds %s", name, len(positives),
                    len(negatives), record["rounds"])
    regressors = []
    for c in range(config.num_classes):
        x, t = data["regression"][c]
        if len(x) < 10:
            logger.warning("Box regression of class %s: only %d proposals with IoU >= %.1f; left as identity.",
                           train_data.class_names[c], len(x), config.regression_iou)
            regressors.append(np.zeros((config.feature_dim + 1, 4), np.float32))
        else:
            regressors.append(fit_ridge(x * scale, t))

    os.makedirs(run.path, exist_ok=True)
    np.savez(run.file("svm.npz"), weights=np.stack(weights), biases=np.asarray(biases, np.float32),
             feature_scale=np.float32(scale))
    np.savez(run.file("box_regression.npz"), weights=np.stack(regressors))
    metadata = {
        "format_version": METADATA_VERSION,
        "status": "finished",
        "task": "rcnn",
        "class_names": train_data.class_names,
        "input_size": [config.region_size, config.region_size],
        "model": config.to_dict(),
        "proposal_cache": cache_root,
        "data": {"source": args.data, "train_split": args.train_split, "val_split": args.val_split,
                 "train_images": len(train_data), "train_boxes": train_data.num_boxes(),
                 "train_skipped": train_data.skipped},
        "training": {
            "region_cnn": {"epochs": args.epochs, "batch_size": args.region_batch, "regions": int(len(labels)),
                           "final_accuracy": float(history.history["accuracy"][-1]),
                           "final_val_accuracy": float(history.history["val_accuracy"][-1]) if validation else None},
            "svm": {"c": config.svm_c, "feature_scale": scale, "hard_negative_mining": mining},
            "seconds": round(time.monotonic() - started, 1),
            "seed": args.seed,
        },
        "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__, "numpy": np.__version__},
    }
    write_json(run.metadata_path, metadata)
    with atomic_path(run.model_path) as temporary:  # model.keras last: it marks a finished run
        model.save(temporary)

    if val_data is not None:
        from dl09_keras.evaluation import mean_average_precision
        from dl09_keras.rcnn.detector import RCNNDetector, detect_samples

        detector = RCNNDetector(run.path, score_threshold=0.01)
        detections, ground_truths = detect_samples(detector, val_data, cache, progress)
        result = mean_average_precision(detections, ground_truths, val_data.class_names)
        key = f"{args.data} [{args.val_split}] keras"
        run.update_metadata(evaluation={key: {"map": result["map"], "ap": result["ap"], "images": len(val_data),
                                              "when": "end of training"}})
        logger.info("Validation mAP@0.5 on %s: %.4f %s", args.val_split, result["map"], result["ap"])
    logger.info("Run folder: %s", run.path)
    return run
