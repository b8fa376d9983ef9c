"""UniterConfig: presets, validation and the JSON round trip."""

import json

import pytest

from uniter_tf.config import PRESETS, UniterConfig


@pytest.mark.parametrize("name, layers, hidden, heads, ffn, vocab", [
        ("uniter-base", 12, 768, 12, 3072, 28996),
        ("uniter-large", 24, 1024, 16, 4096, 28996),
        ("uniter-mini", 6, 384, 12, 1536, 30522),
])
def test_presets_have_the_published_shapes(name, layers, hidden, heads, ffn, vocab):
    config = UniterConfig.from_preset(name)
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.intermediate_size,
            config.vocab_size) == (layers, hidden, heads, ffn, vocab)
    assert config.max_position_embeddings == 512 and config.type_vocab_size == 2
    assert config.layer_norm_epsilon == 1e-12 and config.region_feature_dim == 2048 and config.num_soft_labels == 1601
    assert config.head_size * config.num_attention_heads == config.hidden_size


def test_special_ids_and_short_preset_names():
    config = UniterConfig.from_preset("base")
    assert (config.pad_token_id, config.unk_token_id, config.cls_token_id, config.sep_token_id,
            config.mask_token_id, config.first_word_id) == (0, 100, 101, 102, 103, 106)
    assert UniterConfig.from_preset("large") == PRESETS["uniter-large"]
    assert UniterConfig.from_preset("tiny", num_hidden_layers=1).num_hidden_layers == 1


def test_json_round_trip_through_text_and_file(tmp_path):
    config = UniterConfig.from_preset("tiny", type_vocab_size=4, hidden_dropout_prob=0.0)
    assert UniterConfig.from_json(config.to_json()) == config
    path = tmp_path / "config.json"
    config.to_json(path)
    assert UniterConfig.from_json(str(path)) == config
    assert UniterConfig.resolve(str(path)) == config
    assert json.loads(path.read_text())["type_vocab_size"] == 4


def test_from_dict_accepts_official_config_keys():
    official = {"vocab_size": 28996, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                "intermediate_size": 3072, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
                "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 512, "type_vocab_size": 2,
                "initializer_range": 0.02, "img_dim": 1024, "img_label_dim": 11}
    config = UniterConfig.from_dict(official)
    assert config.region_feature_dim == 1024 and config.num_soft_labels == 11


def test_invalid_configs_raise_naming_the_field():
    with pytest.raises(ValueError, match="not_a_field"):
        UniterConfig.from_dict({"not_a_field": 1})
    with pytest.raises(ValueError, match="divisible"):
        UniterConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="hidden_act"):
        UniterConfig(hidden_act="relu")
    with pytest.raises(ValueError, match=r"unk_token_id \(100\) must be in \[0, vocab_size=50\)"):
        UniterConfig(vocab_size=50)
    with pytest.raises(ValueError, match="unknown UniterConfig preset"):
        UniterConfig.from_preset("huge")
    with pytest.raises(ValueError, match="neither a preset"):
        UniterConfig.resolve("no/such/file.json")
