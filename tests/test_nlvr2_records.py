"""NLVR2 pair records (issue 12): the two-image canonical record and `uniter ingest --format nlvr2`.

One statement about two images is one record: the left image in the one-image fields, the right image in
the ``*_2`` fields. The ingest test feeds the official NLVR2 json lines with every kind of bad input
(malformed line, label not True/False, missing sentence, one image missing) and checks that every good
statement arrives as one pair record and every bad one is set aside once with its reason.
"""

import json

import numpy as np
import pytest
import tensorflow as tf

from helpers import ingest_test_data as data
from uniter_tf.data import dead_letter, schema


def _pair_example(rng, feature_dim=8, right_dim=None):
    return schema.make_example(
            image_id="p-img0", region_features=rng.normal(size=(3, feature_dim)),
            region_boxes=[[0, 0, 5, 5], [1, 1, 6, 9], [2, 0, 9, 9]], image_height=10, image_width=10,
            example_id="dev-1-0-0", text="Two circles.", token_ids=[5, 6], label=1, task=schema.TASK_NLVR2,
            second_image=dict(image_id="p-img1", region_features=rng.normal(size=(2, right_dim or feature_dim)),
                              region_boxes=[[1, 1, 4, 4], [0, 2, 20, 8]], image_height=12, image_width=24))


def test_pair_record_round_trips_through_both_decoders():
    rng = np.random.default_rng(0)
    example = _pair_example(rng)
    decoded = schema.decode_example(example)
    assert decoded[schema.IMAGE_ID] == b"p-img0" and decoded[schema.IMAGE_ID_2] == b"p-img1"
    assert decoded[schema.REGION_FEATURES].shape == (3, 8) and decoded[schema.REGION_FEATURES_2].shape == (2, 8)
    assert (decoded[schema.IMAGE_HEIGHT_2], decoded[schema.IMAGE_WIDTH_2]) == (12, 24)
    # Positions of the second image are computed from its own size, as the first image's.
    from uniter_tf.data import boxes as boxes_lib
    np.testing.assert_allclose(decoded[schema.REGION_POSITIONS_2],
                               boxes_lib.position_features(decoded[schema.REGION_BOXES_2], 12, 24), atol=1e-6)
    parsed = schema.parse_and_decode(tf.constant(example.SerializeToString()), 8, second_image=True)
    for key in (schema.REGION_FEATURES, schema.REGION_FEATURES_2, schema.REGION_POSITIONS_2, schema.REGION_BOXES_2):
        np.testing.assert_array_equal(parsed[key].numpy(), decoded[key])
    assert int(parsed[schema.NUM_REGIONS_2]) == 2 and int(parsed[schema.LABEL]) == 1
    # One-image consumers see the left image and none of the pair fields.
    one_image_view = schema.parse_and_decode(tf.constant(example.SerializeToString()), 8)
    assert schema.REGION_FEATURES_2 not in one_image_view
    np.testing.assert_array_equal(one_image_view[schema.REGION_FEATURES].numpy(), decoded[schema.REGION_FEATURES])


def test_one_image_records_are_unchanged_and_have_no_second_image():
    rng = np.random.default_rng(1)
    arguments = dict(image_id="a", region_features=rng.normal(size=(2, 4)), region_boxes=[[0, 0, 1, 1]] * 2,
                     image_height=4, image_width=4, example_id="x", text="t", token_ids=[1], label=0)
    example = schema.make_example(**arguments)
    assert not set(example.features.feature) & set(schema.SECOND_IMAGE_FEATURE_KEYS)
    assert schema.IMAGE_ID_2 not in schema.decode_example(example)
    parsed = schema.parse_and_decode(tf.constant(example.SerializeToString()), 4, second_image=True)
    assert parsed[schema.REGION_FEATURES_2].shape == (0, 4) and int(parsed[schema.NUM_REGIONS_2]) == 0


def test_second_image_with_another_feature_dim_is_refused_naming_the_record():
    with pytest.raises(ValueError, match=r"dev-1-0-0.*second image has feature_dim \[6\]"):
        _pair_example(np.random.default_rng(2), feature_dim=8, right_dim=6)


def test_truncated_second_image_blob_fails_naming_the_field():
    example = _pair_example(np.random.default_rng(3))
    example.features.feature[schema.REGION_FEATURES_2].bytes_list.value[0] = b"\x00" * 6
    with pytest.raises(ValueError, match="region_features_2 of record 'dev-1-0-0'"):
        schema.decode_example(example)
    with pytest.raises(tf.errors.InvalidArgumentError, match="region_features_2 has"):
        schema.parse_and_decode(tf.constant(example.SerializeToString()), 8, second_image=True)


def test_ingest_nlvr2_writes_pair_records_and_sets_bad_input_aside(tmp_path, capsys):
    from uniter_tf import cli
    from uniter_tf.data import ingest
    from uniter_tf.data.importers import img_db

    # Pairs 1..4 have both images; pair 5 lacks its right image; pair 6's right image has NaN features.
    images = {f"nlvr2_train-{pair}-0-img{side}.npz": data.image_arrays(pair * 2 + side)
              for pair in (1, 2, 3, 4, 5, 6) for side in (0, 1)}
    del images["nlvr2_train-5-0-img1.npz"]
    images["nlvr2_train-6-0-img1.npz"]["features"][:] = np.nan
    img_db.write_img_db(str(tmp_path / "img_db"), images, selection=ingest.boxes_lib.BoxSelection())
    good = [{"identifier": f"train-{pair}-0-{index}", "sentence": f"The left image has {pair} shapes.",
             "label": "True" if (pair + index) % 2 else "False"} for pair in (1, 2, 3, 4) for index in (0, 1)]
    lines = [json.dumps(entry) for entry in good]
    lines.insert(3, '{"identifier": "train-1-0-9", "sentence": ')  # malformed JSON
    lines.append(json.dumps({"identifier": "train-2-0-7", "sentence": "Maybe.", "label": "Maybe"}))
    lines.append(json.dumps({"identifier": "train-3-0-7", "label": "True"}))  # no sentence
    lines.append(json.dumps({"identifier": "train-5-0-0", "sentence": "One image is missing.", "label": "True"}))
    lines.append(json.dumps({"identifier": "train-6-0-1", "sentence": "One image is broken.", "label": "False"}))
    annotations = tmp_path / "train.json"
    annotations.write_text("\n".join(lines) + "\n", encoding="utf-8")
    output = tmp_path / "out"
    status = cli.main(["ingest", "--format", "nlvr2", "--annotations", str(annotations), "--features",
                       str(tmp_path / "img_db"), "--feature-dim", str(data.FEATURE_DIM), "--output", str(output),
                       "--splits-from-annotations", "--strip-feature-prefix", "nlvr2_"])
    assert status == 0
    capsys.readouterr()
    records = data.read_tfrecords(str(output / "train"))
    by_id = {record["example_id"].decode(): record for record in records}
    assert sorted(by_id) == sorted(entry["identifier"] for entry in good)
    for entry in good:
        record = by_id[entry["identifier"]]
        pair = entry["identifier"].rsplit("-", 1)[0]
        assert (record["image_id"], record["image_id_2"]) == (f"{pair}-img0".encode(), f"{pair}-img1".encode())
        assert record["label"] == (1 if entry["label"] == "True" else 0)
        assert record["text"].decode() == entry["sentence"] and record["task"] == b"nlvr2"
        assert record["num_regions"] > 0 and record["num_regions_2"] > 0
        # Each half holds its own image's features (different seeds), not the other's.
        assert not np.allclose(record["region_features"][:1], record["region_features_2"][:1])
    letters = [letter for letter in data.read_dead_letter_dir(str(output / "dead_letters")) if letter.kind == "text"]
    reasons = sorted(letter.reason for letter in letters)
    assert reasons == sorted([dead_letter.UNREADABLE_INPUT, dead_letter.BAD_LABEL, dead_letter.MISSING_FIELD,
                              dead_letter.UNKNOWN_IMAGE, dead_letter.IMAGE_REJECTED])
    by_record = {letter.record_id: letter for letter in letters}
    malformed = next(letter for letter in letters if letter.reason == dead_letter.UNREADABLE_INPUT)
    assert malformed.source.endswith("train.json:4") and "not JSON" in malformed.detail
    assert by_record["train-3-0-7"].reason == dead_letter.MISSING_FIELD
    assert by_record["train-2-0-7"].reason == dead_letter.BAD_LABEL and "Maybe" in by_record["train-2-0-7"].detail
    assert by_record["train-5-0-0"].reason == dead_letter.UNKNOWN_IMAGE
    assert "train-5-0-img1" in by_record["train-5-0-0"].detail
    assert by_record["train-6-0-1"].reason == dead_letter.IMAGE_REJECTED
    image_letters = [letter for letter in data.read_dead_letter_dir(str(output / "dead_letters"))
                     if letter.kind == "image"]
    assert [letter.reason for letter in image_letters] == [dead_letter.NON_FINITE_FEATURES]
    # img_db has no image size: boxes stay normalised and each image's size is recorded as 1x1 (counted per image).
    assert all((record["image_height"], record["image_width_2"]) == (1, 1) for record in records)
    summary = json.loads((output / ingest.SUMMARY_FILE).read_text())["counts"]
    assert summary[dead_letter.UNKNOWN_IMAGE_SIZE] == 2 * len(records)
    assert summary[dead_letter.EXAMPLES_WRITTEN_PREFIX + "train"] == len(records)
    # good + bad = input: every line is either a pair record or exactly one dead letter.
    assert len(records) + len(letters) == len(lines)

