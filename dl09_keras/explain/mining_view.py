"""``dl09 explain mining``: the negatives hard negative mining keeps for a trained SSD on one image.

After matching, most default boxes are background. The SSD loss keeps, per
image, only the ``3 * P`` background boxes with the highest confidence loss
(P matched boxes), the ones the model most wrongly takes for objects. The view
shows the positives and those hard negatives beside a sample of the easy
negatives left out, and the loss histogram with the cut.
"""

from __future__ import annotations

import dataclasses
import numpy as np

from dl09_keras.explain.figures import draw_boxes, new_figure, resize_to_input, save_png, show_image
from dl09_keras.explain.layout import BoxLayout


@dataclasses.dataclass
class MiningResult:
    """Hard negative mining on one image; every array has one entry per default box (A,).

    Args:
        positive: bool, matched default boxes.
        hard: bool, negatives kept by mining.
        easy: bool, negatives left out.
        loss: float32, softmax cross-entropy of each box against its target class.
        background_score: float32, the model's background probability of each box.
    """

    positive: np.ndarray
    hard: np.ndarray
    easy: np.ndarray
    loss: np.ndarray
    background_score: np.ndarray


def mine_image(model, layout: BoxLayout, image: np.ndarray, boxes, labels, neg_pos_ratio=3.0,
               empty_image_negatives=8) -> MiningResult:
    """Run an SSD training ``model`` on one RGB image and apply the loss's mining to its outputs.

    Args:
        model: SSD training model, image (1, H, W, 3) float32 in [0, 255] -> (1, A, 4 + C + 1).
        image: RGB uint8 (H, W, 3) of any size, resized as inference does.
        boxes: (G, 4) normalized ground truth; labels: (G,) 0-based classes.
    """
    import tensorflow as tf

    from dl09_keras.data.augment import resize_for_model
    from dl09_keras.losses import hard_negative_mask
    from dl09_keras.matching import TargetEncoder

    if layout.task != "ssd":
        raise ValueError(f"Hard negative mining belongs to the SSD loss, but this run is a {layout.task}: an RPN "
                         "samples 256 anchors per image instead (see dl09 explain matching).")
    pixels = resize_for_model(image, layout.input_size)[None]
    prediction = tf.convert_to_tensor(model(pixels, training=False))
    target = TargetEncoder(layout.boxes)(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int32))
    target_class = tf.cast(target[:, 4], tf.int32)[None]
    logits = prediction[..., 4:]
    loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=target_class, logits=logits)
    positive = target_class > 0
    hard = hard_negative_mask(positive, loss, neg_pos_ratio, empty_image_negatives)
    positive, hard = positive[0].numpy(), hard[0].numpy()
    return MiningResult(positive, hard, ~positive & ~hard, loss[0].numpy(),
                        tf.nn.softmax(logits, axis=-1)[0, :, 0].numpy())


def plot_mining(image: np.ndarray, gt_boxes, result: MiningResult, layout: BoxLayout, path: str,
                seed: int = 0) -> str:
    """Draw positives and hard negatives, a same-size sample of the easy negatives, and the loss histogram."""
    resized = resize_to_input(image, layout.input_size)
    positives, hard, easy = (np.nonzero(m)[0] for m in (result.positive, result.hard, result.easy))
    rng = np.random.default_rng(seed)
    easy_sample = rng.choice(easy, size=min(len(hard), len(easy)), replace=False) if len(easy) else easy

    figure = new_figure(13.0, 4.4)
    kept_axes, easy_axes, histogram = figure.subplots(1, 3)
    show_image(kept_axes, resized, f"{len(positives)} positives (green), {len(hard)} hard negatives kept (red)")
    draw_boxes(kept_axes, layout.boxes[hard], resized.shape, "red", linewidth=0.8)
    draw_boxes(kept_axes, layout.boxes[positives], resized.shape, "lime", linewidth=1.0)
    draw_boxes(kept_axes, gt_boxes, resized.shape, "white", linewidth=1.5, linestyle=":")
    show_image(easy_axes, resized, f"{len(easy_sample)} of the {len(easy)} easy negatives left out (blue)")
    draw_boxes(easy_axes, layout.boxes[easy_sample], resized.shape, "deepskyblue", linewidth=0.8)

    bins = np.geomspace(max(float(result.loss[~result.positive].min()), 1e-6),
                        max(float(result.loss.max()), 1e-5), 40)
    histogram.hist(result.loss[easy], bins=bins, color="deepskyblue", label="easy negatives (left out)")
    histogram.hist(result.loss[hard], bins=bins, color="red", label="hard negatives (kept)")
    histogram.hist(result.loss[positives], bins=bins, color="lime", alpha=0.7, label="positives")
    histogram.set_xscale("log")
    histogram.set_yscale("log")
    histogram.set_xlabel("confidence loss (cross-entropy)")
    histogram.set_ylabel("default boxes")
    histogram.legend(fontsize=8)
    ratio = len(hard) / max(len(positives), 1)
    figure.suptitle(f"Hard negative mining: {len(hard)} of {len(hard) + len(easy)} negatives kept "
                    f"({ratio:.1f} per positive); white dotted = ground truth", fontsize=10)
    return save_png(figure, path)


def mining_counts(result: MiningResult) -> dict[str, int]:
    """Return the counts behind the view: positives, hard negatives, easy negatives."""
    return {"positives": int(result.positive.sum()), "hard_negatives": int(result.hard.sum()),
            "easy_negatives": int(result.easy.sum())}
