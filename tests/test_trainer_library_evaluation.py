"""The Trainer's periodic evaluation runs the evaluation library: a training log's figures are the evaluator's.

A VQA fine-tuning run of ``uniter train``'s path (an ExperimentConfig) evaluates after every update on the
whole eval split (``trainer.eval_batches: 0``); its logged ``vqa_score`` equals the evaluation routine of
``uniter evaluate`` / the TFX evaluator (:func:`uniter_tf.evaluation.evaluate`) on the same files, and
``eval_batches: N`` reads the first N batches only. (That the Keras scorer gives the exported SavedModel's
logits is tests/test_evaluation_library.py's and tests/test_evaluator_evaluation.py's; an export here costs
minutes on 2 cores.)
"""

import json
import os

import pytest

NUM_ANSWERS = 4


@pytest.mark.slow
def test_periodic_evaluation_equals_the_evaluation_library_on_the_same_files(tmp_path):
    from uniter_tf import evaluation
    from uniter_tf.config import UniterConfig
    from uniter_tf.testing.synthetic_vqa import write_synthetic_vqa_records
    from uniter_tf.training.experiment import ExperimentConfig, prepare_experiment

    model_config = UniterConfig.from_preset("tiny")
    train = write_synthetic_vqa_records(str(tmp_path / "train"), model_config, num_images=8, num_answers=NUM_ANSWERS)
    # 4 images x 2 questions = 8 questions: eval batches of 3 are 3 + 3 + 2.
    held_out = write_synthetic_vqa_records(str(tmp_path / "eval"), model_config, num_images=4, num_answers=NUM_ANSWERS,
                                           split_seed=1)
    config = ExperimentConfig.from_dict({
            "task": {"name": "vqa", "model": "tiny", "num_answers": NUM_ANSWERS, "train_files": train,
                     "eval_files": held_out, "train_batch_size": 4, "eval_batch_size": 3},
            "trainer": {"num_train_steps": 2, "warmup_steps": 0, "learning_rate": 1e-3, "eval_every": 1,
                        "checkpoint_every": 2, "log_every": 1, "eval_batches": 0, "progress_bar": False},
            "runtime": {"output_dir": str(tmp_path / "run")}})
    trainer = prepare_experiment(config, log=lambda line: None)
    summary = trainer.train()

    with open(os.path.join(config.runtime.output_dir, "metrics.jsonl"), encoding="utf-8") as handle:
        evaluations = [record for record in map(json.loads, handle) if record["task"] == "eval"]
    assert [record["step"] for record in evaluations] == [1, 2]
    # eval_batches 0: every question of the split, each time.
    assert all(record["num_questions"] == 8.0 for record in evaluations)
    assert summary["evaluation"]["vqa_score"] == evaluations[-1]["vqa_score"]
    assert "loss" in evaluations[-1]  # the task's own loss stays beside the library's figures

    model = trainer.model
    evaluator = evaluation.evaluate_keras_model(model.backbone, trainer.task.pretraining_model(model).itm_head,
                                                trainer.model_config, held_out, task_head=model.head, batch_size=5)
    assert evaluator["num_questions"] == 8.0
    assert evaluations[-1]["vqa_score"] == pytest.approx(evaluator["vqa_score"], abs=1e-6)

    # eval_batches N: the first N batches of eval_batch_size records.
    assert trainer.evaluate(max_batches=1)["num_questions"] == 3.0


def test_eval_batches_zero_or_null_means_the_whole_split():
    from uniter_tf.training.experiment import ExperimentConfig
    from uniter_tf.training.trainer_config import TrainerConfig

    assert TrainerConfig(eval_batches=0).eval_batch_limit is None
    assert TrainerConfig(eval_batches=7).eval_batch_limit == 7
    config = ExperimentConfig.from_dict({"task": {"name": "vqa"}, "trainer": {"eval_batches": None}})
    assert config.trainer.eval_batches == 0 and config.trainer.eval_batch_limit is None
    with pytest.raises(ValueError, match=r"trainer.eval_batches must be >= 0 \(0 or null: the whole split\)"):
        TrainerConfig(eval_batches=-1)
