"""Learning check: a short pretraining learns MLM, ITM and WRA, measured on held-out data."""

import pytest


@pytest.mark.slow
def test_short_pretraining_beats_chance_on_held_out_data(tmp_path):
    from uniter_tf.config import UniterConfig
    from uniter_tf.training.pretrain_config import PretrainConfig
    from uniter_tf.training.pretrainer import Pretrainer
    from uniter_tf.training.synthetic_data import write_synthetic_records

    model_config = UniterConfig.from_preset("tiny")
    # Same concept world (prototypes, words), disjoint images for training and evaluation.
    write_synthetic_records(str(tmp_path / "train"), model_config, num_images=96, seed=1)
    write_synthetic_records(str(tmp_path / "eval"), model_config, num_images=32, seed=2, first_image=1000)
    config = PretrainConfig(
            model="tiny", train_files=[str(tmp_path / "train*")], eval_files=[str(tmp_path / "eval*")],
            output_dir=str(tmp_path / "run"),
            model_overrides={"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "ot_iterations": 10,
                             "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128,
                             "initializer_range": 0.05},
            inputs={"batch_size": 16, "max_text_length": 14, "text_bucket_boundaries": [16],
                    "region_bucket_boundaries": [16], "shuffle_buffer": 256, "itm_negative_pool_size": 32},
            task_ratios={"itm": 3, "mlm": 1}, num_train_steps=900, warmup_steps=50, learning_rate=3e-3,
            checkpoint_every=900, log_every=50, eval_batches=8, progress_bar=False, seed=42)
    summary = Pretrainer(config).train()
    evaluation = summary["evaluation"]
    print("held-out evaluation:", evaluation)
    # Chance: ITM 0.5 (balanced negatives). MLM: only the concept word is predictable (from the image);
    # the filler words are random by construction, so ~1/6 of the masked words can be recovered at best,
    # against 1/28996 for a uniform guess and ~1/20 for always guessing one filler.
    assert evaluation["mlm_accuracy"] > 0.03
    assert evaluation["itm_accuracy"] > 0.65
    assert evaluation["ot_positive_mean"] < evaluation["ot_negative_mean"]
