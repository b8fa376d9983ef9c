"""Training, export and evaluation with every output on a non-local TensorFlow filesystem (issue 10 item 6).

TensorFlow's ``ram://`` filesystem stands in for ``gs://``: a file written with ``open`` /
``os.makedirs`` / ``shutil`` on a ``ram://x`` path would land on the local disk as ``./ram:/x``, so each
test runs in an empty working directory and checks it is still empty at the end.
"""

import json
import posixpath
import uuid

import pytest
import tensorflow as tf

from uniter_tf.export import exporter

gfile = tf.io.gfile


def _ram_root(name):
    return f"ram://{name}-{uuid.uuid4().hex}"


def _files_under(root):
    """Every file under ``root`` (relative paths); ram:// lists phantom entries, so each is checked."""
    found = []
    for directory, _, files in gfile.walk(root):
        for name in files:
            path = posixpath.join(directory, name)
            if gfile.exists(path):
                found.append(path[len(root) + 1:])
    return sorted(found)


def test_version_folders_are_listed_and_moved_on_a_non_local_filesystem(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = _ram_root("versions")
    assert exporter.next_version(f"{root}/model") == 1
    for version in ("1", "7", "notaversion"):
        gfile.makedirs(f"{root}/model/{version}")
    assert exporter.next_version(f"{root}/model") == 8

    # A staged SavedModel-like tree (with ram://'s sibling-prefix trap: "assets" next to "assets.extra").
    staging = f"{root}/model/.export-8-test"
    files = {"saved_model.pb": b"pb", "variables/variables.index": b"index", "assets/vocab.txt": b"[PAD]\n",
             "assets.extra/uniter_export.json": b"{}"}
    for relative, content in files.items():
        gfile.makedirs(posixpath.dirname(f"{staging}/{relative}"))
        with gfile.GFile(f"{staging}/{relative}", "wb") as handle:
            handle.write(content)
    exporter._move_directory(staging, f"{root}/model/8")  # pylint: disable=protected-access
    assert _files_under(f"{root}/model/8") == sorted(files)
    with gfile.GFile(f"{root}/model/8/assets/vocab.txt", "rb") as handle:
        assert handle.read() == b"[PAD]\n"
    assert _files_under(staging) == [] and not gfile.exists(f"{staging}/saved_model.pb")
    assert exporter.next_version(f"{root}/model") == 9
    assert not any(tmp_path.iterdir()), "a ram:// path was written to the local disk"


@pytest.mark.slow
def test_train_export_and_evaluate_with_every_output_in_ram(tmp_path, monkeypatch):
    from uniter_tf import evaluation
    from uniter_tf.cli import main
    from uniter_tf.config import UniterConfig
    from uniter_tf.export.model_dir import export_model_dir
    from uniter_tf.testing import synthetic_vqa
    from uniter_tf.training import finetune

    monkeypatch.chdir(tmp_path)
    root = _ram_root("cloud-run")
    model_config = UniterConfig.from_preset("tiny")
    train_files = synthetic_vqa.write_synthetic_vqa_records(f"{root}/data/train", model_config, num_images=8,
                                                            num_answers=4)
    eval_files = synthetic_vqa.write_synthetic_vqa_records(f"{root}/data/eval", model_config, num_images=4,
                                                           num_answers=4, split_seed=1, captions_per_image=1)
    assert all(path.startswith(root) for path in train_files + eval_files)

    # Training: the run directory (checkpoints, configs, metrics, TensorBoard, predictions) is in ram://.
    run_dir = f"{root}/runs/vqa"
    config = finetune.FinetuneConfig(task="vqa", task_config={"num_answers": 4}, model_config="tiny",
                                     train_files=train_files, eval_files=eval_files, output_dir=run_dir,
                                     train_batch_size=8, eval_batch_size=8, learning_rate=1e-3, warmup_steps=1,
                                     num_train_steps=2, valid_steps=2, dropout=0.0)
    summary = finetune.FinetuneRun(config).train()
    assert summary["step"] == 2
    run_files = _files_under(run_dir)
    assert "finetune_config.json" in run_files and "metrics.jsonl" in run_files
    assert any(name.startswith("checkpoints/ckpt-2.index") for name in run_files), run_files

    # Export: the one exporter, twice into one base path (version folders listed on ram://).
    base = f"{root}/serving/uniter"
    # The op inventory reads the graph in this process (its subprocess cannot see ram://).
    first = export_model_dir(run_dir, base, record_ops=True, warmup=True)
    second = export_model_dir(run_dir, base, record_ops=False, warmup=False)
    assert (first.path, second.path) == (f"{base}/1", f"{base}/2")
    assert first.kind == "finetune" and first.metadata["task"]["name"] == "vqa"
    assert first.metadata["non_core_ops"]  # the tokenizer's TF-Text ops
    exported = _files_under(f"{base}/1")
    assert {"saved_model.pb", "assets/vocab.txt", "variables/variables.index",
            "assets.extra/uniter_export.json", "assets.extra/tf_serving_warmup_requests"} <= set(exported), exported
    assert [name for name in gfile.listdir(base) if name.rstrip("/") not in ("1", "2")] == []  # no staging left
    assert exporter.read_metadata(first.path) == first.metadata

    # Evaluation: the library on the exported model, and `uniter evaluate` writing its report to ram://.
    metrics = evaluation.evaluate_files(base, eval_files, batch_size=8)
    assert 0.0 <= metrics["vqa_score"] <= 1.0
    report = f"{root}/reports/metrics.json"
    assert main(["evaluate", "--run", base, "--files", *eval_files, "--batch-size", "8", "--output", report]) == 0
    with gfile.GFile(report, "r") as handle:
        assert json.load(handle) == pytest.approx(metrics)

    assert not any(tmp_path.iterdir()), "a ram:// path was written to the local disk: " + \
        ", ".join(str(path) for path in tmp_path.rglob("*"))
