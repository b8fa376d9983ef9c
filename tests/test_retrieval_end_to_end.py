"""Retrieval end to end (issue 13): `uniter train` in both modes, export, `uniter evaluate --task retrieval`.

The shipped tiny config runs from scratch on rendered sample records for a few updates (standard mode),
is exported, and the export's full-gallery evaluation (the SavedModel scoring every caption against every
image) must reproduce the Trainer's in-process evaluation: the same score matrix (float16) and the same
recalls. Hard-negative mode runs its few updates through the same command. This is not the learning check
(retrieval fine-tuning from scratch does not rise above chance in a budget a test can afford: see
docs/retrieval.md).
"""

import json
import os

import numpy as np
import pytest

from helpers.retrieval_runs import RETRIEVAL_CONFIG, sample_caption_records

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("retrieval")
    written = sample_caption_records(root, num_images=24, eval_every=4)
    return root, written


def train(root, written, mode_overrides, output_dir, capsys):
    from uniter_tf import cli

    overrides = [f"task.train_files={json.dumps(written['train'])}", f"task.eval_files={json.dumps(written['eval'])}",
                 "task.init=scratch", "task.train_batch_size=4", "task.eval_batch_size=64",
                 "trainer.num_train_steps=3", "trainer.warmup_steps=1", "trainer.log_every=1",
                 "trainer.checkpoint_every=3", "trainer.eval_every=0", "trainer.progress_bar=false",
                 f"runtime.output_dir={output_dir}"] + mode_overrides
    assert cli.main(["train", "--config", RETRIEVAL_CONFIG] + sum((["--set", item] for item in overrides), [])) == 0
    printed = capsys.readouterr().out
    return json.loads(printed[printed.index("{"):])


def test_standard_mode_trains_exports_and_the_export_reproduces_the_full_gallery(records, tmp_path, capsys):
    from uniter_tf import cli

    root, written = records
    run = tmp_path / "standard"
    summary = train(root, written, ["task.mode=standard", "task.negative_size=2"], str(run), capsys)
    evaluation = summary["evaluation"]
    assert summary["final_step"] == 3 and np.isfinite(summary["last_losses"]["retrieval"])
    assert evaluation["num_images"] == 6 and evaluation["num_texts"] == 18  # 6 held-out images, 3 captions each
    in_process = np.load(run / "results" / "retrieval_3_scores.npy")
    assert in_process.shape == (18, 6) and in_process.dtype == np.float16
    assert np.ptp(in_process.astype(np.float32)) > 0  # the scores depend on the pair

    assert cli.main(["export", "--model-dir", str(run), "--output", str(run / "export")]) == 0
    capsys.readouterr()
    output = tmp_path / "eval" / "metrics.json"
    assert cli.main(["evaluate", "--task", "retrieval", "--run", str(run / "export"), "--files", *written["eval"],
                     "--output", str(output)]) == 0
    served = json.loads(output.read_text())
    assert served["score_is_rank_logit"] == 1.0
    exported = np.load(tmp_path / "eval" / "metrics_scores.npy")
    np.testing.assert_allclose(exported.astype(np.float32), in_process.astype(np.float32), atol=2e-3)
    for key in ("img_r1", "img_r5", "img_r10", "txt_r1", "txt_r5", "txt_r10", "r_mean"):
        assert served[key] == pytest.approx(evaluation[key]), key
    ids = json.loads((tmp_path / "eval" / "metrics_ids.json").read_text())
    assert ids == json.loads((run / "results" / "retrieval_3_ids.json").read_text())


def test_hard_negative_mode_trains_with_the_same_command(records, tmp_path, capsys):
    root, written = records
    # No held-out evaluation here (the same full-gallery code as above): only the training path differs.
    summary = train(root, written, ["task.mode=hard_negative", "task.negative_size=4", "task.hard_negative_size=2",
                                    "task.eval_files=[]"], str(tmp_path / "hard"), capsys)
    assert summary["final_step"] == 3
    metrics = summary["last_metrics"]
    assert np.isfinite(metrics["text_queries_loss"]) and np.isfinite(metrics["image_queries_loss"])
    assert metrics["loss"] == pytest.approx(metrics["text_queries_loss"] + metrics["image_queries_loss"], rel=1e-5)
    assert summary["evaluation"] == {} and os.path.exists(tmp_path / "hard" / "finetune_config.json")
