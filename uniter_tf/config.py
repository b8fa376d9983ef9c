"""UNITER model configuration and presets.

:class:`UniterConfig` holds every hyper-parameter of the backbone and the pretraining heads, plus the
special token ids that the data code reads from it (so no module hard-codes ``[MASK]`` = 103).

Presets (``UniterConfig.from_preset(name)``):

* ``uniter-base``: 12 layers, hidden 768, 12 heads, FFN 3072, BERT-cased vocabulary 28996.
* ``uniter-large``: 24 layers, hidden 1024, 16 heads, FFN 4096, vocabulary 28996.
* ``uniter-mini``: the MiniLM-L6 shape (6 layers, hidden 384, 12 heads, FFN 1536, BERT-uncased
  vocabulary 30522).
* ``tiny``: 2 layers, hidden 32, for tests; keeps the cased vocabulary so the real tokenizer fits.

The JSON form is a flat object with the field names below. :meth:`UniterConfig.from_dict` also
accepts the official UNITER ``config/uniter-*.json`` files (their keys are a subset of ours), the
official ``img_dim`` / ``img_label_dim`` / ``ot_k`` names, and the ``vocab`` block of the parity
fixtures' ``config.json`` (``{"pad": 0, "cls": 1, "sep": 2, "mask": 3, "v_range": [5, 100]}``), which
names the special token ids of a toy vocabulary.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, Mapping, Union

# Official names that mean one of our fields.
_OFFICIAL_ALIASES = {
        "img_dim": "region_feature_dim",
        "img_label_dim": "num_soft_labels",
        "ot_k": "ot_inner_iterations",
}
# Names in a fixture's ``vocab`` block → the id fields they set.
_VOCAB_IDS = {"pad": "pad_token_id", "unk": "unk_token_id", "cls": "cls_token_id", "sep": "sep_token_id",
              "mask": "mask_token_id"}
_SPECIAL_ID_FIELDS = ("pad_token_id", "unk_token_id", "cls_token_id", "sep_token_id", "mask_token_id")


def _vocab_block_fields(vocab: Mapping[str, Any], explicit: Mapping[str, Any]) -> Dict[str, Any]:
    """The id fields a ``vocab`` block names (see the module docstring).

    ``v_range: [first, end]`` is the range MLM draws random words from: ``first`` is ``first_word_id``.
    A toy vocabulary without ``unk`` whose size leaves no room for the default ``[UNK]`` id (100) gets the
    highest id below ``first_word_id`` that no other special token uses (nothing reads it there).

    Raises:
        ValueError: a malformed block, or an id that contradicts the same field given explicitly.
    """
    fields: Dict[str, Any] = {}
    for name, value in vocab.items():
        if name == "v_range":
            if not isinstance(value, (list, tuple)) or len(value) != 2:
                raise ValueError(f"UniterConfig vocab.v_range must be [first_word_id, end], got {value!r}")
            fields["first_word_id"] = value[0]
        elif name in _VOCAB_IDS:
            fields[_VOCAB_IDS[name]] = value
        else:
            raise ValueError(f"unknown entry vocab.{name} in a UniterConfig vocab block (known: "
                             f"{sorted(_VOCAB_IDS) + ['v_range']})")
    for field_name, value in fields.items():
        if field_name in explicit and explicit[field_name] != value:
            raise ValueError(f"UniterConfig.{field_name} is {explicit[field_name]!r} but the vocab block says "
                             f"{value!r}")
    vocab_size = explicit.get("vocab_size", UniterConfig.vocab_size)
    default_unk = UniterConfig.unk_token_id
    if ("unk_token_id" not in fields and "unk_token_id" not in explicit and isinstance(vocab_size, int)
            and default_unk >= vocab_size):
        first_word = fields.get("first_word_id", explicit.get("first_word_id", UniterConfig.first_word_id))
        taken = {fields.get(name, explicit.get(name)) for name in _SPECIAL_ID_FIELDS}
        free = [token_id for token_id in range(int(first_word) - 1, -1, -1) if token_id not in taken]
        if not free:
            raise ValueError(f"the vocab block names no unk id and every id below first_word_id={first_word} is "
                             "another special token; give vocab.unk")
        fields["unk_token_id"] = free[0]
    return fields


@dataclasses.dataclass(frozen=True)
class UniterConfig:
    """Hyper-parameters of a UNITER model.

    Attributes:
        vocab_size: size of the WordPiece vocabulary (rows of the word-embedding table).
        hidden_size: H, the transformer width.
        num_hidden_layers: number of post-LN BERT layers.
        num_attention_heads: attention heads per layer; must divide ``hidden_size``.
        intermediate_size: width of the feed-forward block.
        hidden_act: activation of the feed-forward block; only ``"gelu"`` (exact erf form) exists in
            UNITER.
        hidden_dropout_prob: dropout on embeddings and on every residual branch.
        attention_probs_dropout_prob: dropout on the attention probabilities.
        max_position_embeddings: rows of the text position table (longest text incl. CLS/SEP).
        type_vocab_size: rows of the token-type table (2; NLVR2 checkpoints 3, VCR 4). Regions use row 1.
        initializer_range: standard deviation of the normal initialiser of dense and embedding weights.
        layer_norm_epsilon: epsilon of every LayerNorm (1e-12 in UNITER, inside the square root).
        region_feature_dim: D, the width of a region feature vector (2048 for the BUTD detector).
        region_position_dim: width of the box feature ``[x1, y1, x2, y2, w, h, w*h]`` (always 7).
        num_soft_labels: C, the number of detector classes of the MRC targets (1600 VG classes +
            background).
        pad_token_id: id of ``[PAD]``.
        unk_token_id: id of ``[UNK]``.
        cls_token_id: id of ``[CLS]``.
        sep_token_id: id of ``[SEP]``.
        mask_token_id: id of ``[MASK]``.
        first_word_id: smallest id that MLM's random replacement may draw (the id of ``!``); the draw
            range is ``[first_word_id, vocab_size)``.
        itm_ot_lambda: weight of the word-region-alignment (optimal transport) loss inside ITM.
        ot_beta: IPOT proximal step size.
        ot_iterations: IPOT outer iterations.
        ot_inner_iterations: IPOT inner (Sinkhorn) iterations ``k``.
        region_feature_standardization: not in UNITER (default off: the official model, weight for
            weight). On: the region embeddings standardise every feature channel with non-trainable
            training-split statistics (``feature_mean`` / ``feature_scale`` weights, set when a pretraining
            run starts from scratch; :mod:`uniter_tf.data.feature_stats`), kept in checkpoints and exports.
    """

    vocab_size: int = 28996
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_epsilon: float = 1e-12
    region_feature_dim: int = 2048
    region_position_dim: int = 7
    num_soft_labels: int = 1601
    pad_token_id: int = 0
    unk_token_id: int = 100
    cls_token_id: int = 101
    sep_token_id: int = 102
    mask_token_id: int = 103
    first_word_id: int = 106
    itm_ot_lambda: float = 0.1
    ot_beta: float = 0.5
    ot_iterations: int = 50
    ot_inner_iterations: int = 1
    region_feature_standardization: bool = False

    def __post_init__(self):
        positive_ints = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                         "intermediate_size", "max_position_embeddings", "type_vocab_size",
                         "region_feature_dim", "num_soft_labels", "ot_iterations", "ot_inner_iterations")
        for field_name in positive_ints:
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"UniterConfig.{field_name} must be a positive int, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"UniterConfig.hidden_size ({self.hidden_size}) must be divisible by "
                             f"num_attention_heads ({self.num_attention_heads})")
        if self.hidden_act != "gelu":
            raise ValueError(f"UniterConfig.hidden_act must be 'gelu' (exact erf GELU), got {self.hidden_act!r}")
        if self.type_vocab_size < 2:
            raise ValueError(f"UniterConfig.type_vocab_size must be >= 2 (regions use row 1), got "
                             f"{self.type_vocab_size}")
        if not isinstance(self.region_feature_standardization, bool):
            raise ValueError(f"UniterConfig.region_feature_standardization must be true or false, got "
                             f"{self.region_feature_standardization!r}")
        if self.region_position_dim != 7:
            raise ValueError(f"UniterConfig.region_position_dim must be 7, got {self.region_position_dim}")
        for field_name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, field_name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"UniterConfig.{field_name} must be in [0, 1), got {value!r}")
        for field_name in ("pad_token_id", "unk_token_id", "cls_token_id", "sep_token_id", "mask_token_id",
                           "first_word_id"):
            value = getattr(self, field_name)
            if not 0 <= value < self.vocab_size:
                raise ValueError(f"UniterConfig.{field_name} ({value}) must be in [0, vocab_size="
                                 f"{self.vocab_size})")

    @property
    def head_size(self) -> int:
        """Width of one attention head (``hidden_size / num_attention_heads``)."""
        return self.hidden_size // self.num_attention_heads

    def replace(self, **changes: Any) -> "UniterConfig":
        """Returns a copy with the given fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        """Returns the fields as a plain dict (JSON-serialisable)."""
        return dataclasses.asdict(self)

    def to_json(self, path: Union[str, os.PathLike, None] = None) -> str:
        """Serialises the config as JSON, and writes it to ``path`` when given.

        Args:
            path: optional file to write.

        Returns:
            The JSON text.
        """
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        if path is not None:
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text)
        return text

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], allow_unknown: bool = False) -> "UniterConfig":
        """Builds a config from a dict of fields.

        Official UNITER config keys are accepted (``img_dim`` → ``region_feature_dim``,
        ``img_label_dim`` → ``num_soft_labels``, ``ot_k`` → ``ot_inner_iterations``), and so is a parity
        fixture's ``vocab`` block of special ids (module docstring).

        Args:
            values: field name → value.
            allow_unknown: ignore keys that are not fields instead of raising.

        Raises:
            ValueError: on an unknown key (unless ``allow_unknown``) or an invalid value.
        """
        field_names = {field.name for field in dataclasses.fields(cls)}
        kwargs = {}
        unknown = []
        vocab_block = None
        for key, value in values.items():
            key = _OFFICIAL_ALIASES.get(key, key)
            if key in field_names:
                kwargs[key] = value
            elif key == "vocab" and isinstance(value, Mapping):
                vocab_block = value
            else:
                unknown.append(key)
        if unknown and not allow_unknown:
            raise ValueError(f"unknown UniterConfig fields: {sorted(unknown)}")
        if vocab_block is not None:
            kwargs.update(_vocab_block_fields(vocab_block, kwargs))
        return cls(**kwargs)

    @classmethod
    def from_json(cls, json_text_or_path: Union[str, os.PathLike], allow_unknown: bool = False) -> "UniterConfig":
        """Reads a config from JSON text or from a JSON file.

        Args:
            json_text_or_path: the JSON text itself, or the path of a ``.json`` file.
            allow_unknown: ignore unknown keys (see :meth:`from_dict`).
        """
        text = os.fspath(json_text_or_path)
        if not text.lstrip().startswith("{"):
            with open(text, encoding="utf-8") as handle:
                text = handle.read()
        values = json.loads(text)
        if not isinstance(values, dict):
            raise ValueError("a UniterConfig JSON must be an object")
        return cls.from_dict(values, allow_unknown=allow_unknown)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "UniterConfig":
        """Returns a named preset, optionally with some fields overridden.

        Args:
            name: one of :data:`PRESETS` (``uniter-base``, ``uniter-large``, ``uniter-mini``, ``tiny``);
                ``base`` / ``large`` / ``mini`` are accepted as short names.
            **overrides: fields to change.

        Raises:
            ValueError: for an unknown preset name.
        """
        key = name if name in PRESETS else f"uniter-{name}"
        if key not in PRESETS:
            raise ValueError(f"unknown UniterConfig preset {name!r}; known presets: {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[key], **overrides)

    @classmethod
    def resolve(cls, spec: Union[str, os.PathLike, "UniterConfig"]) -> "UniterConfig":
        """Turns a preset name, a JSON path or JSON text into a config (CLI helper)."""
        if isinstance(spec, UniterConfig):
            return spec
        text = os.fspath(spec)
        if text in PRESETS or f"uniter-{text}" in PRESETS:
            return cls.from_preset(text)
        if text.lstrip().startswith("{") or os.path.exists(text):
            return cls.from_json(text, allow_unknown=True)
        raise ValueError(f"config {text!r} is neither a preset ({sorted(PRESETS)}) nor a JSON file")


PRESETS: Dict[str, UniterConfig] = {
        "uniter-base": UniterConfig(),
        "uniter-large": UniterConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                     intermediate_size=4096),
        # MiniLM-L6-H384 (all-MiniLM-L6-v2): BERT-uncased vocabulary, same special ids except '!' = 999.
        "uniter-mini": UniterConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                    intermediate_size=1536, first_word_id=999),
        "tiny": UniterConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             max_position_embeddings=128, region_feature_dim=64, num_soft_labels=1601),
}
