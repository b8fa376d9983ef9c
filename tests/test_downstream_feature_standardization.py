"""A downstream task's new backbone gets region-feature statistics from its training records (issue 12).

``DownstreamTask.initialize`` (SNLI-VE and RefCOCO use it as it is) sets
``UniterConfig.region_feature_standardization``'s per-channel mean and scale from ``train_files`` when the
backbone does not come from a pretraining run; with the option off it changes nothing.
"""

import numpy as np
import pytest
import tensorflow as tf

from uniter_tf.data import feature_stats, schema
from uniter_tf.tasks.base_task import get_task

DIM = 16


def _write_ve_records(path, seed=0, images=4):
    """VE records, 3 hypotheses per image (the image's features repeated), non-negative offset features."""
    rng = np.random.default_rng(seed)
    with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
        for image in range(images):
            count = int(rng.integers(1, 5))
            features = (rng.uniform(0, 1, (count, DIM)) * np.linspace(0.5, 4.0, DIM) + 2.0).astype(np.float16)
            boxes = np.tile(np.array([[1.0, 2.0, 30.0, 20.0]], np.float32), (count, 1))
            for label in range(3):
                writer.write(schema.make_example(
                        image_id=f"img{image}", example_id=f"ve{image}-{label}", text="a red circle",
                        token_ids=[170, 1894, 4726], region_features=features.astype(np.float32),
                        region_boxes=boxes, image_height=40, image_width=50, label=label,
                        task=schema.TASK_SNLI_VE).SerializeToString())


def _task(tmp_path, standardize, **params):
    overrides = {"region_feature_dim": DIM, "region_feature_standardization": standardize}
    return get_task("ve", model="tiny", model_overrides=overrides, init="scratch",
                    train_files=[str(tmp_path / "train.tfrecord.gz")], eval_files=[str(tmp_path / "train.tfrecord.gz")],
                    **params)


def test_scratch_backbone_gets_the_training_records_statistics(tmp_path):
    _write_ve_records(tmp_path / "train.tfrecord.gz")
    task = _task(tmp_path, True)
    model = task.build_model()
    embeddings = model.backbone.region_embeddings
    # Before: the identity (mean 0, scale 1), which is what a task that skipped this would train on.
    np.testing.assert_array_equal(embeddings.feature_mean.numpy(), np.zeros(DIM))
    lines = []
    task.initialize(model, log=lines.append)
    expected = feature_stats.compute_feature_statistics(str(tmp_path / "train.tfrecord.gz"))
    np.testing.assert_allclose(embeddings.feature_mean.numpy(), expected.mean, rtol=1e-6)
    np.testing.assert_allclose(embeddings.feature_scale.numpy(), expected.scale(), rtol=1e-6)
    assert expected.mean.min() > 2.0  # the offset the standardisation removes
    assert any("region feature standardisation" in line and "4 images" in line for line in lines), lines
    # Standardised features are centred: the layer's own transform of the training regions has mean ~0.
    regions = np.concatenate([np.frombuffer(tf.train.Example.FromString(record).features.feature[
            schema.REGION_FEATURES].bytes_list.value[0], "<f2").reshape(-1, DIM).astype(np.float32)
            for _, record in feature_stats.iter_records(str(tmp_path / "train.tfrecord.gz"))][::3])  # each image once
    standardized = embeddings.standardize(tf.constant(regions)).numpy()
    np.testing.assert_allclose(standardized.mean(axis=0), 0.0, atol=1e-3)


def test_option_off_leaves_the_official_layer(tmp_path):
    _write_ve_records(tmp_path / "train.tfrecord.gz")
    task = _task(tmp_path, False)
    model = task.build_model()
    lines = []
    task.initialize(model, log=lines.append)
    assert model.backbone.region_embeddings.feature_mean is None
    assert not any("standardisation" in line for line in lines)


def test_missing_training_records_name_the_task(tmp_path):
    task = get_task("ve", model="tiny", init="scratch", eval_files=["x"],
                    model_overrides={"region_feature_dim": DIM, "region_feature_standardization": True})
    model = task.build_model()
    with pytest.raises(ValueError, match="task 've': region_feature_standardization needs train_files"):
        task.initialize(model, log=lambda *_: None)


def test_nlvr2_scratch_backbone_gets_the_statistics_too(tmp_path):
    # Nlvr2Task overrides initialize (the official type-table growth); its scratch path must not skip the statistics.
    _write_ve_records(tmp_path / "train.tfrecord.gz")
    task = get_task("nlvr2", model="tiny", init="scratch", train_files=[str(tmp_path / "train.tfrecord.gz")],
                    eval_files=[str(tmp_path / "train.tfrecord.gz")],
                    model_overrides={"region_feature_dim": DIM, "region_feature_standardization": True})
    model = task.build_model()
    task.initialize(model, log=lambda *_: None)
    expected = feature_stats.compute_feature_statistics(str(tmp_path / "train.tfrecord.gz"))
    embeddings = task.pretraining_model(model).backbone.region_embeddings
    np.testing.assert_allclose(embeddings.feature_mean.numpy(), expected.mean, rtol=1e-6)
    np.testing.assert_allclose(embeddings.feature_scale.numpy(), expected.scale(), rtol=1e-6)


@pytest.mark.parametrize("scheme", ["nlvr2", "vcr"])
def test_official_type_table_growth_keeps_the_statistics(scheme):
    # init_type_embedding rebuilds the backbone from the official variable map, which has no statistics.
    from uniter_tf.config import UniterConfig
    from uniter_tf.models import official_init
    from uniter_tf.models.backbone import UniterBackbone

    backbone = UniterBackbone(UniterConfig.from_preset("tiny", region_feature_dim=DIM,
                                                         region_feature_standardization=True))
    backbone.region_embeddings.build()
    rng = np.random.default_rng(3)
    mean, scale = rng.normal(size=DIM).astype(np.float32), rng.uniform(0.5, 2.0, DIM).astype(np.float32)
    backbone.region_embeddings.set_feature_statistics(mean, scale)
    grown = official_init.init_type_embedding(backbone, scheme)
    np.testing.assert_array_equal(grown.region_embeddings.feature_mean.numpy(), mean)
    np.testing.assert_array_equal(grown.region_embeddings.feature_scale.numpy(), scale)
