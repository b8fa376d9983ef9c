"""Initialises the text side of a UNITER backbone from a pretrained Hugging Face BERT (safetensors).

UNITER starts pretraining from BERT: the official ``scripts/convert_ckpt.py`` renames ``bert.*`` to
``uniter.*`` and loads the text embeddings, the encoder and the pooler, leaving the image embeddings
randomly initialised. :func:`init_text_from_hf_bert` does the same from an HF ``BertModel`` /
``BertForPreTraining`` safetensors file (keys ``embeddings.*``, ``encoder.layer.N.*``, ``pooler.*``,
optionally under ``bert.``). The name mapping and the ``[out, in]`` → Keras kernel transposes are those of
:mod:`uniter_tf.checkpoints.official` (its text-only mode); this module adds finding the files, checking
the HF ``config.json`` against the :class:`~uniter_tf.config.UniterConfig`, and clear errors before any
variable is touched.

Example::

    backbone = UniterBackbone(UniterConfig.from_preset("uniter-mini"))
    report = init_text_from_hf_bert(backbone, "/path/to/all-MiniLM-L6-v2/model.safetensors")
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import numpy as np

from uniter_tf.checkpoints import official

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
HF_CONFIG_FILE = "config.json"
POOLER_PREFIX = official.UNITER_PREFIX + "pooler."

# HF config.json field → UniterConfig field that must agree.
_CONFIG_FIELDS = (
        ("vocab_size", "vocab_size"),
        ("hidden_size", "hidden_size"),
        ("num_hidden_layers", "num_hidden_layers"),
        ("num_attention_heads", "num_attention_heads"),
        ("intermediate_size", "intermediate_size"),
        ("max_position_embeddings", "max_position_embeddings"),
        ("type_vocab_size", "type_vocab_size"),
)


def find_hf_bert_files(path: str) -> Tuple[list, Optional[str]]:
    """Finds the weight file(s) and the ``config.json`` of an HF BERT checkpoint.

    Args:
        path: a ``.safetensors`` file, or a directory holding ``model.safetensors`` (or a sharded
            ``model.safetensors.index.json``) and usually ``config.json``.

    Returns:
        ``(weight files, config.json path or None)``.

    Raises:
        FileNotFoundError: naming what is missing.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        directory = path
        index_path = os.path.join(directory, SAFETENSORS_INDEX_FILE)
        single_path = os.path.join(directory, SAFETENSORS_FILE)
        if os.path.isfile(single_path):
            weight_files = [single_path]
        elif os.path.isfile(index_path):
            with open(index_path, encoding="utf-8") as index_file:
                shard_names = sorted(set(json.load(index_file)["weight_map"].values()))
            weight_files = [os.path.join(directory, name) for name in shard_names]
        else:
            raise FileNotFoundError(f"HF BERT directory {path!r} has neither {SAFETENSORS_FILE} nor "
                                    f"{SAFETENSORS_INDEX_FILE}")
    elif os.path.isfile(path):
        if not path.endswith(".safetensors"):
            raise ValueError(f"HF BERT checkpoint {path!r} is not a .safetensors file")
        directory, weight_files = os.path.dirname(path), [path]
    else:
        raise FileNotFoundError(f"HF BERT checkpoint {path!r} does not exist")
    for weight_file in weight_files:
        if not os.path.isfile(weight_file):
            raise FileNotFoundError(f"HF BERT shard {weight_file!r} listed in the index does not exist")
    config_path = os.path.join(directory, HF_CONFIG_FILE)
    return weight_files, (config_path if os.path.isfile(config_path) else None)


def read_hf_bert_checkpoint(path: str) -> Tuple["OrderedDict[str, np.ndarray]", Optional[Dict[str, Any]]]:
    """Reads the tensors (PyTorch layout) and, when present, the HF ``config.json`` of a BERT checkpoint.

    Args:
        path: see :func:`find_hf_bert_files`.

    Returns:
        ``(state dict with the file's own key names, HF config dict or None)``.
    """
    weight_files, config_path = find_hf_bert_files(path)
    state: "OrderedDict[str, np.ndarray]" = OrderedDict()
    for weight_file in weight_files:
        state.update(official.read_state_dict(weight_file))
    hf_config = None
    if config_path is not None:
        with open(config_path, encoding="utf-8") as config_file:
            hf_config = json.load(config_file)
    return state, hf_config


def check_hf_bert_config(hf_config: Mapping[str, Any], config, source: str = "the HF config") -> None:
    """Checks that an HF BERT ``config.json`` describes the same text encoder as a ``UniterConfig``.

    Args:
        hf_config: the parsed ``config.json``.
        config: the :class:`~uniter_tf.config.UniterConfig` of the backbone.
        source: how to name the HF config in messages.

    Raises:
        ValueError: naming the first field that differs, with both values; or an activation, position
            embedding type or LayerNorm epsilon that UNITER's layers do not implement.
    """
    model_type = hf_config.get("model_type", "bert")
    if model_type != "bert":
        raise ValueError(f"{source}: model_type is {model_type!r}; only BERT ('bert') checkpoints can initialise "
                         "UNITER's text side")
    for hf_field, uniter_field in _CONFIG_FIELDS:
        if hf_field in hf_config and int(hf_config[hf_field]) != int(getattr(config, uniter_field)):
            raise ValueError(f"{source}: {hf_field} is {hf_config[hf_field]} but UniterConfig.{uniter_field} is "
                             f"{getattr(config, uniter_field)}; build the backbone from a matching config")
    activation = hf_config.get("hidden_act", "gelu")
    if activation != "gelu":
        raise ValueError(f"{source}: hidden_act is {activation!r}; UNITER's layers use the exact erf 'gelu'")
    position_type = hf_config.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        raise ValueError(f"{source}: position_embedding_type is {position_type!r}; UNITER uses 'absolute'")
    epsilon = float(hf_config.get("layer_norm_eps", config.layer_norm_epsilon))
    if not np.isclose(epsilon, config.layer_norm_epsilon, rtol=1e-3, atol=0.0):
        raise ValueError(f"{source}: layer_norm_eps is {epsilon} but UniterConfig.layer_norm_epsilon is "
                         f"{config.layer_norm_epsilon}")


def _backbone_of(model):
    if hasattr(model, "text_embeddings") and hasattr(model, "encoder_layers"):
        return model
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        raise ValueError(f"cannot initialise {type(model).__name__} from BERT: it has no UNITER backbone")
    return backbone


def _check_tensors(normalized: Mapping[str, np.ndarray], model, config, source: str,
                   require_pooler: bool) -> None:
    """Fails before any variable changes: missing text keys, vocabulary, positions or depth mismatches."""
    word_key = official.UNITER_PREFIX + "embeddings.word_embeddings.weight"
    position_key = official.UNITER_PREFIX + "embeddings.position_embeddings.weight"
    if word_key not in normalized:
        raise ValueError(f"{source} has no embeddings.word_embeddings.weight (nor a bert.-prefixed one); is it an "
                         f"HF BERT checkpoint? First keys: {list(normalized)[:5]}")
    checkpoint_vocab = int(normalized[word_key].shape[0])
    if checkpoint_vocab != config.vocab_size:
        raise ValueError(f"{source}: its word table has {checkpoint_vocab} rows but UniterConfig.vocab_size is "
                         f"{config.vocab_size}; use the config (and vocabulary) of this BERT")
    if position_key in normalized and int(normalized[position_key].shape[0]) != config.max_position_embeddings:
        raise ValueError(f"{source}: its position table has {normalized[position_key].shape[0]} rows but "
                         f"UniterConfig.max_position_embeddings is {config.max_position_embeddings}")
    layer_indices = {int(key.split(".")[3]) for key in normalized
                     if key.startswith(official.UNITER_PREFIX + "encoder.layer.")}
    checkpoint_layers = max(layer_indices) + 1 if layer_indices else 0
    if checkpoint_layers != config.num_hidden_layers:
        raise ValueError(f"{source}: it has {checkpoint_layers} encoder layers but UniterConfig.num_hidden_layers "
                         f"is {config.num_hidden_layers}")
    text_keys = [key for key in official.backbone_variable_map(model)
                 if not key.startswith(official.IMAGE_KEY_PREFIX)
                 and (require_pooler or not key.startswith(POOLER_PREFIX))]
    missing = [key for key in text_keys if key not in normalized]
    if missing:
        raise ValueError(f"{source} lacks {len(missing)} text-side tensor(s), e.g. "
                         f"{[key[len(official.UNITER_PREFIX):] for key in missing[:4]]}")


def init_text_from_hf_bert(model, path: str, require_pooler: bool = False, check_config: bool = True,
                           log: Optional[Callable[[str], None]] = None) -> official.LoadReport:
    """Loads HF BERT weights into the text embeddings, encoder and pooler of a UNITER model.

    The image embeddings (and task heads) keep their initial values. A ``BertForPreTraining`` file also
    fills the MLM head when ``model`` is a pretraining model (as the official init checkpoints do); the
    NSP head is ignored.

    Args:
        model: a :class:`~uniter_tf.models.backbone.UniterBackbone`, a pretraining model, or any model with a
            ``backbone`` attribute.
        path: a ``.safetensors`` file or a directory with ``model.safetensors`` (or shards) and ``config.json``.
        require_pooler: fail when the file has no ``pooler.*`` (e.g. ``BertForMaskedLM`` files); otherwise
            the pooler keeps its initial values.
        check_config: compare the HF ``config.json`` (when present) with the backbone's config first.
        log: receives the load report text (e.g. ``print``).

    Returns:
        The :class:`~uniter_tf.checkpoints.official.LoadReport`; ``allowed_missing`` lists the image keys.

    Raises:
        FileNotFoundError: no checkpoint at ``path``.
        ValueError: a config or tensor that does not fit the backbone, naming both values; nothing is
            assigned in that case.
    """
    backbone = _backbone_of(model)
    config = backbone.config
    state, hf_config = read_hf_bert_checkpoint(path)
    source = f"HF BERT checkpoint {os.fspath(path)!r}"
    if check_config and hf_config is not None:
        check_hf_bert_config(hf_config, config, source=f"{source} config.json")
    key_prefix = official.detect_key_prefix(state)
    if key_prefix == official.UNITER_PREFIX:
        raise ValueError(f"{source} holds uniter.* keys: it is a UNITER checkpoint; load it with "
                         "uniter_tf.checkpoints.official.load_official_state_dict")
    normalized, _ = official.normalize_keys(state, key_prefix)
    _check_tensors(normalized, backbone, config, source, require_pooler)
    return official.load_official_state_dict(model, state, key_prefix=key_prefix, text_only=True,
                                             allow_missing=(() if require_pooler else (POOLER_PREFIX,)), log=log)
