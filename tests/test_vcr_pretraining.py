"""VCR second-stage pretraining (issue 14): from a first-stage run, grown as official, losses fall, fine-tuning
starts from it.

One slow module on the rendered VCR sample: a first-stage pretraining run (the model of
configs/pretrain_vcr_2nd_stage_tiny.json, random weights, saved as the Trainer saves) is the init of
`vcr_pretraining` (MLM per segment, MRFR, MRC-kl; qa and qar formats; no ITM). Checked: the grown model
is the official init_type_embedding() / init_word_embedding(81) (type rows T0 T1 T0 T0, the first-stage
word rows then 81 new ones, the MLM head rebuilt, MRFR / MRC / ITM heads kept); a brief second stage lowers
the held-out MLM and MRFR losses; a `vcr` fine-tuning run with init=pretrained starts from the second-stage
weights (reference rows included) and trains.
"""

import json
import pathlib

import numpy as np
import pytest
import tensorflow as tf

pytestmark = pytest.mark.slow

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
NUM_IMAGES = 24
STEPS = 60


def _config():
    with open(REPO_ROOT / "configs" / "pretrain_vcr_2nd_stage_tiny.json", encoding="utf-8") as handle:
        return json.load(handle)


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    from uniter_tf import runs
    from uniter_tf.data import sample_data, sample_vcr_records
    from uniter_tf.tasks.pretraining import PretrainingTask
    from uniter_tf.tasks.vcr_pretraining import VcrPretrainingTask

    root = tmp_path_factory.mktemp("vcr_pretraining")
    overrides = _config()["task"]["model_overrides"]
    # The first stage: a standard-size pretraining model saved as the Trainer saves a run.
    first = PretrainingTask(model="tiny", model_overrides=overrides)
    stage1 = first.build_model()
    rng = np.random.default_rng(0)
    for head in (stage1.mlm_head, stage1.mrfr_head, stage1.mrc_head, stage1.itm_head):
        for variable in head.weights:
            variable.assign(rng.normal(0, 0.05, variable.shape).astype(np.float32))
    tf.train.Checkpoint(**{runs.MODEL_KEY: runs.model_variable_tree(stage1)}).save(
            str(root / "stage1" / "checkpoints" / "ckpt"))
    runs.write_model_config(str(root / "stage1"), first.model_config())

    sample_data.generate(str(root / "sample"), sample_vcr_records.sample_scene_config(NUM_IMAGES))
    sample_vcr_records.write_sample_vcr_annotations(str(root / "sample"), str(root / "vcr"))
    task = VcrPretrainingTask(model="tiny", model_overrides=overrides, init="pretrained",
                              init_path=str(root / "stage1"), train_files=[str(root / "records" / "train-*.tfrecord.gz")],
                              eval_files=[str(root / "records" / "eval-*.tfrecord.gz")],
                              inputs=_config()["task"]["inputs"])
    written = sample_vcr_records.write_sample_vcr_records(str(root / "vcr"), str(root / "records"), task.model_config())
    assert not written["dead_letters"]
    return {"root": root, "stage1": stage1, "task": task, "overrides": overrides}


def test_second_stage_starts_from_the_first_grown_as_official(stages):
    from uniter_tf.checkpoints.official import backbone_variable_map

    task, stage1 = stages["task"], stages["stage1"]
    model = task.build_model()
    task.initialize(model, log=lambda *_: None)
    stages["initial_eval"] = task.evaluate(model, max_batches=4)
    grown, source = backbone_variable_map(model.backbone), backbone_variable_map(stage1.backbone)
    words = grown["uniter.embeddings.word_embeddings.weight"][0].numpy()
    old_words = source["uniter.embeddings.word_embeddings.weight"][0].numpy()
    assert words.shape == (old_words.shape[0] + 81, old_words.shape[1])
    np.testing.assert_array_equal(words[:old_words.shape[0]], old_words)
    assert 0 < np.std(words[old_words.shape[0]:]) < 0.2  # fresh N(0, initializer_range) reference rows
    types = grown["uniter.embeddings.token_type_embeddings.weight"][0].numpy()
    old_types = source["uniter.embeddings.token_type_embeddings.weight"][0].numpy()
    np.testing.assert_array_equal(types, old_types[[0, 1, 0, 0]])
    for name in ("mrfr_head", "mrc_head", "itm_head"):  # kept
        for new, old in zip(getattr(model, name).weights, getattr(stage1, name).weights):
            np.testing.assert_array_equal(new.numpy(), old.numpy())
    rebuilt = {weight.path.split("/", 1)[-1]: weight.numpy() for weight in model.mlm_head.weights}
    first = {weight.path.split("/", 1)[-1]: weight.numpy() for weight in stage1.mlm_head.weights}
    for key, value in first.items():  # the MLM head is rebuilt: nothing of the first stage's is kept
        assert value.shape != rebuilt[key].shape or not np.allclose(value, rebuilt[key]), key
    assert set(stages["initial_eval"]) >= {"mlm_loss", "mrfr_loss", "mrckl_loss", "mlm_accuracy"}


def test_second_stage_lowers_the_losses_and_fine_tuning_starts_from_it(stages):
    from uniter_tf.checkpoints.official import backbone_variable_map
    from uniter_tf.training.experiment import ExperimentConfig, prepare_experiment

    root = stages["root"]
    experiment = ExperimentConfig.from_file(str(REPO_ROOT / "configs" / "pretrain_vcr_2nd_stage_tiny.json")).with_overrides({
            "runtime.output_dir": str(root / "stage2"), "task.init_path": str(root / "stage1"),
            "task.train_files": [str(root / "records" / "train-*.tfrecord.gz")],
            "task.eval_files": [str(root / "records" / "eval-*.tfrecord.gz")],
            "trainer.num_train_steps": STEPS, "trainer.eval_every": STEPS, "trainer.checkpoint_every": STEPS,
            "trainer.log_every": 50, "trainer.eval_batches": 4})
    trainer = prepare_experiment(experiment, log=lambda *_: None)
    summary = trainer.train()
    before = stages.get("initial_eval") or trainer.task.evaluate(trainer.model, max_batches=4)
    after = summary["evaluation"]  # the run's final evaluation: the same 4 held-out batches per task
    print("second stage, held-out before/after:", before, after, summary)
    assert after["mlm_loss"] < before["mlm_loss"] - 0.5, (before, after)
    assert after["mrfr_loss"] < before["mrfr_loss"], (before, after)
    assert after["mlm_accuracy"] > before["mlm_accuracy"], (before, after)

    # Fine-tuning from the second stage: the run's weights as they are (reference rows included).
    finetune = ExperimentConfig.from_file(str(REPO_ROOT / "configs" / "finetune_vcr_tiny.json")).with_overrides({
            "runtime.output_dir": str(root / "finetune"), "task.init": "pretrained",
            "task.init_path": str(root / "stage2"), "task.model_overrides": stages["overrides"],
            "task.train_files": [str(root / "records" / "train-*.tfrecord.gz")],
            "task.eval_files": [str(root / "records" / "eval-*.tfrecord.gz")],
            "trainer.num_train_steps": 4, "trainer.warmup_steps": 1, "trainer.eval_every": 4,
            "trainer.checkpoint_every": 4, "trainer.log_every": 4})
    vcr = finetune.build_task()
    model = vcr.build_model()
    vcr.initialize(model, log=lambda *_: None)
    started, stage2 = backbone_variable_map(model.backbone), backbone_variable_map(trainer.model.backbone)
    for key in ("uniter.embeddings.word_embeddings.weight", "uniter.embeddings.token_type_embeddings.weight",
                "uniter.encoder.layer.0.attention.self.query.weight"):
        np.testing.assert_array_equal(started[key][0].numpy(), stage2[key][0].numpy())
    result = prepare_experiment(finetune, log=lambda *_: None).train()
    assert result["final_step"] == 4 and "acc_qa" in result["evaluation"], result
