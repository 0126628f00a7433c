"""``dl09 explain proposals``: an RPN's proposals on one image, before and after NMS, coloured by objectness.

Before NMS: the decoded anchors with the highest object probability, clipped
to the image, tiny boxes dropped, many of them near copies of each other.
After NMS at IoU 0.7: the proposals the detection head receives. Boxes are
normalized ``[ymin, xmin, ymax, xmax]``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize

from dl09_keras.boxes import iou_matrix_np
from dl09_keras.explain.figures import draw_boxes, new_figure, resize_to_input, save_png, show_image


@dataclasses.dataclass
class ProposalSets:
    """Proposals of one image, best first: boxes (N, 4) and objectness (N,) before and after NMS."""

    before_boxes: np.ndarray
    before_scores: np.ndarray
    after_boxes: np.ndarray
    after_scores: np.ndarray


def proposal_sets(model, config, image: np.ndarray) -> ProposalSets:
    """Run the RPN of a trained RPN or Faster R-CNN ``model`` on one RGB image.

    Args:
        model: the run's training model (model.keras).
        config: its :class:`dl09_keras.models.faster_rcnn.FasterRCNNConfig`.
        image: RGB uint8 (H, W, 3), resized as inference does.

    Returns:
        the top ``config.test_top_n[0]`` proposals before NMS and the at most
        ``config.test_top_n[1]`` after it.
    """
    import keras

    from dl09_keras.data.augment import resize_for_model
    from dl09_keras.layers import ProposalLayer
    from dl09_keras.models.faster_rcnn import SplitRPNOutputs

    inputs = model.input["image"] if isinstance(model.input, dict) else model.input
    feature_shape = tuple(int(v) for v in model.get_layer("rpn_conv").input.shape[1:3])
    rpn = keras.Model(inputs, model.get_layer("rpn").output)
    objectness, offsets = SplitRPNOutputs()(rpn(resize_for_model(image, config.input_size)[None], training=False))
    before, after = config.test_top_n
    # NMS at IoU 1.0 suppresses nothing, so that layer returns the top `before` boxes as they enter NMS.
    before_nms = ProposalLayer(feature_shape, config.input_size, config.anchor_config, test_top_n=(before, before),
                          nms_iou=1.0)(objectness, offsets)
    after_nms = ProposalLayer(feature_shape, config.input_size, config.anchor_config, test_top_n=(before, after),
                         nms_iou=config.nms_iou)(objectness, offsets)
    # Both layers pad their output with zero rows: past the anchor count, and after the dropped tiny boxes.
    (before_boxes, before_scores), (after_boxes, after_scores) = (
        (np.asarray(b)[0], np.asarray(s)[0]) for b, s in (before_nms, after_nms))
    before, after = before_scores > 0, after_scores > 0
    return ProposalSets(before_boxes[before], before_scores[before], after_boxes[after], after_scores[after])


def covered_ground_truths(proposals: np.ndarray, gt_boxes: np.ndarray, threshold: float = 0.5) -> int:
    """Count the ground truths (G, 4) that some proposal (N, 4) overlaps with IoU >= threshold."""
    gt_boxes = np.asarray(gt_boxes, np.float32).reshape(-1, 4)
    if not len(gt_boxes) or not len(proposals):
        return 0
    return int((iou_matrix_np(gt_boxes, proposals).max(axis=1) >= threshold).sum())


def plot_proposals(image: np.ndarray, gt_boxes, sets: ProposalSets, input_size, path: str, top: int = 100) -> str:
    """Draw the ``top`` best proposals before and after NMS, coloured by objectness, ground truth dotted."""
    height, width = input_size
    resized = resize_to_input(image, input_size)
    figure = new_figure(11.0, 11.0 * height / width / 2 + 1.0)
    axes = figure.subplots(1, 2)
    colormap, norm = colormaps["viridis"], Normalize(0.0, 1.0)
    gt_count = len(np.asarray(gt_boxes).reshape(-1, 4))
    panels = ((axes[0], "before NMS", sets.before_boxes, sets.before_scores),
              (axes[1], "after NMS", sets.after_boxes, sets.after_scores))
    for panel, name, boxes, scores in panels:
        drawn_boxes, drawn_scores = boxes[:top][::-1], scores[:top][::-1]  # the best drawn last, on top
        covered = covered_ground_truths(boxes[:top], gt_boxes)
        show_image(panel, resized, f"{name}: best {len(drawn_scores)} of {len(scores)}; "
                                 f"{covered}/{gt_count} ground truths at IoU >= 0.5")
        draw_boxes(panel, drawn_boxes, resized.shape, [colormap(norm(s)) for s in drawn_scores], linewidth=1.0)
        draw_boxes(panel, gt_boxes, resized.shape, "white", linewidth=1.5, linestyle=":")
    mappable = figure.colorbar(ScalarMappable(norm=norm, cmap=colormap), ax=axes, shrink=0.8)
    mappable.set_label("objectness (object probability)")
    figure.suptitle("RPN proposals before and after NMS (IoU 0.7); white dotted = ground truth", fontsize=10)
    return save_png(figure, path)

