"""A float64 NumPy transcription of the official downstream heads (spec §2.4, §5; the README of
``parity_downstream/``), on the official collated inputs and the PyTorch-layout state dict.

Independent of the Keras heads: it reuses only :mod:`uniter_tf.testing.numpy_reference` (the backbone)
and the official padded inputs (``gather_index``, ``attn_masks``, ``txt_lens``, ``num_bbs``). Checked
against the official fixtures, then used as the reference on perturbed weights (non-zero biases,
non-unit LayerNorm gains), which the official default init cannot exercise.
"""

from __future__ import annotations

from typing import Dict, Mapping

import numpy as np

from uniter_tf.testing import numpy_reference as ref

HEADS = ("vqa", "ve", "nlvr2_paired", "nlvr2_triplet", "nlvr2_paired_attn", "itm", "re_mlp1", "re_mlp2", "vcr")


def _w(state, key):
    return np.asarray(state[key], np.float64)


def _cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return -ref.log_softmax(logits)[np.arange(len(labels)), labels]


def _multi_head_attention(state, prefix: str, query, key_value, key_padding, num_heads: int) -> np.ndarray:
    """The official copy of ``torch.nn.MultiheadAttention`` (packed in_proj, −inf key padding), batch first."""
    weight, bias = _w(state, f"{prefix}.in_proj_weight"), _w(state, f"{prefix}.in_proj_bias")
    width = query.shape[-1]
    head_size = width // num_heads
    q = (query @ weight[:width].T + bias[:width]) * head_size ** -0.5
    k = key_value @ weight[width:2 * width].T + bias[width:2 * width]
    v = key_value @ weight[2 * width:].T + bias[2 * width:]

    def heads(values):
        return values.reshape(values.shape[0], values.shape[1], num_heads, head_size).transpose(0, 2, 1, 3)

    scores = heads(q) @ heads(k).transpose(0, 1, 3, 2)
    scores = np.where(np.asarray(key_padding, bool)[:, None, None, :], -np.inf, scores)
    context = (ref.softmax(scores) @ heads(v)).transpose(0, 2, 1, 3).reshape(query.shape)
    return ref.linear(state, f"{prefix}.out_proj", context)


def _attention_pool(state, values, padding) -> np.ndarray:
    scores = np.maximum(ref.linear(state, "attn_pool.fc.0", values)[..., 0], 0.0)
    scores = scores + np.asarray(padding, np.float64) * -1e4
    return np.einsum("bl,blh->bh", ref.softmax(scores), values)


def head_outputs(name: str, state: Mapping[str, np.ndarray], inputs: Mapping[str, np.ndarray], num_heads: int,
                 margin: float = 0.2) -> Dict[str, np.ndarray]:
    """Every output of the official head ``name`` (the names of the fixture's ``outputs.npz``).

    Args:
        name: one of :data:`HEADS`.
        state: the official state dict.
        inputs: the official collated batch (``inputs.npz``).
        num_heads: attention heads of the backbone (and of the paired-attention blocks).
        margin: the ITM hinge margin.

    Raises:
        ValueError: an unknown head.
    """
    if name not in HEADS:
        raise ValueError(f"no NumPy reference for head {name!r}; known: {HEADS}")
    backbone = ref.uniter_forward(state, inputs["input_ids"], inputs["position_ids"], inputs["img_feat"],
                                  inputs["img_pos_feat"], inputs["attn_masks"], inputs["gather_index"], num_heads,
                                  txt_type_ids=inputs.get("txt_type_ids"), img_type_ids=inputs.get("img_type_ids"))
    sequence = backbone["sequence_output"]
    pooled = ref.pooler(state, sequence)
    out = {"embedding_output": backbone["embedding_output"], "sequence_output": sequence, "pooled_output": pooled}
    targets = inputs.get("targets")
    if name in ("vqa", "ve"):
        hidden = ref.layer_norm(state, "vqa_output.2", ref.gelu(ref.linear(state, "vqa_output.0", pooled)))
        logits = ref.linear(state, "vqa_output.3", hidden)
        t = np.asarray(targets, np.float64)
        elementwise = np.maximum(logits, 0) - logits * t + np.log1p(np.exp(-np.abs(logits)))
        out.update(answer_scores=logits, loss_elementwise=elementwise,
                   loss=np.asarray(elementwise.mean() * t.shape[1]))
    elif name.startswith("nlvr2_"):
        if name == "nlvr2_paired":
            logits = ref.linear(state, "nlvr2_output", pooled.reshape(-1, 2 * pooled.shape[1]))
        elif name == "nlvr2_triplet":
            logits = ref.linear(state, "nlvr2_output", pooled)
        else:
            padding = np.asarray(inputs["attn_masks"]) == 0
            left, right = sequence[0::2], sequence[1::2]
            left_pad, right_pad = padding[0::2], padding[1::2]
            l2r = _multi_head_attention(state, "attn1", left, right, right_pad, num_heads)
            r2l = _multi_head_attention(state, "attn2", right, left, left_pad, num_heads)
            left_fc = np.maximum(ref.linear(state, "fc.0", np.concatenate([l2r, left], -1)), 0.0)
            right_fc = np.maximum(ref.linear(state, "fc.0", np.concatenate([r2l, right], -1)), 0.0)
            left_pool, right_pool = _attention_pool(state, left_fc, left_pad), _attention_pool(state, right_fc, right_pad)
            logits = ref.linear(state, "nlvr2_output", np.concatenate([left_pool, right_pool], -1))
            out.update(pa_l2r_attn=l2r, pa_r2l_attn=r2l, pa_left_fc=left_fc, pa_right_fc=right_fc,
                       pa_left_pool=left_pool, pa_right_pool=right_pool)
        per_example = _cross_entropy(logits, np.asarray(targets).reshape(-1))
        out.update(answer_scores=logits, loss_elementwise=per_example, loss=np.asarray(per_example.mean()))
    elif name == "itm":
        scores = ref.linear(state, "rank_output", pooled)
        sigmoid = 1.0 / (1.0 + np.exp(-scores))
        grouped = sigmoid.reshape(-1, int(np.asarray(inputs["sample_size"])))
        terms = np.maximum(margin + grouped[:, 1:] - grouped[:, :1], 0.0)
        out.update(rank_scores=scores, rank_scores_sigmoid=sigmoid, loss_elementwise=terms,
                   loss=np.asarray(terms.mean()),
                   loss_elementwise_margin0=np.maximum(grouped[:, 1:] - grouped[:, :1], 0.0))
    elif name.startswith("re_"):
        txt_lens, num_bbs = np.asarray(inputs["txt_lens"]), np.asarray(inputs["num_bbs"])
        slots = np.asarray(inputs["img_feat"]).shape[1]
        hidden = np.zeros((len(txt_lens), slots, sequence.shape[-1]))
        for row, (tl, nbb) in enumerate(zip(txt_lens, num_bbs)):
            hidden[row, :nbb] = sequence[row, tl:tl + nbb]
        if name == "re_mlp1":
            raw = ref.linear(state, "re_output", hidden)[..., 0]
        else:
            raw = ref.linear(state, "re_output.3",
                             ref.layer_norm(state, "re_output.2", ref.gelu(ref.linear(state, "re_output.0", hidden))))[..., 0]
        scores = np.where(np.asarray(inputs["obj_masks"], bool), -1e4, raw)
        per_example = _cross_entropy(scores, np.asarray(targets).reshape(-1))
        out.update(img_hidden=hidden, raw_scores=raw, scores=scores, loss_elementwise=per_example,
                   loss=np.asarray(per_example.sum()))
        del out["pooled_output"]  # the official RE forward has no use for it (the fixture leaves it out)
    else:  # vcr
        hidden = ref.layer_norm(state, "vcr_output.2", np.maximum(ref.linear(state, "vcr_output.0", pooled), 0.0))
        logits = ref.linear(state, "vcr_output.3", hidden)
        per_row = _cross_entropy(logits, np.asarray(targets).reshape(-1))
        out.update(vcr_logits=logits, rank_scores=logits[:, 1:], loss_per_row=per_row,
                   loss=np.asarray(per_row.mean()))
    return out


def perturbed_state_dict(state_dict: Mapping[str, np.ndarray], seed: int) -> Dict[str, np.ndarray]:
    """The law of the official ``perturbed`` variant: every bias N(0, 0.1), every LayerNorm gain (1-d
    ``weight``) 1 + N(0, 0.1), every other weight × 5 (PyTorch-layout keys, float32)."""
    rng = np.random.default_rng(seed)
    perturbed = {}
    for key, value in state_dict.items():
        value = np.asarray(value, np.float32)
        if key.endswith("bias"):
            perturbed[key] = (0.1 * rng.standard_normal(value.shape)).astype(np.float32)
        elif key.endswith("weight") and value.ndim == 1:
            perturbed[key] = (1.0 + 0.1 * rng.standard_normal(value.shape)).astype(np.float32)
        else:
            perturbed[key] = value * np.float32(5.0)
    return perturbed

