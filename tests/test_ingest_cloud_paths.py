"""Issue 10 (cloud paths): the data-side outputs that do not go through a Beam sink go through ``tf.io.gfile``.

TensorFlow's in-memory ``ram://`` filesystem stands for ``gs://``: a write through ``open`` or
``os.makedirs`` would create a local ``ram:`` folder (or fail) instead. Beam's file sinks (the ingest's
TFRecord shards and dead letters) cannot write ``ram://`` (Beam's FileSystems know local, gs://, s3://,
hdfs://, not TensorFlow's filesystems), so ``run_ingest`` refuses that output up front, and the rest of
its outputs (summary, answer vocabulary, empty-split files, clearing a crashed run's leftovers) and
``uniter import-features`` / the extraction summary are checked here on ``ram://`` directly.
"""

import json
import os
import uuid

import pytest
import tensorflow as tf

from helpers import ingest_test_data as data
from uniter_tf.data import dead_letter, ingest


@pytest.fixture()
def ram_root():
    """A fresh ``ram://`` folder (the filesystem is process-wide: a unique name per test)."""
    root = f"ram://ingest_out_{uuid.uuid4().hex[:8]}"
    tf.io.gfile.makedirs(root)
    yield root
    tf.io.gfile.rmtree(root)


def _read_records(pattern):
    files = tf.io.gfile.glob(pattern)
    return files, [serialized for path in files
                   for serialized in tf.data.TFRecordDataset(path, compression_type="GZIP").as_numpy_iterator()]


def test_ingest_side_outputs_are_written_through_gfile(ram_root, tmp_path):
    config = ingest.IngestConfig(annotation_format="coco", annotations=("captions.json",), features="f",
                                 feature_dim=data.FEATURE_DIM)
    vocabulary_path = ingest.write_answer_vocabulary(ram_root, {"red": 1, "2": 0})
    assert json.loads(tf.io.gfile.GFile(vocabulary_path).read()) == {"red": 1, "2": 0}
    summary_path = ingest.write_summary(ram_root, config, {dead_letter.NO_REGIONS: 2})
    assert json.loads(tf.io.gfile.GFile(summary_path).read())["counts"] == {dead_letter.NO_REGIONS: 2}

    split_dir = f"{ram_root}/train"
    ingest.ensure_split_files(split_dir, "data")
    files, records = _read_records(f"{split_dir}/*.tfrecord.gz")
    assert files == [f"{split_dir}/data-empty.tfrecord.gz"] and records == []

    # A crashed earlier run's shard, sink temp folder and dead letters are cleared; other files are kept.
    tf.io.gfile.makedirs(f"{split_dir}/beam-temp-data-123")
    tf.io.gfile.GFile(f"{split_dir}/beam-temp-data-123/part", "w").write("half")
    tf.io.gfile.GFile(f"{split_dir}/data-00001-of-00002.tfrecord.gz", "w").write("old")
    tf.io.gfile.GFile(f"{split_dir}/notes.txt", "w").write("mine")
    letters_dir = f"{ram_root}/{ingest.DEAD_LETTER_DIR}"
    tf.io.gfile.makedirs(letters_dir)
    letter = dead_letter.DeadLetter("coco_1", dead_letter.EMPTY_TEXT, "text is empty", "captions.json")
    tf.io.gfile.GFile(f"{letters_dir}/dead_letters-00000-of-00001.jsonl", "w").write(letter.to_json() + "\n")
    assert dead_letter.read_dead_letters([f"{letters_dir}/dead_letters-00000-of-00001.jsonl"]) == [letter]
    deleted = ingest.clear_previous_outputs({"train": f"{split_dir}/data", "eval": f"{ram_root}/eval/data"},
                                            letters_dir)
    assert len(deleted) == 4
    assert tf.io.gfile.listdir(split_dir) == ["notes.txt"] and tf.io.gfile.listdir(letters_dir) == []

    # The Beam sinks cannot write ram://: refused with the path named, before any work.
    with pytest.raises(ValueError, match=r"ingest output 'ram://.*Beam's file sinks cannot write there"):
        ingest.run_ingest(config, f"{ram_root}/run")
    assert not os.path.exists("ram:") and not os.path.exists(tmp_path / "ram:")


def test_import_features_writes_records_dead_letters_and_summary_to_ram(ram_root, tmp_path):
    from uniter_tf.data.importers import convert

    images = {f"img_{index}": data.image_arrays(index) for index in range(3)}
    images["img_bad"] = data.image_arrays(9, feature_dim=data.FEATURE_DIM + 1)
    feature_dir = data.write_npz_dir(tmp_path / "npz", images)
    result = convert.convert_features(feature_dir, f"{ram_root}/features/region_features",
                                      feature_dim=data.FEATURE_DIM, num_shards=2, selection=None)
    files, records = _read_records(f"{ram_root}/features/region_features-*.tfrecord.gz")
    assert len(files) == 2 and len(records) == 3 == result.counts["images_written"]
    from uniter_tf.data import schema

    assert sorted(schema.decode_example(record)["image_id"] for record in records) == [
            b"img_0", b"img_1", b"img_2"]
    (letter,) = dead_letter.read_dead_letters([result.dead_letter_path])
    assert (letter.record_id, letter.reason) == ("img_bad", dead_letter.WRONG_FEATURE_DIM)
    summary = json.loads(tf.io.gfile.GFile(f"{ram_root}/features/region_features-summary.json").read())
    assert summary == {"images_written": 3, "unknown_image_size": 3, dead_letter.WRONG_FEATURE_DIM: 1}


def test_extraction_summary_is_written_through_gfile(ram_root):
    from uniter_tf.extraction import beam_pipeline

    config = beam_pipeline.ExtractionConfig(detector_path="detector", num_classes=3)
    path = beam_pipeline.write_summary(f"{ram_root}/extract", {"images_in": 2}, config, "images/*")
    summary = json.loads(tf.io.gfile.GFile(path).read())
    assert summary["counters"] == {"images_in": 2} and summary["image_pattern"] == "images/*"
