"""VCR (issue 14): the annotation reader and its dead letters, the rows of a question against the official
construction, the metrics and leaderboard files of inf_vcr.py, the VCR initialisation and the records.

The learning check is tests/test_vcr_learning.py (slow).
"""

import csv
import json

import numpy as np
import pytest
import tensorflow as tf

from uniter_tf.data import dead_letter
from uniter_tf.data.readers import vcr as vcr_reader
from uniter_tf.models import vcr_task
from uniter_tf.models.task import get_task

CLS, SEP = 101, 102


# ------------------------------------------------------------------------------------------------ reader
def _line(annot_id, **changes):
    line = {"annot_id": annot_id, "img_fn": "movie/a.jpg", "metadata_fn": "movie/a.json",
            "objects": ["person", "person", "car", "person"],
            "question": ["Why", "is", [0], "looking", "at", [1, 3], "?"],
            "answer_choices": [["Because", [2], "is", "fast", "."], ["No", "."], ["Yes", "."], [[0], "is", "sad"]],
            "rationale_choices": [["It", "moves", "."], ["R1"], ["R2"], [[3], "smiles", "."]],
            "answer_label": 0, "rationale_label": 3}
    line.update(changes)
    return line


@pytest.fixture()
def vcr_dir(tmp_path):
    images = tmp_path / "vcr1images" / "movie"
    images.mkdir(parents=True)
    (images / "a.jpg").write_bytes(b"jpeg")
    (images / "a.json").write_text(json.dumps({"boxes": [[0, 0, 10, 10, 0.9], [5, 5, 20, 30, 0.8],
                                                         [1, 2, 3, 4, 0.7], [8, 8, 9, 9, 0.5]],
                                               "width": 40, "height": 30, "names": ["person"] * 4}))
    (images / "few_boxes.json").write_text(json.dumps({"boxes": [[0, 0, 10, 10, 0.9]], "width": 40, "height": 30}))
    return tmp_path


def test_reader_renders_references_and_sets_every_bad_line_aside(vcr_dir):
    good = [_line("val-0"), _line("val-1", answer_label=3, rationale_label=0)]
    bad = {
            "val-2": (_line("val-2", answer_label=4), dead_letter.BAD_LABEL),
            "val-3": (_line("val-3", img_fn="movie/missing.jpg"), dead_letter.UNKNOWN_IMAGE),
            "val-4": (_line("val-4", metadata_fn="movie/missing.json"), dead_letter.UNKNOWN_IMAGE),
            "val-5": (_line("val-5", question=["Who", "is", [4], "?"]), dead_letter.BAD_REFERENCE),
            "val-6": (_line("val-6", metadata_fn="movie/few_boxes.json"), dead_letter.BAD_REFERENCE),
            "val-7": (_line("val-7", answer_choices=[["a"], ["b"], ["c"]]), dead_letter.BAD_TYPE),
            "val-8": (_line("val-8", question=None), dead_letter.MISSING_FIELD),
            "val-9": (_line("val-9", question=["Who", ["x"], "?"]), dead_letter.BAD_TYPE),
            "val-10": (_line("val-10", rationale_label=None), dead_letter.MISSING_FIELD),
    }
    path = vcr_dir / "val.jsonl"
    lines = [json.dumps(line) for line in good] + [json.dumps(line) for line, _ in bad.values()] + ["{not json"]
    path.write_text("\n".join(lines) + "\n")
    outputs = list(vcr_reader.read_vcr(str(path), str(vcr_dir / "vcr1images")))
    items = [item for item in outputs if isinstance(item, vcr_reader.VcrItem)]
    letters = [item for item in outputs if isinstance(item, dead_letter.DeadLetter)]
    assert len(items) + len(letters) == len(lines)
    assert [item.example_id for item in items] == ["val-0", "val-1"]
    assert {letter.record_id: letter.reason for letter in letters if letter.record_id in bad} == {
            key: reason for key, (_, reason) in bad.items()}
    assert [letter.reason for letter in letters if letter.record_id not in bad] == [dead_letter.UNREADABLE_INPUT]
    item = items[0]
    assert item.question == "Why is [0] person looking at [1] person and [3] person ?"
    assert item.answers[0] == "Because [2] car is fast ." and item.rationales[3] == "[3] person smiles ."
    assert (item.answer_label, item.rationale_label, item.split) == (0, 3, "val")
    np.testing.assert_array_equal(item.gt_boxes, [[0, 0, 10, 10], [5, 5, 20, 30], [1, 2, 3, 4], [8, 8, 9, 9]])
    assert (item.image_height, item.image_width) == (30, 40)
    assert vcr_reader.render_tokens(["Is", [1, 2, 3], "here"], ["a", "b", "c", "d"], with_class_names=False) == (
            "Is [1] , [2] and [3] here")


def test_test_split_questions_have_no_labels(vcr_dir):
    path = vcr_dir / "test.jsonl"
    line = _line("test-3")
    del line["answer_label"], line["rationale_label"]
    path.write_text(json.dumps(line) + "\n")
    (item,) = vcr_reader.read_vcr(str(path), str(vcr_dir / "vcr1images"))
    assert (item.answer_label, item.rationale_label, item.split) == (-1, -1, "test")


# -------------------------------------------------------------------------------------------------- rows
def official_eval_rows(q, answers, rationales, qa_target, split):
    """data/vcr.py VcrEvalDataset._get_input_ids transcribed (split 'val': 8 rows, 'test': 20)."""
    ids, types = [], []
    for a in answers:
        ids.append([CLS] + q + [SEP] + a + [SEP])
        types.append([0] + [0] * len(q) + [2] * (len(a) + 2))
    for index, a in enumerate(answers):
        qa_ids = [CLS] + q + [SEP] + a + [SEP]
        qa_types = [0] + [0] * len(q) + [2] * (len(a) + 1)
        if (split == "val" and index == qa_target) or split == "test":
            for r in rationales:
                ids.append(qa_ids + r + [SEP])
                types.append(qa_types + [3] * (len(r) + 2))
    return ids, types


@pytest.mark.parametrize("num_rows,split", [(8, "val"), (20, "test")])
def test_rows_of_a_question_match_the_official_eval_dataset(num_rows, split):
    rng = np.random.default_rng(num_rows)
    q = rng.integers(1000, 2000, 5).tolist()
    answers = [rng.integers(1000, 2000, n).tolist() for n in (1, 3, 2, 4)]
    rationales = [rng.integers(1000, 2000, n).tolist() for n in (2, 6, 1, 3)]
    ids, types = vcr_task.question_rows(tf.constant(q, tf.int32), tf.ragged.constant(answers, tf.int32),
                                        tf.ragged.constant(rationales, tf.int32), tf.constant(2), num_rows, CLS, SEP)
    assert (ids.to_list(), types.to_list()) == official_eval_rows(q, answers, rationales, 2, split)


# --------------------------------------------------------------------------------------- metrics / files
def inf_vcr_accuracies(scores, qa_targets, qar_targets):
    """inf_vcr.py evaluate + compute_accuracies on NumPy."""
    if scores.shape[1] > 8:
        qar_scores = np.stack([scores[b, [4 + qa_targets[b] * 4 + i for i in range(4)]] for b in range(len(scores))])
    else:
        qar_scores = scores[:, 4:]
    qa = scores[:, :4].argmax(-1) == qa_targets
    qar = qar_scores.argmax(-1) == qar_targets
    return qa.mean(), qar.mean(), (qa & qar).mean()


@pytest.mark.parametrize("rows", [8, 20])
def test_accuracies_are_those_of_inf_vcr(rows):
    rng = np.random.default_rng(rows)
    scores = rng.normal(size=(50, rows))
    answer, rationale = rng.integers(0, 4, 50), rng.integers(0, 4, 50)
    got = vcr_task.vcr_accuracies(scores, answer, rationale)
    np.testing.assert_allclose([got["acc_qa"].mean(), got["acc_qar"].mean(), got["acc"].mean()],
                               inf_vcr_accuracies(scores, answer, rationale))
    assert 0.1 < got["acc_qa"].mean() < 0.5  # random scores: near chance, so the check can fail
    if rows == 8:  # the in-graph training metric agrees
        logits = np.stack([np.zeros(50 * rows), scores.reshape(-1)], axis=1).astype(np.float32)
        task = get_task("vcr")
        metrics = task.compute_metrics({vcr_task.VCR_ANSWER_LABEL: tf.constant(answer, tf.int32),
                                        vcr_task.VCR_RATIONALE_LABEL: tf.constant(rationale, tf.int32)},
                                       tf.constant(logits))
        for name in ("acc_qa", "acc_qar", "acc"):
            np.testing.assert_array_equal(metrics[name].numpy(), got[name])


def test_loss_is_per_row_two_way_cross_entropy():
    logits = np.array([[0.3, 1.2], [2.0, -1.0], [0.0, 0.5]], np.float32)
    targets = np.array([1, 0, 0])
    expected = np.mean([np.log(np.exp(row).sum()) - row[target] for row, target in zip(logits, targets)])
    task = get_task("vcr")
    loss = task.compute_loss({vcr_task.ROW_TARGETS: tf.constant(targets)}, tf.constant(logits))
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_leaderboard_files_are_sorted_by_the_number_after_the_dash(tmp_path):
    results = {f"test-{index}": list(np.arange(20) + index) for index in (10, 2, 9, 100)}
    paths = vcr_task.write_leaderboard_files(results, str(tmp_path / "results_test"), 8000)
    assert paths["json"].endswith("results_test/results_8000_all.json")
    assert json.loads(open(paths["json"]).read()) == {key: [float(v) for v in value] for key, value in results.items()}
    rows = list(csv.reader(open(paths["csv"])))
    assert rows[0][:6] == ["annot_id", "answer_0", "answer_1", "answer_2", "answer_3", "rationale_conditioned_on_a0_0"]
    assert rows[0][-1] == "rationale_conditioned_on_a3_3" and len(rows[0]) == 21
    assert [row[0] for row in rows[1:]] == ["test-2", "test-9", "test-10", "test-100"]
    assert [float(value) for value in rows[2][1:]] == [float(v) for v in np.arange(20) + 9]
    assert "csv" not in vcr_task.write_leaderboard_files({"val-0": [0.0] * 8}, str(tmp_path / "val"), 1)


# -------------------------------------------------------------------------------------------- the model
def test_model_tables_grow_as_the_official_init_calls():
    from uniter_tf.config import UniterConfig
    from uniter_tf.models import official_init
    from uniter_tf.models.backbone import UniterBackbone

    task = get_task("vcr", model="tiny")
    config = task.model_config()
    assert (config.vocab_size, config.type_vocab_size) == (28996 + 81, 4)
    standard = UniterBackbone(UniterConfig.resolve("tiny"))
    standard({"token_ids": tf.constant([[101, 102]]), "text_mask": tf.ones([1, 2], tf.int32)})
    grown = UniterBackbone(config)
    grown({"token_ids": tf.constant([[101, 102]]), "text_mask": tf.ones([1, 2], tf.int32)})
    vcr_task.grow_backbone_for_vcr(standard, grown, seed=3)
    official = official_init.init_word_embedding(official_init.init_type_embedding(standard, "vcr"), seed=3)
    from uniter_tf.checkpoints.official import backbone_variable_map

    ours, theirs = backbone_variable_map(grown), backbone_variable_map(official)
    assert sorted(ours) == sorted(theirs)
    for key in ours:
        np.testing.assert_array_equal(ours[key][0].numpy(), theirs[key][0].numpy(), err_msg=key)
    with pytest.raises(ValueError, match="cannot initialise"):
        vcr_task.grow_backbone_for_vcr(grown, standard)



def test_region_feature_statistics_move_with_the_growth_and_scratch_computes_them(tmp_path):
    """With region_feature_standardization the statistics (no official weight) follow the grown backbone
    (first stage → VCR), and a scratch VCR model gets those of its training records."""
    from uniter_tf.data import feature_stats
    from uniter_tf.models.backbone import UniterBackbone

    task = get_task("vcr", model="tiny", model_overrides={"region_feature_standardization": True})
    inputs = {"token_ids": tf.constant([[101, 102]]), "text_mask": tf.ones([1, 2], tf.int32)}
    standard = UniterBackbone(task.model_config().replace(vocab_size=28996, type_vocab_size=2))
    standard(inputs)
    dim = standard.config.region_feature_dim
    standard.region_embeddings.set_feature_statistics(np.linspace(-1, 1, dim), np.linspace(0.5, 2, dim))
    grown = UniterBackbone(task.model_config())
    grown(inputs)
    vcr_task.grow_backbone_for_vcr(standard, grown, seed=0)
    np.testing.assert_array_equal(grown.region_embeddings.feature_mean.numpy(), np.linspace(-1, 1, dim, dtype=np.float32))
    np.testing.assert_array_equal(grown.region_embeddings.feature_scale.numpy(),
                                  np.linspace(0.5, 2, dim, dtype=np.float32))
    plain = UniterBackbone(standard.config.replace(region_feature_standardization=False))
    plain(inputs)
    with pytest.raises(ValueError, match="without it"):
        vcr_task.grow_backbone_for_vcr(plain, grown)

    path = str(tmp_path / "train.tfrecord")
    _write_records(path, [([5, 6], [[7]] * 4, [[12]] * 4, 1, 2)] * 2)
    scratch = get_task("vcr", model="tiny", model_overrides={"region_feature_standardization": True},
                       init="scratch", train_files=[path])
    model = scratch.build_model()
    scratch.initialize(model, log=lambda message: None)
    expected = feature_stats.compute_feature_statistics([path], feature_dim=dim)
    np.testing.assert_allclose(model.backbone.region_embeddings.feature_mean.numpy(), expected.mean, rtol=1e-6)

def test_task_registered_config_round_trip_and_unknown_argument():
    task = get_task("vcr", eval_rows=20, head_learning_rate_multiplier=2.0)
    assert isinstance(task, vcr_task.VcrTask) and task.primary_metric == "acc"
    assert get_task("vcr", **task.get_config()).get_config() == {"eval_rows": 20, "head_learning_rate_multiplier": 2.0}
    assert task.build_head(16).name == "vcr_output"
    with pytest.raises(ValueError, match="eval_rows"):
        get_task("vcr", eval_rows=4)
    with pytest.raises(ValueError, match="num_answers"):
        get_task("vcr", num_answers=4)


# ------------------------------------------------------------------------------------------------ records
def _write_records(path, questions):
    rng = np.random.default_rng(0)
    with tf.io.TFRecordWriter(path) as writer:
        for index, (q, answers, rationales, answer, rationale) in enumerate(questions):
            example = vcr_task.make_vcr_example(
                    example_id=f"val-{index}", image_id="a.jpg", question="q", question_ids=q,
                    answers=["a"] * 4, answer_ids=answers, rationales=["r"] * 4, rationale_ids=rationales,
                    answer_label=answer, rationale_label=rationale,
                    region_features=rng.normal(size=(3, 64)), region_boxes=[[0, 0, 5, 5]] * 3,
                    image_height=10, image_width=10, num_gt_regions=2)
            writer.write(example.SerializeToString())


def test_dataset_drops_long_questions_in_training_and_truncates_them_in_evaluation(tmp_path):
    from uniter_tf.config import UniterConfig

    short = ([5, 6], [[7], [8, 9], [10], [11]], [[12], [13], [14, 15], [16]], 1, 2)
    long = ([5] * 10, [[7]] * 4, [[12] * 20, [13], [14], [16]], 0, 0)
    path = str(tmp_path / "records.tfrecord")
    _write_records(path, [short, long])
    config = UniterConfig.resolve("tiny")
    train = vcr_task.build_vcr_dataset(path, config, 2, max_text_length=12, training=True)
    inputs, labels = next(iter(train))
    assert inputs["token_ids"].shape[0] == 2 * 8  # both questions of the batch are the short one
    assert set(inputs[vcr_task.EXAMPLE_ID_KEY].numpy().tolist()) == {b"val-0"}
    assert labels[vcr_task.ROW_TARGETS].numpy()[:8].tolist() == [0, 1, 0, 0, 0, 0, 1, 0]
    assert inputs["region_features"].shape == (16, 3, 64)
    inputs, labels = next(iter(vcr_task.build_vcr_dataset(path, config, 2, max_text_length=12, training=False,
                                                          num_rows=20)))
    assert inputs["token_ids"].shape[0] == 40 and labels[vcr_task.VCR_ANSWER_LABEL].numpy().tolist() == [1, 0]
    lengths = inputs["text_mask"].numpy().sum(axis=1)
    assert lengths.max() == 12 + 4  # the long question's QA→R row cut to 12 segment tokens
    targets = labels[vcr_task.ROW_TARGETS].numpy().reshape(2, 20)
    assert targets[0].tolist() == [0, 1, 0, 0] + [0] * 4 + [0, 0, 1, 0] + [0] * 8  # row 4 + 4·1 + 2


def test_initialise_from_a_second_stage_layout_checkpoint_copies_every_backbone_tensor():
    """An official VCR-layout state dict (word table +81, 4 types: the parity fixture's, as the released
    uniter-base-vcr_2nd_stage) loads as it is when the run's model has those sizes (model_overrides)."""
    import os

    from uniter_tf.checkpoints.official import LINEAR, backbone_variable_map
    from uniter_tf.checkpoints.parity import fixture_config

    fixture = os.path.join(os.path.dirname(__file__), "fixtures", "parity_downstream", "vcr")
    base = fixture_config(json.load(open(os.path.join(fixture, "config.json"))))
    grown = base.replace(vocab_size=base.vocab_size + 81, type_vocab_size=4)
    task = get_task("vcr", model=grown.to_dict(), init="official",
                    init_path=os.path.join(fixture, "state_dict.npz"))
    model = task.build_model(task.model_config())
    task.initialize(model, log=lambda message: None)
    state_dict = np.load(os.path.join(fixture, "state_dict.npz"))
    mapping = backbone_variable_map(model.backbone)
    assert mapping["uniter.embeddings.word_embeddings.weight"][0].shape[0] == 181
    for key, (variable, transform) in mapping.items():
        expected = state_dict[key].T if transform == LINEAR else state_dict[key]
        np.testing.assert_array_equal(variable.numpy(), expected, err_msg=key)


def test_initialise_from_a_standard_checkpoint_grows_the_tables_as_official(tmp_path):
    """A first-stage layout (the fixture's tensors before the init calls): rows copied, types [T0, T1, T0, T0]."""
    import os

    from uniter_tf.checkpoints.official import LINEAR, backbone_variable_map
    from uniter_tf.checkpoints.parity import fixture_config

    fixture = os.path.join(os.path.dirname(__file__), "fixtures", "parity_downstream", "vcr")
    base = fixture_config(json.load(open(os.path.join(fixture, "config.json"))))
    state_dict = dict(np.load(os.path.join(fixture, "state_dict.npz")))
    state_dict.update(np.load(os.path.join(fixture, "pre_init.npz")))
    np.savez(tmp_path / "standard.npz", **state_dict)
    task = get_task("vcr", model=base.to_dict(), init="official", init_path=str(tmp_path / "standard.npz"))
    assert (task.model_config().vocab_size, task.model_config().type_vocab_size) == (181, 4)
    model = task.build_model(task.model_config())
    task.initialize(model, log=lambda message: None)
    for key, (variable, transform) in backbone_variable_map(model.backbone).items():
        value = variable.numpy()
        if key.endswith("word_embeddings.weight"):
            np.testing.assert_array_equal(value[:100], state_dict[key])
            assert value.shape == (181, 64) and 0.01 < value[100:].std() < 0.03  # fresh N(0, 0.02) rows
        elif key.endswith("token_type_embeddings.weight"):
            np.testing.assert_array_equal(value, state_dict[key][[0, 1, 0, 0]])
        else:
            np.testing.assert_array_equal(value, state_dict[key].T if transform == LINEAR else state_dict[key])
    with pytest.raises(ValueError, match="3 token types"):
        get_task("vcr", model=base.replace(type_vocab_size=3).to_dict()).model_config()


def test_sample_items_are_decided_by_the_picture_and_read_back_without_dead_letters(tmp_path):
    from uniter_tf.data import sample_data, sample_vcr_records

    sample_data.generate(str(tmp_path / "sample"), sample_vcr_records.sample_scene_config(24, seed=5))
    counts = sample_vcr_records.write_sample_vcr_annotations(str(tmp_path / "sample"), str(tmp_path / "vcr"))
    boxes = json.loads((tmp_path / "sample" / "boxes.json").read_text())
    right, wrong, total = {}, {}, 0
    for split in ("train", "val"):
        lines = [json.loads(line) for line in (tmp_path / "vcr" / f"{split}.jsonl").read_text().splitlines()]
        assert len(lines) == counts[split]
        items = list(vcr_reader.read_vcr(str(tmp_path / "vcr" / f"{split}.jsonl"),
                                         str(tmp_path / "vcr" / "vcr1images")))
        assert all(isinstance(item, vcr_reader.VcrItem) for item in items) and len(items) == len(lines)
        for line in lines:
            entry = boxes[line["img_fn"]]
            assert (entry["image_id"] % sample_vcr_records.VAL_EVERY == 0) == (split == "val")
            present = {label.split()[0] for label in entry["labels"]}
            colours = [choice[1] for choice in line["answer_choices"]]
            assert [colour in present for colour in colours] == [index == line["answer_label"] for index in range(4)]
            target = line["rationale_choices"][0][0]
            assert all(choice[0] == target for choice in line["rationale_choices"])
            assert entry["labels"][target[0]].split()[0] == colours[line["answer_label"]]
            assert line["rationale_choices"][line["rationale_label"]][4] == colours[line["answer_label"]]
            for index, colour in enumerate(colours):
                (right if index == line["answer_label"] else wrong)[colour] = (
                        (right if index == line["answer_label"] else wrong).get(colour, 0) + 1)
            total += 1
    assert total == sum(len(entry["labels"]) for entry in boxes.values())  # one question per shape
    # No colour is right much more often than its share: the text alone cannot pick the answer.
    for colour in sample_data.COLORS:
        share = right.get(colour, 0) / (right.get(colour, 0) + wrong.get(colour, 0))
        assert 0.1 < share < 0.45, (colour, right, wrong)


# ------------------------------------------------------------------------------------------------ shipped configs
def _set_value(command, key):
    """The value of ``--set KEY=VALUE`` in a config's ``_command``."""
    import re

    found = re.findall(rf"--set {re.escape(key)}=(\S+)", command)
    assert len(found) == 1, (key, command)
    return found[0]


def test_shipped_vcr_chain_is_one_standardised_model():
    """The chain a user follows from the configs' _command lines (first stage -> second stage -> fine-tuning,
    docs/tasks.md VCR) only learns with region-feature standardisation in every stage and one model: the
    second stage starts from a shipped standardised first stage's output_dir, the documented fine-tuning from
    the second stage's, and the three configs name the same model (dropout aside: the fine-tuning sets it
    with task.dropout)."""
    import pathlib

    shipped = {f"configs/{path.name}": json.loads(path.read_text())
               for path in (pathlib.Path(__file__).resolve().parent.parent / "configs").glob("*.json")}
    second, finetune = shipped["configs/pretrain_vcr_2nd_stage_tiny.json"], shipped["configs/finetune_vcr_tiny.json"]
    first = [name for name, config in shipped.items() if config["task"]["name"] == "pretraining"
             and config["runtime"]["output_dir"] == second["task"]["init_path"]]
    assert len(first) == 1, second["task"]["init_path"]
    assert f"--config {first[0]}" in second["_command"]
    first = shipped[first[0]]
    assert "--config configs/pretrain_vcr_2nd_stage_tiny.json" in second["_command"]
    assert _set_value(finetune["_command"], "task.init") == "pretrained"
    assert _set_value(finetune["_command"], "task.init_path") == second["runtime"]["output_dir"]
    assert _set_value(finetune["_command"], "runtime.output_dir") != finetune["runtime"]["output_dir"]

    dropout_keys = ("hidden_dropout_prob", "attention_probs_dropout_prob")
    models = []
    for config in (first, second, finetune):
        overrides = dict(config["task"]["model_overrides"])
        assert overrides.get("region_feature_standardization") is True, config["runtime"]["output_dir"]
        for key in dropout_keys:
            assert overrides.pop(key, finetune["task"]["dropout"]) == finetune["task"]["dropout"], key
        models.append((config["task"]["model"], overrides))
    assert models[0] == models[1] == models[2], models
