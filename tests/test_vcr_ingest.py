"""``uniter ingest --format vcr``: the released VCR layout -> canonical VCR records, bad input set aside.

Real Beam (DirectRunner), real npz feature files, records read back with the VCR task's parser.
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from helpers import ingest_test_data as data
from uniter_tf.cli import main as cli_main
from uniter_tf.data import dead_letter
from uniter_tf.models.vcr_task import VCR_NUM_GT_REGIONS, parse_vcr_record
from uniter_tf.tokenization import UniterTokenizer

D = data.FEATURE_DIM
HEIGHT, WIDTH = 100, 200
GT_BOXES = {  # image stem -> metadata boxes (pixels)
        "img_a": [[10, 10, 60, 50], [100, 20, 190, 90]],
        "img_b": [[0, 0, 50, 50], [50, 50, 100, 100], [120, 10, 180, 60]],
        "img_nan": [[0, 0, 10, 10], [5, 5, 30, 30]],
        "img_few": [[0, 0, 10, 10], [20, 20, 40, 40]],
        "img_nofeat": [[0, 0, 10, 10], [5, 5, 30, 30]],
}


def _gt_arrays(stem, seed, num_regions=None):
    boxes = np.asarray(GT_BOXES[stem], np.float32)
    n = len(boxes) if num_regions is None else num_regions
    boxes = boxes[:n]
    norm = boxes / np.asarray([WIDTH, HEIGHT, WIDTH, HEIGHT], np.float32)
    norm_bb = np.concatenate([norm, norm[:, 2:3] - norm[:, 0:1], norm[:, 3:4] - norm[:, 1:2]], axis=1)
    features = np.random.default_rng(seed).normal(size=(n, D)).astype(np.float32)
    return {"features": features, "norm_bb": norm_bb.astype(np.float32)}


def _question(annot_id, stem, objects, answer_label=1, rationale_label=2, reference=0):
    return {"annot_id": annot_id, "img_fn": f"movie/{stem}.jpg", "metadata_fn": f"movie/{stem}.json",
            "objects": objects, "question": ["Why", "is", [reference], "here", "?"],
            "answer_choices": [["because", "of", [0]], ["no"], ["yes", "indeed"], [[0, 1], "agree"]][:4],
            "rationale_choices": [["it", "is", "red"], ["it", "is", "blue"], [[0], "is", "near"], ["none"]],
            "answer_label": answer_label, "rationale_label": rationale_label}


@pytest.fixture(scope="module")
def vcr_layout(tmp_path_factory):
    root = tmp_path_factory.mktemp("vcr")
    images = root / "vcr1images" / "movie"
    images.mkdir(parents=True)
    for stem, boxes in GT_BOXES.items():
        (images / f"{stem}.jpg").write_bytes(b"\xff\xd8 not decoded by the ingest")
        data.write_json(images / f"{stem}.json", {"boxes": [box + [0.9] for box in boxes], "width": WIDTH,
                                                  "height": HEIGHT, "names": ["person"] * len(boxes)})
    train = [_question("train-0", "img_a", ["person", "car"]),
             _question("train-1", "img_b", ["person", "person", "dog"], answer_label=3, rationale_label=0),
             _question("train-2", "img_a", ["person", "car"], reference=5),            # bad_reference
             _question("train-3", "img_missing", ["person"]),                        # unknown_image (no file)
             _question("train-4", "img_nan", ["person", "car"]),                            # image_rejected
             _question("train-5", "img_few", ["person", "car"]),                     # bad_reference (join)
             _question("train-6", "img_nofeat", ["person", "car"]),                         # unknown_image (join)
             _question("train-0", "img_b", ["person", "person", "dog"]),             # duplicate_id
             dict(_question("train-7", "img_a", ["person", "car"]), answer_label=7)]  # bad_label
    path = data.write_jsonl(root / "train.jsonl", train)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("{not json\n")                                                   # unreadable_input
    data.write_jsonl(root / "val.jsonl", [_question("val-0", "img_b", ["person", "person", "dog"])])
    data.write_jsonl(root / "test.jsonl", [dict(_question("test-0", "img_a", ["person", "car"]),
                                                answer_label=None, rationale_label=None)])
    gt = {"img_a": _gt_arrays("img_a", 1), "img_b": _gt_arrays("img_b", 2), "img_few": _gt_arrays("img_few", 3, 1)}
    nan = _gt_arrays("img_nan", 4)
    nan["features"][0, 0] = np.nan
    gt["img_nan"] = nan
    data.write_npz_dir(root / "gt", gt)
    det = {stem: data.image_arrays(10 + index, num_regions=12) for index, stem in enumerate(GT_BOXES)}
    data.write_npz_dir(root / "det", det)
    return root, gt, det


def _records(directory):
    records = []
    for path in sorted(glob.glob(os.path.join(directory, "*.tfrecord.gz"))):
        for serialized in tf.data.TFRecordDataset(path, compression_type="GZIP"):
            records.append(parse_vcr_record(serialized))
    return records


def test_cli_ingests_vcr_with_gt_then_detected_regions_and_sets_bad_lines_aside(vcr_layout, tmp_path, capsys):
    root, gt, det = vcr_layout
    output = tmp_path / "out"
    code = cli_main(["ingest", "--format", "vcr", "--annotations", str(root / "train.jsonl"),
                     "--annotations", str(root / "val.jsonl"), "--annotations", str(root / "test.jsonl"),
                     "--images-dir", str(root / "vcr1images"), "--features", str(root / "gt"),
                     "--detected-features", str(root / "det"), "--feature-dim", str(D),
                     "--splits-from-annotations", "--conf-threshold", "0.2", "--min-boxes", "2",
                     "--max-boxes", "5", "--output", str(output)])
    assert code == 0, capsys.readouterr()
    with open(output / "ingest_summary.json", encoding="utf-8") as handle:
        counts = json.load(handle)["counts"]
    letters = [json.loads(line) for path in glob.glob(str(output / "dead_letters" / "*.jsonl"))
               for line in open(path, encoding="utf-8")]
    text_letters = {letter["record_id"]: letter["reason"] for letter in letters if letter["kind"] == "text"}
    assert text_letters == {"train-2": "bad_reference", "train-3": "unknown_image", "train-4": "image_rejected",
                            "train-5": "bad_reference", "train-6": "unknown_image", "train-0": "duplicate_id",
                            "train-7": "bad_label", f"{root / 'train.jsonl'}:10": "unreadable_input"}
    assert [letter["reason"] for letter in letters if letter["kind"] == "image"] == ["non_finite_features"]
    # good + bad = input: 12 lines; 2 train + 1 eval written, 1 test excluded, 8 text dead letters
    assert counts["text_items_read"] == 12
    assert counts["examples_written_train"] == 2 and counts["examples_written_eval"] == 1
    assert counts["excluded_split"] == 1
    assert (counts["examples_written_train"] + counts["examples_written_eval"] + counts["excluded_split"]
            + len(text_letters)) == counts["text_items_read"]

    train = {record["example_id"].numpy().decode(): record for record in _records(output / "train")}
    assert sorted(train) == ["train-0", "train-1"]
    record = train["train-1"]
    num_gt = int(record[VCR_NUM_GT_REGIONS])
    features = record["region_features"].numpy()
    boxes = record["region_boxes"].numpy()
    assert num_gt == 3
    # ground-truth regions first, in metadata order, with the metadata's pixel boxes ...
    np.testing.assert_allclose(features[:num_gt], gt["img_b"]["features"], atol=2e-3)
    np.testing.assert_allclose(boxes[:num_gt], np.asarray(GT_BOXES["img_b"], np.float32), atol=1e-3)
    # ... then the detected regions that pass the box rule (conf >= 0.2, 2..5 boxes): the 5 most confident
    assert features.shape[0] == num_gt + 5
    np.testing.assert_allclose(features[num_gt:], det["img_b"]["features"][:5], atol=2e-3)
    assert int(record["vcr_answer_label"]) == 3 and int(record["vcr_rationale_label"]) == 0
    vocab = UniterTokenizer().vocab_size
    answers = record["answer_ids"].to_list()
    assert answers[0].index(vocab) == 2                      # "because of [0] person": [0] -> one reference id
    assert answers[3][0] == vocab and answers[3][3] == vocab + 1  # "[0] person and [1] person agree"
    assert vocab + 0 in record["rationale_ids"].to_list()[2]
    assert record["token_ids"].numpy().tolist().count(vocab) == 1  # "Why is [0] person here ?"
    (eval_record,) = _records(output / "eval")
    assert eval_record["example_id"].numpy().decode() == "val-0"


def test_vcr_ingest_config_needs_images_dir(tmp_path):
    from uniter_tf.data.ingest import IngestConfig

    with pytest.raises(ValueError, match="images_dir"):
        IngestConfig(annotation_format="vcr", annotations=(str(tmp_path / "train.jsonl"),), features=str(tmp_path))
    with pytest.raises(ValueError, match="for format 'vcr'"):
        IngestConfig(annotation_format="coco", annotations=(str(tmp_path / "c.json"),), features=str(tmp_path),
                     images_dir=str(tmp_path))


def test_metadata_boxes_json_feeds_ground_truth_extraction(vcr_layout, tmp_path):
    from uniter_tf.data.vcr_ingest import metadata_boxes_json
    from uniter_tf.extraction.beam_pipeline import load_ground_truth_boxes

    root, _, _ = vcr_layout
    path = str(tmp_path / "boxes.json")
    assert metadata_boxes_json([str(root / "val.jsonl"), str(root / "train.jsonl")], str(root / "vcr1images"),
                               path) == 5  # the images of the good lines (img_missing has no file)
    boxes = load_ground_truth_boxes(path)
    assert boxes["img_b.jpg"] == GT_BOXES["img_b"]
