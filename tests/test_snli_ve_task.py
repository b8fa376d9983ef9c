"""SNLI-VE as a task (issue 12): labels, loss, metric, export declaration, sample data and bad records.

The learning, export and serving checks are in tests/test_snli_ve_learning.py (slow).
"""

import json

import numpy as np
import pytest
import tensorflow as tf

from helpers import ingest_test_data as data
from uniter_tf.data import dead_letter, schema
from uniter_tf.data.readers.snli_ve import SNLI_VE_LABELS
from uniter_tf.models import snli_ve
from uniter_tf.models.task import get_task


def numpy_ve_loss(labels, logits):
    """train_ve.py:141 in NumPy: BCE-with-logits against the one-hot target, mean over entries, x 3."""
    targets = np.eye(3, dtype=np.float64)[labels]
    logits = logits.astype(np.float64)
    per_entry = np.maximum(logits, 0) - logits * targets + np.log1p(np.exp(-np.abs(logits)))
    return per_entry.mean() * 3


def test_label_mapping_is_the_official_one_in_reader_task_and_export():
    assert SNLI_VE_LABELS == {"contradiction": 0, "entailment": 1, "neutral": 2}
    assert snli_ve.VE_LABELS == ("contradiction", "entailment", "neutral")
    task = get_task("ve")
    assert isinstance(task, snli_ve.SnliVeTask)
    outputs = task.export_outputs()
    assert outputs.labels == ["contradiction", "entailment", "neutral"]
    assert outputs.activation == "sigmoid"  # trained with per-class BCE, served as trained
    assert (outputs.labels_output, outputs.scores_output) == ("labels", "label_scores")
    assert task.label_keys == (schema.LABEL,) and task.primary_metric == "accuracy"
    assert task.head_learning_rate_multiplier == 1.0  # the official VE training has no lr_mul
    assert task.answer_strings(np.array([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0], [0.0, 0.0, 5.0]])) == [
            "entailment", "contradiction", "neutral"]


def test_config_round_trip_and_unknown_argument_named():
    task = get_task("ve", head_learning_rate_multiplier=2.0)
    assert get_task("ve", **task.get_config()).head_learning_rate_multiplier == 2.0
    with pytest.raises(ValueError, match="num_answers"):
        get_task("ve", num_answers=3)


def test_loss_is_the_official_bce_times_three_not_softmax_ce():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, size=(7, 3)).astype(np.float32)
    labels = np.array([0, 1, 2, 2, 1, 0, 1])
    task = get_task("ve")
    targets = task.targets_from_features({schema.LABEL: tf.constant(labels, tf.int32)})
    np.testing.assert_array_equal(targets[snli_ve.VE_TARGET_KEY].numpy(), np.eye(3)[labels])
    loss = float(task.compute_loss(targets, tf.constant(logits)))
    assert loss == pytest.approx(numpy_ve_loss(labels, logits), rel=1e-5)
    softmax_ce = float(tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)))
    assert abs(loss - softmax_ce) > 0.1


def test_accuracy_metric_per_example():
    task = get_task("ve")
    targets = task.targets_from_features({schema.LABEL: tf.constant([[1], [0], [2]], tf.int32)})
    logits = tf.constant([[0.0, 3.0, 1.0], [0.0, 3.0, 1.0], [0.0, -1.0, 4.0]])
    np.testing.assert_array_equal(task.compute_metrics(targets, logits)["accuracy"].numpy(), [1.0, 0.0, 1.0])


@pytest.mark.parametrize("label", [-1, 3])
def test_label_outside_the_set_fails_naming_the_field(label):
    task = get_task("ve")
    with pytest.raises(tf.errors.InvalidArgumentError, match="label"):
        task.targets_from_features({schema.LABEL: tf.constant([1, label], tf.int32)})
    assert not bool(task.keep_record({schema.LABEL: tf.constant(label, tf.int32)}))
    assert bool(task.keep_record({schema.LABEL: tf.constant(2, tf.int32)}))


def test_head_is_vqa_head_with_three_outputs_under_the_official_keys():
    head = get_task("ve").build_head(hidden_size=16)
    assert head.name == "vqa_output"
    mapping = head.official_weight_map()
    assert sorted(mapping) == sorted(f"vqa_output.{index}.{kind}" for index in (0, 2, 3)
                                     for kind in ("weight", "bias"))
    assert tuple(mapping["vqa_output.3.weight"][0].shape) == (32, 3)
    assert head({"pooled_output": tf.zeros([2, 16])}).shape == (2, 3)


def test_sample_hypotheses_are_balanced_and_decided_by_the_scene(tmp_path):
    from uniter_tf.data import sample_data

    counts = sample_data.generate(str(tmp_path), sample_data.SampleDataConfig(num_images=10, seed=3))
    boxes = json.loads((tmp_path / "boxes.json").read_text())
    lines = []
    for split in ("train", "dev"):
        for line in (tmp_path / f"snli_ve_{split}.jsonl").read_text().splitlines():
            record = json.loads(line)
            image_id = boxes[record["Flikr30kID"]]["image_id"]
            assert (image_id % sample_data.VE_EVAL_EVERY == 0) == (split == "dev")
            lines.append(record)
    assert counts["hypotheses"] == len(lines) == 10 * 3 * sample_data.VE_HYPOTHESES_PER_LABEL
    by_label = {name: [line for line in lines if line["gold_label"] == name] for name in SNLI_VE_LABELS}
    assert {name: len(items) for name, items in by_label.items()} == {name: 20 for name in SNLI_VE_LABELS}
    for label, items in by_label.items():
        for line in items:
            present = boxes[line["Flikr30kID"]]["labels"]
            named = [f"{color} {shape}" for color in sample_data.COLORS for shape in sample_data.SHAPES
                     if f" {color} {shape}" in " " + line["sentence2"]]
            assert len(named) == 1, line
            if label == "contradiction":
                assert named[0].split()[0] not in {obj.split()[0] for obj in present}, line
            else:  # entailment states a shape that is there; neutral talks about one that is there
                assert named[0] in present, line


@pytest.mark.slow  # a Beam ingest: ~10 s alone, up to a minute on the loaded 2-core machine
def test_ingest_snli_ve_sets_bad_records_aside_and_keeps_every_good_one(tmp_path):
    """good + bad = input: a malformed line, a label outside the set, a missing image, a missing field."""
    from uniter_tf.data import ingest
    from uniter_tf.data.importers import img_db

    images = {f"{name}.npz": data.image_arrays(seed) for seed, name in enumerate(["1000", "2000"])}
    img_db.write_img_db(str(tmp_path / "img_db"), images, selection=ingest.boxes_lib.BoxSelection())
    good = [{"Flikr30kID": f"{image}.jpg", "sentence2": f"Hypothesis {index}.", "gold_label": label,
             "pairID": f"{image}_{index}"} for image in ("1000", "2000")
            for index, label in enumerate(["contradiction", "entailment", "neutral"])]
    bad = [{"Flikr30kID": "1000.jpg", "sentence2": "A maybe.", "gold_label": "-", "pairID": "bad_label"},
           {"Flikr30kID": "3000.jpg", "sentence2": "No image.", "gold_label": "neutral", "pairID": "no_image"},
           {"Flikr30kID": "2000.jpg", "gold_label": "entailment", "pairID": "no_text"}]
    path = data.write_jsonl(tmp_path / "snli_ve_train.jsonl", good + bad)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("{not json\n")
    config = ingest.IngestConfig(annotation_format="snli_ve", annotations=(path,),
                                 features=str(tmp_path / "img_db"), feature_dim=data.FEATURE_DIM,
                                 splits_from_annotations=True)
    result = ingest.run_ingest(config, str(tmp_path / "out"))
    records = data.read_tfrecords(result.split_dirs[ingest.TRAIN])
    labels = {record["example_id"].decode(): int(record["label"]) for record in records}
    assert labels == {f"snli_ve_{image}_{index}": index for image in ("1000", "2000") for index in range(3)}
    letters = sorted((letter.record_id, letter.reason) for letter in data.read_dead_letter_dir(result.dead_letter_dir)
                     if letter.kind == "text")
    reasons = sorted(reason for _, reason in letters)
    assert reasons == sorted([dead_letter.BAD_LABEL, dead_letter.UNKNOWN_IMAGE, dead_letter.MISSING_FIELD,
                              dead_letter.UNREADABLE_INPUT])
    assert ("snli_ve_bad_label", dead_letter.BAD_LABEL) in letters
    assert ("snli_ve_no_image", dead_letter.UNKNOWN_IMAGE) in letters
    assert len(records) + len(letters) == len(good) + len(bad) + 1
