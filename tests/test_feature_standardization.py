"""Region feature standardisation (``UniterConfig.region_feature_standardization``, issue 11): statistics
streamed from records, the layer, the pretraining hook, checkpoints and the exported SavedModel."""

import numpy as np
import pytest
import tensorflow as tf

from uniter_tf.config import UniterConfig
from uniter_tf.data import feature_stats, schema
from uniter_tf.layers.region_embeddings import UniterRegionEmbeddings
from uniter_tf.models.backbone import UniterBackbone

DIM = 12


def _boxes(count):
    return np.tile(np.array([[2.0, 3.0, 20.0, 30.0]], np.float32), (count, 1))


def _write_records(path, images, texts_per_image=2, second_images=None):
    """GZIP TFRecords: ``texts_per_image`` caption records per image (the image's features repeated)."""
    with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
        for index, (image_id, features) in enumerate(images.items()):
            for text_index in range(texts_per_image):
                second = None
                if second_images:
                    second_id, second_features = second_images[index]
                    second = {"image_id": second_id, "region_features": second_features,
                              "region_boxes": _boxes(len(second_features)), "image_height": 40, "image_width": 50}
                example = schema.make_example(
                        image_id=image_id, example_id=f"{image_id}-{text_index}", text="a red circle",
                        region_features=features, region_boxes=_boxes(len(features)), image_height=40,
                        image_width=50, task="nlvr2" if second else "caption", label=1 if second else None,
                        second_image=second)
                writer.write(example.SerializeToString())


def _images(seed, count=5):
    rng = np.random.default_rng(seed)
    # Non-negative, offset, per-channel scales: what pooled ReLU6 maps look like.
    return {f"img{seed}-{index}": (rng.uniform(0, 1, (int(rng.integers(1, 5)), DIM))
                                   * np.linspace(0.5, 5.0, DIM) + 1.0).astype(np.float16).astype(np.float32)
            for index in range(count)}


def test_statistics_equal_numpys_over_distinct_images(tmp_path):
    images = _images(0)
    _write_records(tmp_path / "a.tfrecord.gz", dict(list(images.items())[:3]))
    # A second shard without the .gz suffix (TFX's naming): GZIP is recognised by content.
    _write_records(tmp_path / "b-00000-of-00001", dict(list(images.items())[2:]))
    statistics = feature_stats.compute_feature_statistics([str(tmp_path / "a.tfrecord.gz"),
                                                           str(tmp_path / "b-*")])
    every_region = np.concatenate(list(images.values()))  # each image once, though 2 records repeat it
    assert statistics.num_images == 5 and statistics.num_records == 12
    assert statistics.num_regions == len(every_region)
    np.testing.assert_allclose(statistics.mean, every_region.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(statistics.std, every_region.std(axis=0), rtol=1e-5)
    np.testing.assert_allclose(statistics.scale(), 1.0 / np.maximum(every_region.std(axis=0), 1e-2), rtol=1e-5)


def test_statistics_count_the_second_image_of_pair_records(tmp_path):
    left, right = _images(1, 2), _images(2, 2)
    _write_records(tmp_path / "pairs.gz", left, second_images=list(right.items()))
    statistics = feature_stats.compute_feature_statistics(str(tmp_path / "pairs.gz"))
    every_region = np.concatenate(list(left.values()) + list(right.values()))
    assert statistics.num_images == 4
    np.testing.assert_allclose(statistics.mean, every_region.mean(axis=0), rtol=1e-6)


def test_constant_channels_are_floored_not_inverted(tmp_path):
    images = {"flat": np.ones((3, DIM), np.float32)}
    _write_records(tmp_path / "flat.gz", images)
    statistics = feature_stats.compute_feature_statistics(str(tmp_path / "flat.gz"))
    assert np.all(statistics.std == 0)
    np.testing.assert_allclose(statistics.scale(), np.full(DIM, 100.0), rtol=1e-6)
    with pytest.raises(ValueError, match="min_std"):
        statistics.scale(0.0)


def test_bad_records_are_named(tmp_path):
    example = schema.make_example(image_id="broken", example_id="broken-0", text="x",
                                  region_features=np.ones((2, DIM), np.float32), region_boxes=_boxes(2),
                                  image_height=40, image_width=50)
    example.features.feature[schema.REGION_FEATURES].bytes_list.value[0] = b"\x00" * 10
    with tf.io.TFRecordWriter(str(tmp_path / "bad.gz"), options="GZIP") as writer:
        writer.write(example.SerializeToString())
    with pytest.raises(ValueError, match=r"record 'broken-0'.*region_features has 5 values, expected 2 x 12"):
        feature_stats.compute_feature_statistics(str(tmp_path / "bad.gz"))
    _write_records(tmp_path / "good.gz", _images(3, 1))
    with pytest.raises(ValueError, match="feature_dim is 12, expected 7"):
        feature_stats.compute_feature_statistics(str(tmp_path / "good.gz"), feature_dim=7)
    with pytest.raises(ValueError, match="no record files match"):
        feature_stats.compute_feature_statistics(str(tmp_path / "missing-*"))


def _layer_inputs(seed=0):
    rng = np.random.default_rng(seed)
    features = rng.uniform(0, 6, (2, 3, DIM)).astype(np.float32)
    positions = rng.uniform(0, 1, (2, 3, 7)).astype(np.float32)
    types = rng.normal(0, 1, (1, 1, 8)).astype(np.float32)
    masked = np.array([[False, True, False], [False, False, False]])
    return features, positions, types, masked


def _pair_of_layers():
    plain = UniterRegionEmbeddings(DIM, 8, dropout_rate=0.0)
    standardized = UniterRegionEmbeddings(DIM, 8, dropout_rate=0.0, feature_standardization=True)
    plain.build()
    standardized.build()
    rng = np.random.default_rng(5)
    for variable in plain.weights:
        variable.assign(rng.normal(0, 0.3, variable.shape).astype(np.float32))
    for variable in standardized.trainable_weights:
        source = next(item for item in plain.weights if item.path.split("/", 1)[1] == variable.path.split("/", 1)[1])
        variable.assign(np.asarray(source))
    return plain, standardized


def test_off_adds_no_weights_and_identity_statistics_equal_the_plain_layer():
    plain, standardized = _pair_of_layers()
    assert len(plain.weights) == len(standardized.weights) - 2
    assert sorted(weight.name for weight in standardized.non_trainable_weights) == ["feature_mean", "feature_scale"]
    features, positions, types, masked = _layer_inputs()
    np.testing.assert_allclose(standardized(features, positions, types, masked_regions=masked).numpy(),
                               plain(features, positions, types, masked_regions=masked).numpy(), atol=1e-6)


def test_statistics_standardize_before_img_linear_and_masked_rows_take_the_mask_vector():
    plain, standardized = _pair_of_layers()
    rng = np.random.default_rng(9)
    mean = rng.uniform(0, 3, DIM).astype(np.float32)
    scale = rng.uniform(0.2, 4, DIM).astype(np.float32)
    standardized.set_feature_statistics(mean, scale)
    features, positions, types, masked = _layer_inputs()
    expected = plain((features - mean) * scale, positions, types, masked_regions=masked).numpy()
    got = standardized(features, positions, types, masked_regions=masked).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # The statistics matter (this test can fail): the plain layer on raw features differs.
    assert np.abs(plain(features, positions, types).numpy() - got).max() > 1e-2
    np.testing.assert_allclose(standardized.standardize(features).numpy(), (features - mean) * scale, rtol=1e-6)
    with pytest.raises(ValueError, match=r"mean has shape \(3,\), expected \(12,\)"):
        standardized.set_feature_statistics(mean[:3], scale)
    with pytest.raises(ValueError, match="built without feature_standardization"):
        plain.set_feature_statistics(mean, scale)


def _standardized_backbone(seed=0):
    config = UniterConfig.from_preset("tiny", region_feature_standardization=True)
    backbone = UniterBackbone(config)
    rng = np.random.default_rng(seed)
    backbone.region_embeddings.set_feature_statistics(rng.uniform(0, 2, config.region_feature_dim),
                                                      rng.uniform(0.5, 3, config.region_feature_dim))
    return backbone


def test_checkpoint_round_trip_and_the_fine_tuning_restore_keep_the_statistics(tmp_path):
    from uniter_tf import runs
    from uniter_tf.models.pretraining_model import UniterPretrainingModel
    from uniter_tf.training.checkpointing import restore_backbone

    model = UniterPretrainingModel(_standardized_backbone())
    tf.train.Checkpoint(**{runs.MODEL_KEY: runs.model_variable_tree(model)}).save(str(tmp_path / "checkpoints" / "c"))
    fresh = UniterBackbone(model.backbone.config)
    assert np.all(np.asarray(fresh.region_embeddings.feature_scale) == 1)
    restore_backbone(fresh, str(tmp_path))  # what fine-tuning's partial restore reads
    for name in ("feature_mean", "feature_scale"):
        np.testing.assert_array_equal(np.asarray(getattr(fresh.region_embeddings, name)),
                                      np.asarray(getattr(model.backbone.region_embeddings, name)))


def test_pretraining_from_scratch_sets_the_statistics_of_its_training_records(tmp_path):
    from uniter_tf.tasks.pretraining import PretrainingTask

    rng = np.random.default_rng(4)
    images = {f"i{index}": rng.uniform(0, 6, (3, 64)).astype(np.float16).astype(np.float32) for index in range(4)}
    _write_records(tmp_path / "train.gz", images)
    task = PretrainingTask(model="tiny", model_overrides={"region_feature_standardization": True},
                           train_files=[str(tmp_path / "train.gz")], task_ratios={"itm": 1})
    model = task.build_model()
    lines = []
    task.initialize(model, log=lines.append)
    every_region = np.concatenate(list(images.values()))
    np.testing.assert_allclose(np.asarray(model.backbone.region_embeddings.feature_mean), every_region.mean(axis=0),
                               rtol=1e-5)
    np.testing.assert_allclose(np.asarray(model.backbone.region_embeddings.feature_scale),
                               1.0 / np.maximum(every_region.std(axis=0), 1e-2), rtol=1e-4)
    assert any("12 regions of 4 images" in line for line in lines)


@pytest.mark.slow  # a SavedModel export: ~20 s quiet, ~50 s on the loaded 2-core machine
def test_the_exported_model_applies_the_statistics(tmp_path):
    import tensorflow_text  # noqa: F401  (registers the WordPiece ops the SavedModel uses)

    from uniter_tf.export.exporter import SCORE_TENSORS, example_inputs, export_uniter
    from uniter_tf.models.pretraining_heads import ItmHead

    backbone = _standardized_backbone(seed=1)
    itm_head = ItmHead(backbone.config.hidden_size)
    itm_head.build((None, backbone.config.hidden_size))
    rng = np.random.default_rng(2)
    # Larger than the N(0, 0.02) init, so the logits depend visibly on the features.
    for variable in backbone.trainable_weights + itm_head.trainable_weights:
        variable.assign(rng.normal(0, 0.2, variable.shape).astype(np.float32))
    inputs = example_inputs(backbone.config.region_feature_dim, batch_size=2, num_regions=3)[SCORE_TENSORS]
    inputs["region_features"] = np.abs(inputs["region_features"]) * 3  # far from the identity's range
    in_process = itm_head(backbone({key: tf.constant(value) for key, value in inputs.items()})["pooled_output"])
    exported = tf.saved_model.load(export_uniter(str(tmp_path / "base"), backbone, itm_head, version=1))
    served = exported.signatures[SCORE_TENSORS](**{key: tf.constant(value) for key, value in inputs.items()})
    np.testing.assert_allclose(served["itm_logits"].numpy(), in_process.numpy(), atol=1e-5)
    backbone.region_embeddings.set_feature_statistics(np.zeros(backbone.config.region_feature_dim),
                                                      np.ones(backbone.config.region_feature_dim))
    identity = itm_head(backbone({key: tf.constant(value) for key, value in inputs.items()})["pooled_output"])
    # Without the statistics the logits move by ~1e-3 (the LayerNorms and the tanh pooler damp it), 100x the
    # tolerance above: an export that dropped the statistics would fail the comparison.
    assert np.abs(identity.numpy() - served["itm_logits"].numpy()).max() > 1e-4
