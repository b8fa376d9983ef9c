"""``uniter evaluate --run DIR --files ...``: user errors are one line (exit 2); a real export is scored."""

import json
import os

import pytest
import tensorflow as tf

from uniter_tf import cli, console


@pytest.fixture
def log_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(console.ENV_LOG_DIR, str(tmp_path / "logs"))
    return tmp_path / "logs"


def _one_line_error(capsys, *needles):
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("uniter evaluate: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_missing_run_is_one_line(tmp_path, capsys, log_dir):
    assert cli.main(["evaluate", "--run", str(tmp_path / "nowhere"), "--files", str(tmp_path / "*.gz")]) == 2
    _one_line_error(capsys, "--run", "nowhere", "no such directory")


def test_run_without_a_saved_model_is_one_line(tmp_path, capsys, log_dir):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    assert cli.main(["evaluate", "--run", str(tmp_path / "run"), "--files", str(tmp_path / "*.gz")]) == 2
    _one_line_error(capsys, "no SavedModel there", "uniter export")


def test_unmatched_files_are_one_line(tmp_path, capsys, log_dir):
    # A TFX Model artifact layout; the files are read (and found missing) before the model is loaded.
    (tmp_path / "model" / "Format-Serving").mkdir(parents=True)
    (tmp_path / "model" / "Format-Serving" / "saved_model.pb").write_bytes(b"")
    assert cli.main(["evaluate", "--run", str(tmp_path / "model"), "--files", str(tmp_path / "none*.gz")]) == 2
    _one_line_error(capsys, "no record files match", "none*.gz")


@pytest.mark.slow
def test_scores_a_real_export_on_records(tmp_path, capsys, log_dir):
    from uniter_tf.config import UniterConfig
    from uniter_tf.data import schema
    from uniter_tf.export.tiny import tiny_export
    from uniter_tf.testing import synthetic_vqa

    model = tiny_export(str(tmp_path / "export"))
    config = UniterConfig.from_preset("tiny")
    paths = synthetic_vqa.write_synthetic_vqa_records(str(tmp_path / "eval" / "data"), config, num_images=4,
                                                      num_answers=4, captions_per_image=2, questions_per_image=1)
    # One question whose answers are all outside the vocabulary: it counts, and scores 0.
    first = next(iter(tf.data.TFRecordDataset(paths, compression_type="GZIP"))).numpy()
    example = tf.train.Example.FromString(first)
    feature_map = example.features.feature
    feature_map[schema.EXAMPLE_ID].bytes_list.value[0] = b"vqa_9999"
    del feature_map[schema.ANSWER_LABELS].int64_list.value[:]
    del feature_map[schema.ANSWER_SCORES].float_list.value[:]
    with tf.io.TFRecordWriter(str(tmp_path / "eval" / "oov.tfrecord")) as writer:
        writer.write(example.SerializeToString())

    output = tmp_path / "metrics.json"
    status = cli.main(["evaluate", "--run", model.base_path, "--files", str(tmp_path / "eval" / "*"),
                       "--batch-size", "5", "--output", str(output)])
    assert status == 0, capsys.readouterr().err
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(output.read_text())
    assert printed["num_captions"] == 8.0 and printed["num_gallery_images"] == 4.0
    assert printed["num_questions"] == 5.0 and printed["num_questions_without_vocabulary_answer"] == 1.0
    for key in ("itm_accuracy", "img_r1", "txt_r5", "r_mean", "vqa_score"):
        assert 0.0 <= printed[key] <= 1.0
    # The version directory itself is accepted too, with the same result.
    assert cli.main(["evaluate", "--run", os.path.join(model.base_path, "1"), "--files",
                     str(tmp_path / "eval" / "*"), "--batch-size", "5"]) == 0
    assert json.loads(capsys.readouterr().out) == printed
