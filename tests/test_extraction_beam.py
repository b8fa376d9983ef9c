"""The Beam extraction pipeline and `uniter extract` on rendered sample data, with the toy SavedModel detector."""

import json
import os
import shutil

import numpy as np
import pytest

from uniter_tf import cli
from uniter_tf.data import dead_letter, sample_data, schema, tfrecord_io
from uniter_tf.extraction import beam_pipeline, toy_detector
from uniter_tf.extraction.detector import load_detector
from uniter_tf.extraction.saved_model_detector import SavedModelDetector


@pytest.fixture(scope="module")
def toy_detector_path(tmp_path_factory):
    return toy_detector.write_toy_detector(str(tmp_path_factory.mktemp("toy") / "detector"))


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """Five rendered scenes, a truncated PNG and a text file named .jpg."""
    root = tmp_path_factory.mktemp("sample")
    sample_data.generate(str(root), sample_data.SampleDataConfig(num_images=5, seed=3))
    images = root / "images"
    good = (images / "sample_000000.png").read_bytes()
    (images / "truncated.png").write_bytes(good[: len(good) // 3])
    (images / "not_an_image.jpg").write_text("hello")
    return root


def _read_records(output_dir):
    return [schema.decode_example(record.numpy())
            for record in tfrecord_io.read_examples(os.path.join(output_dir, "region_features-*"))]


def test_saved_model_detector_follows_the_contract(toy_detector_path):
    detector = load_detector(toy_detector_path, num_classes=toy_detector.NUM_CLASSES)
    assert isinstance(detector, SavedModelDetector)
    assert detector.feature_dim == toy_detector.FEATURE_DIM
    image = np.zeros((50, 70, 3), np.uint8)
    image[:25, :35] = (255, 0, 0)  # a red top-left quadrant is the most saturated area
    detections = detector.detect(image)
    assert detections.boxes.shape == (16, 4)
    assert np.all(np.diff(detections.scores) <= 0)
    assert detections.classes[0] == 1
    assert detections.boxes[0, 0] < 0.5 and detections.boxes[0, 1] < 0.5


def test_load_detector_rejects_bad_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="detector not found"):
        load_detector(str(tmp_path / "missing"))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(FileNotFoundError, match="neither a frozen graph"):
        load_detector(str(tmp_path / "empty_dir"))


@pytest.mark.e2e
def test_pipeline_keeps_every_good_image_and_dead_letters_the_bad(toy_detector_path, image_dir, tmp_path):
    output_dir = str(tmp_path / "out")
    config = beam_pipeline.ExtractionConfig(detector_path=toy_detector_path, num_classes=toy_detector.NUM_CLASSES,
                                            min_boxes=3, max_boxes=6)
    counters = beam_pipeline.run_extraction(str(image_dir / "images" / "*"), output_dir, config,
                                            beam_args=["--runner=DirectRunner"], num_shards=2)
    assert counters[beam_pipeline.IMAGES_IN] == 7
    assert counters[beam_pipeline.IMAGES_OK] == 5
    assert counters[dead_letter.UNREADABLE_INPUT] == 2
    assert counters[beam_pipeline.IMAGES_OK] + beam_pipeline.num_dead_letters(counters) == 7

    records = _read_records(output_dir)
    assert sorted(record[schema.IMAGE_ID] for record in records) == [b"sample_%06d" % i for i in range(5)]
    for record in records:
        assert 3 <= record[schema.NUM_REGIONS] <= 6
        assert record[schema.FEATURE_DIM] == toy_detector.FEATURE_DIM
        assert record[schema.NUM_SOFT_LABELS] == toy_detector.NUM_CLASSES
        assert (record[schema.IMAGE_HEIGHT], record[schema.IMAGE_WIDTH]) == (240, 320)
        assert np.all(np.isfinite(record[schema.REGION_FEATURES]))
    letters = dead_letter.read_dead_letters(
            [os.path.join(output_dir, name) for name in os.listdir(output_dir) if name.startswith("dead_letters")])
    assert sorted(letter.record_id for letter in letters) == ["not_an_image", "truncated"]
    assert all(letter.reason == dead_letter.UNREADABLE_INPUT and letter.source for letter in letters)
    summary = json.loads((tmp_path / "out" / beam_pipeline.SUMMARY_FILE).read_text())
    assert summary["dead_letters"] == 2 and summary["counters"]["images_ok"] == 5

    decoded = list(tfrecord_io.read_decoded(os.path.join(output_dir, "region_features-*"),
                                            feature_dim=toy_detector.FEATURE_DIM))
    assert len(decoded) == 5
    assert decoded[0]["region_features"].shape[1] == toy_detector.FEATURE_DIM


@pytest.mark.e2e
def test_cli_ground_truth_mode_passes_beam_flags_and_rejects_images_without_boxes(
        toy_detector_path, image_dir, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for index in range(3):
        shutil.copy(image_dir / "images" / f"sample_{index:06d}.png", images)
    boxes = json.loads((image_dir / "boxes.json").read_text())
    del boxes["sample_000002.png"]
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    output_dir = tmp_path / "out"
    status = cli.main(["extract", "--images", str(images / "*.png"), "--output", str(output_dir),
                       "--detector", toy_detector_path, "--num-classes", "4", "--boxes-json",
                       str(tmp_path / "boxes.json"), "--num-shards", "1",
                       "--runner=DirectRunner", "--direct_num_workers=1"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "extraction summary" in printed and "missing_field" in printed
    records = {record[schema.IMAGE_ID]: record for record in _read_records(str(output_dir))}
    assert sorted(records) == [b"sample_000000", b"sample_000001"]
    for name in ("sample_000000", "sample_000001"):
        np.testing.assert_allclose(records[name.encode()][schema.REGION_BOXES], boxes[f"{name}.png"]["boxes"])
    letters = dead_letter.read_dead_letters([str(path) for path in output_dir.glob("dead_letters-*")])
    assert [(letter.record_id, letter.reason) for letter in letters] == [("sample_000002", dead_letter.MISSING_FIELD)]


def test_cli_reports_a_glob_that_matches_nothing(tmp_path, capsys):
    status = cli.main(["extract", "--images", str(tmp_path / "*.png"), "--output", str(tmp_path / "out")])
    assert status == 2
    assert "no images match" in capsys.readouterr().err


def test_ground_truth_boxes_file_is_validated(tmp_path):
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps({"a.png": {"labels": ["x"]}}))
    with pytest.raises(ValueError, match="'a.png' has no 'boxes' list"):
        beam_pipeline.load_ground_truth_boxes(str(path))
    path.write_text(json.dumps({"dir/b.png": [[0, 0, 5, 5]]}))
    assert beam_pipeline.load_ground_truth_boxes(str(path)) == {"b.png": [[0, 0, 5, 5]]}
