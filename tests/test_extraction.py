"""Unit tests of region extraction: box selection + filling, soft labels, gt boxes, pooling, decoding."""

import io

import numpy as np
import pytest

from uniter_tf.data import boxes as boxes_lib
from uniter_tf.data import dead_letter, schema
from uniter_tf.extraction import region_extractor
from uniter_tf.extraction.detector import Detections, Detector
from uniter_tf.extraction.images import ImageDecodeError, decode_image
from uniter_tf.extraction.roi_pooling import RoiPooler


class ScriptedDetector(Detector):
    """Returns fixed detections; feature map 0 holds the x coordinate, map 1 the y coordinate of each cell."""

    def __init__(self, boxes, scores, classes, poison=False):
        self._boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        self._scores = np.asarray(scores, np.float32)
        self._classes = np.asarray(classes, np.int32)
        self._poison = poison

    @property
    def num_classes(self):
        return 5

    @property
    def feature_map_channels(self):
        return [1, 2]

    def detect(self, image):
        x_map = np.tile(np.linspace(0, 1, 10, dtype=np.float32)[None, :, None], (10, 1, 1))
        y_map = np.tile(np.linspace(0, 1, 5, dtype=np.float32)[:, None, None], (1, 5, 2))
        if self._poison:
            x_map[:] = np.nan
        return Detections(self._boxes.copy(), self._scores.copy(), self._classes.copy(), [x_map, y_map])


IMAGE = np.zeros((100, 200, 3), np.uint8)


def _extractor(detector, **kwargs):
    selection = boxes_lib.BoxSelection(conf_threshold=0.2, min_boxes=3, max_boxes=4)
    return region_extractor.RegionFeatureExtractor(detector, selection, RoiPooler(crop_size=3), **kwargs)


def test_keeps_confident_detections_up_to_max_and_records_the_rule():
    detector = ScriptedDetector(
            boxes=[[0, 0, 0.5, 0.5]] * 6, scores=[0.9, 0.8, 0.7, 0.6, 0.5, 0.1], classes=[1, 2, 3, 4, 1, 2])
    regions = _extractor(detector).extract(IMAGE, "img")
    assert regions.region_features.shape == (4, 3)
    assert regions.region_sources == ["detected"] * 4
    np.testing.assert_allclose(regions.detected_scores, [0.9, 0.8, 0.7, 0.6])


def test_fills_with_whole_image_then_grid_when_too_few_detections():
    detector = ScriptedDetector(boxes=[[0.0, 0.0, 0.5, 0.25]], scores=[0.9], classes=[3])
    regions = _extractor(detector).extract(IMAGE, "img")
    assert regions.region_sources == ["detected", "filler", "filler"]
    np.testing.assert_allclose(regions.region_boxes[0], [0, 0, 50, 50])  # normalised yxyx -> pixel xyxy
    np.testing.assert_allclose(regions.region_boxes[1], [0, 0, 200, 100])
    np.testing.assert_allclose(regions.region_boxes[2], [0, 0, 100, 50])
    np.testing.assert_allclose(regions.soft_labels[0], [0.1, 0, 0, 0.9, 0], atol=1e-6)
    np.testing.assert_allclose(regions.soft_labels[1:], [[1, 0, 0, 0, 0]] * 2)


def test_without_fill_an_image_without_detections_is_rejected():
    detector = ScriptedDetector(boxes=np.zeros((0, 4)), scores=[], classes=[])
    with pytest.raises(region_extractor.RegionExtractionError) as error:
        _extractor(detector, fill=False).extract(IMAGE, "empty-image")
    assert error.value.reason == dead_letter.NO_REGIONS
    assert "empty-image" in str(error.value)


def test_pooled_features_follow_the_box_position():
    detector = ScriptedDetector(boxes=[[0, 0, 1, 0.2], [0, 0.8, 1, 1.0], [0, 0, 1, 1]], scores=[0.9] * 3,
                                classes=[1, 1, 1])
    features = _extractor(detector).extract(IMAGE, "img").region_features
    assert features[0, 0] < 0.2 < 0.8 < features[1, 0]  # x-coordinate map
    assert features[2, 0] == pytest.approx(0.5, abs=0.05)


def test_ground_truth_boxes_take_the_class_of_the_overlapping_detection():
    detector = ScriptedDetector(boxes=[[0.0, 0.0, 0.5, 0.5]], scores=[0.8], classes=[2])
    gt_boxes = np.array([[0, 0, 100, 50], [150, 60, 190, 90]], np.float32)
    regions = _extractor(detector).extract(IMAGE, "img", gt_boxes=gt_boxes)
    assert regions.region_sources == ["ground_truth", "ground_truth"]
    np.testing.assert_allclose(regions.region_boxes, gt_boxes)
    np.testing.assert_allclose(regions.soft_labels, [[0.2, 0, 0.8, 0, 0], [1, 0, 0, 0, 0]], atol=1e-6)


@pytest.mark.parametrize("gt_boxes, message", [
        (np.zeros((0, 4)), "no ground-truth boxes"),
        (np.array([[300, 0, 400, 50]]), "no area inside"),
        (np.array([[0, 0, np.nan, 5]]), "finite"),
])
def test_bad_ground_truth_boxes_are_rejected(gt_boxes, message):
    detector = ScriptedDetector(boxes=[[0, 0, 1, 1]], scores=[0.9], classes=[1])
    with pytest.raises(region_extractor.RegionExtractionError, match=message):
        _extractor(detector).extract(IMAGE, "img", gt_boxes=gt_boxes)


def test_non_finite_features_are_rejected():
    detector = ScriptedDetector(boxes=[[0, 0, 1, 1]], scores=[0.9], classes=[1], poison=True)
    with pytest.raises(region_extractor.RegionExtractionError) as error:
        _extractor(detector).extract(IMAGE, "nan-image")
    assert error.value.reason == dead_letter.NON_FINITE_FEATURES


def test_extracted_regions_make_a_canonical_record():
    detector = ScriptedDetector(boxes=[[0.1, 0.1, 0.6, 0.9]], scores=[0.7], classes=[4])
    example = _extractor(detector).extract(IMAGE, "img-9").to_example()
    decoded = schema.decode_example(example.SerializeToString())
    assert decoded[schema.IMAGE_ID] == b"img-9"
    assert decoded[schema.FEATURE_DIM] == 3 and decoded[schema.NUM_REGIONS] == 3
    assert decoded[schema.NUM_SOFT_LABELS] == 5
    assert (decoded[schema.IMAGE_HEIGHT], decoded[schema.IMAGE_WIDTH]) == (100, 200)
    np.testing.assert_allclose(decoded[schema.SOFT_LABELS].sum(axis=1), 1.0, atol=1e-3)
    np.testing.assert_allclose(decoded[schema.REGION_POSITIONS][0], [0.1, 0.1, 0.9, 0.6, 0.8, 0.5, 0.4], atol=1e-6)


def test_soft_labels_reject_out_of_range_classes():
    with pytest.raises(ValueError, match="class ids"):
        region_extractor.detection_soft_labels(np.array([7]), np.array([0.5]), num_classes=5)


def test_decode_image_handles_modes_and_rejects_garbage():
    from PIL import Image

    for mode in ("L", "RGBA", "P", "CMYK"):
        buffer = io.BytesIO()
        Image.new(mode, (7, 5)).save(buffer, format="PNG" if mode != "CMYK" else "JPEG")
        assert decode_image(buffer.getvalue()).shape == (5, 7, 3)
    with pytest.raises(ImageDecodeError, match="bad.png: empty file"):
        decode_image(b"", "bad.png")
    with pytest.raises(ImageDecodeError, match="cannot decode image"):
        decode_image(b"not an image at all", "bad.jpg")
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buffer, format="PNG")
    with pytest.raises(ImageDecodeError, match="truncated.png"):
        decode_image(buffer.getvalue()[:60], "truncated.png")


def test_coco_labels_asset():
    from uniter_tf.extraction.labels import coco_labels, coco_unused_ids

    labels = coco_labels()
    assert len(labels) == 91
    assert (labels[0], labels[1], labels[17], labels[47], labels[90]) == (
            "background", "person", "cat", "cup", "toothbrush")
    assert 12 in coco_unused_ids() and 17 not in coco_unused_ids()
