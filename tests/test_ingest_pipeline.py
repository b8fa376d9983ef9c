"""`uniter ingest`: the Beam pipeline end to end on tiny data, dead letters of every kind, and the CLI."""

import json
import os

import numpy as np
import pytest

from helpers import ingest_test_data as data
from uniter_tf.data import dead_letter
from uniter_tf.data import ingest
from uniter_tf.data.readers import TextItem


def _coco_name(image_id):
    return f"COCO_train2014_{image_id:012d}"


@pytest.fixture(scope="module")
def tokenizer():
    from uniter_tf.tokenization import UniterTokenizer

    return UniterTokenizer()


def test_every_bad_input_is_a_dead_letter_and_every_good_record_arrives(tmp_path, tokenizer):
    good_images = [1, 2, 3, 4]
    features = {_coco_name(image_id).lower(): data.image_arrays(image_id) for image_id in good_images}
    nan_arrays = data.image_arrays(5)
    nan_arrays["features"][0, 0] = np.inf
    features[_coco_name(5).lower()] = nan_arrays
    features[_coco_name(6).lower()] = data.image_arrays(6, feature_dim=data.FEATURE_DIM + 1)
    features[_coco_name(7).lower()] = {"features": np.zeros((0, data.FEATURE_DIM), np.float32),
                                       "norm_bb": np.zeros((0, 6), np.float32)}
    feature_dir = data.write_npz_dir(tmp_path / "features", features)
    with open(os.path.join(feature_dir, _coco_name(8).lower() + ".npz"), "wb") as handle:
        handle.write(b"PK\x03\x04 this is not a zip archive")

    coco = data.coco_captions([1, 2, 3, 5, 6, 7, 8], captions_per_image=2)
    expected_good = {f"coco_{image_id * 100 + index}" for image_id in (1, 2, 3) for index in range(2)}
    extra = [
            (99, 9901, "A caption of an image that has no features.", dead_letter.UNKNOWN_IMAGE),
            (1, 9902, "   ", dead_letter.EMPTY_TEXT),
            (1, 9903, "\x00\x01\x02", dead_letter.EMPTY_TEXT),  # control characters only: no WordPiece
            (2, 9904, " ".join(["word"] * 61), dead_letter.OVERLONG_TEXT),
            (2, 9905, " ".join(["word"] * 60), None),  # exactly the limit is kept
            (3, 9906, "INVALID_UTF8", dead_letter.NON_UTF8_TEXT),
    ]
    for image_id, caption_id, caption, _ in extra:
        coco["annotations"].append({"image_id": image_id, "id": caption_id, "caption": caption})
    coco["annotations"].append({"image_id": 1, "id": 9907})  # no caption
    expected_good.add("coco_9905")
    text = json.dumps(coco).replace("INVALID_UTF8", "caf\\u00e9 ").encode("utf-8")
    text = text.replace(b"caf\\u00e9 ", b"caf\xe9 latin-1")  # a raw latin-1 byte: not UTF-8
    annotations = tmp_path / "captions_train2014.json"
    annotations.write_bytes(text)
    broken = tmp_path / "captions_broken.json"
    broken.write_text('{"annotations": [{"image_id": 1')

    config = ingest.IngestConfig(annotation_format="coco", annotations=(str(annotations), str(broken)),
                                 features=feature_dir, feature_dim=data.FEATURE_DIM, eval_fraction=0.5)
    result = ingest.run_ingest(config, str(tmp_path / "out"))
    counts = result.counts

    records = {}
    for split in ingest.SPLITS:
        for record in data.read_tfrecords(result.split_dirs[split]):
            records[record["example_id"].decode()] = (split, record)
    letters = data.read_dead_letter_dir(result.dead_letter_dir)
    by_reason = {}
    for letter in letters:
        by_reason.setdefault(letter.reason, set()).add(letter.record_id)

    # Every good text arrives, once, with its tokens and its image's features.
    assert set(records) == expected_good
    split, record = records["coco_201"]
    assert record["image_id"] == _coco_name(2).encode()
    assert record["token_ids"].tolist() == tokenizer.encode("A photo number 1 of image 2.")
    source = features[_coco_name(2).lower()]
    assert record["num_regions"] == 11 and record["feature_dim"] == data.FEATURE_DIM
    np.testing.assert_allclose(record["region_features"], source["features"][:11], atol=2e-3)
    np.testing.assert_allclose(record["region_positions"][:, :6], source["norm_bb"][:11], atol=1e-6)
    assert (record["image_height"], record["image_width"]) == (480, 640)  # from the COCO annotations
    np.testing.assert_allclose(record["region_boxes"][:, 2], source["norm_bb"][:11, 2] * 640, rtol=1e-5)
    assert record["soft_labels"].shape == (11, data.NUM_CLASSES)
    assert len(records["coco_9905"][1]["token_ids"]) == 60
    assert {record["task"] for _, record in records.values()} == {b"caption"}  # the record's task field
    # All texts of one image land in the same split.
    assert records["coco_100"][0] == records["coco_101"][0]

    # Every kind of bad input, with the right ids.
    assert by_reason[dead_letter.UNKNOWN_IMAGE] == {"coco_9901"}
    assert by_reason[dead_letter.EMPTY_TEXT] == {"coco_9902", "coco_9903"}
    assert by_reason[dead_letter.OVERLONG_TEXT] == {"coco_9904"}
    assert by_reason[dead_letter.NON_UTF8_TEXT] == {"coco_9906"}
    assert by_reason[dead_letter.MISSING_FIELD] == {"9907"}
    assert by_reason[dead_letter.NON_FINITE_FEATURES] == {_coco_name(5).lower()}
    assert by_reason[dead_letter.WRONG_FEATURE_DIM] == {_coco_name(6).lower()}
    assert by_reason[dead_letter.NO_REGIONS] == {_coco_name(7).lower()}
    assert {f"coco_{image_id * 100 + index}" for image_id in (5, 6, 7, 8) for index in range(2)} \
        == by_reason[dead_letter.IMAGE_REJECTED]
    unreadable = [letter for letter in letters if letter.reason == dead_letter.UNREADABLE_INPUT]
    assert {letter.kind for letter in unreadable} == {"image", "input"}
    assert {letter.record_id for letter in unreadable if letter.kind == "image"} == {_coco_name(8).lower()}

    # Counters agree with the files, and good + bad = input on both sides.
    for reason, ids in by_reason.items():
        assert counts[reason] == sum(1 for letter in letters if letter.reason == reason), reason
    text_letters = [letter for letter in letters if letter.kind == "text"]
    image_letters = [letter for letter in letters if letter.kind == "image"]
    assert counts[dead_letter.TEXT_ITEMS_READ] == len(coco["annotations"])
    assert len(records) + len(text_letters) == len(coco["annotations"])
    assert counts[dead_letter.IMAGE_RECORDS_READ] == 8
    assert counts[dead_letter.IMAGES_WITHOUT_TEXT] == 1  # image 4
    assert 3 + counts[dead_letter.IMAGES_WITHOUT_TEXT] + len(image_letters) == 8
    written = sum(counts.get(dead_letter.EXAMPLES_WRITTEN_PREFIX + split, 0) for split in ingest.SPLITS)
    assert written == len(records)
    summary = json.loads(open(result.summary_path, encoding="utf-8").read())
    assert summary["counts"] == counts


def test_truncate_policy_counts_and_keeps_overlong_text(tokenizer):
    config = ingest.IngestConfig(annotation_format="coco", annotations=("unused.json",), features="unused",
                                 max_text_tokens=5, overlong="truncate")
    tokenize = ingest.TokenizeBatch(config)
    tokenize.setup()
    items = [TextItem("a", ("i",), "one two three four five six seven"), TextItem("b", ("i",), "short")]
    outputs = list(tokenize.process(items))
    assert [output.token_ids for output in outputs] == [
            tuple(tokenizer.encode("one two three four five")), tuple(tokenizer.encode("short"))]
    dropping = ingest.TokenizeBatch(ingest.IngestConfig(annotation_format="coco", annotations=("unused.json",),
                                                        features="unused", max_text_tokens=5))
    dropping.setup()
    dropped = list(dropping.process(items))
    assert dropped[0].value.reason == dead_letter.OVERLONG_TEXT and dropped[1].example_id == "b"


def test_hash_split_is_deterministic_and_near_the_fraction():
    splits = [ingest.hash_split(f"image_{index}", 0.2) for index in range(2000)]
    assert splits == [ingest.hash_split(f"image_{index}", 0.2) for index in range(2000)]
    assert 0.17 < splits.count(ingest.EVAL) / 2000 < 0.23
    assert splits != [ingest.hash_split(f"image_{index}", 0.2, salt="other") for index in range(2000)]


def test_cli_ingests_vqa_with_soft_scores(tmp_path, capsys):
    from uniter_tf import cli
    from uniter_tf.data.importers import butd_tsv

    questions = {"data_subtype": "train2014", "questions": [
            {"image_id": 9, "question": "What color is the car?", "question_id": 90},
            {"image_id": 25, "question": "How many dogs are there?", "question_id": 250}]}
    annotations = {"annotations": [
            {"question_id": 90, "image_id": 9, "multiple_choice_answer": "red",
             "answers": [{"answer": answer, "answer_id": index} for index, answer in
                         enumerate(["red"] * 2 + ["blue"] * 8)]},
            {"question_id": 250, "image_id": 25, "multiple_choice_answer": "2",
             "answers": [{"answer": "two", "answer_id": index} for index in range(10)]}]}
    questions_path = data.write_json(tmp_path / "questions.json", questions)
    annotations_path = data.write_json(tmp_path / "annotations.json", annotations)
    rng = np.random.default_rng(0)
    with open(tmp_path / "features.tsv", "w", encoding="ascii") as handle:
        for image_id in (9, 25):
            boxes = np.tile(np.array([[0, 0, 64, 48]], np.float32), (10, 1))
            handle.write(butd_tsv.encode_line(image_id, 640, 480, boxes,
                                              rng.normal(size=(10, data.FEATURE_DIM)).astype(np.float32)))
    output = tmp_path / "out"
    status = cli.main(["ingest", "--format", "vqa", "--annotations", questions_path, "--annotations2",
                       annotations_path, "--features", str(tmp_path / "features.tsv"), "--feature-dim",
                       str(data.FEATURE_DIM), "--image-key", "numeric", "--output", str(output),
                       "--eval-fraction", "0", "--answer-top-k", "2", "--num-shards", "2"])
    assert status == 0
    assert "ingest summary" in capsys.readouterr().out
    vocabulary = json.loads((output / "ans2label.json").read_text())
    assert vocabulary == {"2": 0, "red": 1}
    records = {record["example_id"]: record for record in data.read_tfrecords(str(output / "train"))}
    assert len(os.listdir(output / "train")) == 2
    assert records[b"vqa_90"]["answer_labels"].tolist() == [1]
    assert records[b"vqa_90"]["answer_scores"] == pytest.approx([0.6])
    assert records[b"vqa_250"]["answer_labels"].tolist() == [0]
    assert records[b"vqa_250"]["answers"][0] == b"2"
    assert records[b"vqa_90"]["task"] == records[b"vqa_250"]["task"] == b"vqa"
    assert (records[b"vqa_250"]["image_height"], records[b"vqa_250"]["image_width"]) == (480, 640)


def test_image_keys_join_names_and_numbers():
    from uniter_tf.data import image_keys

    assert image_keys.image_key("COCO_train2014_000000000009.jpg") == "coco_train2014_000000000009"
    assert image_keys.image_key("/data/img/coco_train2014_000000000009.npz") == "coco_train2014_000000000009"
    assert image_keys.image_key("coco_train2014_000000000009", "numeric") == "9"
    assert image_keys.image_key("9", "numeric") == "9"
    assert image_keys.image_key("flickr30k_1000092795.npz", "numeric") == "1000092795"
    assert image_keys.image_key("nlvr2_dev-850-0-img0.npz", strip_prefix="nlvr2_") == "dev-850-0-img0"
    with pytest.raises(ValueError, match="no digits"):
        image_keys.image_key("abc", "numeric")
    with pytest.raises(ValueError, match="mode"):
        image_keys.image_key("abc", "hash")


def test_config_validation_and_summary_format():
    with pytest.raises(ValueError, match="overlong"):
        ingest.IngestConfig(annotation_format="coco", annotations=("a",), features="f", overlong="cut")
    with pytest.raises(ValueError, match="eval_fraction"):
        ingest.IngestConfig(annotation_format="coco", annotations=("a",), features="f", eval_fraction=1.0)
    with pytest.raises(ValueError, match="needs --annotations2"):
        ingest.IngestConfig(annotation_format="refcoco", annotations=("a",), features="f")
    config = ingest.IngestConfig(annotation_format="vqa", annotations=("q",), annotations2=("a",), features="f")
    assert ingest.IngestConfig.from_json(config.to_json()) == config
    summary = dead_letter.format_summary({"examples_written_train": 3, dead_letter.NO_REGIONS: 1,
                                          dead_letter.UNREADABLE_INPUT: 2})
    lines = summary.splitlines()
    assert lines[1].split() == ["unreadable_input", "2"] and lines[2].split() == ["no_regions", "1"]
    with pytest.raises(ValueError, match="unknown dead-letter reason"):
        dead_letter.DeadLetter("x", "bad_reason")
