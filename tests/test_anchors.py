import math

import numpy as np
import pytest

from dl09_keras.anchors import DefaultBoxConfig, default_boxes, feature_map_scales, fit_scales, match_coverage
from dl09_keras.models import SSDConfig, build_ssd, feature_shapes


@pytest.mark.parametrize("input_size", [(320, 320), (300, 300), (256, 256), (240, 320)])
def test_default_box_count_equals_model_outputs(input_size):
    config = SSDConfig(num_classes=3, input_size=input_size, width=0.25)
    model = build_ssd(config)
    shapes = feature_shapes(model)
    boxes = default_boxes(shapes, input_size, config.box_config)
    assert model.output.shape[1] == len(boxes)
    assert model.output.shape[2] == 4 + 3 + 1
    assert len(shapes) >= 4
    assert all(a[0] > b[0] and a[1] > b[1] for a, b in zip(shapes, shapes[1:])), shapes


def test_default_box_count_with_fpn_and_mobilenet():
    for config in (SSDConfig(num_classes=2, input_size=(256, 256), width=0.25, neck="fpn"),
                   SSDConfig(num_classes=2, input_size=(224, 288), backbone="mobilenetv2", width=0.35)):
        model = build_ssd(config)
        assert model.output.shape[1] == len(default_boxes(feature_shapes(model), config.input_size))


def test_scales_are_evenly_spaced():
    np.testing.assert_allclose(feature_map_scales(6, 0.2, 0.9), [0.2, 0.34, 0.48, 0.62, 0.76, 0.9, 1.0])
    np.testing.assert_allclose(feature_map_scales(4, 0.1, 0.4), [0.1, 0.2, 0.3, 0.4, 0.5])


def test_boxes_of_one_cell_follow_scale_and_ratio():
    config = DefaultBoxConfig(min_scale=0.2, max_scale=0.6)
    boxes = default_boxes([(2, 2), (1, 1)], (100, 100), config)
    assert len(boxes) == (4 + 1) * config.boxes_per_location
    first_cell = boxes[:6]
    heights = first_cell[:, 2] - first_cell[:, 0]
    widths = first_cell[:, 3] - first_cell[:, 1]
    ratios = [1.0, 2.0, 3.0, 0.5, 1.0 / 3.0]
    np.testing.assert_allclose(widths[:5], [0.2 * math.sqrt(a) for a in ratios], rtol=1e-5)
    np.testing.assert_allclose(heights[:5], [0.2 / math.sqrt(a) for a in ratios], rtol=1e-5)
    extra = math.sqrt(0.2 * 0.6)  # sqrt(s_1 * s_2)
    np.testing.assert_allclose([heights[5], widths[5]], [extra, extra], rtol=1e-5)
    # Every box of the first cell is centered on that cell's center (0.25, 0.25).
    np.testing.assert_allclose((first_cell[:, :2] + first_cell[:, 2:]) / 2, 0.25, atol=1e-6)


def test_ratio_one_box_square_on_non_square_input():
    boxes = default_boxes([(3, 4)], (300, 400), DefaultBoxConfig(aspect_ratios=(1.0,), extra_box=False))
    height_px = (boxes[0, 2] - boxes[0, 0]) * 300
    width_px = (boxes[0, 3] - boxes[0, 1]) * 400
    assert height_px == pytest.approx(width_px, rel=1e-5)


def test_fit_scales_follows_box_sizes():
    rng = np.random.default_rng(0)
    sides = rng.uniform(0.1, 0.5, 200)
    corners = rng.uniform(0, 0.5, (200, 2))
    boxes = np.concatenate([corners, corners + sides[:, None]], axis=1)
    low, high = fit_scales([boxes], [(20, 20), (10, 10), (5, 5), (3, 3)], (160, 160))
    assert 0.1 <= low <= 0.2
    assert 0.45 <= high <= 0.5


def test_fit_scales_prefers_coverage_over_the_smallest_quantile():
    # 5% of the boxes are tiny (0.01), the rest 0.2: a 0.01 scale on a 10x10 first map covers
    # none of them and wastes that map, so a larger scale must win.
    tiny = np.tile([[0.0, 0.0, 0.01, 0.01]], (5, 1))
    rng = np.random.default_rng(1)
    corners = rng.uniform(0, 0.8, (95, 2))
    normal = np.concatenate([corners, corners + 0.2], axis=1)
    shapes = [(10, 10), (5, 5), (3, 3), (2, 2)]
    low, _ = fit_scales([tiny, normal], shapes, (80, 80))
    assert low > 0.05
    chosen = default_boxes(shapes, (80, 80), DefaultBoxConfig(min_scale=low, max_scale=0.3))
    assert match_coverage([normal], chosen) > 0.9


def test_coverage_counts_boxes_with_a_good_default_box():
    anchors = np.array([[0.0, 0.0, 0.5, 0.5]], np.float32)
    boxes = np.array([[0.0, 0.0, 0.5, 0.5], [0.6, 0.6, 0.9, 0.9]], np.float32)
    assert match_coverage([boxes], anchors) == 0.5


def test_invalid_config_names_the_value():
    with pytest.raises(ValueError, match="min_scale=0.9"):
        DefaultBoxConfig(min_scale=0.9, max_scale=0.2)
