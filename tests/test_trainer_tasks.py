"""The Task interface and its registry, the Trainer's config sections, and the Trainer on a downstream task:
a DownstreamTask subclass written here trains with no extra code, and gradient accumulation sums the
micro-batch gradients (official)."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from uniter_tf.models.task import DownstreamTask
from uniter_tf.models.vqa import ANSWER_LABELS_KEY, ANSWER_SCORES_KEY
from uniter_tf.tasks import TASK_REGISTRY, Task, get_task, register_task
from uniter_tf.training.trainer_config import RuntimeConfig, TrainerConfig


class ParityHead(keras.layers.Layer):
    """Pooled output -> 2 logits."""

    def __init__(self, hidden_size=None, **kwargs):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.dense = keras.layers.Dense(2, name="parity", dtype=self.dtype_policy)

    def build(self, input_shape=None):
        self.dense.build((None, self.hidden_size))

    def call(self, outputs):
        return self.dense(outputs["pooled_output"])

    def get_config(self):
        return {**super().get_config(), "hidden_size": self.hidden_size}


@register_task("test_answer_parity")
class AnswerParityTask(DownstreamTask):
    """A toy task defined outside the package: is the question's first answer label even?"""

    name = "test_answer_parity"
    label_keys = (ANSWER_LABELS_KEY, ANSWER_SCORES_KEY)
    head_learning_rate_multiplier = 3.0
    primary_metric = "accuracy"

    def build_head(self, hidden_size):
        return ParityHead(hidden_size, name="parity_head")

    def keep_record(self, parsed):
        return tf.size(parsed[ANSWER_LABELS_KEY]) > 0

    def targets_from_features(self, features):
        first = features[ANSWER_LABELS_KEY]
        first = first.to_tensor()[:, 0] if isinstance(first, tf.RaggedTensor) else first[:, 0]
        return {"parity": tf.cast(tf.math.floormod(first, 2), tf.int32)}

    def compute_loss(self, targets, logits):
        return tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(targets["parity"], logits,
                                                                              from_logits=True))

    def compute_metrics(self, targets, logits):
        predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
        return {"accuracy": tf.cast(tf.equal(predicted, targets["parity"]), tf.float32)}


def test_the_registry_knows_pretraining_and_vqa_and_names_unknown_tasks():
    with pytest.raises(ValueError, match="unknown task 'vqa2'.*pretraining.*vqa"):
        get_task("vqa2")
    assert {"pretraining", "vqa", "test_answer_parity"} <= set(TASK_REGISTRY)
    assert all(issubclass(TASK_REGISTRY[name], Task) for name in ("pretraining", "vqa"))
    with pytest.raises(ValueError, match="registered twice"):
        register_task("vqa")(AnswerParityTask)
    # The historical import path is the same registry.
    from uniter_tf.models import task as models_task

    assert models_task.get_task is get_task and models_task.TASK_REGISTRY is TASK_REGISTRY


def test_pretraining_params_are_checked_by_name():
    task = get_task("pretraining", model="tiny", train_files="data/train*", task_ratios={"mlm": 2, "itm": 1})
    assert task.stream_ratios() == {"itm": 1.0, "mlm": 2.0} and task.train_files == ["data/train*"]
    with pytest.raises(ValueError, match=r"unknown parameters \['task_ratio'\]"):
        get_task("pretraining", task_ratio={"mlm": 1})
    with pytest.raises(ValueError, match="init='official' needs init_path"):
        get_task("pretraining", init="official")
    with pytest.raises(ValueError, match="max_masked_tokens"):
        get_task("pretraining", max_masked_tokens=0)
    mixed = get_task("pretraining", train_datasets=[
            {"name": "coco", "files": ["c*"], "task_ratios": {"itm": 2, "mlm": 1}},
            {"name": "vg", "files": ["v*"], "task_ratios": {"mlm": 3}}])
    assert mixed.stream_ratios() == {"itm/coco": 2.0, "mlm/coco": 1.0, "mlm/vg": 3.0}
    assert mixed.stream_loss_group("mlm/vg") == "mlm" and mixed.files_for("mlm/vg") == ["v*"]


def test_downstream_params_split_run_keys_from_the_task_s_own(tmp_path):
    vocabulary = tmp_path / "ans2label.json"
    vocabulary.write_text(json.dumps({"yes": 0, "no": 1}))
    task = get_task("vqa", answer_vocabulary_file=str(vocabulary), train_files=["t*"], train_batch_size=16,
                    dropout=0.0, model="tiny")
    assert task.num_answers == 2 and task.run_param("train_batch_size") == 16 and task.train_files == ["t*"]
    assert task.stream_ratios() == {"vqa": 1.0}
    assert task.model_config().hidden_dropout_prob == 0.0
    # Stored task arguments stay the task's own (what finetune_config.json and the exporter read).
    assert set(task.get_config()) == {"num_answers", "answer_vocabulary", "head_learning_rate_multiplier"}
    with pytest.raises(ValueError, match="num_answer"):
        get_task("vqa", num_answer=3)
    with pytest.raises(ValueError, match="train_batch_size must be a positive integer"):
        get_task("vqa", train_batch_size=0)
    with pytest.raises(ValueError, match="dropout"):
        get_task("vqa", dropout=1.5)


def test_trainer_and_runtime_sections_name_bad_keys_and_fields():
    config = TrainerConfig.from_dict({"_comment": "x", "num_train_steps": 10, "warmup_steps": 2})
    assert config.to_dict()["num_train_steps"] == 10 and TrainerConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"unknown trainer config keys \['learning_rat'\]"):
        TrainerConfig.from_dict({"learning_rat": 1e-4})
    with pytest.raises(ValueError, match="trainer.warmup_steps"):
        TrainerConfig(num_train_steps=5, warmup_steps=5)
    with pytest.raises(ValueError, match="trainer.precision"):
        TrainerConfig(num_train_steps=5, warmup_steps=0, precision="float16")
    with pytest.raises(ValueError, match="trainer.gradient_accumulation_steps"):
        TrainerConfig(num_train_steps=5, warmup_steps=0, gradient_accumulation_steps=0)
    with pytest.raises(ValueError, match="trainer.jit_compile"):
        TrainerConfig(num_train_steps=5, warmup_steps=0, jit_compile="yes")
    assert RuntimeConfig.from_dict({"output_dir": "gs://bucket/run"}).strategy == "default"
    with pytest.raises(ValueError, match=r"unknown runtime config keys \['strategie'\]"):
        RuntimeConfig.from_dict({"strategie": "mirrored"})
    with pytest.raises(ValueError, match="runtime.strategy"):
        RuntimeConfig(strategy="horovod")


@pytest.fixture(scope="module")
def vqa_records(tmp_path_factory):
    from uniter_tf.config import UniterConfig
    from uniter_tf.testing import synthetic_vqa

    directory = tmp_path_factory.mktemp("records")
    return synthetic_vqa.write_synthetic_vqa_records(str(directory / "train"), UniterConfig.from_preset("tiny"),
                                                     num_images=16, num_answers=4)


def _parity_task(files, batch_size):
    return get_task("test_answer_parity", model="tiny", train_files=files, eval_files=files,
                    train_batch_size=batch_size, eval_batch_size=8, dropout=0.0)


@pytest.mark.slow
def test_a_downstream_subclass_trains_evaluates_and_writes_an_exportable_run(tmp_path, vqa_records):
    from uniter_tf import runs
    from uniter_tf.training.trainer import Trainer

    task = _parity_task(vqa_records, 8)
    trainer = Trainer(task, TrainerConfig(num_train_steps=3, warmup_steps=0, learning_rate=1e-3, log_every=1,
                                          checkpoint_every=2, progress_bar=False),
                      RuntimeConfig(output_dir=str(tmp_path / "run")), log=lambda message: None)
    # The head's rate multiplier reaches the one optimizer, per variable.
    head_ids = {id(variable) for variable in trainer.model.head.trainable_variables}
    assert [m for v, m in zip(trainer.variables, trainer.optimizer.learning_rate_multipliers)
            if id(v) in head_ids] == [3.0, 3.0]
    assert set(trainer.optimizer.learning_rate_multipliers) == {1.0, 3.0}
    head_before = trainer.model.head.weights[0].numpy().copy()
    summary = trainer.train()
    assert summary["final_step"] == 3 and np.isfinite(summary["last_losses"]["test_answer_parity"])
    assert 0.0 <= summary["evaluation"]["accuracy"] <= 1.0 and summary["evaluation"]["num_examples"] > 0
    assert not np.allclose(head_before, trainer.model.head.weights[0].numpy())
    run_dir = tmp_path / "run"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records if record["task"] == "test_answer_parity"] == [1, 2, 3]
    assert records[-1]["task"] == "eval"
    assert (run_dir / "summary.json").exists() and (run_dir / "loss_curves.png").stat().st_size > 1000
    # The exporter's view of the run: the task by name, its arguments, and the task checkpoint layout.
    described = runs.read_task_run_config(str(run_dir))
    assert described.task.name == "test_answer_parity" and described.max_text_length == 60
    reader = tf.train.load_checkpoint(str(run_dir / "checkpoints"))
    keys = reader.get_variable_to_shape_map()
    assert any(key.startswith("backbone/") for key in keys) and any(key.startswith("head/") for key in keys)
    assert any(key.startswith("itm_head/") for key in keys)


@pytest.mark.slow
def test_accumulation_sums_the_micro_batch_gradients(tmp_path, vqa_records):
    from uniter_tf.training.trainer import Trainer

    results = {}
    for name, batch_size, accumulation in (("whole", 8, 1), ("accumulated", 4, 2)):
        trainer = Trainer(_parity_task(vqa_records, batch_size),
                          TrainerConfig(num_train_steps=2, warmup_steps=0, learning_rate=1e-3, grad_norm=0.0,
                                        gradient_accumulation_steps=accumulation, progress_bar=False, seed=5),
                          RuntimeConfig(output_dir=str(tmp_path / name)), log=lambda message: None)
        results[name] = trainer.train_update("test_answer_parity")
    # The same 8 records (one shuffled stream): 2 micro-batches of 4 give the sum of two means = 2 x the mean.
    assert results["whole"]["examples"] == results["accumulated"]["examples"] == 8
    assert results["accumulated"]["grad_norm"] == pytest.approx(2 * results["whole"]["grad_norm"], rel=2e-3)


def test_a_learning_rate_multiplier_is_the_rate_of_its_own_param_group():
    from uniter_tf.training.optimizer import AdamW

    start = np.array([[0.5, -1.0], [2.0, 0.25]], np.float32)
    gradient = tf.constant([[0.1, -0.3], [0.2, 0.05]])
    variables = [tf.Variable(start, name="plain"), tf.Variable(start, name="scaled")]
    grouped = AdamW(1e-2, weight_decay=0.1, exempt=lambda variable: False)
    grouped.build(variables, [1.0, 3.0])
    alone = tf.Variable(start, name="alone")
    reference = AdamW(3e-2, weight_decay=0.1, exempt=lambda variable: False)
    reference.build([alone])
    for _ in range(3):
        grouped.apply_gradients([gradient, gradient], variables, tf.constant(1e-2))
        reference.apply_gradients([gradient], [alone], tf.constant(3e-2))
    # Adam step and decoupled decay both use the group's rate (official param groups).
    np.testing.assert_allclose(variables[1].numpy(), alone.numpy(), rtol=1e-6)
    assert not np.allclose(variables[0].numpy(), alone.numpy())
    with pytest.raises(ValueError, match="2 learning-rate multipliers for 1 variables"):
        AdamW(1e-2).build([alone], [1.0, 2.0])
    with pytest.raises(ValueError, match="must be > 0"):
        AdamW(1e-2).build([alone], [0.0])
