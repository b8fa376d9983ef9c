"""Tests of uniter_tf/data/boxes.py: the 7-d position feature, the UNITER box rule, filler boxes."""

import numpy as np
import pytest

from uniter_tf.data import boxes


def test_position_features_follow_the_uniter_layout():
    positions = boxes.position_features([[10, 20, 50, 80]], image_height=100, image_width=200)
    np.testing.assert_allclose(positions, [[0.05, 0.2, 0.25, 0.8, 0.2, 0.6, 0.12]], rtol=1e-6)


def test_position_features_clip_to_the_image():
    positions = boxes.position_features([[-10, -5, 300, 120]], image_height=100, image_width=200)
    np.testing.assert_allclose(positions, [[0, 0, 1, 1, 1, 1, 1]])


@pytest.mark.parametrize("num_confident, expected", [(0, 10), (3, 10), (10, 10), (37, 37), (100, 100), (150, 100)])
def test_compute_num_boxes_is_the_official_rule(num_confident, expected):
    scores = np.concatenate([np.full(num_confident, 0.9), np.full(200 - num_confident, 0.2)])
    # 0.2 itself is not counted: the rule is strictly greater than conf_th.
    assert boxes.compute_num_boxes(scores) == expected


def test_box_selection_is_configurable_and_validated():
    selection = boxes.BoxSelection(conf_threshold=0.5, min_boxes=2, max_boxes=4)
    assert selection.num_boxes([0.9, 0.6, 0.4]) == 2
    assert selection.num_boxes([0.9] * 9) == 4
    assert boxes.BoxSelection(conf_threshold=-1, min_boxes=36, max_boxes=36).num_boxes([0.1] * 50) == 36
    with pytest.raises(ValueError, match="max_boxes"):
        boxes.BoxSelection(min_boxes=10, max_boxes=5)
    with pytest.raises(ValueError, match="min_boxes"):
        boxes.BoxSelection(min_boxes=0)


def test_filler_boxes_start_with_the_whole_image_then_grids():
    filler = boxes.filler_boxes(6, image_height=60, image_width=80)
    np.testing.assert_allclose(filler[0], [0, 0, 80, 60])
    np.testing.assert_allclose(filler[1:5], [[0, 0, 40, 30], [40, 0, 80, 30], [0, 30, 40, 60], [40, 30, 80, 60]])
    np.testing.assert_allclose(filler[5], [0, 0, 80 / 3, 20], rtol=1e-6)
    assert boxes.filler_boxes(0, 10, 10).shape == (0, 4)


def test_box_conversions_round_trip():
    pixel = np.array([[10, 20, 50, 80]], np.float32)
    normalized = boxes.pixel_xyxy_to_normalized_yxyx(pixel, 100, 200)
    np.testing.assert_allclose(normalized, [[0.2, 0.05, 0.8, 0.25]])
    np.testing.assert_allclose(boxes.normalized_yxyx_to_pixel_xyxy(normalized, 100, 200), pixel, rtol=1e-6)
    np.testing.assert_allclose(boxes.xywh_to_xyxy([[10, 20, 40, 60]]), pixel)


def test_box_iou():
    iou = boxes.box_iou([[0, 0, 10, 10]], [[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    np.testing.assert_allclose(iou, [[1.0, 1 / 3, 0.0]], rtol=1e-6)


def test_bad_boxes_raise():
    with pytest.raises(ValueError, match=r"\[n, 4\]"):
        boxes.position_features([[1, 2, 3]], 10, 10)
    with pytest.raises(ValueError, match="NaN"):
        boxes.position_features([[1, 2, np.nan, 4]], 10, 10)
    with pytest.raises(ValueError, match="image size"):
        boxes.position_features([[1, 2, 3, 4]], 0, 10)
