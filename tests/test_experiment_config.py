"""The experiment config (task / trainer / runtime sections), its ``--set`` overrides, the shipped configs and
``uniter train --config``."""

import glob
import json
import os

import pytest

from uniter_tf.training.experiment import (EXPERIMENT_FILE_NAME, REQUIRED_NOTES, ExperimentConfig,
                                           apply_section_overrides, is_experiment_dict)
from uniter_tf.training.trainer_config import RuntimeConfig, TrainerConfig

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
SHIPPED = sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.json"), recursive=True))


def _write(tmp_path, values, name="experiment.json"):
    path = tmp_path / name
    path.write_text(json.dumps(values))
    return str(path)


def _minimal(**sections):
    values = {"_command": "uniter train --config x.json", "_expect": "a test",
              "task": {"name": "pretraining", "model": "tiny", "train_files": ["a*"]},
              "trainer": {"num_train_steps": 10, "warmup_steps": 1}, "runtime": {"output_dir": "/tmp/run"}}
    values.update(sections)
    return values


def test_loads_the_three_sections_and_keeps_the_notes(tmp_path):
    path = _write(tmp_path, _minimal())
    config = ExperimentConfig.from_file(path)
    assert config.task_name == "pretraining" and config.task_params == {"model": "tiny", "train_files": ["a*"]}
    assert isinstance(config.trainer, TrainerConfig) and isinstance(config.runtime, RuntimeConfig)
    assert (config.trainer.num_train_steps, config.trainer.warmup_steps) == (10, 1)
    assert config.trainer.learning_rate == TrainerConfig().learning_rate  # defaults fill the rest
    assert config.runtime.output_dir == "/tmp/run" and config.runtime.strategy == "default"
    resolved = config.to_dict()
    assert list(resolved) == ["_command", "_expect", "task", "trainer", "runtime"]
    assert resolved["trainer"] == config.trainer.to_dict() and resolved["task"]["name"] == "pretraining"
    # The resolved dict reads back to the same config.
    assert ExperimentConfig.from_dict(resolved).to_dict() == resolved


@pytest.mark.parametrize("values, message", [
    (_minimal(trainer={"num_steps": 5}), "trainer: unknown key 'num_steps'; known: ["),
    (_minimal(runtime={"output_dir": "x", "strategi": "mirrored"}), "runtime: unknown key 'strategi'"),
    (dict(_minimal(), trainer_config={}), "unknown key 'trainer_config' at the top level"),
    ({"_command": "x", "trainer": {}}, "missing the 'task' section"),
    (_minimal(task={"model": "tiny"}), "task: missing 'name'"),
    (_minimal(task="pretraining"), "task: the task section must be an object"),
    (_minimal(trainer={"num_train_steps": "ten"}), "trainer.num_train_steps must be an integer"),
    (_minimal(runtime={"strategy": "horovod"}), "runtime.strategy must be one of"),
    (_minimal(trainer=[1]), "trainer: the section must be an object"),
])
def test_errors_name_the_key_and_the_file(tmp_path, values, message):
    path = _write(tmp_path, values, name="bad_config.json")
    with pytest.raises(ValueError) as error:
        ExperimentConfig.from_file(path)
    assert str(error.value).startswith(f"{path}: ")
    assert message in str(error.value)


def test_unknown_task_parameter_names_the_key_and_the_file(tmp_path):
    path = _write(tmp_path, _minimal(task={"name": "pretraining", "model": "tiny", "train_file": ["a*"]}))
    config = ExperimentConfig.from_file(path)
    with pytest.raises(ValueError, match=f"^{path}: task: .*train_file"):
        config.build_task()
    with pytest.raises(ValueError, match=f"^{path}: task: unknown task 'pretrainin'"):
        config.with_overrides(["task.name=pretrainin"]).build_task()


def test_set_overrides_sections_nested_keys_and_json_values(tmp_path):
    path = _write(tmp_path, _minimal())
    config = ExperimentConfig.from_file(path, [
            "trainer.num_train_steps=50", "trainer.learning_rate=1e-4", "trainer.progress_bar=false",
            "task.inputs.batch_size=16", 'task.task_ratios={"mlm": 1}', 'task.train_files=["b*", "c*"]',
            "task.model_overrides.hidden_size=64", "runtime.output_dir=/tmp/other run"])
    assert (config.trainer.num_train_steps, config.trainer.learning_rate) == (50, 1e-4)
    assert config.trainer.progress_bar is False
    assert config.task["inputs"] == {"batch_size": 16} and config.task["task_ratios"] == {"mlm": 1}
    assert config.task["train_files"] == ["b*", "c*"] and config.task["model_overrides"] == {"hidden_size": 64}
    assert config.runtime.output_dir == "/tmp/other run"  # not JSON: kept as the string
    # Overrides apply in order; a mapping takes values as they are (no JSON parsing).
    again = config.with_overrides({"trainer.seed": 7, "runtime.output_dir": "123"})
    assert again.trainer.seed == 7 and again.runtime.output_dir == "123"
    assert config.trainer.seed == 42  # the original is unchanged


@pytest.mark.parametrize("override, message", [
    ("num_train_steps=5", "the key must be section.key"),
    ("trainer.num_train_steps", "--set expects section.key=value"),
    ("traner.num_train_steps=5", "unknown section 'traner'"),
    ("trainer.num_steps=5", "trainer: unknown key 'num_steps'"),
    ("trainer.num_train_steps=abc", "trainer.num_train_steps must be an integer, got 'abc'"),
    ("trainer.jit_compile=1", "trainer.jit_compile must be true or false"),
    ("trainer.learning_rate=fast", "trainer.learning_rate must be a number"),
    ("trainer.num_train_steps.max=5", "trainer.num_train_steps is not an object"),
    ("runtime.logical_cpus=-1", "runtime.logical_cpus must be an integer >= 0"),
])
def test_bad_overrides_are_named(tmp_path, override, message):
    path = _write(tmp_path, _minimal())
    with pytest.raises(ValueError) as error:
        ExperimentConfig.from_file(path, [override])
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)


def test_override_helper_copies_and_creates_nested_objects():
    values = {"task": {"name": "vqa"}}
    changed = apply_section_overrides(values, ["task.inputs.max_tokens=100", "task.name=pretraining"])
    assert changed == {"task": {"name": "pretraining", "inputs": {"max_tokens": 100}}}
    assert values == {"task": {"name": "vqa"}}


def test_flat_formats_are_told_apart(tmp_path):
    assert is_experiment_dict({"task": {"name": "vqa"}}) and is_experiment_dict({"trainer": {}})
    assert not is_experiment_dict({"task": "vqa", "num_train_steps": 3})  # a flat FinetuneConfig
    assert not is_experiment_dict({"model": "tiny", "num_train_steps": 3})  # a flat PretrainConfig
    path = _write(tmp_path, {"model": "tiny"})
    with pytest.raises(ValueError, match="not an experiment config"):
        ExperimentConfig.from_file(path)


def test_pretraining_experiment_has_the_same_flat_pretrain_config(tmp_path):
    from uniter_tf.training.pretrain_config import PretrainConfig

    config = ExperimentConfig.from_file(_write(tmp_path, _minimal()), ["task.inputs.batch_size=4"])
    flat = config.to_pretrain_config()
    assert isinstance(flat, PretrainConfig)
    assert flat.num_train_steps == 10 and flat.output_dir == "/tmp/run" and flat.train_files == ["a*"]
    assert flat.input_config().batch_size == 4


def test_shipped_configs_start_with_command_and_expect():
    assert len(SHIPPED) >= 4
    for path in SHIPPED:
        with open(path, encoding="utf-8") as handle:
            raw = json.load(handle)
        assert tuple(raw)[:2] == REQUIRED_NOTES == ("_command", "_expect"), path
        assert raw["_expect"].strip() and "uniter " in raw["_command"], path
        name = os.path.relpath(path, REPO)
        # Every shipped config is run by the command its first line gives.
        assert f"--config {name}" in raw["_command"], path


@pytest.mark.parametrize("path", SHIPPED, ids=[os.path.basename(path) for path in SHIPPED])
def test_shipped_configs_parse_and_build_their_task(path, tmp_path):
    config = ExperimentConfig.from_file(path)
    assert config.to_dict()["task"] == config.task
    params = {}
    vocabulary = config.task.get("answer_vocabulary_file")
    if vocabulary:
        # The shipped VQA configs name a vocabulary that a data step writes; build with a stand-in.
        stand_in = tmp_path / "ans2label.json"
        stand_in.write_text(json.dumps({"yes": 0, "no": 1, "2": 2}))
        params["task.answer_vocabulary_file"] = str(stand_in)
        params.pop("task.num_answers", None)
    task = (config.with_overrides(params) if params else config).build_task()
    assert task.name == config.task_name
    assert task.train_files or task.params.get("train_datasets") or getattr(task, "train_datasets", None)


def test_official_recipes_carry_the_spec_numbers():
    base = ExperimentConfig.from_file(os.path.join(REPO, "configs", "pretrain_uniter_base_alldata.json"))
    trainer = base.trainer
    assert (trainer.learning_rate, trainer.warmup_steps, trainer.num_train_steps) == (5e-5, 10_000, 200_000)
    assert (trainer.beta_1, trainer.beta_2, trainer.weight_decay, trainer.grad_norm) == (0.9, 0.98, 0.01, 5.0)
    assert trainer.gradient_accumulation_steps == 6 and base.task["inputs"]["max_tokens"] == 10240
    # The official all-data mix per (task, dataset): tasks 30:40:20:20, datasets coco/vg/cc/sbu 22:33:33:22.
    ratios = {entry["name"]: entry["task_ratios"] for entry in base.task["train_datasets"]}
    assert {task: sum(r[task] for r in ratios.values()) for task in ("itm", "mlm", "mrfr", "mrckl")} == {
            "itm": 30, "mlm": 40, "mrfr": 20, "mrckl": 20}
    assert {name: sum(r.values()) for name, r in ratios.items()} == {"coco": 22, "vg": 33, "cc": 33, "sbu": 22}

    vqa = ExperimentConfig.from_file(os.path.join(REPO, "configs", "finetune_vqa_uniter_base.json"))
    trainer = vqa.trainer
    # spec §5.7, train-vqa-base-4gpu: lr 8e-5, 6000 steps, 600 warm-up, validation every 500, clip 2.0, accum 5.
    assert (trainer.learning_rate, trainer.num_train_steps, trainer.warmup_steps) == (8e-5, 6000, 600)
    assert (trainer.eval_every, trainer.grad_norm, trainer.gradient_accumulation_steps) == (500, 2.0, 5)
    assert (trainer.beta_1, trainer.beta_2, trainer.weight_decay, trainer.seed) == (0.9, 0.98, 0.01, 42)
    assert trainer.precision == "mixed_float16" and vqa.task["dropout"] == 0.1
    assert vqa.task["max_text_length"] == 60 and vqa.task["model"] == "uniter-base"


def test_train_command_reports_config_errors_in_one_line(tmp_path, capsys):
    from uniter_tf import cli

    path = _write(tmp_path, _minimal(trainer={"num_steps": 5}), name="typo.json")
    assert cli.main(["train", "--config", path]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"uniter train: error: {path}: trainer: unknown key 'num_steps'; known: "
                   f"{sorted(TrainerConfig.__dataclass_fields__)}"]
    assert cli.main(["train", "--config", str(tmp_path / "missing.json")]) == 2
    assert capsys.readouterr().err.strip() == f"uniter train: error: --config {tmp_path / 'missing.json'}: no such file"
    assert cli.main(["train", "--config", _write(tmp_path, _minimal()), "--set", "trainer.seed"]) == 2
    assert "--set expects section.key=value" in capsys.readouterr().err
    # The aliases take the new format too, and refuse another task's experiment.
    vqa = _write(tmp_path, _minimal(task={"name": "vqa"}), name="vqa.json")
    assert cli.main(["pretrain", "--config", vqa]) == 2
    assert "task.name is 'vqa', not 'pretraining'" in capsys.readouterr().err


def test_print_config_shows_the_resolved_experiment(tmp_path, capsys):
    from uniter_tf import cli

    path = _write(tmp_path, _minimal())
    for command in (["train"], ["pretrain"]):
        assert cli.main(command + ["--config", path, "--set", "trainer.seed=3", "--print-config"]) == 0
        printed = json.loads(capsys.readouterr().out)
        assert printed["trainer"]["seed"] == 3 and printed["runtime"]["output_dir"] == "/tmp/run"
        assert printed == ExperimentConfig.from_file(path, ["trainer.seed=3"]).to_dict()
    # --print-config checks the task section too (the task is built, not trained).
    assert cli.main(["train", "--config", path, "--set", "task.inputz={}", "--print-config"]) == 2
    assert f"uniter train: error: {path}: task: unknown parameters ['inputz']" in capsys.readouterr().err


def _check_run_directory(output_dir, config_path, steps):
    import tensorflow as tf

    assert tf.train.latest_checkpoint(os.path.join(output_dir, "checkpoints")).endswith(f"ckpt-{steps}")
    with open(os.path.join(output_dir, "metrics.jsonl"), encoding="utf-8") as handle:
        lines = [json.loads(line) for line in handle if line.strip()]
    assert max(line["step"] for line in lines) == steps
    with open(os.path.join(output_dir, EXPERIMENT_FILE_NAME), encoding="utf-8") as handle:
        written = json.load(handle)
    # The run directory says how it was made: the resolved config, overrides included.
    assert written["runtime"]["output_dir"] == output_dir and written["trainer"]["num_train_steps"] == steps
    assert list(written)[:2] == ["_command", "_expect"]
    return written, lines


@pytest.mark.slow
def test_uniter_train_runs_a_pretraining_experiment(tmp_path, capsys):
    from uniter_tf import cli
    from uniter_tf.config import UniterConfig
    from uniter_tf.testing.synthetic_data import write_synthetic_records

    train = write_synthetic_records(str(tmp_path / "data" / "train"), UniterConfig.from_preset("tiny"), num_images=8)
    evaluation = write_synthetic_records(str(tmp_path / "data" / "eval"), UniterConfig.from_preset("tiny"),
                                         num_images=4, seed=3)
    output_dir = str(tmp_path / "run")
    config = os.path.join(REPO, "configs", "pretrain_local.json")
    # The shipped local recipe with the tiny model's width (the synthetic records' features), 3 updates.
    overrides = [f"task.train_files={json.dumps(train)}", f"task.eval_files={json.dumps(evaluation)}",
                 'task.model_overrides={"ot_iterations": 5}', 'task.task_ratios={"itm": 1, "mlm": 1}',
                 "task.inputs.batch_size=4", "task.inputs.shuffle_buffer=16",
                 "task.inputs.text_bucket_boundaries=[64]", "task.inputs.region_bucket_boundaries=[16]",
                 "trainer.num_train_steps=3", "trainer.warmup_steps=1", "trainer.log_every=1",
                 "trainer.checkpoint_every=3", "trainer.eval_every=0", "trainer.eval_batches=1",
                 "trainer.progress_bar=false", f"runtime.output_dir={output_dir}"]
    assert cli.main(["train", "--config", config] + sum((["--set", item] for item in overrides), [])) == 0
    printed = capsys.readouterr().out
    summary = json.loads(printed[printed.index("{"):])
    assert summary["final_step"] == 3 and summary["resumed_from_step"] == 0
    assert {"itm_accuracy", "mlm_accuracy"} <= set(summary["evaluation"])
    written, lines = _check_run_directory(output_dir, config, 3)
    assert written["task"]["name"] == "pretraining" and written["task"]["train_files"] == train
    assert {line["task"] for line in lines} <= {"itm", "mlm", "eval"}
    # The alias runs the same file; rerunning resumes (nothing left to do at step 3).
    assert cli.main(["pretrain", "--config", config] + sum((["--set", item] for item in overrides), [])) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("{"):])["resumed_from_step"] == 3


@pytest.mark.slow
def test_uniter_train_runs_a_vqa_experiment_and_finetune_alias_exports(tmp_path, capsys):
    from uniter_tf import cli
    from uniter_tf.config import UniterConfig
    from uniter_tf.testing import synthetic_vqa

    tiny = UniterConfig.from_preset("tiny")
    train = synthetic_vqa.write_synthetic_vqa_records(str(tmp_path / "vqa" / "train"), tiny, num_images=8,
                                                      num_answers=4)
    evaluation = synthetic_vqa.write_synthetic_vqa_records(str(tmp_path / "vqa" / "eval"), tiny, num_images=2,
                                                           num_answers=4, split_seed=1, captions_per_image=1)
    vocabulary = tmp_path / "vqa" / "ans2label.json"
    vocabulary.write_text(json.dumps({"zero": 0, "one": 1, "two": 2, "three": 3}))
    output_dir = str(tmp_path / "run")
    config = os.path.join(REPO, "configs", "finetune_vqa_tiny.json")
    overrides = [f"task.train_files={json.dumps(train)}", f"task.eval_files={json.dumps(evaluation)}",
                 f"task.answer_vocabulary_file={vocabulary}", "task.init=scratch", 'task.model_overrides={}',
                 "task.train_batch_size=4", "task.eval_batch_size=4", "trainer.num_train_steps=3",
                 "trainer.warmup_steps=1", "trainer.log_every=1", "trainer.checkpoint_every=3",
                 "trainer.eval_every=0", "trainer.progress_bar=false", f"runtime.output_dir={output_dir}"]
    assert cli.main(["train", "--config", config] + sum((["--set", item] for item in overrides), [])) == 0
    printed = capsys.readouterr().out
    summary = json.loads(printed[printed.index("{"):])
    assert summary["final_step"] == 3 and "vqa_score" in summary["evaluation"]
    written, lines = _check_run_directory(output_dir, config, 3)
    assert written["task"]["name"] == "vqa" and written["task"]["init"] == "scratch"
    assert {line["task"] for line in lines} <= {"vqa", "eval"}
    # uniter finetune takes the same file and its flags; --num-train-steps 4 resumes from 3, --export exports.
    base = tmp_path / "models" / "vqa"
    assert cli.main(["finetune", "--task", "vqa", "--config", config, "--num-train-steps", "4",
                     "--export", str(base)] + sum((["--set", item] for item in overrides[:-1]), []) +
                    ["--output-dir", output_dir]) == 0
    printed = capsys.readouterr().out
    summary = json.loads(printed[printed.index("{"):])
    assert summary["final_step"] == 4 and summary["resumed_from_step"] == 3
    assert summary["export_dir"] == str(base / "1") and (base / "1" / "saved_model.pb").exists()


def test_downstream_experiment_has_the_same_flat_finetune_config(tmp_path):
    from uniter_tf.training.finetune import FinetuneConfig

    values = _minimal(task={"name": "vqa", "model": "tiny", "train_files": ["a*"], "init": "pretrained",
                            "init_path": "runs/pre", "answer_vocabulary_file": "ans2label.json",
                            "train_batch_size": 8, "dropout": 0.0},
                      trainer={"num_train_steps": 10, "warmup_steps": 1, "eval_every": 5, "checkpoint_every": 5})
    config = ExperimentConfig.from_file(_write(tmp_path, values))
    flat = config.to_finetune_config()
    assert isinstance(flat, FinetuneConfig)
    assert (flat.task, flat.model_config, flat.pretrained_checkpoint, flat.valid_steps) == ("vqa", "tiny", "runs/pre", 5)
    assert flat.task_config == {"answer_vocabulary_file": "ans2label.json"} and flat.train_batch_size == 8
    assert flat.output_dir == "/tmp/run" and flat.dropout == 0.0
    # The flat loop checkpoints at every evaluation; an experiment that does not cannot be flattened.
    with pytest.raises(ValueError, match="checkpoint_every=3 differs from eval_every=5"):
        config.with_overrides(["trainer.checkpoint_every=3"]).to_finetune_config()
    with pytest.raises(ValueError, match="only a pretraining experiment"):
        config.to_pretrain_config()


def test_experiment_file_goes_through_tf_io_gfile(tmp_path):
    import tensorflow as tf

    from uniter_tf.training.experiment import write_experiment

    # ram:// is a non-local TensorFlow filesystem (as gs:// is): reading and writing both go through tf.io.gfile.
    source = "ram://t2_experiment/configs/run.json"
    with tf.io.gfile.GFile(source, "w") as handle:
        handle.write(json.dumps(_minimal(runtime={"output_dir": "ram://t2_experiment/run"})))
    config = ExperimentConfig.from_file(source, ["trainer.seed=5"])
    assert config.source == source
    written = write_experiment(config)
    assert written == "ram://t2_experiment/run/" + EXPERIMENT_FILE_NAME
    with tf.io.gfile.GFile(written, "r") as handle:
        assert json.loads(handle.read()) == config.to_dict()
    with pytest.raises(FileNotFoundError):
        ExperimentConfig.from_file("ram://t2_experiment/missing.json")
