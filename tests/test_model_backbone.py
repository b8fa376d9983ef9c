"""UniterBackbone: joint layout, modes, padding invariance, masking, serialisation, bad input."""

import numpy as np
import pytest
import tensorflow as tf
import keras

from uniter_tf.config import UniterConfig
from uniter_tf.models.backbone import UniterBackbone

CONFIG = UniterConfig(vocab_size=120, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=32, region_feature_dim=12, num_soft_labels=5,
                      unk_token_id=4, cls_token_id=1, sep_token_id=2, mask_token_id=3, first_word_id=5)


def _batch(text_pad=0, region_pad=0, seed=0):
    rng = np.random.default_rng(seed)
    token_ids = np.array([[1, 7, 8, 9, 2], [1, 10, 2, 0, 0]], np.int32)
    text_mask = (token_ids > 0).astype(np.int32)
    features = rng.random((2, 3, 12), dtype=np.float32)
    positions = rng.random((2, 3, 7), dtype=np.float32)
    region_mask = np.array([[1, 1, 0], [1, 1, 1]], np.int32)
    features[0, 2] = positions[0, 2] = 0.0
    return {
            "token_ids": np.pad(token_ids, ((0, 0), (0, text_pad))),
            "text_mask": np.pad(text_mask, ((0, 0), (0, text_pad))),
            "region_features": np.pad(features, ((0, 0), (0, region_pad), (0, 0))),
            "region_positions": np.pad(positions, ((0, 0), (0, region_pad), (0, 0))),
            "region_mask": np.pad(region_mask, ((0, 0), (0, region_pad))),
    }


@pytest.fixture(scope="module")
def backbone():
    return UniterBackbone(CONFIG)


def test_outputs_and_compact_joint_layout(backbone):
    batch = _batch()
    outputs = backbone(batch, output_hidden_states=True, output_attention_probs=True)
    assert outputs["sequence_output"].shape == (2, 8, 16)
    assert outputs["pooled_output"].shape == (2, 16)
    assert outputs["hidden_states"].shape == (2, 2, 8, 16)
    assert outputs["attention_probs"].shape == (2, 2, 2, 8, 8)
    np.testing.assert_array_equal(outputs["joint_mask"].numpy(), [[1] * 7 + [0], [1] * 6 + [0, 0]])
    np.testing.assert_array_equal(outputs["text_lengths"].numpy(), [5, 3])
    np.testing.assert_array_equal(outputs["hidden_states"].numpy()[:, -1], outputs["sequence_output"].numpy())
    # Example 1: 3 tokens, then its 3 regions right after its own [SEP] (the text embeddings of the two
    # modalities are computed separately, so compare with each modality's embedding).
    text_only = backbone.text_embeddings(tf.constant(batch["token_ids"]))
    embedding = outputs["embedding_output"].numpy()
    np.testing.assert_allclose(embedding[1, :3], text_only.numpy()[1, :3], atol=1e-6)
    region_type = backbone.text_embeddings.type_embedding(tf.ones((2, 3), tf.int32))
    regions = backbone.region_embeddings(batch["region_features"], batch["region_positions"], region_type).numpy()
    np.testing.assert_allclose(embedding[1, 3:6], regions[1], atol=1e-6)
    np.testing.assert_allclose(embedding[0, 5:7], regions[0, :2], atol=1e-6)
    # Keys are masked: attention to padded joint positions is exactly zero.
    probabilities = outputs["attention_probs"].numpy()
    assert probabilities[0, :, :, :, 7].max() == 0.0 and probabilities[1, :, :, :, 6:].max() == 0.0


def test_valid_outputs_do_not_depend_on_padding(backbone):
    reference = backbone(_batch())
    padded = backbone(_batch(text_pad=3, region_pad=2))
    mask = reference["joint_mask"].numpy().astype(bool)
    np.testing.assert_allclose(padded["sequence_output"].numpy()[:, :8][mask], reference["sequence_output"].numpy()[mask],
                               atol=1e-5)
    np.testing.assert_allclose(padded["pooled_output"].numpy(), reference["pooled_output"].numpy(), atol=1e-5)


def test_text_only_and_image_only_modes(backbone):
    batch = _batch()
    text = backbone({"token_ids": batch["token_ids"], "text_mask": batch["text_mask"]})
    assert text["sequence_output"].shape == (2, 5, 16)
    np.testing.assert_array_equal(text["joint_mask"].numpy(), batch["text_mask"])
    image = backbone({name: batch[name] for name in ("region_features", "region_positions", "region_mask")})
    assert image["sequence_output"].shape == (2, 3, 16)
    np.testing.assert_array_equal(image["text_lengths"].numpy(), [0, 0])
    joint = backbone(batch)
    assert not np.allclose(text["pooled_output"].numpy(), joint["pooled_output"].numpy())


def test_masked_regions_use_mask_row_one_and_ignore_row_zero_and_feature_values():
    model = UniterBackbone(CONFIG)
    batch = _batch()
    masked = np.array([[False, True, False], [True, False, False]])
    outputs = model(dict(batch, masked_regions=masked))["sequence_output"].numpy()
    # The masked rows' feature values do not matter (the official collate zeroes them).
    altered = dict(batch, masked_regions=masked)
    altered["region_features"] = batch["region_features"].copy()
    altered["region_features"][masked] = 5.0
    np.testing.assert_allclose(model(altered)["sequence_output"].numpy(), outputs, atol=1e-6)
    # Row 0 of the mask table is never read.
    table = model.region_embeddings.mask_embedding.embeddings
    table.assign(tf.concat([tf.fill([1, 12], 3.0), table[1:]], axis=0))
    np.testing.assert_allclose(model(dict(batch, masked_regions=masked))["sequence_output"].numpy(), outputs, atol=1e-6)
    # Without masked_regions the output differs.
    assert not np.allclose(model(batch)["sequence_output"].numpy(), outputs)


def test_region_type_ids_select_rows_of_the_text_type_table():
    model = UniterBackbone(CONFIG.replace(type_vocab_size=3))
    batch = _batch()
    default = model(batch)["pooled_output"].numpy()
    np.testing.assert_allclose(model(dict(batch, region_type_ids=np.ones((2, 3), np.int32)))["pooled_output"].numpy(),
                               default, atol=1e-6)
    assert not np.allclose(model(dict(batch, region_type_ids=np.full((2, 3), 2, np.int32)))["pooled_output"].numpy(),
                           default)


def test_dropout_only_in_training(backbone):
    batch = _batch()
    first = backbone(batch, training=False)["pooled_output"].numpy()
    np.testing.assert_array_equal(backbone(batch, training=False)["pooled_output"].numpy(), first)
    assert not np.allclose(backbone(batch, training=True)["pooled_output"].numpy(), first)


def test_get_config_round_trip_and_weights_file(tmp_path, backbone):
    config = backbone.get_config()
    assert config["config"]["hidden_size"] == 16
    rebuilt = UniterBackbone.from_config(config)
    path = str(tmp_path / "backbone.weights.h5")
    backbone.save_weights(path)
    rebuilt.load_weights(path)
    batch = _batch()
    np.testing.assert_allclose(rebuilt(batch)["pooled_output"].numpy(), backbone(batch)["pooled_output"].numpy(),
                               atol=1e-6)
    for layer in (backbone.text_embeddings, backbone.region_embeddings, backbone.encoder_layers[0],
                  backbone.encoder_layers[0].attention, backbone.pooler):
        clone = layer.__class__.from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()


def test_keras_save_and_load_whole_model(tmp_path, backbone):
    path = str(tmp_path / "backbone.keras")
    backbone.save(path)
    restored = keras.saving.load_model(path)
    batch = _batch()
    np.testing.assert_allclose(restored(batch)["pooled_output"].numpy(), backbone(batch)["pooled_output"].numpy(),
                               atol=1e-6)


def test_tf_function_with_jit_compile_matches_eager(backbone):
    batch = _batch()

    @tf.function(jit_compile=True)
    def encode(inputs):
        return backbone(inputs)["pooled_output"]

    np.testing.assert_allclose(encode(batch).numpy(), backbone(batch)["pooled_output"].numpy(), atol=1e-5)


def test_mixed_bfloat16_policy_runs_with_float32_variables():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = UniterBackbone(CONFIG)
        outputs = model(_batch())
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert outputs["sequence_output"].dtype == tf.bfloat16
    assert all(variable.dtype == "float32" for variable in model.weights)
    assert np.isfinite(tf.cast(outputs["pooled_output"], tf.float32).numpy()).all()


@pytest.mark.parametrize("change, message", [
        (lambda b: b.update(region_features=np.zeros((2, 3, 10), np.float32)),
         r"'region_features': expected shape \[B, N, 12\] .*region_feature_dim.*received \[2, 3, 10\]"),
        (lambda b: b.update(token_ids=np.zeros((2, 5, 1), np.int32)),
         r"'token_ids': expected shape \[B, T\], received \[2, 5, 1\]"),
        (lambda b: b.update(token_ids=np.zeros((2, 5), np.float32)), r"'token_ids': expected an integer dtype"),
        (lambda b: b.update(region_positions=np.zeros((2, 3, 4), np.float32)),
         r"'region_positions': expected shape \[B, N, 7\].*received \[2, 3, 4\]"),
        (lambda b: b.update(region_mask=np.ones((2, 4), np.int32)),
         r"'region_mask': expected shape \[B, N\] with N=3 as in 'region_features', received \[2, 4\]"),
        (lambda b: b.update(text_mask=np.ones((3, 5), np.int32)),
         r"'text_mask': expected shape \[B, T\] with B=2 as in 'token_ids', received \[3, 5\]"),
        (lambda b: b.pop("region_mask"), r"input 'region_mask' is missing"),
        (lambda b: b.update(region_features=np.zeros((2, 3, 12), np.int32)), r"'region_features': expected a float"),
        (lambda b: b.update(token_ids=np.zeros((2, 40), np.int32), text_mask=np.ones((2, 40), np.int32)),
         r"text length 40 exceeds max_position_embeddings=32"),
])
def test_bad_inputs_raise_value_errors_naming_the_input(backbone, change, message):
    batch = _batch()
    change(batch)
    with pytest.raises(ValueError, match=message):
        backbone(batch)


def test_bad_inputs_are_caught_when_tracing_too(backbone):
    @tf.function
    def encode(inputs):
        return backbone(inputs)["pooled_output"]

    batch = _batch()
    batch["region_features"] = np.zeros((2, 3, 2048), np.float32)
    with pytest.raises(ValueError, match="region_features"):
        encode(batch)
    with pytest.raises(ValueError, match="expects a dict"):
        backbone(np.zeros((2, 5), np.int32))


@pytest.mark.parametrize("policy, variable_dtype, output_dtype", [
        ("mixed_bfloat16", "float32", tf.bfloat16),
        ("bfloat16", "bfloat16", tf.bfloat16),
        (keras.DTypePolicy("mixed_float16"), "float32", tf.float16),
])
def test_dtype_argument_reaches_every_sublayer_without_the_global_policy(policy, variable_dtype, output_dtype):
    from uniter_tf.models.pretraining_model import UniterPretrainingModel

    assert keras.config.dtype_policy().name == "float32"
    model = UniterPretrainingModel(UniterBackbone(CONFIG, dtype=policy))
    name = policy if isinstance(policy, str) else policy.name
    wrong = [(layer.path, layer.dtype_policy.name) for layer in model._flatten_layers(include_self=True)
             if layer.dtype_policy.name != name]
    assert not wrong
    assert {variable.dtype for variable in model.weights} == {variable_dtype}
    outputs = model.backbone(_batch())
    assert outputs["sequence_output"].dtype == output_dtype
    assert np.isfinite(tf.cast(outputs["pooled_output"], tf.float32).numpy()).all()
    rebuilt = UniterBackbone.from_config(model.backbone.get_config())
    assert {layer.dtype_policy.name for layer in rebuilt._flatten_layers()} == {name}


def test_export_without_input_signature_right_after_construction(tmp_path):
    backbone = UniterBackbone(CONFIG)  # never called
    path = str(tmp_path / "exported")
    backbone.export(path, verbose=False)
    reloaded = tf.saved_model.load(path)  # kept referenced: serve() reads its variables
    served = reloaded.serve(_batch())
    expected = backbone(_batch())
    assert sorted(served) == sorted(expected)
    np.testing.assert_allclose(served["sequence_output"].numpy(), expected["sequence_output"].numpy(), atol=1e-6)
    # build() with a dict of shapes records those inputs (here with masked_regions and a fixed text length).
    masked = UniterBackbone(CONFIG)
    masked.build({"token_ids": (None, 5), "text_mask": (None, 5), "region_features": (None, None, 12),
                  "region_positions": (None, None, 7), "region_mask": (None, None), "masked_regions": (None, None)})
    assert masked.input_specs["masked_regions"].dtype == tf.bool
    assert masked.input_specs["token_ids"].shape.as_list() == [None, 5]
    with pytest.raises(ValueError, match=r"unknown inputs \['tokens'\]"):
        masked.build({"tokens": (None, 5)})


def test_from_preset_names_and_preset_directories(tmp_path):
    from uniter_tf.config import PRESETS

    tiny = UniterBackbone.from_preset("tiny", dtype="mixed_bfloat16", num_hidden_layers=1)
    assert tiny.config == PRESETS["tiny"].replace(num_hidden_layers=1)
    assert tiny.dtype_policy.name == "mixed_bfloat16" and len(tiny.encoder_layers) == 1
    with pytest.raises(ValueError, match="unknown UniterConfig preset 'uniter-huge'"):
        UniterBackbone.from_preset("uniter-huge")
    backbone = UniterBackbone(CONFIG)
    preset_dir = tmp_path / "preset"
    backbone.save_to_preset(str(preset_dir))
    restored = UniterBackbone.from_preset(str(preset_dir))
    assert restored.config == CONFIG
    np.testing.assert_array_equal(restored(_batch())["pooled_output"].numpy(), backbone(_batch())["pooled_output"].numpy())
    fresh = UniterBackbone.from_preset(str(preset_dir), load_weights=False)
    assert not np.allclose(fresh(_batch())["pooled_output"].numpy(), backbone(_batch())["pooled_output"].numpy())
    with pytest.raises(ValueError, match="the weights do not fit the config"):
        UniterBackbone.from_preset(str(preset_dir), num_hidden_layers=3)
    (preset_dir / "backbone.weights.h5").unlink()
    with pytest.raises(FileNotFoundError, match="has no backbone.weights.h5"):
        UniterBackbone.from_preset(str(preset_dir))
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        UniterBackbone.from_preset(str(tmp_path))
