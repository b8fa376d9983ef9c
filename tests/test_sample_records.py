"""Tests of the detector-free sample-data → pretraining-records converter (uniter_tf/data/sample_records.py)."""

import json

import numpy as np
import pytest
from helpers.ingest_test_data import read_tfrecords

from uniter_tf.config import UniterConfig
from uniter_tf.data import sample_data, schema, tfrecord_io
from uniter_tf.data import sample_records


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample_records")
    sample_data.generate(str(root / "sample"), sample_data.SampleDataConfig(num_images=10, seed=3))
    config = UniterConfig.from_preset("tiny")
    paths = sample_records.write_sample_pretraining_records(str(root / "sample"), str(root / "records"), config,
                                                            eval_every=5)
    return root, config, paths


def test_every_caption_becomes_one_record_split_by_image(converted):
    root, config, paths = converted
    captions = json.loads((root / "sample" / "captions.json").read_text())
    assert paths["train"] and paths["eval"]
    train, held_out = read_tfrecords(root / "records", "train-*"), read_tfrecords(root / "records", "eval-*")
    assert len(train) + len(held_out) == len(captions["annotations"])
    # Images 0 and 5 (image_id % 5 == 0) are held out, whole: no image is on both sides.
    assert {record[schema.IMAGE_ID] for record in held_out} == {b"sample_000000.png", b"sample_000005.png"}
    assert not {record[schema.IMAGE_ID] for record in train} & {record[schema.IMAGE_ID] for record in held_out}


def test_regions_are_the_ground_truth_boxes_with_labelled_soft_labels(converted):
    root, config, _ = converted
    boxes = json.loads((root / "sample" / "boxes.json").read_text())
    classes = [f"{color} {shape}" for color in sample_data.COLORS for shape in sample_data.SHAPES]
    for record in read_tfrecords(root / "records"):
        entry = boxes[record[schema.IMAGE_ID].decode()]
        assert record[schema.NUM_REGIONS] == len(entry["boxes"])
        assert record[schema.REGION_FEATURES].shape == (len(entry["boxes"]), config.region_feature_dim)
        # Pixel colour features: the 4x4 RGB grid and the histograms lie in [0, 1] and are not all zero.
        assert 0.0 <= record[schema.REGION_FEATURES].min() and record[schema.REGION_FEATURES].max() <= 1.0
        assert np.all(record[schema.REGION_FEATURES].sum(axis=1) > 0)
        np.testing.assert_allclose(record[schema.REGION_BOXES], np.asarray(entry["boxes"], np.float32))
        soft_labels = record[schema.SOFT_LABELS]
        assert soft_labels.shape == (len(entry["boxes"]), config.num_soft_labels)
        np.testing.assert_allclose(soft_labels.sum(axis=1), 1.0, atol=2e-3)  # stored as float16
        assert list(np.argmax(soft_labels, axis=1)) == [1 + classes.index(label) for label in entry["labels"]]


def test_captions_are_wordpiece_tokenised_with_the_vendored_vocabulary(converted):
    from uniter_tf.tokenization import UniterTokenizer

    root, _, _ = converted
    records = read_tfrecords(root / "records", "train-*")[:5]
    expected = UniterTokenizer().encode([record[schema.TEXT].decode() for record in records])
    for record, token_ids in zip(records, expected):
        assert list(record[schema.TOKEN_IDS]) == list(token_ids)


def test_a_caption_of_an_unknown_image_is_named(tmp_path):
    sample_data.generate(str(tmp_path / "sample"), sample_data.SampleDataConfig(num_images=2, seed=0))
    captions = json.loads((tmp_path / "sample" / "captions.json").read_text())
    captions["annotations"][0]["image_id"] = 99
    (tmp_path / "sample" / "captions.json").write_text(json.dumps(captions))
    with pytest.raises(ValueError, match=r"caption 0 names unknown image 99"):
        sample_records.write_sample_pretraining_records(str(tmp_path / "sample"), str(tmp_path / "records"),
                                                        UniterConfig.from_preset("tiny"))


def test_command_line_writes_both_splits(tmp_path, capsys):
    sample_data.generate(str(tmp_path / "sample"), sample_data.SampleDataConfig(num_images=4, seed=0))
    assert sample_records.main([str(tmp_path / "sample"), str(tmp_path / "records"), "--eval-every", "2"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert tfrecord_io.list_files(printed["train"]) and tfrecord_io.list_files(printed["eval"])
