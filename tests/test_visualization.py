"""Tests of uniter_tf.visualization and `uniter visualize`."""

import json

import numpy as np
import pytest

from uniter_tf import visualization
from uniter_tf.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY_REGION_DIM = 64  # the `tiny` preset's region_feature_dim
BOXES = np.array([[10, 20, 200, 220], [50, 60, 300, 400], [0, 0, 640, 480], [300, 100, 500, 300]], np.float32)


def _read_png(path):
    import matplotlib.image

    with open(path, "rb") as png_file:
        assert png_file.read(8) == PNG_MAGIC
    return matplotlib.image.imread(path)


def _write_regions_npz(path, rng, with_positions=False):
    features = rng.normal(size=(len(BOXES), TINY_REGION_DIM)).astype(np.float32)
    if with_positions:
        positions = rng.uniform(size=(len(BOXES), 7)).astype(np.float32)
        np.savez(path, region_features=features, region_positions=positions)
    else:
        np.savez(path, features=features, boxes=BOXES, image_height=480, image_width=640)
    return str(path)


def test_load_regions_npz_variants_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    from_boxes = visualization.load_regions_npz(_write_regions_npz(tmp_path / "boxes.npz", rng))
    assert from_boxes.num_regions == 4
    np.testing.assert_allclose(from_boxes.positions[2], [0, 0, 1, 1, 1, 1, 1])
    np.testing.assert_allclose(from_boxes.positions[0, :4], [10 / 640, 20 / 480, 200 / 640, 220 / 480], rtol=1e-6)
    assert from_boxes.labels()[0] == "r0 (10,20)-(200,220)"
    assert from_boxes.labels(with_boxes=False) == ["r0", "r1", "r2", "r3"]
    from_positions = visualization.load_regions_npz(_write_regions_npz(tmp_path / "pos.npz", rng, True))
    assert from_positions.boxes is None and from_positions.labels()[3] == "r3"

    np.savez(tmp_path / "no_size.npz", features=np.zeros((4, 8), np.float32), boxes=BOXES)
    with pytest.raises(ValueError, match="image_height"):
        visualization.load_regions_npz(str(tmp_path / "no_size.npz"))
    np.savez(tmp_path / "no_features.npz", boxes=BOXES)
    with pytest.raises(ValueError, match="'features'"):
        visualization.load_regions_npz(str(tmp_path / "no_features.npz"))
    np.savez(tmp_path / "bad_positions.npz", features=np.zeros((4, 8), np.float32),
             positions=np.zeros((3, 7), np.float32))
    with pytest.raises(ValueError, match=r"positions must be \[4, 7\]"):
        visualization.load_regions_npz(str(tmp_path / "bad_positions.npz"))


def test_transport_plan_has_uniform_marginals():
    rng = np.random.default_rng(1)
    text_length, num_regions = 5, 3
    sequence_output = rng.normal(size=(text_length + num_regions + 2, 16)).astype(np.float32)
    plan, distance = visualization.transport_plan(sequence_output, text_length, num_regions, iterations=200)
    assert plan.shape == (text_length, num_regions)
    assert np.all(plan >= 0)
    np.testing.assert_allclose(plan.sum(), 1.0, atol=1e-3)
    np.testing.assert_allclose(plan.sum(axis=1), np.full(text_length, 1 / text_length), atol=2e-3)
    np.testing.assert_allclose(plan.sum(axis=0), np.full(num_regions, 1 / num_regions), atol=2e-3)
    assert 0.0 < distance < 2.0
    with pytest.raises(ValueError, match="exceed the sequence length"):
        visualization.transport_plan(sequence_output, 8, 3)


def test_plots_write_readable_pngs(tmp_path):
    rng = np.random.default_rng(2)
    labels = ["[CLS]", "a", "dog", "[SEP]", "r0", "r1", "r2"]
    attention = rng.dirichlet(np.ones(7), size=(2, 3, 7))  # [layers, heads, L, L]
    paths = visualization.plot_attention_maps(attention, labels, text_length=4, output_dir=str(tmp_path / "maps"),
                                              per_head=True)
    assert [p.rsplit("/", 1)[1] for p in paths] == [
            "attention_layer00.png", "attention_layer00_head00.png", "attention_layer00_head01.png",
            "attention_layer00_head02.png", "attention_layer01.png", "attention_layer01_head00.png",
            "attention_layer01_head01.png", "attention_layer01_head02.png"]
    image = _read_png(paths[0])
    assert image.shape[0] > 200 and image.shape[1] > 300
    plan_path = visualization.plot_transport_plan(rng.uniform(size=(4, 3)) / 12, labels[:4], labels[4:],
                                                  str(tmp_path / "plan.png"), distance=0.5)
    assert _read_png(plan_path).shape[0] > 200
    with pytest.raises(ValueError, match="4 tokens x 2 regions"):
        visualization.plot_transport_plan(np.ones((4, 3)), labels[:4], labels[4:6], str(tmp_path / "bad.png"))
    with pytest.raises(ValueError, match="layer 5 does not exist"):
        visualization.plot_attention_maps(attention, labels, 4, str(tmp_path), layers=[5])


def test_cli_visualize_random_init_with_npz(tmp_path, capsys):
    npz_path = _write_regions_npz(tmp_path / "regions.npz", np.random.default_rng(3))
    output_dir = tmp_path / "out"
    status = main(["visualize", "--preset", "tiny", "--random-init", "--regions-npz", npz_path,
                   "--caption", "A dog runs on the grass.", "--output-dir", str(output_dir)])
    assert status == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["tokens"] == ["[CLS]", "A", "dog", "runs", "on", "the", "grass", ".", "[SEP]"]
    assert summary["num_regions"] == 4
    assert len(summary["attention_pngs"]) == 2  # the tiny preset has 2 layers
    for path in summary["attention_pngs"] + [summary["transport_plan_png"]]:
        _read_png(path)
    assert np.isfinite(summary["ot_distance"])


def test_cli_visualize_from_canonical_tfrecord(tmp_path, capsys):
    import tensorflow as tf

    from uniter_tf.data import schema

    rng = np.random.default_rng(4)
    example = schema.make_example(
            image_id="img-1", example_id="cap-1", text="Two cats sleep.",
            region_features=rng.normal(size=(len(BOXES), TINY_REGION_DIM)).astype(np.float32), region_boxes=BOXES,
            image_height=480, image_width=640)
    record_path = str(tmp_path / "data.tfrecord.gz")
    with tf.io.TFRecordWriter(record_path, options="GZIP") as writer:
        writer.write(example.SerializeToString())
    status = main(["visualize", "--preset", "tiny", "--random-init", "--tfrecord", record_path,
                   "--output-dir", str(tmp_path / "out"), "--layers", "1"])
    assert status == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["caption"] == "Two cats sleep."
    assert [p.rsplit("/", 1)[1] for p in summary["attention_pngs"]] == ["attention_layer01.png"]
    with pytest.raises(ValueError, match="no record at index 3"):
        visualization.load_regions_tfrecord(record_path, record_index=3)


def test_cli_visualize_rejects_bad_arguments(tmp_path, capsys):
    # User errors are one line naming the problem, exit status 2 (uniter_tf/cli.py), no traceback.
    npz_path = _write_regions_npz(tmp_path / "regions.npz", np.random.default_rng(5))
    np.savez(tmp_path / "wide.npz", features=np.zeros((2, 32), np.float32), positions=np.zeros((2, 7), np.float32))
    cases = [
            (["--regions-npz", npz_path], "--random-init"),
            (["--random-init"], "exactly one of --regions-npz and --tfrecord"),
            (["--random-init", "--regions-npz", str(tmp_path / "wide.npz")],
             "D=32 but the model's UniterConfig.region_feature_dim is 64"),
    ]
    for arguments, message in cases:
        assert main(["visualize", "--preset", "tiny", *arguments, "--caption", "x",
                     "--output-dir", str(tmp_path)]) == 2
        error = capsys.readouterr().err
        assert message in error and "Traceback" not in error, error


def test_cli_visualize_converted_model_dir(tmp_path, capsys):
    import keras

    from uniter_tf.checkpoints import official
    from uniter_tf.config import UniterConfig
    from uniter_tf.models.backbone import UniterBackbone
    from uniter_tf.tokenization import UniterTokenizer

    keras.utils.set_random_seed(7)
    backbone = UniterBackbone(UniterConfig.from_preset("tiny"))
    official.save_converted(backbone, str(tmp_path / "model"))
    npz_path = _write_regions_npz(tmp_path / "regions.npz", np.random.default_rng(6))
    caption = "A red bus."
    status = main(["visualize", "--model-dir", str(tmp_path / "model"), "--regions-npz", npz_path,
                   "--caption", caption, "--output-dir", str(tmp_path / "out")])
    assert status == 0
    summary = json.loads(capsys.readouterr().out)
    expected = visualization.visualize_example(backbone, UniterTokenizer(), visualization.load_regions_npz(npz_path),
                                               str(tmp_path / "direct"), caption=caption, layers=[])
    assert summary["ot_distance"] == pytest.approx(expected["ot_distance"], abs=1e-5)
    assert expected["attention_pngs"] == []


def test_regions_and_pngs_on_a_non_local_filesystem(tmp_path, monkeypatch):
    """Inputs and outputs go through tf.io.gfile: a ram:// npz is read and the PNGs land in ram://."""
    import io
    import uuid

    import tensorflow as tf

    # A local-disk call (os.makedirs, open, savefig) on "ram://x" would create ./ram:/x here.
    monkeypatch.chdir(tmp_path)
    root = f"ram://visualization-{uuid.uuid4().hex}"
    buffer = io.BytesIO()
    np.savez(buffer, features=np.ones((len(BOXES), 8), np.float32), boxes=BOXES, image_height=480, image_width=640)
    tf.io.gfile.makedirs(root)
    with tf.io.gfile.GFile(f"{root}/regions.npz", "wb") as handle:
        handle.write(buffer.getvalue())
    regions = visualization.load_regions_npz(f"{root}/regions.npz")
    assert regions.num_regions == 4 and regions.labels()[1] == "r1 (50,60)-(300,400)"
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        visualization.load_regions_npz(f"{root}/missing.npz")

    attention = np.random.default_rng(3).dirichlet(np.ones(5), size=(1, 2, 5))
    paths = visualization.plot_attention_maps(attention, ["[CLS]", "a", "[SEP]", "r0", "r1"], 3, f"{root}/maps")
    plan = visualization.plot_transport_plan(np.full((3, 2), 1 / 6), ["[CLS]", "a", "[SEP]"], ["r0", "r1"],
                                             f"{root}/maps/plan.png")
    for path in paths + [plan]:
        assert path.startswith(root)
        with tf.io.gfile.GFile(path, "rb") as handle:
            assert handle.read(8) == PNG_MAGIC
    assert not any(tmp_path.iterdir()), "a ram:// path was written to the local disk"
