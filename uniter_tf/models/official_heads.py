"""The official downstream heads by name: which Keras head reproduces each, which ``init_*()`` calls its
training script makes, and how to recognise it from a state dict's keys.

Names (those of the parity fixtures): ``vqa``, ``ve``, ``nlvr2_paired``, ``nlvr2_triplet``,
``nlvr2_paired_attn``, ``itm``, ``re_mlp1``, ``re_mlp2``, ``vcr``. Used by the converter
(:func:`uniter_tf.checkpoints.official.convert_checkpoint`) and the parity runner.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Optional, Tuple

import keras
import numpy as np

from uniter_tf.config import UniterConfig


@dataclasses.dataclass(frozen=True)
class OfficialHeadSpec:
    """One official downstream head.

    Attributes:
        name: the head's name (fixture folder, ``config.json`` ``head``).
        official_class: the official model class (``model/…``).
        init_calls: the ``init_*()`` calls of the training script, in order: ``"type:nlvr2"``,
            ``"type:vcr"``, ``"word:81"``, ``"output"``.
        build: ``(config, state_dict or None) → head layer``; the state dict sizes what the config
            cannot (number of answers).
    """

    name: str
    official_class: str
    init_calls: Tuple[str, ...]
    build: Callable[[UniterConfig, Optional[Mapping[str, np.ndarray]]], keras.layers.Layer]


def _num_answers(state_dict, default: int) -> int:
    if state_dict is not None and "vqa_output.3.weight" in state_dict:
        return int(np.shape(state_dict["vqa_output.3.weight"])[0])
    return default


def _vqa(default_answers: int):
    def build(config, state_dict):
        from uniter_tf.models.vqa import VqaHead  # pylint: disable=import-outside-toplevel

        return VqaHead(hidden_size=config.hidden_size, num_answers=_num_answers(state_dict, default_answers),
                       initializer_range=config.initializer_range, layer_norm_epsilon=config.layer_norm_epsilon,
                       name="vqa_output")
    return build


def _nlvr2_paired(config, state_dict):
    del state_dict
    from uniter_tf.models.nlvr2_paired import Nlvr2PairedHead  # pylint: disable=import-outside-toplevel

    return Nlvr2PairedHead(config.hidden_size, config.initializer_range, name="nlvr2_paired_head")


def _nlvr2_triplet(config, state_dict):
    del state_dict
    from uniter_tf.models.nlvr2_triplet import Nlvr2TripletHead  # pylint: disable=import-outside-toplevel

    return Nlvr2TripletHead(config.hidden_size, config.initializer_range, name="nlvr2_triplet_head")


def _nlvr2_paired_attn(config, state_dict):
    del state_dict
    from uniter_tf.models.nlvr2_paired_attention import \
        Nlvr2PairedAttentionHead  # pylint: disable=import-outside-toplevel

    return Nlvr2PairedAttentionHead(config.hidden_size, config.num_attention_heads, config.initializer_range,
                                    attention_dropout_rate=config.attention_probs_dropout_prob,
                                    hidden_dropout_rate=config.hidden_dropout_prob, name="nlvr2_paired_attn_head")


def _itm(config, state_dict):
    del state_dict
    from uniter_tf.models.itm_rank import ItmRankHead  # pylint: disable=import-outside-toplevel

    return ItmRankHead(config.hidden_size, config.initializer_range, name="itm_rank_head")


def _re(mlp: int):
    def build(config, state_dict):
        del state_dict
        from uniter_tf.models.referring_expression import \
            ReferringExpressionHead  # pylint: disable=import-outside-toplevel

        return ReferringExpressionHead(config.hidden_size, mlp=mlp, initializer_range=config.initializer_range,
                                       layer_norm_epsilon=config.layer_norm_epsilon, name=f"re_mlp{mlp}_head")
    return build


def _vcr(config, state_dict):
    del state_dict
    from uniter_tf.models.vcr import VcrHead  # pylint: disable=import-outside-toplevel

    return VcrHead(config.hidden_size, config.initializer_range, config.layer_norm_epsilon, name="vcr_head")


OFFICIAL_HEADS = {spec.name: spec for spec in (
        OfficialHeadSpec("vqa", "UniterForVisualQuestionAnswering", (), _vqa(3129)),
        OfficialHeadSpec("ve", "UniterForVisualEntailment", (), _vqa(3)),
        OfficialHeadSpec("nlvr2_paired", "UniterForNlvr2Paired", ("type:nlvr2",), _nlvr2_paired),
        OfficialHeadSpec("nlvr2_triplet", "UniterForNlvr2Triplet", ("type:nlvr2",), _nlvr2_triplet),
        OfficialHeadSpec("nlvr2_paired_attn", "UniterForNlvr2PairedAttn", ("type:nlvr2",), _nlvr2_paired_attn),
        OfficialHeadSpec("itm", "UniterForImageTextRetrieval", ("output",), _itm),
        OfficialHeadSpec("re_mlp1", "UniterForReferringExpressionComprehension(mlp=1)", (), _re(1)),
        OfficialHeadSpec("re_mlp2", "UniterForReferringExpressionComprehension(mlp=2)", (), _re(2)),
        OfficialHeadSpec("vcr", "UniterForVisualCommonsenseReasoning", ("type:vcr", "word:81"), _vcr),
)}


def get_head_spec(name: str) -> OfficialHeadSpec:
    """The spec of head ``name``.

    Raises:
        ValueError: naming the unknown head and the known ones.
    """
    if name not in OFFICIAL_HEADS:
        raise ValueError(f"unknown official head {name!r}; known heads: {', '.join(OFFICIAL_HEADS)}")
    return OFFICIAL_HEADS[name]


def build_head(name: str, config: UniterConfig, state_dict: Optional[Mapping[str, np.ndarray]] = None):
    """Builds the Keras head of official head ``name`` for ``config`` (sized by ``state_dict`` if given)."""
    return get_head_spec(name).build(config, state_dict)


def detect_head(state_dict: Mapping[str, np.ndarray], hidden_size: Optional[int] = None) -> Optional[str]:
    """Recognises a fine-tuned head from a state dict's keys (and shapes); ``None`` for none.

    A ``vqa_output`` head with 3 answers is reported as ``ve`` (the two share the class and key names).
    ``nlvr2_output`` is paired (``[2, 2H]``) or triplet (``[2, H]``), told apart by ``hidden_size`` or,
    without it, by the pooler's width.
    """
    keys = set(state_dict)
    if "attn1.in_proj_weight" in keys:
        return "nlvr2_paired_attn"
    if "nlvr2_output.weight" in keys:
        if hidden_size is None:
            pooler = state_dict.get("uniter.pooler.dense.weight")
            hidden_size = int(np.shape(pooler)[0]) if pooler is not None else None
        width = int(np.shape(state_dict["nlvr2_output.weight"])[1])
        if hidden_size is not None and width == 2 * hidden_size:
            return "nlvr2_paired"
        return "nlvr2_triplet"
    if "rank_output.weight" in keys:
        return "itm"
    if "re_output.0.weight" in keys:
        return "re_mlp2"
    if "re_output.weight" in keys:
        return "re_mlp1"
    if "vcr_output.0.weight" in keys:
        return "vcr"
    if "vqa_output.0.weight" in keys:
        return "ve" if _num_answers(state_dict, 0) == 3 else "vqa"
    return None


def head_variable_map(head) -> dict:
    """The head's official keys → ``(variable, "linear" | "copy")``, the converter's ``extra_mapping``."""
    return {key: (variable, "linear" if transpose else "copy")
            for key, (variable, transpose) in head.official_weight_map().items()}
