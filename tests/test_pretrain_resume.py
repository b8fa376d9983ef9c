"""`uniter pretrain` survives `kill -9`: rerunning the same command resumes from the last checkpoint."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))


def _checkpoint_steps(run_dir):
    return sorted(int(path.rsplit("-", 1)[1].split(".")[0])
                  for path in glob.glob(os.path.join(run_dir, "checkpoints", "ckpt-*.index")))


def _latest_recorded_step(run_dir):
    """The step of the checkpoint a restart resumes from: the one the manager's state file names (written after
    the checkpoint's own files, so a kill in between leaves an ``.index`` newer than it)."""
    import tensorflow as tf

    latest = tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    return int(latest.rsplit("-", 1)[1]) if latest else None


@pytest.mark.slow
@pytest.mark.e2e
def test_kill_dash_nine_then_resume_reaches_the_final_step(tmp_path):
    from uniter_tf.config import UniterConfig
    from uniter_tf.testing.synthetic_data import write_synthetic_records

    write_synthetic_records(str(tmp_path / "data" / "train"), UniterConfig.from_preset("tiny"), num_images=24)
    run_dir = tmp_path / "run"
    config = {
            "model": "tiny", "train_files": [str(tmp_path / "data" / "train*")], "output_dir": str(run_dir),
            "inputs": {"batch_size": 4, "shuffle_buffer": 16, "itm_negative_pool_size": 8,
                       "text_bucket_boundaries": [64], "region_bucket_boundaries": [16]},
            "model_overrides": {"ot_iterations": 5}, "task_ratios": {"mlm": 1, "mrfr": 1},
            "num_train_steps": 200, "warmup_steps": 2, "checkpoint_every": 5, "log_every": 5,
            "progress_bar": False,
    }
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config))
    command = [sys.executable, "-m", "uniter_tf.cli", "pretrain", "--config", str(config_path)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")

    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and _latest_recorded_step(run_dir) is None:
            assert first.poll() is None, "the first run ended before writing a checkpoint"
            time.sleep(0.5)
        assert _latest_recorded_step(run_dir) is not None, "no checkpoint within 300 s"
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == -signal.SIGKILL
    killed_at = _latest_recorded_step(run_dir)
    assert 5 <= killed_at < 200

    # What a kill between logging a step and checkpointing it leaves: lines past the checkpoint, maybe one torn.
    # The first run may or may not have left such lines itself; these make the case certain.
    with open(run_dir / "metrics.jsonl", "a") as handle:
        handle.write(json.dumps({"step": killed_at + 5, "task": "mlm", "updates": 5, "loss": 9.0}) + "\n")
        handle.write('{"step": ')

    # Exactly the same command again: it must resume, not restart.
    final_step = 200
    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stdout + second.stderr
    assert "metrics.jsonl line(s) past step" in second.stdout + second.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed_from_step"] == killed_at
    assert summary["final_step"] == final_step
    assert summary["updates_this_run"] == final_step - summary["resumed_from_step"]
    assert _checkpoint_steps(run_dir)[-1] == final_step
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == final_step
    # One record per task that ran in each log window, holding window means; a window spans <= log_every updates.
    assert {record["task"] for record in records} == {"mlm", "mrfr"}
    assert {record["step"] for record in records if record["task"] == "mlm"} >= {final_step}
    updates_per_window = {}
    for record in records:
        assert record["updates"] >= 1 and record["loss"] > 0
        updates_per_window[record["step"]] = updates_per_window.get(record["step"], 0) + record["updates"]
    assert set(updates_per_window.values()) <= set(range(1, 6)) and 5 in updates_per_window.values()
    assert len({(record["step"], record["task"]) for record in records}) == len(records), "a step logged twice"
    assert (run_dir / "loss_curves.png").stat().st_size > 1000
    assert glob.glob(str(run_dir / "tensorboard" / "events.out.tfevents.*"))


FINETUNE_SCRIPT = """
import sys
from uniter_tf.training import finetune
finetune.FinetuneRun(finetune.FinetuneConfig.from_json(sys.argv[1])).train()
"""


@pytest.mark.slow
@pytest.mark.e2e
def test_finetuning_survives_kill_dash_nine_and_resumes_to_the_uninterrupted_weights(tmp_path):
    # Fine-tuning runs through the same Trainer: replay-and-skip resume, metrics.jsonl trimming, and the
    # resumed run ends on the weights of a run that was never interrupted (dropout RNG states included).
    import numpy as np
    import tensorflow as tf

    from uniter_tf.config import UniterConfig
    from uniter_tf.testing import synthetic_vqa

    files = synthetic_vqa.write_synthetic_vqa_records(str(tmp_path / "data" / "train"), UniterConfig.from_preset("tiny"),
                                                      num_images=16, num_answers=4)
    script = tmp_path / "finetune.py"
    script.write_text(FINETUNE_SCRIPT)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    final_step = 60

    def config_file(name):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({
                "task": "vqa", "task_config": {"num_answers": 4}, "model_config": "tiny", "train_files": files,
                "output_dir": str(tmp_path / name), "train_batch_size": 4, "learning_rate": 1e-3,
                "warmup_steps": 2, "num_train_steps": final_step, "valid_steps": 5, "log_every": 5, "dropout": 0.1}))
        return str(path)

    killed_command = [sys.executable, str(script), config_file("killed")]
    run_dir = tmp_path / "killed"
    first = subprocess.Popen(killed_command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 400
        while time.time() < deadline and _latest_recorded_step(run_dir) is None:
            assert first.poll() is None, "the first run ended before writing a checkpoint"
            time.sleep(0.2)
        assert _latest_recorded_step(run_dir) is not None, "no checkpoint within 400 s"
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    killed_at = _latest_recorded_step(run_dir)
    assert 5 <= killed_at < final_step
    with open(run_dir / "metrics.jsonl", "a") as handle:
        handle.write('{"step": ')  # a line torn by the kill

    second = subprocess.run(killed_command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed_from_step"] == killed_at and summary["final_step"] == final_step
    assert json.loads((run_dir / "metrics.json").read_text())["step"] == final_step
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records] == list(range(5, final_step + 1, 5))

    uninterrupted = subprocess.run([sys.executable, str(script), config_file("whole")], cwd=REPO, env=env,
                                   capture_output=True, text=True, timeout=600)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    resumed = tf.train.load_checkpoint(str(run_dir / "checkpoints"))
    whole = tf.train.load_checkpoint(str(tmp_path / "whole" / "checkpoints"))
    keys = [key for key in whole.get_variable_to_shape_map() if key.startswith(("backbone/", "head/"))]
    assert len(keys) > 20
    for key in keys:
        np.testing.assert_allclose(resumed.get_tensor(key), whole.get_tensor(key), rtol=1e-5, atol=1e-6,
                                   err_msg=key)
