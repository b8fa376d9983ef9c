"""Both TFX run_fns build the same ExperimentConfig that ``uniter train --config`` runs (one config path).

The Trainers' ``custom_config`` are the embedded pipeline's (the values of ``pipeline/configs.py``); each flat key lands in its section, ``task_config`` reaches the task unchanged and an
unknown key is an error that names it. No training here: the run_fns themselves run in
tests/test_pretrain_tfx_module.py and tests/test_finetune_tfx_module.py.
"""

import json
import types

import pytest


def _trainer_custom_configs():
    """The Trainers' custom_config as pipeline/definition.py assembles them from pipeline/configs.py's values
    (the whole pipeline runs them in tests/test_pipeline_local_e2e.py; building it here would import TFX)."""
    from pipeline import configs

    training = configs.training_config_from_env()
    model_settings = {"model_config": training.model_preset,
                      "model_overrides": {**training.model_overrides, "region_feature_dim": 1856, "num_soft_labels": 91}}
    pretrain = {**model_settings, "batch_size": training.batch_size, **training.pretrain_config}
    finetune = {"task": "vqa", **model_settings, "train_batch_size": training.batch_size,
                "eval_batch_size": training.batch_size, "learning_rate": 5e-4, "warmup_steps": 60, "valid_steps": 600,
                "log_every": 150, **training.finetune_config}
    return {"PretrainTrainer": pretrain, "FinetuneTrainer": finetune}


def _fn_args(tmp_path, custom_config, **changes):
    values = dict(train_files=[str(tmp_path / "Examples" / "Split-train" / "*")],
                  eval_files=[str(tmp_path / "Examples" / "Split-eval" / "*")], model_run_dir=str(tmp_path / "run"),
                  serving_model_dir=str(tmp_path / "Model" / "Format-Serving"), base_model=None, train_steps=12,
                  eval_steps=3, custom_config=custom_config)
    values.update(changes)
    return types.SimpleNamespace(**values)


def test_pipeline_trainers_build_experiment_configs_that_uniter_train_accepts(tmp_path):
    from pipeline import configs, finetune_module, pretrain_module
    from uniter_tf.training.experiment import ExperimentConfig

    custom = _trainer_custom_configs()
    (tmp_path / "Examples").mkdir()
    (tmp_path / "Examples" / "ans2label.json").write_text(json.dumps({"yes": 0, "no": 1}))

    pretrain = pretrain_module.experiment_from_fn_args(_fn_args(tmp_path, custom["PretrainTrainer"], train_steps=200))
    assert pretrain.task_name == "pretraining"
    assert pretrain.task["model"] == configs.MODEL_PRESET
    assert pretrain.task["model_overrides"]["hidden_size"] == configs.MODEL_OVERRIDES["hidden_size"]
    assert pretrain.task["inputs"]["batch_size"] == configs.BATCH_SIZE
    assert pretrain.task["inputs"]["max_text_length"] == configs.PRETRAIN_CONFIG["inputs"]["max_text_length"]
    assert pretrain.task["task_ratios"] == configs.PRETRAIN_CONFIG["task_ratios"]
    assert pretrain.trainer.learning_rate == configs.PRETRAIN_CONFIG["learning_rate"]
    assert (pretrain.trainer.num_train_steps, pretrain.trainer.eval_batches) == (200, 3)
    assert pretrain.trainer.progress_bar is False
    assert pretrain.runtime.output_dir == str(tmp_path / "run")

    # The pretraining Trainer's model: its checkpoints and the caption files it recorded (ITM rehearsal) beside it.
    import tensorflow as tf

    tf.train.Checkpoint(step=tf.Variable(1)).save(str(tmp_path / "Model" / "checkpoints" / "ckpt"))
    pretrain_module.write_pretraining_files(str(tmp_path / "Model"), ["captions/Split-train/*"])
    finetune = finetune_module.experiment_from_fn_args(_fn_args(
            tmp_path, custom["FinetuneTrainer"], train_steps=600, base_model=str(tmp_path / "Model" / "Format-Serving")))
    assert finetune.task_name == "vqa"
    # task_config goes to the task unchanged, beside the run keys.
    for key, value in configs.FINETUNE_CONFIG["task_config"].items():
        assert finetune.task[key] == value
    assert finetune.task["dropout"] == configs.FINETUNE_CONFIG["dropout"]
    assert finetune.task["answer_vocabulary_file"].endswith("ans2label.json")
    assert finetune.trainer.learning_rate == configs.FINETUNE_CONFIG["learning_rate"]
    # valid_steps: a validation and a checkpoint together.
    valid_steps = configs.FINETUNE_CONFIG["valid_steps"]
    assert finetune.trainer.eval_every == finetune.trainer.checkpoint_every == valid_steps
    assert (finetune.task["init"], finetune.task["init_path"]) == ("pretrained", str(tmp_path / "Model" / "checkpoints"))
    if finetune.task.get("itm_rehearsal_ratio"):
        assert finetune.task["itm_rehearsal_files"] == ["captions/Split-train/*"]

    # The same objects `uniter train --config` reads back from experiment.json, and a task the Trainer builds.
    for config in (pretrain, finetune):
        again = ExperimentConfig.from_dict(json.loads(json.dumps(config.to_dict())))
        assert again.to_dict() == config.to_dict()
    task = finetune.build_task()
    for key, value in configs.FINETUNE_CONFIG["task_config"].items():
        assert task.get_config()[key] == value


def test_unknown_or_misplaced_custom_config_keys_are_named(tmp_path):
    from pipeline import finetune_module, pretrain_module

    with pytest.raises(ValueError, match="custom_config of the PretrainTrainer: unknown key 'learning_rat'"):
        pretrain_module.experiment_from_fn_args(_fn_args(tmp_path, {"learning_rat": 0.1}))
    with pytest.raises(ValueError, match="'train_files' is set from the Trainer's inputs"):
        pretrain_module.experiment_from_fn_args(_fn_args(tmp_path, {"train_files": ["x*"]}))
    with pytest.raises(ValueError, match="custom_config of the FinetuneTrainer: unknown key 'valid_step'"):
        finetune_module.experiment_from_fn_args(_fn_args(tmp_path, {"valid_step": 3, "task_config": {"num_answers": 2}}))
    with pytest.raises(ValueError, match=r"task_config repeats \['dropout'\]"):
        finetune_module.experiment_from_fn_args(_fn_args(tmp_path, {"dropout": 0.0, "task_config": {
                "dropout": 0.1, "num_answers": 2}}))
    # A task_config key the task does not take is named when the task is built (before any training).
    config = finetune_module.experiment_from_fn_args(_fn_args(tmp_path, {"task_config": {
            "num_answers": 2, "no_such_option": 1}}))
    with pytest.raises(ValueError, match="no_such_option"):
        config.build_task()
    with pytest.raises(ValueError, match="carry no ans2label.json"):
        finetune_module.experiment_from_fn_args(_fn_args(tmp_path, {}))


def test_finetune_fn_args_steps_initialisation_and_zero_updates(tmp_path):
    from pipeline import finetune_module

    (tmp_path / "pretrain" / "checkpoints").mkdir(parents=True)
    import tensorflow as tf

    tf.train.Checkpoint(step=tf.Variable(1)).save(str(tmp_path / "pretrain" / "checkpoints" / "ckpt"))
    fn_args = _fn_args(tmp_path, {"task_config": {"num_answers": 2}, "max_eval_batches": 7, "warmup_steps": 600},
                       base_model=str(tmp_path / "pretrain" / "Format-Serving"), eval_steps=None)
    config = finetune_module.experiment_from_fn_args(fn_args)
    assert (config.task["init"], config.task["init_path"]) == ("pretrained", str(tmp_path / "pretrain" / "checkpoints"))
    # A warm-up longer than the run keeps a tenth of it; TFX's train_steps wins; max_eval_batches is eval_batches.
    assert (config.trainer.num_train_steps, config.trainer.warmup_steps, config.trainer.eval_batches) == (12, 1, 7)
    # Defaults: the official VQA settings where the Trainer's differ, the whole eval split.
    config = finetune_module.experiment_from_fn_args(_fn_args(tmp_path, {"task_config": {"num_answers": 2}},
                                                              eval_steps=None))
    assert (config.trainer.grad_norm, config.trainer.eval_batches) == (2.0, 0)
    assert config.trainer.eval_every == config.trainer.checkpoint_every == 12  # capped at the run's length

    zero = finetune_module.experiment_from_fn_args(_fn_args(tmp_path, {"num_train_steps": 0, "task_config": {
            "num_answers": 2}}, train_steps=None))
    assert (zero.trainer.num_train_steps, zero.trainer.warmup_steps) == (1, 0)
    assert finetune_module.untrained(_fn_args(tmp_path, {"num_train_steps": 0}))
