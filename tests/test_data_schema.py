"""Tests of the canonical record (uniter_tf/data/schema.py), boxes and the TFRecord helpers."""

import numpy as np
import pytest
import tensorflow as tf

from uniter_tf.data import boxes, schema, tfrecord_io


def _image_arrays(num_regions=5, feature_dim=6, num_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    top_left = rng.uniform(0, 50, size=(num_regions, 2))
    size = rng.uniform(5, 40, size=(num_regions, 2))
    return {
            "region_features": rng.normal(size=(num_regions, feature_dim)).astype(np.float32),
            "region_boxes": np.concatenate([top_left, top_left + size], axis=1).astype(np.float32),
            "soft_labels": rng.dirichlet(np.ones(num_classes), size=num_regions).astype(np.float32),
            "image_height": 90,
            "image_width": 120,
    }


def _full_example(seed=0, **overrides):
    arguments = dict(
            image_id="img-1", example_id="cap-7", text="a red circle", token_ids=[170, 1894, 4349],
            answers=["red", "crimson"], answer_labels=[3, 9], answer_scores=[1.0, 0.3], label=1,
            target_box=[1.0, 2.0, 30.0, 40.0], **_image_arrays(seed=seed))
    arguments.update(overrides)
    return schema.make_example(**arguments), arguments


def test_round_trip_through_parse_and_decode_matches_inputs():
    example, arguments = _full_example()
    decoded = schema.parse_and_decode(tf.constant(example.SerializeToString()), feature_dim=6, num_soft_labels=3)
    np.testing.assert_allclose(decoded["region_features"].numpy(),
                               arguments["region_features"].astype(np.float16).astype(np.float32))
    np.testing.assert_allclose(decoded["region_boxes"].numpy(), arguments["region_boxes"], rtol=1e-6)
    expected_positions = boxes.position_features(arguments["region_boxes"], 90, 120)
    np.testing.assert_allclose(decoded["region_positions"].numpy(), expected_positions, rtol=1e-6)
    np.testing.assert_allclose(decoded["soft_labels"].numpy(), arguments["soft_labels"], atol=1e-3)
    assert decoded["region_features"].dtype == tf.float32
    assert decoded["region_features"].shape == (5, 6)
    assert decoded["token_ids"].numpy().tolist() == [170, 1894, 4349]
    assert decoded["token_ids"].dtype == tf.int32
    assert decoded["text"].numpy() == b"a red circle"
    assert decoded["example_id"].numpy() == b"cap-7"
    assert decoded["image_id"].numpy() == b"img-1"
    assert decoded["answers"].numpy().tolist() == [b"red", b"crimson"]
    assert decoded["answer_labels"].numpy().tolist() == [3, 9]
    np.testing.assert_allclose(decoded["answer_scores"].numpy(), [1.0, 0.3])
    assert int(decoded["label"]) == 1
    assert decoded["target_box"].numpy().tolist() == [1.0, 2.0, 30.0, 40.0]
    assert int(decoded["num_regions"]) == 5 and int(decoded["feature_dim"]) == 6
    assert int(decoded["image_height"]) == 90 and int(decoded["image_width"]) == 120


def test_region_features_are_float16_little_endian_bytes():
    example, arguments = _full_example()
    blob = example.features.feature[schema.REGION_FEATURES].bytes_list.value[0]
    assert len(blob) == 5 * 6 * 2
    np.testing.assert_array_equal(np.frombuffer(blob, dtype="<f2").reshape(5, 6),
                                  arguments["region_features"].astype("<f2"))


def test_image_only_record_gets_text_defaults():
    example = schema.make_example(image_id=b"only-image", **_image_arrays(num_classes=2))
    decoded = schema.parse_and_decode(tf.constant(example.SerializeToString()))
    assert decoded["example_id"].numpy() == b""
    assert decoded["text"].numpy() == b""
    assert decoded["token_ids"].shape == (0,)
    assert int(decoded["label"]) == schema.NO_LABEL
    assert decoded["target_box"].shape == (0,)
    assert decoded["soft_labels"].shape == (5, 2)


def test_record_without_soft_labels_decodes_to_zero_columns():
    arrays = _image_arrays()
    arrays.pop("soft_labels")
    example = schema.make_example(image_id="x", **arrays)
    decoded = schema.parse_and_decode(tf.constant(example.SerializeToString()))
    assert int(decoded["num_soft_labels"]) == 0
    assert decoded["soft_labels"].shape == (5, 0)


def test_decode_example_numpy_matches_graph_decoder():
    example, _ = _full_example()
    graph = schema.parse_and_decode(tf.constant(example.SerializeToString()))
    plain = schema.decode_example(example.SerializeToString())
    for key in (schema.REGION_FEATURES, schema.REGION_POSITIONS, schema.REGION_BOXES, schema.SOFT_LABELS):
        np.testing.assert_array_equal(plain[key], graph[key].numpy())
    assert plain[schema.TEXT] == b"a red circle"
    rebuilt = schema.make_example(**schema.image_fields(plain))
    assert (rebuilt.features.feature[schema.REGION_FEATURES]
            == example.features.feature[schema.REGION_FEATURES])


def test_merge_image_features_denormalises_the_image_into_the_text_record():
    image_example = schema.make_example(image_id="img-1", **_image_arrays())
    text_only = tf.train.Example()
    text_only.features.feature[schema.EXAMPLE_ID].bytes_list.value.append(b"q1")
    text_only.features.feature[schema.IMAGE_ID].bytes_list.value.append(b"img-1")
    text_only.features.feature[schema.TEXT].bytes_list.value.append(b"what colour?")
    merged = schema.merge_image_features(text_only, image_example.SerializeToString())
    decoded = schema.parse_and_decode(tf.constant(merged.SerializeToString()))
    assert decoded["text"].numpy() == b"what colour?"
    assert decoded["region_features"].shape == (5, 6)
    other = schema.make_example(image_id="img-2", **_image_arrays())
    with pytest.raises(ValueError, match="img-2"):
        schema.merge_image_features(text_only, other)


@pytest.mark.parametrize("field, bad_value, message", [
        ("region_features", np.full((5, 6), np.nan, np.float32), "region_features of record 'cap-7'.*NaN"),
        ("region_features", np.full((5, 6), 1e6, np.float32), "float16 range"),
        ("region_features", np.zeros((5,), np.float32), r"region_features.*\[n, D\]"),
        ("region_boxes", np.zeros((4, 4), np.float32), "region_boxes of record 'cap-7' has 4 rows"),
        ("soft_labels", np.zeros((2, 3), np.float32), "soft_labels of record 'cap-7' has 2 rows"),
        ("region_positions", np.zeros((5, 6), np.float32), r"region_positions.*\[n, 7\]"),
        ("token_ids", [1, -4], "token_ids of record 'cap-7'"),
        ("answer_scores", [1.0], "2 answer_labels but 1 answer_scores"),
        ("label", -3, "label of record 'cap-7'"),
        ("target_box", [1.0, 2.0], "target_box of record 'cap-7'"),
        ("image_height", 0, "image size of record 'cap-7'"),
])
def test_make_example_rejects_bad_fields_naming_field_and_record(field, bad_value, message):
    with pytest.raises(ValueError, match=message):
        _full_example(**{field: bad_value})


def test_parse_and_decode_rejects_inconsistent_blob_naming_the_record():
    example, _ = _full_example()
    example.features.feature[schema.NUM_REGIONS].int64_list.value[0] = 4
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"(?s)region_features has.*cap-7"):
        schema.parse_and_decode(tf.constant(example.SerializeToString()))


def test_parse_and_decode_rejects_unexpected_feature_dim():
    example, _ = _full_example()
    with pytest.raises(tf.errors.InvalidArgumentError, match="feature_dim is"):
        schema.parse_and_decode(tf.constant(example.SerializeToString()), feature_dim=2048)


def test_parse_and_decode_rejects_missing_required_field():
    example, _ = _full_example()
    del example.features.feature[schema.REGION_FEATURES]
    with pytest.raises(tf.errors.InvalidArgumentError, match="region_features"):
        schema.parse_and_decode(tf.constant(example.SerializeToString()))


def test_feature_spec_parses_a_batch():
    serialized = [_full_example(example_id=f"e{i}")[0].SerializeToString() for i in range(3)]
    parsed = tf.io.parse_example(tf.constant(serialized), schema.feature_spec())
    assert parsed[schema.EXAMPLE_ID].numpy().tolist() == [b"e0", b"e1", b"e2"]
    assert parsed[schema.REGION_BOXES].shape == (3, 20)


def test_sharded_writer_and_reader_round_trip_all_records(tmp_path):
    records = [_full_example(example_id=f"ex{i}", seed=i)[0] for i in range(11)]
    prefix = str(tmp_path / "out" / "part")
    paths = tfrecord_io.write_sharded(records, prefix, num_shards=3)
    assert [p.rsplit("/", 1)[1] for p in paths] == [
            "part-00000-of-00003.tfrecord.gz", "part-00001-of-00003.tfrecord.gz", "part-00002-of-00003.tfrecord.gz"]
    with open(paths[0], "rb") as handle:
        assert handle.read(2) == b"\x1f\x8b"  # GZIP magic
    ids = [element["example_id"].numpy() for element in tfrecord_io.read_decoded(prefix + "-*")]
    assert sorted(ids) == sorted(f"ex{i}".encode() for i in range(11))
    shuffled = [element.numpy() for element in tfrecord_io.read_examples([prefix + "-*"], shuffle_files=True, seed=3)]
    assert len(shuffled) == 11


def test_reader_raises_on_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no TFRecord files"):
        tfrecord_io.read_examples(str(tmp_path / "nothing-*"))


def test_writer_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="num_shards"):
        tfrecord_io.ShardedTFRecordWriter(str(tmp_path / "x"), num_shards=0)
    with pytest.raises(ValueError, match="compression"):
        tfrecord_io.ShardedTFRecordWriter(str(tmp_path / "x"), compression="LZ4")


def test_corrupt_record_inside_tf_data_names_the_record(tmp_path):
    example, _ = _full_example(example_id="broken-one")
    example.features.feature[schema.SOFT_LABELS].bytes_list.value[0] = b"\x00\x01\x02"
    prefix = str(tmp_path / "bad")
    tfrecord_io.write_sharded([example], prefix)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"(?s)soft_labels has.*broken-one"):
        list(tfrecord_io.read_decoded(prefix + "-*"))
