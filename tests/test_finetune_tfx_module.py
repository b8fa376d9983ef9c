"""The TFX fine-tuning run_fn (called directly with a Trainer-like fn_args; no TFX run needed).

Training writes the run directory (``model_run_dir``); the one exporter then writes that run's model into
``serving_model_dir``, also when 0 updates are asked for (the evaluation gate's untrained model).
"""

import json
import os
import types

import numpy as np
import pytest

NUM_ANSWERS = 4


def _fn_args(tmp_path, examples, num_train_steps):
    return types.SimpleNamespace(
            train_files=[str(examples / "Split-train" / "*")], eval_files=[str(examples / "Split-eval" / "*")],
            model_run_dir=str(tmp_path / "ModelRun"), serving_model_dir=str(tmp_path / "Model" / "Format-Serving"),
            base_model=None, train_steps=None, eval_steps=1,
            custom_config={"model_config": "tiny", "task": "vqa", "num_train_steps": num_train_steps,
                           "train_batch_size": 4, "eval_batch_size": 4, "valid_steps": 2, "warmup_steps": 0})


@pytest.mark.slow
@pytest.mark.e2e
def test_run_fn_exports_the_run_directory_untrained_and_trained(tmp_path):
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (the SavedModel tokenises in-graph)

    from pipeline.finetune_module import run_fn
    from uniter_tf import runs
    from uniter_tf.config import UniterConfig
    from uniter_tf.export.exporter import example_inputs
    from uniter_tf.testing.synthetic_vqa import write_synthetic_vqa_records

    config = UniterConfig.from_preset("tiny")
    examples = tmp_path / "Examples"
    write_synthetic_vqa_records(str(examples / "Split-train" / "data_tfrecord"), config, num_images=8,
                                num_answers=NUM_ANSWERS)
    write_synthetic_vqa_records(str(examples / "Split-eval" / "data_tfrecord"), config, num_images=4,
                                num_answers=NUM_ANSWERS, split_seed=1)
    (examples / "ans2label.json").write_text(json.dumps({f"answer {index}": index for index in range(NUM_ANSWERS)}))

    def served_logits(serving_model_dir):
        inputs = example_inputs(config.region_feature_dim, batch_size=2)["score_tensors"]
        outputs = tf.saved_model.load(serving_model_dir).signatures["score_tensors"](
                **{name: tf.constant(value) for name, value in inputs.items()})
        assert [value.decode() for value in outputs["answers"].numpy()[0]][0].startswith("answer ")
        return outputs["task_logits"].numpy()

    untrained = _fn_args(tmp_path / "untrained", examples, num_train_steps=0)
    run_fn(untrained)
    assert tf.train.latest_checkpoint(os.path.join(untrained.model_run_dir, "checkpoints")).endswith("ckpt-0")
    assert runs.is_task_run(untrained.model_run_dir)
    with open(os.path.join(untrained.serving_model_dir, "assets.extra", "uniter_export.json")) as handle:
        metadata = json.load(handle)
    assert metadata["task"]["name"] == "vqa" and metadata["task"]["num_labels"] == NUM_ANSWERS
    assert metadata["non_core_ops"]  # the same metadata as `uniter export` writes
    untrained_logits = served_logits(untrained.serving_model_dir)

    trained = _fn_args(tmp_path / "trained", examples, num_train_steps=2)
    run_fn(trained)
    assert tf.train.latest_checkpoint(os.path.join(trained.model_run_dir, "checkpoints")).endswith("ckpt-2")
    # Both runs start from the same seed: the served head differs only because 2 updates were made.
    assert not np.allclose(served_logits(trained.serving_model_dir), untrained_logits)
