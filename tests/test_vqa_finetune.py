"""VQA fine-tuning: config, partial restore from pretraining, the 10× head rate, the loop and the CLI."""

import json
import os

import numpy as np
import pytest

import tensorflow as tf

from uniter_tf.config import UniterConfig  # noqa: E402
from uniter_tf.testing import synthetic_vqa  # noqa: E402
from uniter_tf.training import finetune  # noqa: E402

NUM_ANSWERS = 4


@pytest.fixture(scope="module")
def vqa_files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("vqa")
    config = UniterConfig.from_preset("tiny")
    train = synthetic_vqa.write_synthetic_vqa_records(str(directory / "train"), config, num_images=16,
                                                      num_answers=NUM_ANSWERS)
    evaluation = synthetic_vqa.write_synthetic_vqa_records(str(directory / "eval"), config, num_images=4,
                                                           num_answers=NUM_ANSWERS, split_seed=1,
                                                           captions_per_image=1)
    return train, evaluation


def _config(tmp_path, vqa_files, **changes):
    values = dict(task="vqa", task_config={"num_answers": NUM_ANSWERS}, model_config="tiny",
                  train_files=vqa_files[0], eval_files=vqa_files[1], output_dir=str(tmp_path / "run"),
                  train_batch_size=8, eval_batch_size=8, learning_rate=1e-3, warmup_steps=1, num_train_steps=4,
                  valid_steps=4, dropout=0.0)
    values.update(changes)
    return finetune.FinetuneConfig(**values)


def test_config_from_json_ignores_comments_and_rejects_unknown_keys(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"_command": "uniter finetune ...", "task": "vqa", "num_train_steps": 10,
                                "warmup_steps": 1, "train_files": ["a"]}))
    config = finetune.FinetuneConfig.from_json(str(path), num_train_steps=20, output_dir=None)
    assert config.num_train_steps == 20 and config.train_files == ["a"] and config.output_dir == "runs/finetune"
    path.write_text(json.dumps({"task": "vqa", "learning_rat": 1e-4}))
    with pytest.raises(ValueError, match="learning_rat"):
        finetune.FinetuneConfig.from_json(str(path))
    with pytest.raises(ValueError, match="warmup_steps"):
        finetune.FinetuneConfig(warmup_steps=10, num_train_steps=10)


def test_answer_vocabulary_file_names_the_answers(tmp_path):
    vocabulary = tmp_path / "ans2label.json"
    vocabulary.write_text(json.dumps({"yes": 0, "no": 1, "two": 2}))
    task = finetune.build_task(finetune.FinetuneConfig(task_config={"answer_vocabulary_file": str(vocabulary)}))
    assert task.num_answers == 3 and task.answer_vocabulary == ["yes", "no", "two"]
    vocabulary.write_text(json.dumps({"yes": 0, "no": 0}))
    with pytest.raises(ValueError, match="repeated"):
        finetune.build_task(finetune.FinetuneConfig(task_config={"answer_vocabulary_file": str(vocabulary)}))


def test_partial_restore_from_pretraining_checkpoint_and_head_rate(tmp_path, vqa_files):
    from uniter_tf.models.backbone import UniterBackbone
    from uniter_tf.models.pretraining_model import UniterPretrainingModel
    from uniter_tf.training import checkpointing

    model_config = UniterConfig.from_preset("tiny", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    pretrained = UniterPretrainingModel(UniterBackbone(model_config))
    # Make the pretrained weights distinguishable from a fresh initialisation.
    for variable in pretrained.trainable_variables:
        variable.assign(variable + 0.5)
    checkpoint = tf.train.Checkpoint(**{checkpointing.MODEL_KEY: checkpointing.model_variable_tree(pretrained)})
    checkpoint.save(str(tmp_path / "pretrain" / "checkpoints" / "ckpt"))

    run = finetune.FinetuneRun(_config(tmp_path, vqa_files, pretrained_checkpoint=str(tmp_path / "pretrain")))
    assert run.restored_from is not None
    for restored, original in zip(run.backbone.weights, pretrained.backbone.weights):
        np.testing.assert_array_equal(restored.numpy(), original.numpy())
    for restored, original in zip(run.itm_head.weights, pretrained.itm_head.weights):
        np.testing.assert_array_equal(restored.numpy(), original.numpy())
    # The head learns 10x faster (official lr_mul): one AdamW with a per-variable rate multiplier.
    head_ids = {id(variable) for variable in run.head_variables}
    multipliers = dict(zip((id(variable) for variable in run.variables), run.optimizer.learning_rate_multipliers))
    assert head_ids and all(multipliers[key] == 10.0 for key in head_ids)
    assert all(multipliers[id(variable)] == 1.0 for variable in run.backbone_variables)
    assert {id(variable) for variable in run.head_variables} == {id(v) for v in run.model.head.trainable_variables}
    assert not {id(v) for v in run.head_variables} & {id(v) for v in run.backbone_variables}


def test_short_loop_updates_weights_and_writes_results(tmp_path, vqa_files):
    run = finetune.FinetuneRun(_config(tmp_path, vqa_files))
    head_kernel_before = run.model.head.answer_classifier.kernel.numpy().copy()
    result = run.train()
    assert result["step"] == 4
    assert np.isfinite(result["train"]["loss"]) and 0.0 <= result["eval"]["vqa_score"] <= 1.0
    assert result["eval"]["num_examples"] == 8.0  # 4 images x 2 questions; the captions carry no answers
    assert not np.allclose(head_kernel_before, run.model.head.answer_classifier.kernel.numpy())
    with open(os.path.join(run.config.output_dir, "results", "results_4.json"), encoding="utf-8") as handle:
        predictions = json.load(handle)
    assert sorted(predictions) == [f"vqa_{index:04d}_{question}" for index in range(4) for question in range(2)]
    assert all(0 <= answer < NUM_ANSWERS for answer in predictions.values())
    latest = tf.train.latest_checkpoint(os.path.join(run.config.output_dir, "checkpoints"))
    # The run state holds every weight, the transformer layers included: a new run resumes exactly.
    resumed = finetune.FinetuneRun(run.config)
    resumed.checkpoint.restore(latest).assert_existing_objects_matched()
    assert int(resumed.step) == 4
    for restored, trained in zip(resumed.model.weights + resumed.itm_head.weights,
                                 run.model.weights + run.itm_head.weights):
        np.testing.assert_array_equal(restored.numpy(), trained.numpy())


@pytest.mark.slow
def test_learns_synthetic_vqa_and_cli_resumes(tmp_path, vqa_files, capsys):
    from uniter_tf import cli

    config = _config(tmp_path, vqa_files, num_train_steps=100, valid_steps=100, warmup_steps=5)
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps({"_command": "uniter finetune --task vqa --config config.json",
                                       **config.to_dict()}))
    assert cli.main(["finetune", "--task", "vqa", "--config", str(config_path)]) == 0
    assert '"step": 100' in capsys.readouterr().out
    with open(os.path.join(config.output_dir, "metrics.json"), encoding="utf-8") as handle:
        metrics = json.load(handle)
    assert metrics["step"] == 100
    # Chance is 1/4 + 0.3/4 = 0.325 (0.3 soft credit for the neighbour answer); the image decides the answer.
    assert metrics["eval"]["vqa_score"] >= 0.5
    # Training wrote the run directory only: no SavedModel without --export.
    assert not os.path.exists(os.path.join(config.output_dir, "export"))
    # Running again with more steps resumes from the last checkpoint; --export then runs the exporter.
    base = tmp_path / "models" / "vqa"
    assert cli.main(["finetune", "--task", "vqa", "--config", str(config_path), "--num-train-steps", "102",
                     "--export", str(base)]) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("{\n"):])["export_dir"] == str(base / "1")
    assert (base / "1" / "saved_model.pb").exists()
    with open(os.path.join(config.output_dir, "metrics.json"), encoding="utf-8") as handle:
        assert json.load(handle)["step"] == 102
