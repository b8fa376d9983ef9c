"""Parity of the downstream heads with the official PyTorch code, on the fixtures of
``parity_downstream/<head>/`` (``config.json`` names the head; README of that folder documents every
array).

For a head whose training script calls ``init_*()`` (``pre_init.npz`` present), the model is built from
the state *before* the call, our :mod:`uniter_tf.models.official_init` function is applied, the result
is compared with the fixture's tensors (rows ``init:…``), and the forward then runs on that model. The
81 fresh VCR word rows are random draws that cannot be re-derived: they are taken from the fixture and
only the kept rows are compared.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np

from uniter_tf.checkpoints import official
from uniter_tf.checkpoints.parity import Fixture, ParityRow
from uniter_tf.config import UniterConfig

# Joint-sequence outputs (compared where attn_masks == 1) and the paired-attention intermediates
# (compared where the left / right rows' attn_masks == 1).
_JOINT = ("embedding_output", "sequence_output")
_LEFT = ("pa_l2r_attn", "pa_left_fc")
_RIGHT = ("pa_r2l_attn", "pa_right_fc")
_WORD_KEY = "uniter.embeddings.word_embeddings.weight"
_TYPE_KEY = "uniter.embeddings.token_type_embeddings.weight"


def head_name(fixture: Fixture) -> Optional[str]:
    """The head a fixture's ``config.json`` names, or ``None`` for a pretraining fixture."""
    name = fixture.raw_config.get("head")
    return None if name is None else str(name)


def downstream_batch(inputs: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Our backbone input dict for an official collated batch (type ids included when present)."""
    txt_lens = np.asarray(inputs["txt_lens"])
    num_bbs = np.asarray(inputs["num_bbs"])
    max_tl = inputs["input_ids"].shape[1]
    max_nbb = inputs["img_feat"].shape[1]
    batch = {
            "token_ids": np.asarray(inputs["input_ids"]).astype(np.int32),
            "text_mask": (np.arange(max_tl)[None, :] < txt_lens[:, None]).astype(np.int32),
            "region_features": np.asarray(inputs["img_feat"], np.float32),
            "region_positions": np.asarray(inputs["img_pos_feat"], np.float32),
            "region_mask": (np.arange(max_nbb)[None, :] < num_bbs[:, None]).astype(np.int32),
    }
    if "txt_type_ids" in inputs:
        batch["token_type_ids"] = np.asarray(inputs["txt_type_ids"]).astype(np.int32)
    if "img_type_ids" in inputs:
        batch["region_type_ids"] = np.asarray(inputs["img_type_ids"]).astype(np.int32)
    if "obj_masks" in inputs and not np.array_equal(~np.asarray(inputs["obj_masks"]).astype(bool),
                                                    batch["region_mask"].astype(bool)):
        raise ValueError("inputs.npz: obj_masks does not mark exactly the padded region slots of num_bbs")
    return batch


def build_head_model(name: str, config: UniterConfig, state_dict: Mapping[str, np.ndarray], strict: bool = True):
    """A :class:`TaskModel` (backbone + head ``name``) sized for ``state_dict`` and loaded from it.

    Returns:
        ``(model, LoadReport)``.
    """
    # Imported here: numpy-only users of the checkpoints package do not pay for TensorFlow.
    from uniter_tf.models import official_heads  # pylint: disable=import-outside-toplevel
    from uniter_tf.models.backbone import UniterBackbone  # pylint: disable=import-outside-toplevel
    from uniter_tf.models.task_model import TaskModel  # pylint: disable=import-outside-toplevel

    config = official.config_for_state_dict(state_dict, config)
    head = official_heads.build_head(name, config, state_dict)
    model = TaskModel(backbone=UniterBackbone(config), head=head, task_name=name, name=f"uniter_{name}")
    report = official.load_official_state_dict(model, state_dict, strict=strict,
                                               extra_mapping=official_heads.head_variable_map(head))
    return model, report


def apply_init_calls(model, name: str, fresh_word_rows: Optional[np.ndarray] = None):
    """Applies head ``name``'s official ``init_*()`` calls, in the training script's order.

    Args:
        model: the :class:`TaskModel` as loaded from a pretrained checkpoint.
        name: the head.
        fresh_word_rows: rows for ``init_word_embedding`` (a seeded draw when ``None``).

    Returns:
        The model after the calls (a new object when a table grew).
    """
    from uniter_tf.models import official_heads, official_init  # pylint: disable=import-outside-toplevel

    for call in official_heads.get_head_spec(name).init_calls:
        kind, _, argument = call.partition(":")
        if kind == "type":
            model = official_init.init_type_embedding(model, argument)
        elif kind == "word":
            model = official_init.init_word_embedding(model, int(argument), seed=0, new_rows=fresh_word_rows)
        elif kind == "output":
            official_init.init_output(model)
        else:
            raise ValueError(f"unknown init call {call!r} for head {name!r}")
    return model


def _max_error(mine: np.ndarray, official_array: np.ndarray) -> float:
    if mine.shape != official_array.shape:
        return float("inf")
    return float(np.max(np.abs(mine - official_array))) if official_array.size else 0.0


def model_after_init(name: str, fixture: Fixture, pre_init: Mapping[str, np.ndarray],
                     atol: float) -> Tuple[object, List[ParityRow]]:
    """Builds the model from the pre-``init`` state, applies the init calls, compares the grown tensors.

    Returns:
        ``(model, rows)`` with one ``init:<key>`` row per tensor the calls produce.
    """
    from uniter_tf.models import official_heads  # pylint: disable=import-outside-toplevel

    pre_state = dict(fixture.state_dict)
    pre_state.update(pre_init)
    model, _ = build_head_model(name, fixture.config, pre_state)
    calls = official_heads.get_head_spec(name).init_calls
    fresh_rows = None
    kept_words = np.asarray(pre_init[_WORD_KEY]).shape[0] if _WORD_KEY in pre_init else None
    for call in calls:
        if call.startswith("word:"):
            count = int(call.partition(":")[2])
            fresh_rows = np.asarray(fixture.state_dict[_WORD_KEY])[kept_words:kept_words + count]
    model = apply_init_calls(model, name, fresh_word_rows=fresh_rows)

    ours = official.to_official_state_dict(model)
    ours.update({key: np.asarray(value) for key, (value, _) in _head_arrays(model).items()})
    rows = []
    for key in sorted(set(pre_init) | ({_TYPE_KEY} if any(c.startswith("type:") for c in calls) else set())):
        expected = np.asarray(fixture.state_dict[key], np.float64)
        mine = np.asarray(ours[key], np.float64)
        label = f"init:{key}"
        if key == _WORD_KEY and kept_words is not None:
            # The fresh rows were taken from the fixture; the kept rows and the table size are checked.
            label = f"init:{key}[:{kept_words}]"
            if mine.shape != expected.shape:
                rows.append(ParityRow(label, float("inf"), expected.shape, False))
                continue
            mine, expected = mine[:kept_words], expected[:kept_words]
        error = _max_error(mine, expected)
        rows.append(ParityRow(label, error, expected.shape, error <= atol))
    return model, rows


def _head_arrays(model) -> Dict[str, tuple]:
    """The head's official keys → (array in PyTorch layout, transform)."""
    arrays = {}
    for key, (variable, transpose) in model.head.official_weight_map().items():
        value = variable.numpy()
        arrays[key] = (value.T if transpose else value, transpose)
    return arrays


def head_outputs(model, name: str, inputs: Mapping[str, np.ndarray],
                 raw_config: Mapping[str, object]) -> Dict[str, np.ndarray]:
    """Runs the backbone and head ``name`` in eval mode; returns our outputs under the fixture's names."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from uniter_tf.models import (  # pylint: disable=import-outside-toplevel
            itm_rank, nlvr2_paired, referring_expression, vcr, vqa)

    batch = downstream_batch(inputs)
    encoded = dict(model.backbone(batch, training=False, output_hidden_states=True))
    encoded["region_mask"] = tf.constant(batch["region_mask"])
    ours = {
            "embedding_output": encoded["embedding_output"].numpy(),
            "sequence_output": encoded["sequence_output"].numpy(),
            "pooled_output": encoded["pooled_output"].numpy(),
    }
    head = model.head
    targets = inputs.get("targets")
    if name in ("vqa", "ve"):
        logits = head(encoded, training=False)
        ours["answer_scores"] = logits.numpy()
        ours["loss_elementwise"] = tf.nn.sigmoid_cross_entropy_with_logits(
                labels=tf.constant(targets, tf.float32), logits=logits).numpy()
        ours["loss"] = vqa.vqa_bce_loss(tf.constant(targets), logits).numpy()
    elif name.startswith("nlvr2_"):
        if name == "nlvr2_paired_attn":
            intermediates = head.forward_with_intermediates(encoded, training=False)
            ours.update({key: value.numpy() for key, value in intermediates.items()})
            logits = intermediates["answer_scores"]
        else:
            logits = head(encoded, training=False)
        ours["answer_scores"] = logits.numpy()
        per_example, mean = nlvr2_paired.nlvr2_loss(logits, tf.constant(targets))
        ours["loss_elementwise"], ours["loss"] = per_example.numpy(), mean.numpy()
    elif name == "itm":
        scores = head(encoded, training=False)
        sample_size = int(np.asarray(inputs["sample_size"]))
        margin = float(raw_config.get("margin", itm_rank.OFFICIAL_MARGIN))
        ours["rank_scores"] = scores.numpy()
        ours["rank_scores_sigmoid"] = tf.sigmoid(scores).numpy()
        terms, mean = itm_rank.itm_rank_hinge_loss(scores, sample_size, margin)
        ours["loss_elementwise"], ours["loss"] = terms.numpy(), mean.numpy()
        ours["loss_elementwise_margin0"] = itm_rank.itm_rank_hinge_loss(scores, sample_size, 0.0)[0].numpy()
    elif name.startswith("re_"):
        intermediates = head.forward_with_intermediates(encoded, training=False)
        ours.update({key: value.numpy() for key, value in intermediates.items()})
        per_example, total = referring_expression.referring_expression_loss(intermediates["scores"],
                                                                            tf.constant(targets))
        ours["loss_elementwise"], ours["loss"] = per_example.numpy(), total.numpy()
    elif name == "vcr":
        logits = head(encoded, training=False)
        ours["vcr_logits"] = logits.numpy()
        ours["rank_scores"] = vcr.vcr_rank_scores(logits).numpy()
        per_row, mean = vcr.vcr_loss(logits, tf.constant(targets))
        ours["loss_per_row"], ours["loss"] = per_row.numpy(), mean.numpy()
    else:
        raise ValueError(f"no parity forward for head {name!r}")
    return ours


def compare_head_outputs(ours: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray],
                         inputs: Mapping[str, np.ndarray], atol: float) -> List[ParityRow]:
    """One row per expected output: joint outputs at valid positions, paired-attention sequences at the
    valid positions of their side, the rest entirely. An expected output we do not produce fails."""
    valid = np.asarray(inputs["attn_masks"]).astype(bool)
    length = valid.shape[1]
    rows = []
    for name in sorted(expected):
        official_array = np.asarray(expected[name], np.float64)
        if name not in ours:
            rows.append(ParityRow(name, float("inf"), official_array.shape, False))
            continue
        mine = np.asarray(ours[name], np.float64)
        mask = {**{key: valid for key in _JOINT}, **{key: valid[0::2] for key in _LEFT},
                **{key: valid[1::2] for key in _RIGHT}}.get(name)
        if mask is not None:
            if mine.ndim != 3 or mine.shape[0] != mask.shape[0] or mine.shape[1] < length:
                rows.append(ParityRow(name, float("inf"), official_array.shape, False))
                continue
            mine, official_array = mine[:, :length][mask], official_array[mask]
        error = _max_error(mine, official_array)
        rows.append(ParityRow(name, error, np.asarray(expected[name]).shape, error <= atol))
    return rows


def run_head_parity(fixture: Fixture, pre_init: Optional[Mapping[str, np.ndarray]], atol: float = 1e-5,
                    model=None) -> List[ParityRow]:
    """The whole check of one downstream fixture.

    Args:
        fixture: the loaded fixture (its ``config.json`` names the head).
        pre_init: the fixture's ``pre_init.npz`` (``None`` when absent).
        atol: tolerance of every output.
        model: a loaded model to check instead of one built from the fixture (no init rows then).

    Raises:
        ValueError: an unknown head (naming it and the known ones).
    """
    from uniter_tf.models import official_heads  # pylint: disable=import-outside-toplevel

    name = head_name(fixture)
    official_heads.get_head_spec(name)
    rows: List[ParityRow] = []
    if model is None:
        if pre_init:
            model, rows = model_after_init(name, fixture, pre_init, atol)
        else:
            model, _ = build_head_model(name, fixture.config, fixture.state_dict)
    ours = head_outputs(model, name, fixture.inputs, fixture.raw_config)
    return rows + compare_head_outputs(ours, fixture.outputs, fixture.inputs, atol)
