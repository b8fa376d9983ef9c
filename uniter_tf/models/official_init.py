"""The official ``init_*()`` calls of the downstream training scripts, on our models.

* :func:`init_type_embedding` (NLVR2 ``model/nlvr2.py``, VCR ``model/vcr.py`` and
  ``model/pretrain_vcr.py``): grows the token-type table. NLVR2: 3 rows ``[T0, T1, T1]`` (the new
  row 2, the right image's type, copies the image type; the official loop variable ends at row 1).
  VCR: 4 rows ``[T0, T1, T0, T0]`` (answer and rationale types start as the text type).
* :func:`init_word_embedding` (VCR): appends ``num_special_tokens`` fresh N(0, initializer_range) word
  rows (81 object-reference ids); for a pretraining model it also **rebuilds the MLM head from
  scratch** (new transform, zero bias over the grown vocabulary, decoder tied to the new table), as the
  official ``UniterForPretrainingForVCR.init_word_embedding`` does.
* :func:`init_output` (retrieval ``model/itm.py``): ``rank_output`` ← the "match" row 1 of the
  pretrained ITM classifier. The official code makes the two share storage (``.data = …[1:]``), which
  ``model.to(device)`` breaks at once; here it is a copy, so updating ``rank_output`` never changes
  ``itm_output``.

Keras variables cannot change shape, so the two table-growing calls return a **new** model of the same
kind (backbone, :class:`TaskModel` or :class:`UniterPretrainingModel`) whose config has the grown
``type_vocab_size`` / ``vocab_size`` (the official code leaves its config object stale) and every other
weight copied. :func:`init_output` works in place.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from uniter_tf.models.backbone import UniterBackbone

#: New type table = old rows in this order.
NLVR2_TYPE_ROWS = (0, 1, 1)
VCR_TYPE_ROWS = (0, 1, 0, 0)
TYPE_ROW_SCHEMES = {"nlvr2": NLVR2_TYPE_ROWS, "vcr": VCR_TYPE_ROWS}
#: VCR's object-reference ids (28996..29076 in the official vocabulary).
VCR_NUM_SPECIAL_TOKENS = 81

_WORD_KEY = "uniter.embeddings.word_embeddings.weight"
_TYPE_KEY = "uniter.embeddings.token_type_embeddings.weight"


def _backbone_of(model) -> UniterBackbone:
    if isinstance(model, UniterBackbone):
        return model
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, UniterBackbone):
        return backbone
    raise TypeError(f"expected a UniterBackbone or a model with a UniterBackbone .backbone, got {type(model).__name__}")


def _rebuild_backbone(backbone: UniterBackbone, replaced_tables: dict, **config_changes) -> UniterBackbone:
    """A backbone with ``config_changes`` applied, every variable copied, ``replaced_tables`` (official key →
    array) assigned instead of the old values."""
    from uniter_tf.checkpoints.official import backbone_variable_map  # pylint: disable=import-outside-toplevel

    grown = UniterBackbone(backbone.config.replace(**config_changes),
                           output_hidden_states=backbone.output_hidden_states,
                           output_attention_probs=backbone.output_attention_probs, name=backbone.name,
                           dtype=backbone.dtype_policy)
    old_map, new_map = backbone_variable_map(backbone), backbone_variable_map(grown)
    for key, (new_variable, _) in new_map.items():
        value = replaced_tables[key] if key in replaced_tables else old_map[key][0].numpy()
        new_variable.assign(np.asarray(value, dtype=np.dtype(new_variable.dtype)))
    if grown.config.region_feature_standardization:
        # Not an official weight (so not in the variable map): the region-feature statistics move with the model.
        old_region, new_region = backbone.region_embeddings, grown.region_embeddings
        new_region.set_feature_statistics(old_region.feature_mean.numpy(), old_region.feature_scale.numpy())
    return grown


def _with_backbone(model, backbone: UniterBackbone, fresh_mlm_head: bool = False):
    """The same kind of model as ``model`` around ``backbone``, heads carried over."""
    # Imported here: importing this module must not pull in the pretraining model for backbone users.
    from uniter_tf.models.pretraining_model import UniterPretrainingModel  # pylint: disable=import-outside-toplevel
    from uniter_tf.models.task_model import TaskModel  # pylint: disable=import-outside-toplevel

    if isinstance(model, UniterBackbone):
        return backbone
    if isinstance(model, UniterPretrainingModel):
        rebuilt = UniterPretrainingModel(backbone, max_masked_tokens=model.max_masked_tokens,
                                         max_masked_regions=model.max_masked_regions, use_ot=model.use_ot,
                                         name=model.name)
        heads = ["mrfr_head", "mrc_head", "itm_head"] + ([] if fresh_mlm_head else ["mlm_head"])
        for head_name in heads:
            getattr(rebuilt, head_name).set_weights(getattr(model, head_name).get_weights())
        return rebuilt
    if isinstance(model, TaskModel):
        return TaskModel(backbone=backbone, head=model.head, task_name=model.task_name, name=model.name)
    raise TypeError(f"cannot rebuild a {type(model).__name__} around a grown backbone")


def init_type_embedding(model, scheme: str = "nlvr2"):
    """The official ``init_type_embedding()``.

    Args:
        model: a :class:`UniterBackbone`, :class:`TaskModel` or :class:`UniterPretrainingModel`.
        scheme: ``"nlvr2"`` (3 types, row 2 = row 1) or ``"vcr"`` (4 types, rows 2 and 3 = row 0).

    Returns:
        A new model of the same kind with the grown type table (``config.type_vocab_size`` updated).

    Raises:
        ValueError: an unknown scheme, or a type table with fewer than 2 rows.
    """
    if scheme not in TYPE_ROW_SCHEMES:
        raise ValueError(f"init_type_embedding: unknown scheme {scheme!r}; known: {sorted(TYPE_ROW_SCHEMES)}")
    backbone = _backbone_of(model)
    table = backbone.text_embeddings.token_type_embeddings.embeddings.numpy()
    if table.shape[0] < 2:
        raise ValueError(f"init_type_embedding needs the text (0) and image (1) type rows; the table has "
                         f"{table.shape[0]} row(s)")
    rows = TYPE_ROW_SCHEMES[scheme]
    # Only rows 0 and 1 are read, as official: calling it twice gives the same table.
    grown = _rebuild_backbone(backbone, {_TYPE_KEY: table[list(rows)]}, type_vocab_size=len(rows))
    return _with_backbone(model, grown)


def init_word_embedding(model, num_special_tokens: int = VCR_NUM_SPECIAL_TOKENS, seed: Optional[int] = None,
                        new_rows: Optional[np.ndarray] = None):
    """The official ``init_word_embedding(num_special_tokens)``.

    Args:
        model: a :class:`UniterBackbone`, :class:`TaskModel` or :class:`UniterPretrainingModel` (then the
            MLM head is rebuilt from scratch over the grown vocabulary, as official).
        num_special_tokens: rows to append (81 for VCR).
        seed: seed of the N(0, ``initializer_range``) draw of the new rows.
        new_rows: ``[num_special_tokens, H]`` rows to use instead of a draw (e.g. the rows of an official
            checkpoint, which cannot be re-derived).

    Returns:
        A new model of the same kind with ``config.vocab_size`` grown by ``num_special_tokens``.

    Raises:
        ValueError: ``num_special_tokens`` < 1 or ``new_rows`` of the wrong shape.
    """
    if int(num_special_tokens) < 1:
        raise ValueError(f"init_word_embedding needs num_special_tokens >= 1, got {num_special_tokens}")
    backbone = _backbone_of(model)
    config = backbone.config
    table = backbone.text_embeddings.word_embeddings.embeddings.numpy()
    if new_rows is None:
        new_rows = np.random.default_rng(seed).normal(0.0, config.initializer_range,
                                                      (int(num_special_tokens), config.hidden_size))
    new_rows = np.asarray(new_rows, dtype=table.dtype)
    if new_rows.shape != (int(num_special_tokens), config.hidden_size):
        raise ValueError(f"init_word_embedding: new_rows has shape {list(new_rows.shape)}, expected "
                         f"{[int(num_special_tokens), config.hidden_size]}")
    grown = _rebuild_backbone(backbone, {_WORD_KEY: np.concatenate([table, new_rows], axis=0)},
                              vocab_size=table.shape[0] + int(num_special_tokens))
    return _with_backbone(model, grown, fresh_mlm_head=True)


def init_output(model) -> None:
    """The official ``init_output()``: ``rank_output`` ← row 1 ("match") of ``itm_output``, in place.

    Args:
        model: an :class:`~uniter_tf.models.itm_rank.ItmRankHead` or a model whose ``head`` is one.

    Raises:
        TypeError: when no retrieval head is found.
    """
    head = getattr(model, "head", model)
    if not (hasattr(head, "rank_output") and hasattr(head, "itm_output")):
        raise TypeError(f"init_output needs an ItmRankHead (or a model with one as .head), got {type(head).__name__}")
    head.rank_output.kernel.assign(head.itm_output.kernel.numpy()[:, 1:])
    head.rank_output.bias.assign(head.itm_output.bias.numpy()[1:])

