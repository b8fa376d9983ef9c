"""The train step under tf.distribute: 1 vs 2 replicas (Mirrored on 2 logical CPUs) and MultiWorkerMirrored
with 2 worker processes on 127.0.0.1. Each runs in subprocesses: logical devices and TF_CONFIG must be set
before TensorFlow initialises."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))

REPLICA_SCRIPT = textwrap.dedent('''
    import json, sys
    import numpy as np
    import tensorflow as tf
    from uniter_tf.training.strategy import configure_logical_cpus
    configure_logical_cpus(2)
    from uniter_tf.config import UniterConfig
    from uniter_tf.data import pretraining_inputs as inputs
    from uniter_tf.training.pretrain_config import PretrainConfig
    from uniter_tf.training.pretrainer import Pretrainer
    from uniter_tf.testing.synthetic_data import write_synthetic_records

    out = sys.argv[1]
    model_config = UniterConfig.from_preset("tiny")
    write_synthetic_records(out + "/data/train", model_config, num_images=16, min_regions=4, max_regions=8)
    options = dict(batch_size=8, shuffle_buffer=0, text_bucket_boundaries=[64], region_bucket_boundaries=[8])
    global_batch = next(iter(inputs.build_task_dataset(
            "itm", out + "/data/train*", model_config, inputs.PretrainingInputConfig(**options), seed=3)))
    results = {}
    for name, strategy in (("one", tf.distribute.OneDeviceStrategy("/cpu:0")),
                           ("two", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))):
        config = PretrainConfig(
                model="tiny", train_files=[out + "/data/train*"], output_dir=out + "/" + name, inputs=options,
                task_ratios={"itm": 1}, num_train_steps=10, warmup_steps=1, learning_rate=1e-3, grad_norm=1.0,
                model_overrides={"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
                                 "ot_iterations": 5},
                progress_bar=False, seed=11)
        trainer = Pretrainer(config, strategy=strategy)
        before = [v.numpy().copy() for v in trainer.model.trainable_variables]
        # The same global batch of 8: split 4 + 4 over two replicas, whole on one.
        dataset = tf.data.Dataset.from_tensors(global_batch).repeat()
        trainer._iterators["itm"] = iter(strategy.experimental_distribute_dataset(dataset))
        metrics = trainer.train_update("itm")
        after = [v.numpy() for v in trainer.model.trainable_variables]
        results[name] = {"loss": metrics["loss"], "grad_norm": metrics["grad_norm"],
                         "replicas": strategy.num_replicas_in_sync, "examples": metrics["examples"]}
        np.savez(out + "/" + name + ".npz", *[a - b for a, b in zip(after, before)])
        np.savez(out + "/" + name + "_init.npz", *before)
    print("RESULT " + json.dumps(results))
''')


# Fine-tuning (VQA) through the same Trainer, fed by its real pipeline: one stream with a global batch of 8,
# dealt as 4 + 4 to two replicas (the same 8 shuffled records as the one-replica batch).
FINETUNE_REPLICA_SCRIPT = textwrap.dedent('''
    import json, sys
    import numpy as np
    import tensorflow as tf
    from uniter_tf.training.strategy import configure_logical_cpus
    configure_logical_cpus(2)
    from uniter_tf.config import UniterConfig
    from uniter_tf.testing import synthetic_vqa
    from uniter_tf.training import finetune

    out = sys.argv[1]
    files = synthetic_vqa.write_synthetic_vqa_records(out + "/data/train", UniterConfig.from_preset("tiny"),
                                                      num_images=16, num_answers=4)
    results = {}
    for name, strategy in (("one", tf.distribute.OneDeviceStrategy("/cpu:0")),
                           ("two", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))):
        config = finetune.FinetuneConfig(
                task="vqa", task_config={"num_answers": 4}, model_config="tiny", train_files=files,
                output_dir=out + "/" + name, train_batch_size=8, learning_rate=1e-3, warmup_steps=1,
                num_train_steps=10, grad_norm=1.0, dropout=0.0, seed=11)
        run = finetune.FinetuneRun(config, strategy=strategy)
        before = [v.numpy().copy() for v in run.model.trainable_variables]
        metrics = run.train_update("vqa")
        after = [v.numpy() for v in run.model.trainable_variables]
        results[name] = {"loss": metrics["loss"], "grad_norm": metrics["grad_norm"],
                         "replicas": strategy.num_replicas_in_sync, "examples": metrics["examples"]}
        np.savez(out + "/" + name + ".npz", *[a - b for a, b in zip(after, before)])
        np.savez(out + "/" + name + "_init.npz", *before)
    print("RESULT " + json.dumps(results))
''')

def _run(args, env=None, timeout=420):
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.parametrize("script", [REPLICA_SCRIPT, FINETUNE_REPLICA_SCRIPT], ids=["pretraining", "vqa"])
def test_one_and_two_replicas_give_the_same_update(tmp_path, script):
    import numpy as np

    script_path = tmp_path / "replicas.py"
    script_path.write_text(script)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    completed = _run([sys.executable, str(script_path), str(tmp_path)], env=env, timeout=900)
    assert completed.returncode == 0, completed.stderr[-3000:]
    line = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")][-1]
    results = json.loads(line[len("RESULT "):])
    assert results["one"]["replicas"] == 1 and results["two"]["replicas"] == 2
    assert results["one"]["examples"] == results["two"]["examples"] == 8
    assert results["one"]["loss"] == pytest.approx(results["two"]["loss"], rel=1e-4)
    assert results["one"]["grad_norm"] == pytest.approx(results["two"]["grad_norm"], rel=1e-3)
    one_init, two_init = np.load(tmp_path / "one_init.npz"), np.load(tmp_path / "two_init.npz")
    for key in one_init.files:
        np.testing.assert_array_equal(one_init[key], two_init[key])  # same seed, same initial weights
    one, two = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    moved = 0
    for key in one.files:
        np.testing.assert_allclose(one[key], two[key], atol=2e-6, rtol=1e-3)
        moved += int(np.any(one[key] != 0))
    assert moved > 10  # the update really changed the weights


def _free_port():
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


def _run_two_local_workers(uniter_args):
    """Runs `uniter ARGS` as the two workers of a MultiWorkerMirrored cluster on 127.0.0.1; both must exit 0."""
    workers = [f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"]
    processes = []
    for index in range(2):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
                   TF_CONFIG=json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}))
        processes.append(subprocess.Popen([sys.executable, "-m", "uniter_tf.cli", *uniter_args], cwd=REPO, env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = []
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=480)
            outputs.append((process.returncode, stdout, stderr))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for returncode, _, stderr in outputs:
        assert returncode == 0, stderr[-3000:]


@pytest.mark.slow
@pytest.mark.e2e
def test_multi_worker_mirrored_with_two_local_workers(tmp_path):
    from uniter_tf.config import UniterConfig
    from uniter_tf.testing.synthetic_data import write_synthetic_records

    write_synthetic_records(str(tmp_path / "data" / "train"), UniterConfig.from_preset("tiny"), num_images=16,
                            num_shards=2)
    config = {
            "model": "tiny", "train_files": [str(tmp_path / "data" / "train*")], "output_dir": str(tmp_path / "run"),
            "inputs": {"batch_size": 4, "shuffle_buffer": 16, "text_bucket_boundaries": [64],
                       "region_bucket_boundaries": [16]},
            "model_overrides": {"ot_iterations": 5}, "task_ratios": {"mlm": 1}, "num_train_steps": 4,
            "warmup_steps": 1, "checkpoint_every": 2, "log_every": 1, "strategy": "multi_worker_mirrored",
            "progress_bar": False,
    }
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config))
    _run_two_local_workers(["pretrain", "--config", str(config_path)])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["final_step"] == 4 and summary["num_replicas"] == 2
    assert os.path.exists(str(tmp_path / "run" / "checkpoints" / "ckpt-4.index"))
    assert not os.path.exists(str(tmp_path / "run" / "worker_scratch" / "worker_1"))


@pytest.mark.slow
@pytest.mark.e2e
def test_multi_worker_mirrored_fine_tunes_vqa_with_two_local_workers(tmp_path):
    """VQA fine-tuning through `uniter train` (experiment config) on 2 MultiWorkerMirrored workers."""
    from uniter_tf.config import UniterConfig
    from uniter_tf.testing import synthetic_vqa

    files = synthetic_vqa.write_synthetic_vqa_records(str(tmp_path / "data" / "train"), UniterConfig.from_preset("tiny"),
                                                      num_images=16, num_answers=4, num_shards=2)
    experiment = {
            "_command": "written by the test", "_expect": "4 updates on 2 workers",
            "task": {"name": "vqa", "model": "tiny", "model_overrides": {"ot_iterations": 5}, "train_files": files,
                     "num_answers": 4, "train_batch_size": 4, "init": "scratch", "dropout": 0.0},
            "trainer": {"num_train_steps": 4, "warmup_steps": 1, "learning_rate": 1e-3, "checkpoint_every": 2,
                        "log_every": 1, "progress_bar": False},
            "runtime": {"output_dir": str(tmp_path / "run"), "strategy": "multi_worker_mirrored"},
    }
    config_path = tmp_path / "experiment.json"
    config_path.write_text(json.dumps(experiment))
    _run_two_local_workers(["train", "--config", str(config_path)])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["final_step"] == 4 and summary["num_replicas"] == 2
    assert os.path.exists(str(tmp_path / "run" / "checkpoints" / "ckpt-4.index"))
    # What the exporter rebuilds the task model from, written by the chief only.
    assert json.loads((tmp_path / "run" / "finetune_config.json").read_text())["task_name"] == "vqa"
    assert not os.path.exists(str(tmp_path / "run" / "worker_scratch" / "worker_1"))
