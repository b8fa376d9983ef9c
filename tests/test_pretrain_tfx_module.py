"""The TFX pretraining run_fn (called directly with a Trainer-like fn_args; no TFX run needed)."""

import os
import types

import numpy as np
import pytest


@pytest.mark.slow
@pytest.mark.e2e
def test_run_fn_trains_exports_and_publishes_a_checkpoint(tmp_path):
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (the SavedModel tokenises in-graph)

    from pipeline.pretrain_module import experiment_from_fn_args, run_fn
    from uniter_tf.config import UniterConfig
    from uniter_tf.models.backbone import UniterBackbone
    from uniter_tf.training.checkpointing import restore_backbone
    from uniter_tf.testing.synthetic_data import write_synthetic_records

    examples = tmp_path / "Examples"
    write_synthetic_records(str(examples / "Split-train" / "data_tfrecord"), UniterConfig.from_preset("tiny"),
                            num_images=16)
    write_synthetic_records(str(examples / "Split-eval" / "data_tfrecord"), UniterConfig.from_preset("tiny"),
                            num_images=8, seed=3)
    fn_args = types.SimpleNamespace(
            train_files=[str(examples / "Split-train")], eval_files=[str(examples / "Split-eval")],
            model_run_dir=str(tmp_path / "ModelRun"), serving_model_dir=str(tmp_path / "Model" / "Format-Serving"),
            train_steps=4, eval_steps=2,
            custom_config={"model_config": "tiny", "batch_size": 4, "task_ratios": {"itm": 1},
                           "model_overrides": {"ot_iterations": 5},
                           "inputs": {"shuffle_buffer": 16, "text_bucket_boundaries": [64],
                                      "region_bucket_boundaries": [16]}})
    config = experiment_from_fn_args(fn_args)  # what `uniter train` runs
    assert config.task["train_files"] == [os.path.join(str(examples / "Split-train"), "*")]
    assert config.task["inputs"]["batch_size"] == 4 and config.trainer.num_train_steps == 4

    run_fn(fn_args)

    assert tf.train.latest_checkpoint(os.path.join(fn_args.model_run_dir, "checkpoints"))
    loaded = tf.saved_model.load(fn_args.serving_model_dir)
    assert "serving_default" in loaded.signatures
    published = str(tmp_path / "Model" / "checkpoints")
    backbone = UniterBackbone(UniterConfig.from_preset("tiny"))
    before = backbone.pooler.dense.kernel.numpy().copy()
    restore_backbone(backbone, published)
    assert not np.allclose(before, backbone.pooler.dense.kernel.numpy())
