"""The default SSD-MobileNet-v2 detector on real photos shipped in scikit-image and scikit-learn."""

import json
import os
import shutil

import numpy as np
import pytest
import skimage
import sklearn

from uniter_tf.data import sample_data, schema, tfrecord_io
from uniter_tf.extraction import beam_pipeline, ssd_mobilenet
from uniter_tf.extraction.images import decode_image
from uniter_tf.extraction.labels import coco_labels
from uniter_tf.extraction.region_extractor import RegionFeatureExtractor

SKIMAGE_DATA = os.path.join(os.path.dirname(skimage.__file__), "data")
SKLEARN_IMAGES = os.path.join(os.path.dirname(sklearn.__file__), "datasets", "images")
PHOTOS = {
        "astronaut": os.path.join(SKIMAGE_DATA, "astronaut.png"),
        "chelsea": os.path.join(SKIMAGE_DATA, "chelsea.png"),
        "coffee": os.path.join(SKIMAGE_DATA, "coffee.png"),
        "rocket": os.path.join(SKIMAGE_DATA, "rocket.jpg"),
        "china": os.path.join(SKLEARN_IMAGES, "china.jpg"),
        "flower": os.path.join(SKLEARN_IMAGES, "flower.jpg"),
}


@pytest.fixture(scope="module")
def extractor():
    return RegionFeatureExtractor(ssd_mobilenet.SsdMobileNetDetector())


def _load(name):
    with open(PHOTOS[name], "rb") as handle:
        return decode_image(handle.read(), PHOTOS[name])


@pytest.mark.parametrize("photo, expected_label", [("chelsea", "cat"), ("astronaut", "person"), ("coffee", "cup")])
def test_detects_the_main_object_of_real_photos(extractor, photo, expected_label):
    regions = extractor.extract(_load(photo), photo)
    labels = coco_labels()
    detected = [labels[c] for c, source in zip(regions.detected_classes, regions.region_sources)
                if source == "detected"]
    assert detected[0] == expected_label
    assert regions.detected_scores[0] > 0.5
    # The top detection covers a large part of the photo (the cat, the astronaut, the cup).
    x1, y1, x2, y2 = regions.region_boxes[0]
    assert (x2 - x1) * (y2 - y1) > 0.15 * regions.image_height * regions.image_width


@pytest.mark.parametrize("photo", sorted(PHOTOS))
def test_every_photo_gives_a_valid_record_with_the_documented_dims(extractor, photo):
    regions = extractor.extract(_load(photo), photo)
    assert 10 <= len(regions.region_sources) <= 100
    assert regions.region_features.shape[1] == 1856 == extractor.feature_dim
    assert regions.soft_labels.shape[1] == 91
    np.testing.assert_allclose(regions.soft_labels.sum(axis=1), 1.0, atol=1e-5)
    assert np.all(regions.region_features >= 0)  # pooled ReLU6 maps
    decoded = schema.decode_example(regions.to_example().SerializeToString())
    assert decoded[schema.FEATURE_DIM] == 1856
    np.testing.assert_allclose(decoded[schema.REGION_FEATURES], regions.region_features, rtol=1e-3, atol=1e-3)


def test_ground_truth_boxes_of_sample_data(extractor, tmp_path):
    sample_data.generate(str(tmp_path), sample_data.SampleDataConfig(num_images=2, seed=1))
    boxes = json.loads((tmp_path / "boxes.json").read_text())
    for file_name, entry in boxes.items():
        with open(tmp_path / "images" / file_name, "rb") as handle:
            image = decode_image(handle.read(), file_name)
        regions = extractor.extract(image, file_name, gt_boxes=np.asarray(entry["boxes"], np.float32))
        assert regions.region_features.shape == (len(entry["boxes"]), 1856)
        assert np.all(np.isfinite(regions.region_features))


@pytest.mark.slow
@pytest.mark.e2e
def test_beam_extraction_with_the_default_detector(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("chelsea", "coffee"):
        shutil.copy(PHOTOS[name], images)
    counters = beam_pipeline.run_extraction(
            str(images / "*.png"), str(tmp_path / "out"), beam_pipeline.ExtractionConfig(),
            beam_args=["--runner=DirectRunner"], num_shards=1)
    assert counters[beam_pipeline.IMAGES_IN] == counters[beam_pipeline.IMAGES_OK] == 2
    decoded = list(tfrecord_io.read_decoded(str(tmp_path / "out" / "region_features-*"), feature_dim=1856,
                                            num_soft_labels=91))
    assert sorted(record["image_id"].numpy() for record in decoded) == [b"chelsea", b"coffee"]
