"""The NLVR2 task (issue 12): layouts of the three variants, loss, accuracy and consistency, predictions CSV,
the pair input pipeline and the type-table growth of a pretrained initialisation."""

import numpy as np
import pytest
import tensorflow as tf

from uniter_tf.data import schema
from uniter_tf.models import nlvr2_task
from uniter_tf.tasks.base_task import get_task

FEATURE_DIM = 64  # the tiny preset's region_feature_dim


def _pair_inputs(seed=0):
    rng = np.random.default_rng(seed)
    return {
            "token_ids": tf.constant(rng.integers(1000, 2000, (3, 5)), tf.int32),
            "text_mask": tf.constant([[1] * 5, [1] * 4 + [0], [1] * 3 + [0, 0]], tf.int32),
            "region_features": tf.constant(rng.normal(size=(3, 4, FEATURE_DIM)), tf.float32),
            "region_positions": tf.constant(rng.random((3, 4, 7)), tf.float32),
            "region_mask": tf.constant([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], tf.int32),
            "region_features_2": tf.constant(rng.normal(size=(3, 6, FEATURE_DIM)), tf.float32),
            "region_positions_2": tf.constant(rng.random((3, 6, 7)), tf.float32),
            "region_mask_2": tf.constant([[1, 1, 0, 0, 0, 0], [1] * 6, [1, 1, 1, 0, 0, 0]], tf.int32),
    }


def _lengths(inputs, row):
    return int(inputs["text_mask"][row].numpy().sum()), int(inputs["region_mask"][row].numpy().sum()), \
        int(inputs["region_mask_2"][row].numpy().sum())


def _official_rows(inputs, variant):
    """The official collate of each example on its own (no padding): paired → 2 rows, triplet → 1 row."""
    rows = []
    for row in range(3):
        text_length, left, right = _lengths(inputs, row)
        text = inputs["token_ids"][row:row + 1, :text_length]
        left_features = inputs["region_features"][row:row + 1, :left]
        right_features = inputs["region_features_2"][row:row + 1, :right]
        left_positions = inputs["region_positions"][row:row + 1, :left]
        right_positions = inputs["region_positions_2"][row:row + 1, :right]
        if variant == "triplet":
            rows.append([{"token_ids": text, "text_mask": tf.ones_like(text),
                          "region_features": tf.concat([left_features, right_features], 1),
                          "region_positions": tf.concat([left_positions, right_positions], 1),
                          "region_mask": tf.ones([1, left + right], tf.int32),
                          "region_type_ids": tf.constant([[1] * left + [2] * right], tf.int32)}])
        else:
            rows.append([{"token_ids": text, "text_mask": tf.ones_like(text), "region_features": features,
                          "region_positions": positions, "region_mask": tf.ones([1, count], tf.int32),
                          "region_type_ids": tf.fill([1, count], image_type)}
                         for features, positions, count, image_type in
                         ((left_features, left_positions, left, 1), (right_features, right_positions, right, 2))])
    return rows


@pytest.mark.parametrize("variant", nlvr2_task.VARIANTS)
def test_batched_model_equals_the_official_layout_of_each_example(variant):
    task = get_task("nlvr2", variant=variant, model="tiny", dropout=0.0)
    model = task.build_model(task.model_config())
    assert model.backbone.config.type_vocab_size == 3
    inputs = _pair_inputs()
    batched = model(inputs, training=False).numpy()
    assert batched.shape == (3, 2)
    for row, example_rows in enumerate(_official_rows(inputs, variant)):
        # The backbone on the official rows (region types 1 / 2), then the head on their outputs.
        outputs = [model.backbone(rows, training=False) for rows in example_rows]
        joined = {key: tf.concat([output[key] for output in outputs], 0) for key in ("pooled_output",)}
        if variant == "paired_attn":
            width = max(int(output["sequence_output"].shape[1]) for output in outputs)
            joined["sequence_output"] = tf.concat([tf.pad(output["sequence_output"],
                                                          [[0, 0], [0, width - output["sequence_output"].shape[1]],
                                                           [0, 0]]) for output in outputs], 0)
            joined["joint_mask"] = tf.concat([tf.pad(output["joint_mask"],
                                                     [[0, 0], [0, width - output["joint_mask"].shape[1]]])
                                              for output in outputs], 0)
        expected = model.head(joined, training=False).numpy()[0]
        np.testing.assert_allclose(batched[row], expected, atol=2e-5)


def test_region_type_two_reaches_the_right_image():
    inputs = _pair_inputs(1)
    rows = nlvr2_task.paired_rows(inputs)
    assert rows["region_type_ids"].numpy()[0::2].max() == 1 and rows["region_type_ids"].numpy()[1::2].min() == 2
    np.testing.assert_array_equal(rows["region_features"][1, :6].numpy(), inputs["region_features_2"][0].numpy())
    triplet = nlvr2_task.triplet_rows(inputs)
    # Example 1: 2 left regions then 6 right ones, compact (mask a prefix of ones).
    np.testing.assert_array_equal(triplet["region_mask"][1].numpy(), [1] * 8 + [0] * 2)
    np.testing.assert_array_equal(triplet["region_type_ids"][1].numpy(), [1, 1] + [2] * 6 + [0, 0])
    np.testing.assert_array_equal(triplet["region_features"][1, 2:8].numpy(), inputs["region_features_2"][1].numpy())


def test_loss_and_accuracy_against_numpy():
    task = get_task("nlvr2", variant="paired")
    logits = np.array([[2.0, -1.0], [0.5, 1.5], [-0.3, 0.2], [1.0, 1.2]], np.float32)
    labels = np.array([0, 0, 1, 0], np.int64)
    targets = task.targets_from_features({schema.LABEL: tf.constant(labels)})
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    expected_loss = -np.mean(log_softmax[np.arange(4), labels])
    assert float(task.compute_loss(targets, tf.constant(logits))) == pytest.approx(expected_loss, rel=1e-6)
    np.testing.assert_array_equal(task.compute_metrics(targets, tf.constant(logits))["accuracy"].numpy(),
                                  [1.0, 0.0, 1.0, 0.0])
    with pytest.raises(tf.errors.InvalidArgumentError, match="label"):
        task.targets_from_features({schema.LABEL: tf.constant([0, 2])})


def test_consistency_groups_by_sentence_as_eval_nlvr2():
    # Sentence dev-1--0 is asked of pairs 0, 1, 2; dev-1--1 of pairs 0, 1; dev-2--0 of pair 0.
    identifiers = ["dev-1-0-0", "dev-1-1-0", "dev-1-2-0", "dev-1-0-1", "dev-1-1-1", "dev-2-0-0"]
    correct = [True, True, False, True, True, True]
    # Accuracy 5/6, but only 2 of the 3 sentences are right on every pair.
    assert np.mean(correct) == pytest.approx(5 / 6)
    assert nlvr2_task.nlvr2_consistency(identifiers, correct) == pytest.approx(2 / 3)
    # NumPy reference: group key = identifier with its third field blanked.
    keys = np.array(["-".join(i.split("-")[:2] + [""] + i.split("-")[3:]) for i in identifiers])
    reference = np.mean([np.all(np.array(correct)[keys == key]) for key in np.unique(keys)])
    assert nlvr2_task.nlvr2_consistency(identifiers, correct) == pytest.approx(reference)
    assert nlvr2_task.nlvr2_sentence_key("dev-850-3-1") == "dev-850--1"
    with pytest.raises(ValueError, match="4 dash-separated fields"):
        nlvr2_task.nlvr2_sentence_key("dev-850")


def test_predictions_csv_is_the_official_format(tmp_path):
    path = nlvr2_task.write_predictions_csv(str(tmp_path / "results" / "results_5.csv"),
                                            ["dev-1-0-0", "dev-1-1-0"], [1, 0])
    assert open(path, encoding="utf-8").read() == "dev-1-0-0,True\ndev-1-1-0,False\n"
    assert nlvr2_task.read_predictions_csv(path) == {"dev-1-0-0": True, "dev-1-1-0": False}
    (tmp_path / "bad.csv").write_text("dev-1-0-0,True\ndev-1-1-0,yes\n")
    with pytest.raises(ValueError, match=r"bad.csv:2"):
        nlvr2_task.read_predictions_csv(str(tmp_path / "bad.csv"))


def _write_records(path, examples):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for example in examples:
            writer.write(example.SerializeToString())
    return str(path)


def _pair_record(rng, identifier, label, left=3, right=2):
    return schema.make_example(
            image_id=f"{identifier}-img0", region_features=rng.normal(size=(left, FEATURE_DIM)),
            region_boxes=[[0, 0, 8, 8]] * left, image_height=16, image_width=16, example_id=identifier,
            text="The left image has more shapes.", token_ids=[1109, 1286, 3077, 1144, 1167, 5411, 119],
            label=label, task=schema.TASK_NLVR2,
            second_image=dict(image_id=f"{identifier}-img1", region_features=rng.normal(size=(right, FEATURE_DIM)),
                              region_boxes=[[2, 2, 9, 9]] * right, image_height=16, image_width=16))


def test_evaluate_reads_pair_records_skips_one_image_records_and_writes_the_csv(tmp_path):
    rng = np.random.default_rng(4)
    one_image = schema.make_example(image_id="x", region_features=rng.normal(size=(2, FEATURE_DIM)),
                                    region_boxes=[[0, 0, 1, 1]] * 2, image_height=4, image_width=4,
                                    example_id="ve_1", text="t", token_ids=[1], label=1, task=schema.TASK_SNLI_VE)
    records = _write_records(tmp_path / "eval.tfrecord", [_pair_record(rng, "dev-1-0-0", 1),
                                                          _pair_record(rng, "dev-1-1-0", 0, right=4), one_image,
                                                          _pair_record(rng, "dev-2-0-1", 1, left=1)])
    task = get_task("nlvr2", variant="triplet", model="tiny", eval_files=[records], eval_batch_size=2)
    model = task.build_model(task.model_config())
    result = task.evaluate(model, output_dir=str(tmp_path / "run"), step=7)
    assert result["num_examples"] == 3.0
    lines = (tmp_path / "run" / "results" / "results_7.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in lines] == ["dev-1-0-0", "dev-1-1-0", "dev-2-0-1"]
    predicted = np.array([line.endswith(",True") for line in lines])
    correct = predicted == np.array([True, False, True])
    assert result["accuracy"] == pytest.approx(correct.mean())
    assert result["consistency"] == pytest.approx(
            nlvr2_task.nlvr2_consistency(["dev-1-0-0", "dev-1-1-0", "dev-2-0-1"], correct))


def test_task_config_round_trip_and_unknown_variant():
    task = get_task("nlvr2", variant="triplet")
    assert task.get_config() == {"variant": "triplet", "head_learning_rate_multiplier": 1.0}
    assert nlvr2_task.Nlvr2Task.from_config(task.get_config()).variant == "triplet"
    with pytest.raises(ValueError, match="variant must be one of"):
        get_task("nlvr2", variant="quad")
    with pytest.raises(ValueError, match="no argument"):
        nlvr2_task.Nlvr2Task.from_config({"variant": "paired", "num_images": 2})


def test_model_without_the_second_image_names_the_missing_inputs():
    task = get_task("nlvr2", variant="paired", model="tiny")
    model = task.build_model(task.model_config())
    inputs = {key: value for key, value in _pair_inputs().items() if not key.endswith("_2")}
    with pytest.raises(KeyError, match="region_features_2"):
        model(inputs, training=False)


def test_pretrained_initialisation_grows_the_type_table_as_official(tmp_path):
    from uniter_tf import runs
    from uniter_tf.models.backbone import UniterBackbone
    from uniter_tf.models.pretraining_model import UniterPretrainingModel

    task = get_task("nlvr2", variant="paired", model="tiny")
    source = UniterPretrainingModel(UniterBackbone(task.model_config().replace(type_vocab_size=2)))
    rng = np.random.default_rng(5)
    for variable in source.backbone.variables + source.itm_head.variables:
        variable.assign(rng.normal(size=variable.shape).astype(np.float32))
    # Saved as a pretraining run saves its model (uniter_tf.runs' layout).
    tf.train.Checkpoint(**{runs.MODEL_KEY: runs.model_variable_tree(source)}).save(str(tmp_path / "pretrain" / "ckpt"))
    model = task.build_model(task.model_config())
    task.initialize(model, init="pretrained", init_path=str(tmp_path / "pretrain"), log=lambda *_: None)
    table = source.backbone.text_embeddings.token_type_embeddings.embeddings.numpy()
    grown = model.backbone.text_embeddings.token_type_embeddings.embeddings.numpy()
    np.testing.assert_array_equal(grown, table[[0, 1, 1]])
    np.testing.assert_array_equal(model.backbone.text_embeddings.word_embeddings.embeddings.numpy(),
                                  source.backbone.text_embeddings.word_embeddings.embeddings.numpy())
    for restored, original in zip(task.pretraining_model(model).itm_head.get_weights(),
                                  source.itm_head.get_weights()):
        np.testing.assert_array_equal(restored, original)
