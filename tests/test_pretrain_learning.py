"""Learning check: a short pretraining on the sample data learns MLM, ITM and WRA, measured on held-out images."""

import collections
import json
import os

import pytest
from helpers.ingest_test_data import read_tfrecords

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))

# Measured on the 2-core CI-class machine with the fused AdamW (seed 42), with ITM negatives drawn uniformly
# from the distinct training images as the official ItmDataset does: ITM 0.84, MLM 0.69, OT matched 0.62 vs
# mismatched 0.96 (ratio 0.65; with a full shuffle of each image epoch 0.53 vs 0.84, ratio 0.63).
# The first version drew negatives from a window of the caption stream (not the official semantics) and
# reached ITM 0.81, MLM 0.71, OT 0.23 vs 1.17 on the same commit: WRA separates less in 1500 updates with
# uniform negatives, ITM more. An untrained model has a ratio near 1.
ITM_ACCURACY_THRESHOLD = 0.72
MLM_ACCURACY_THRESHOLD = 0.55
OT_RATIO_THRESHOLD = 0.8


def _majority_token_rate(records):
    """Accuracy of always predicting the commonest caption token (the text-prior baseline MLM must beat)."""
    from uniter_tf.data import schema

    counts = collections.Counter(token for record in records for token in record[schema.TOKEN_IDS].tolist())
    return counts.most_common(1)[0][1] / sum(counts.values())


@pytest.mark.slow
def test_short_pretraining_on_sample_data_beats_chance_on_held_out_images(tmp_path):
    from uniter_tf import cli
    from uniter_tf.config import UniterConfig
    from uniter_tf.training.experiment import ExperimentConfig
    from uniter_tf.training.pretrainer import Pretrainer
    from uniter_tf.data.sample_records import write_sample_pretraining_records

    assert cli.main(["sample-data", "--output", str(tmp_path / "sample"), "--num-images", "240", "--seed", "1"]) == 0
    # Every 4th image (60 images, 180 captions) is held out: evaluation never sees a training image.
    paths = write_sample_pretraining_records(str(tmp_path / "sample"), str(tmp_path / "records"),
                                             UniterConfig.from_preset("tiny"), eval_every=4)
    assert paths["train"] and paths["eval"]
    # The shipped local recipe (model, inputs, optimizer), on two tasks for 1500 updates.
    records = tmp_path / "records"
    config = ExperimentConfig.from_file(os.path.join(REPO, "configs", "pretrain_local.json"), [
            f"task.train_files={json.dumps([str(records / 'train*')])}",
            f"task.eval_files={json.dumps([str(records / 'eval*')])}", f"runtime.output_dir={tmp_path / 'run'}",
            'task.task_ratios={"itm": 3, "mlm": 1}', "trainer.num_train_steps=1500", "trainer.checkpoint_every=1500",
            "trainer.eval_every=0", "trainer.progress_bar=false"]).to_pretrain_config()
    summary = Pretrainer(config).train()
    evaluation = summary["evaluation"]
    majority = _majority_token_rate(read_tfrecords(records, "eval-*"))
    print("held-out evaluation:", evaluation, "majority-token MLM baseline:", majority)
    # Chance: ITM 0.5 (balanced negatives, a different image each). MLM: 1/28996 for a uniform guess;
    # the stronger text-prior baseline (always the commonest token, "a") is ~0.11 on these captions.
    # The accuracy on the ITM stream's sampled negatives (what the threshold was measured on); itm_accuracy
    # is the evaluation library's (each caption against its own and the next image).
    assert evaluation["itm_sampled_accuracy"] > ITM_ACCURACY_THRESHOLD
    assert evaluation["mlm_accuracy"] > MLM_ACCURACY_THRESHOLD
    assert evaluation["mlm_accuracy"] > 3 * majority
    assert evaluation["ot_positive_mean"] < OT_RATIO_THRESHOLD * evaluation["ot_negative_mean"]
