"""``uniter pretrain`` / ``uniter finetune`` read configs from any TF filesystem; ``uniter train`` reports on the
chief only (issue 10)."""

import json

import pytest

from uniter_tf import cli
from uniter_tf.commands import train as train_command


def test_aliases_read_a_config_from_a_non_local_filesystem(capsys):
    import tensorflow as tf

    path = "ram://helper_b_configs/pretrain.json"
    tf.io.gfile.makedirs("ram://helper_b_configs")
    with tf.io.gfile.GFile(path, "w") as handle:
        handle.write(json.dumps({"_command": "-", "_expect": "-", "task": {"name": "pretraining", "model": "tiny"},
                                 "trainer": {"num_train_steps": 10, "warmup_steps": 1}}))
    assert cli.main(["pretrain", "--config", path, "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["task"]["name"] == "pretraining"
    assert train_command.config_file_exists(path)
    assert not train_command.config_file_exists("ram://helper_b_configs")  # a directory is not a config
    assert not train_command.config_file_exists("ram://helper_b_configs/missing.json")
    capsys.readouterr()
    assert cli.main(["finetune", "--task", "vqa", "--config", "ram://helper_b_configs/missing.json"]) == 2
    assert "--config ram://helper_b_configs/missing.json: no such file" in capsys.readouterr().err


class _Worker:
    """What run_quietly needs of a Trainer: ``train()`` and ``is_chief`` (a MultiWorkerMirrored worker)."""

    def __init__(self, is_chief):
        self.is_chief = is_chief

    def train(self):
        return {"final_step": 4, "num_replicas": 2}


@pytest.mark.parametrize("is_chief", [True, False])
def test_train_prints_its_summary_on_the_chief_only(monkeypatch, capsys, is_chief):
    from uniter_tf.training import experiment

    monkeypatch.setattr(experiment, "prepare_experiment", lambda config: _Worker(is_chief))
    summary = train_command.train(experiment.ExperimentConfig(task={"name": "vqa"}))
    assert summary["final_step"] == 4
    printed = capsys.readouterr().out
    assert (json.loads(printed)["final_step"] == 4) if is_chief else printed == ""
