"""Rebuilding an exportable model from the directories training and conversion write."""

import json
import os

import numpy as np
import pytest

import tensorflow as tf

from uniter_tf.config import UniterConfig  # noqa: E402
from uniter_tf.export.model_dir import load_exportable_model  # noqa: E402
from uniter_tf.models.backbone import UniterBackbone  # noqa: E402
from uniter_tf.models.pretraining_heads import ItmHead  # noqa: E402
from uniter_tf.models.pretraining_model import UniterPretrainingModel  # noqa: E402


def _same_weights(left, right):
    assert len(left.weights) == len(right.weights)
    for a, b in zip(left.weights, right.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)


def _randomize(layer, seed):
    rng = np.random.default_rng(seed)
    for variable in layer.weights:
        variable.assign(rng.normal(0, 0.1, variable.shape).astype(np.float32))


def _save_like_the_pretrainer(model, run_dir):
    from uniter_tf import runs

    tree = runs.model_variable_tree(model)
    tf.train.Checkpoint(**{runs.MODEL_KEY: tree}).save(str(run_dir / "checkpoints" / "ckpt"))


def test_pretraining_run_needs_its_config_and_restores_backbone_and_itm_head(tmp_path):
    config = UniterConfig.from_preset("tiny")
    model = UniterPretrainingModel(UniterBackbone(config))
    _randomize(model.itm_head, 1)
    _randomize(model.backbone.pooler, 2)
    _save_like_the_pretrainer(model, tmp_path)
    with pytest.raises(ValueError, match="--config"):
        load_exportable_model(str(tmp_path))
    loaded = load_exportable_model(str(tmp_path), config="tiny")
    assert loaded.kind == "pretrain" and loaded.task is None
    _same_weights(loaded.itm_head, model.itm_head)
    _same_weights(loaded.backbone.pooler, model.backbone.pooler)
    _same_weights(loaded.backbone.text_embeddings, model.backbone.text_embeddings)


def test_pretraining_checkpoints_hold_the_transformer_layers(tmp_path):
    config = UniterConfig.from_preset("tiny")
    model = UniterPretrainingModel(UniterBackbone(config))
    _save_like_the_pretrainer(model, tmp_path)
    _same_weights(load_exportable_model(str(tmp_path), config="tiny").backbone, model.backbone)


def test_converted_directory(tmp_path):
    from uniter_tf.checkpoints import official

    config = UniterConfig.from_preset("tiny")
    model = UniterPretrainingModel(UniterBackbone(config))
    _randomize(model.itm_head, 3)
    official.save_converted(model, str(tmp_path))
    loaded = load_exportable_model(str(tmp_path))
    assert loaded.kind == "converted"
    _same_weights(loaded.itm_head, model.itm_head)
    _same_weights(loaded.backbone, model.backbone)


def _task_run(tmp_path, answers, legacy_config_file=False):
    """A task run directory as training writes it: finetune_config.json and a checkpoint."""
    from uniter_tf import runs
    from uniter_tf.models.task import get_task

    config = UniterConfig.from_preset("tiny")
    task = get_task("vqa", num_answers=len(answers), answer_vocabulary=answers)
    backbone = UniterBackbone(config)
    task_model = task.build_model(backbone, config.hidden_size)
    task_model.head.build()
    itm_head = ItmHead(config.hidden_size, name="itm_head")
    itm_head.build()
    _randomize(task_model.head, 4)
    _randomize(itm_head, 5)
    runs.task_checkpoint(backbone, task_model.head, itm_head).save(str(tmp_path / "checkpoints" / "ckpt"))
    if legacy_config_file:
        # The file as it was written before task_name / max_text_length moved to its top level.
        with open(tmp_path / "finetune_config.json", "w") as handle:
            json.dump({"finetune": {"task": "vqa", "task_config": {"num_answers": 3, "answer_vocabulary": answers},
                                    "max_text_length": 18}, "model": config.to_dict()}, handle)
    else:
        runs.write_task_run_config(str(tmp_path), task, config, max_text_length=18)
    return task_model.head, itm_head


@pytest.mark.parametrize("legacy_config_file", [False, True])
def test_finetune_run_brings_its_task_head_and_answers(tmp_path, legacy_config_file):
    answers = ["yes", "no", "blue"]
    head, itm_head = _task_run(tmp_path, answers, legacy_config_file)
    loaded = load_exportable_model(str(tmp_path), top_k=2)
    assert loaded.kind == "finetune" and loaded.max_text_length == 20
    assert loaded.task.name == "vqa" and loaded.task.labels == answers and loaded.task.top_k == 2
    # What VqaTask.export_outputs declares: sigmoid scores under the served names.
    assert loaded.task.outputs.activation == "sigmoid"
    outputs = loaded.task.outputs
    assert (outputs.logits_output, outputs.labels_output, outputs.scores_output) == \
        ("task_logits", "answers", "answer_scores")
    _same_weights(loaded.task.head, head)
    _same_weights(loaded.itm_head, itm_head)


def test_a_task_run_config_without_a_model_is_named(tmp_path):
    (tmp_path / "finetune_config.json").write_text(json.dumps({"task_name": "vqa", "task": {}}))
    with pytest.raises(ValueError, match="finetune_config.json.*model"):
        load_exportable_model(str(tmp_path))


def test_pretraining_run_with_model_config_needs_no_config(tmp_path):
    from uniter_tf import runs

    config = UniterConfig.from_preset("tiny").replace(num_hidden_layers=1)
    model = UniterPretrainingModel(UniterBackbone(config))
    _save_like_the_pretrainer(model, tmp_path)
    runs.write_model_config(str(tmp_path), config)
    loaded = load_exportable_model(str(tmp_path))
    assert loaded.backbone.config.num_hidden_layers == 1
    _same_weights(loaded.backbone, model.backbone)


def test_an_empty_directory_says_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="finetune_config.json"):
        load_exportable_model(str(tmp_path))
    assert not os.listdir(tmp_path)


@pytest.mark.slow
def test_export_command_writes_a_servable_version(tmp_path, capsys):
    from uniter_tf import cli
    from uniter_tf.checkpoints import official

    config = UniterConfig.from_preset("tiny")
    official.save_converted(UniterPretrainingModel(UniterBackbone(config)), str(tmp_path / "converted"))
    base = tmp_path / "models" / "uniter"
    arguments = ["export", "--model-dir", str(tmp_path / "converted"), "--output", str(base), "--version", "3",
                 "--max-text-length", "12", "--region-buckets", "4,8", "--no-warmup"]
    assert cli.main(arguments) == 0
    printed = capsys.readouterr().out
    assert f"to {base / '3'}" in printed and "serving_default" in printed
    with open(base / "3" / "assets.extra" / "uniter_export.json") as handle:
        metadata = json.load(handle)
    assert metadata["max_regions"] == 8 and metadata["text_buckets"] == [12]
    assert metadata["non_core_ops"] and all(op in printed for op in metadata["non_core_ops"])
    assert not os.path.exists(base / "3" / "assets.extra" / "tf_serving_warmup_requests")
    assert cli.main(arguments) == 2  # the version exists: refused, nothing overwritten
    assert "already exists" in capsys.readouterr().err


def test_one_exporter_refuses_a_used_flat_target_and_a_flat_version(tmp_path):
    from uniter_tf.export.model_dir import export_model_dir

    _task_run(tmp_path / "run", ["yes", "no", "blue"])
    with pytest.raises(ValueError, match="flat"):
        export_model_dir(str(tmp_path / "run"), str(tmp_path / "serving"), flat=True, version=2)
    (tmp_path / "serving").mkdir()
    (tmp_path / "serving" / "keep.txt").write_text("not a model")
    with pytest.raises(FileExistsError, match="not an empty directory"):
        export_model_dir(str(tmp_path / "run"), str(tmp_path / "serving"), flat=True, warmup=False, record_ops=False)
    assert os.listdir(tmp_path / "serving") == ["keep.txt"]


@pytest.mark.slow
def test_flat_export_of_a_task_run_serves_the_trained_head(tmp_path):
    import tensorflow_text  # noqa: F401  (the SavedModel tokenises in-graph)

    from uniter_tf.export.exporter import example_inputs
    from uniter_tf.export.model_dir import export_model_dir

    answers = ["yes", "no", "blue"]
    _task_run(tmp_path / "run", answers)
    # TFX creates serving_model_dir beforehand: an empty directory is accepted.
    (tmp_path / "Format-Serving").mkdir()
    result = export_model_dir(str(tmp_path / "run"), str(tmp_path / "Format-Serving"), flat=True, top_k=2,
                              region_buckets=(4, 8), warmup=False)
    assert result.path == str(tmp_path / "Format-Serving") and result.kind == "finetune"
    metadata = result.metadata
    assert metadata["max_text_length"] == 20 and metadata["text_buckets"] == [16, 20]
    assert metadata["task"] == {"name": "vqa", "num_labels": 3, "top_k": 2, "activation": "sigmoid",
                                "outputs": {"logits": "task_logits", "labels": "answers", "scores": "answer_scores"},
                                "region_choice": False, "image_pair": False, "multiple_choice": False}
    assert "non_core_ops" in metadata and metadata["non_core_ops"]  # the tokenizer's TF-Text ops
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".export")]  # staging removed

    # The served numbers are the restored Keras model's.
    model = load_exportable_model(str(tmp_path / "run"))
    inputs = example_inputs(model.backbone.config.region_feature_dim, batch_size=2)["score_tensors"]
    served = tf.saved_model.load(result.path).signatures["score_tensors"](
            **{name: tf.constant(value) for name, value in inputs.items()})
    encoded = model.backbone(inputs, training=False)
    logits = model.task.head(encoded, training=False).numpy()
    np.testing.assert_allclose(served["task_logits"].numpy(), logits, atol=1e-5)
    best = np.argsort(-logits, axis=1)[:, :2]
    assert [[value.decode() for value in row] for row in served["answers"].numpy()] == \
        [[answers[index] for index in row] for row in best]
    np.testing.assert_allclose(served["answer_scores"].numpy(), 1 / (1 + np.exp(-np.take_along_axis(logits, best, 1))),
                               atol=1e-5)


def test_tasks_declare_their_export_outputs():
    from uniter_tf.export.task_heads import TaskHeadExport
    from uniter_tf.models.task import ExportOutputs, get_task

    vqa = get_task("vqa", num_answers=2, answer_vocabulary=["yes", "no"])
    hook = TaskHeadExport.from_task(vqa, head=object(), top_k=9)
    assert (hook.name, hook.outputs.activation, hook.labels, hook.top_k) == ("vqa", "sigmoid", ["yes", "no"], 2)
    assert isinstance(hook.outputs, ExportOutputs) and hook.outputs == vqa.export_outputs()  # held, not copied

    class Renamed:  # any task: the hook takes names and activation from the declaration only
        def export_outputs(self):
            return ExportOutputs(name="nlvr2", labels=["false", "true"], labels_output="verdict",
                                 scores_output="verdict_score")

    hook = TaskHeadExport.from_task(Renamed(), head=object())
    assert (hook.outputs.activation, hook.outputs.labels_output, hook.outputs.scores_output) == \
        ("softmax", "verdict", "verdict_score")
    with pytest.raises(ValueError, match="activation of task 'nlvr2'"):
        ExportOutputs(name="nlvr2", activation="relu")
    with pytest.raises(ValueError, match="distinct"):
        ExportOutputs(name="nlvr2", labels_output="task_logits")
    with pytest.raises(ValueError, match="itm_score"):
        TaskHeadExport(ExportOutputs(name="x", scores_output="itm_score"), head=object())
    with pytest.raises(TypeError, match="ExportOutputs"):
        TaskHeadExport(outputs={"name": "x"}, head=object())


def test_a_pretrainer_run_names_its_model_so_export_needs_no_config(tmp_path):
    """`uniter pretrain` writes model_config.json into its run directory (chief only): the run exports
    without --config, with the trained weights."""
    from uniter_tf.training.pretrain_config import PretrainConfig
    from uniter_tf.training.pretrainer import Pretrainer
    from uniter_tf.testing.synthetic_data import write_synthetic_records

    write_synthetic_records(str(tmp_path / "train"), UniterConfig.from_preset("tiny"), num_images=4)
    config = PretrainConfig(
            model="tiny", model_overrides={"num_hidden_layers": 1}, train_files=[str(tmp_path / "train*")],
            output_dir=str(tmp_path / "run"),
            inputs={"batch_size": 2, "shuffle_buffer": 0, "text_bucket_boundaries": [64],
                    "region_bucket_boundaries": [16]},
            task_ratios={"mlm": 1}, num_train_steps=1, warmup_steps=0, progress_bar=False, seed=3)
    trainer = Pretrainer(config)
    trainer.train()
    written = json.loads((tmp_path / "run" / "model_config.json").read_text())
    assert written["num_hidden_layers"] == 1
    loaded = load_exportable_model(str(tmp_path / "run"))
    assert loaded.kind == "pretrain" and len(loaded.backbone.encoder_layers) == 1
    _same_weights(loaded.backbone.text_embeddings, trainer.model.backbone.text_embeddings)
