"""A pure-NumPy transcription of the official UNITER forward (spec §1, §3; PyTorch state-dict layout).

It is deliberately independent of the Keras code: it reads the official state dict directly, uses the
official padded inputs (``input_ids``, ``position_ids``, ``gather_index``, ``attn_masks``, ``img_masks``,
``img_mask_tgt``, ``ot_scatter``…) and computes in float64. It is checked against the fixture produced
by the official PyTorch code, then used as the reference for the Keras model on random weights.
"""

from __future__ import annotations

import math
from typing import Dict, Mapping, Optional, Sequence

import numpy as np

LAYER_NORM_EPSILON = 1e-12
_erf = np.vectorize(math.erf, otypes=[np.float64])


def _w(state: Mapping[str, np.ndarray], key: str) -> np.ndarray:
    return np.asarray(state[key], dtype=np.float64)


def linear(state, prefix: str, values: np.ndarray, weight_key: Optional[str] = None) -> np.ndarray:
    """``values @ W.T + b`` with the PyTorch ``[out, in]`` weight ``prefix.weight``."""
    weight = _w(state, weight_key or f"{prefix}.weight")
    return values @ weight.T + _w(state, f"{prefix}.bias")


def layer_norm(state, prefix: str, values: np.ndarray) -> np.ndarray:
    """LayerNorm with biased variance and eps 1e-12 inside the square root."""
    mean = values.mean(axis=-1, keepdims=True)
    variance = ((values - mean) ** 2).mean(axis=-1, keepdims=True)
    normalized = (values - mean) / np.sqrt(variance + LAYER_NORM_EPSILON)
    return normalized * _w(state, f"{prefix}.weight") + _w(state, f"{prefix}.bias")


def gelu(values: np.ndarray) -> np.ndarray:
    """Exact erf GELU."""
    return values * 0.5 * (1.0 + _erf(values / math.sqrt(2.0)))


def softmax(values: np.ndarray) -> np.ndarray:
    """Softmax over the last axis."""
    shifted = values - values.max(axis=-1, keepdims=True)
    exponent = np.exp(shifted)
    return exponent / exponent.sum(axis=-1, keepdims=True)


def log_softmax(values: np.ndarray) -> np.ndarray:
    """Log-softmax over the last axis."""
    shifted = values - values.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def gather_index(txt_lens: Sequence[int], num_bbs: Sequence[int], max_tl: int,
                 out_size: Optional[int] = None) -> np.ndarray:
    """The official ``get_gather_index``: identity, regions overwritten at ``[tl, tl+nbb)``."""
    if out_size is None:
        out_size = max(tl + nbb for tl, nbb in zip(txt_lens, num_bbs))
    index = np.tile(np.arange(out_size, dtype=np.int64), (len(txt_lens), 1))
    for row, (tl, nbb) in enumerate(zip(txt_lens, num_bbs)):
        index[row, tl:tl + nbb] = np.arange(max_tl, max_tl + nbb)
    return index


def attention_masks(txt_lens: Sequence[int], num_bbs: Sequence[int]) -> np.ndarray:
    """``[B, max(tl+nbb)]``: 1 on the first ``tl+nbb`` positions."""
    out_size = max(tl + nbb for tl, nbb in zip(txt_lens, num_bbs))
    return np.stack([(np.arange(out_size) < tl + nbb).astype(np.int64) for tl, nbb in zip(txt_lens, num_bbs)])


def ot_scatter(txt_lens: Sequence[int], max_tl: int, joint_length: int) -> np.ndarray:
    """The official ``_compute_ot_scatter``."""
    rows = []
    for tl in txt_lens:
        positions = np.arange(joint_length)
        rows.append(np.where(positions < tl, positions, max_tl + positions - tl))
    return np.stack(rows).astype(np.int64)


def uniter_forward(state, input_ids, position_ids, img_feat, img_pos_feat, attn_masks, gather_index_array,
                   num_heads: int, img_masks=None, txt_type_ids=None, prefix: str = "uniter.",
                   img_type_ids=None) -> Dict[str, np.ndarray]:
    """``UniterModel.forward`` in eval mode (``img_type_ids`` default: all 1; NLVR2 passes 1 and 2).

    Returns:
        ``{"embedding_output" [B, L, H], "all_encoder_layers" [layers, B, L, H], "sequence_output"}``.
    """
    input_ids = np.asarray(input_ids)
    if txt_type_ids is None:
        txt_type_ids = np.zeros_like(input_ids)
    text = (_w(state, f"{prefix}embeddings.word_embeddings.weight")[input_ids]
            + _w(state, f"{prefix}embeddings.position_embeddings.weight")[np.asarray(position_ids)]
            + _w(state, f"{prefix}embeddings.token_type_embeddings.weight")[txt_type_ids])
    text = layer_norm(state, f"{prefix}embeddings.LayerNorm", text)

    features = np.asarray(img_feat, dtype=np.float64)
    if img_masks is not None:
        mask_table = _w(state, f"{prefix}img_embeddings.mask_embedding.weight").copy()
        mask_table[0] = 0.0  # the official forward's in-place fill_(0)
        features = features + mask_table[np.asarray(img_masks).astype(np.int64)]
    image_prefix = f"{prefix}img_embeddings"
    visual = layer_norm(state, f"{image_prefix}.img_layer_norm", linear(state, f"{image_prefix}.img_linear", features))
    spatial = layer_norm(state, f"{image_prefix}.pos_layer_norm",
                         linear(state, f"{image_prefix}.pos_linear", np.asarray(img_pos_feat, np.float64)))
    type_table = _w(state, f"{prefix}embeddings.token_type_embeddings.weight")
    image_type = type_table[1] if img_type_ids is None else type_table[np.asarray(img_type_ids)]
    image = layer_norm(state, f"{image_prefix}.LayerNorm", visual + spatial + image_type)

    concatenated = np.concatenate([text, image], axis=1)
    embedding_output = np.take_along_axis(concatenated, np.asarray(gather_index_array)[:, :, None], axis=1)
    bias = (1.0 - np.asarray(attn_masks, np.float64))[:, None, None, :] * -10000.0

    hidden = embedding_output
    batch, length, width = hidden.shape
    head_size = width // num_heads
    layers = []
    index = 0
    while f"{prefix}encoder.layer.{index}.attention.self.query.weight" in state:
        layer_prefix = f"{prefix}encoder.layer.{index}"

        def heads(values):
            return values.reshape(batch, length, num_heads, head_size).transpose(0, 2, 1, 3)

        query = heads(linear(state, f"{layer_prefix}.attention.self.query", hidden))
        key = heads(linear(state, f"{layer_prefix}.attention.self.key", hidden))
        value = heads(linear(state, f"{layer_prefix}.attention.self.value", hidden))
        scores = query @ key.transpose(0, 1, 3, 2) / math.sqrt(head_size) + bias
        context = (softmax(scores) @ value).transpose(0, 2, 1, 3).reshape(batch, length, width)
        attended = layer_norm(state, f"{layer_prefix}.attention.output.LayerNorm",
                              linear(state, f"{layer_prefix}.attention.output.dense", context) + hidden)
        intermediate = gelu(linear(state, f"{layer_prefix}.intermediate.dense", attended))
        hidden = layer_norm(state, f"{layer_prefix}.output.LayerNorm",
                            linear(state, f"{layer_prefix}.output.dense", intermediate) + attended)
        layers.append(hidden)
        index += 1
    return {"embedding_output": embedding_output, "all_encoder_layers": np.stack(layers), "sequence_output": hidden}


def pooler(state, sequence_output, prefix: str = "uniter.") -> np.ndarray:
    """``tanh(W h_0 + b)``."""
    return np.tanh(linear(state, f"{prefix}pooler.dense", sequence_output[:, 0]))


def mlm_scores(state, sequence_output, txt_labels, prefix: str = "uniter.") -> np.ndarray:
    """Official ``forward_mlm``: rows of ``seq[:, :max_tl][labels != -1]`` through the tied MLM head."""
    txt_labels = np.asarray(txt_labels)
    hidden = sequence_output[:, :txt_labels.shape[1]][txt_labels != -1]
    transformed = layer_norm(state, "cls.predictions.transform.LayerNorm",
                             gelu(linear(state, "cls.predictions.transform.dense", hidden)))
    return transformed @ _w(state, f"{prefix}embeddings.word_embeddings.weight").T + _w(state, "cls.predictions.bias")


def mrfr_predictions(state, sequence_output, img_mask_tgt, prefix: str = "uniter.") -> np.ndarray:
    """Official ``forward_mrfr``: ``seq[img_mask_tgt]`` → transform → ``@ img_linear.weight + bias``."""
    hidden = sequence_output[np.asarray(img_mask_tgt, bool)]
    transformed = layer_norm(state, "feat_regress.net.2", gelu(linear(state, "feat_regress.net.0", hidden)))
    return transformed @ _w(state, f"{prefix}img_embeddings.img_linear.weight") + _w(state, "feat_regress.bias")


def mrc_logits(state, sequence_output, img_mask_tgt) -> np.ndarray:
    """Official ``forward_mrc`` raw logits."""
    hidden = sequence_output[np.asarray(img_mask_tgt, bool)]
    transformed = layer_norm(state, "region_classifier.net.2", gelu(linear(state, "region_classifier.net.0", hidden)))
    return linear(state, "region_classifier.net.3", transformed)


def itm_scores(state, pooled_output) -> np.ndarray:
    """``itm_output`` logits."""
    return linear(state, "itm_output", pooled_output)


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-row cross-entropy."""
    return -np.take_along_axis(log_softmax(logits), np.asarray(labels)[:, None], axis=1)[:, 0]


def kl_div_elementwise(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """``F.kl_div(log_softmax(logits), targets, reduction='none')``."""
    targets = np.asarray(targets, np.float64)
    safe = np.where(targets > 0, targets, 1.0)
    return np.where(targets > 0, targets * (np.log(safe) - log_softmax(logits)), 0.0)


def optimal_transport(sequence_output, scatter, scatter_max: int, txt_pad, img_pad, beta: float = 0.5,
                      iterations: int = 50, k: int = 1) -> Dict[str, np.ndarray]:
    """Official ``forward_itm`` OT part + ``optimal_transport_dist`` + ``ipot`` (float64)."""
    txt_pad = np.asarray(txt_pad, bool)
    img_pad = np.asarray(img_pad, bool)
    batch, _, width = sequence_output.shape
    max_tl, max_nbb = txt_pad.shape[1], img_pad.shape[1]
    max_length = max(int(scatter_max) + 1, max_tl + max_nbb)
    context = np.zeros((batch, max_length, width))
    for row in range(batch):
        context[row, np.asarray(scatter)[row]] = sequence_output[row]
    txt_emb = context[:, :max_tl]
    img_emb = context[:, max_tl:max_tl + max_nbb]

    def normalize(values):
        return values / np.maximum(np.linalg.norm(values, axis=-1, keepdims=True), 1e-5)

    cost = 1.0 - normalize(txt_emb) @ normalize(img_emb).transpose(0, 2, 1)
    joint_pad = txt_pad[:, :, None] | img_pad[:, None, :]
    cost = np.where(joint_pad, 0.0, cost)
    x_len = (max_tl - txt_pad.sum(axis=1)).astype(np.float64)
    y_len = (max_nbb - img_pad.sum(axis=1)).astype(np.float64)

    sigma = np.where(txt_pad, 0.0, np.ones((batch, max_tl)) / x_len[:, None])
    joint_pad_t = joint_pad.transpose(0, 2, 1)
    plan = np.where(joint_pad_t, 0.0, np.ones((batch, max_nbb, max_tl)))
    kernel = np.where(joint_pad_t, 0.0, np.exp(-cost.transpose(0, 2, 1) / beta))
    x_mask = (txt_pad * 1e4)[:, None, :]
    y_mask = (img_pad * 1e4)[:, None, :]
    x_len3, y_len3 = x_len[:, None, None], y_len[:, None, None]
    for _ in range(iterations):
        weighted = kernel * plan
        sigma = sigma.reshape(batch, max_tl, 1)
        for _ in range(k):
            delta = 1.0 / (y_len3 * (weighted @ sigma).reshape(batch, 1, max_nbb) + y_mask)
            sigma = 1.0 / (x_len3 * (delta @ weighted) + x_mask)
        plan = delta.reshape(batch, max_nbb, 1) * weighted * sigma
    plan = np.where(joint_pad_t, 0.0, plan)
    distance = np.einsum("bmn,bnm->b", cost, plan)
    return {"ot_txt_emb": txt_emb, "ot_img_emb": img_emb, "ot_cost": cost, "ot_T": plan, "ot_dist": distance}


def official_outputs(state, inputs: Mapping[str, np.ndarray], num_heads: int, ot_lambda: float = 0.1,
                     beta: float = 0.5, iterations: int = 50, k: int = 1) -> Dict[str, np.ndarray]:
    """Every output of the parity fixture (outputs.npz names), from its inputs (inputs.npz names)."""
    common = dict(position_ids=inputs["position_ids"], img_pos_feat=inputs["img_pos_feat"],
                  attn_masks=inputs["attn_masks"], gather_index_array=inputs["gather_index"], num_heads=num_heads)
    outputs: Dict[str, np.ndarray] = {}
    plain = uniter_forward(state, inputs["input_ids"], img_feat=inputs["img_feat"], **common)
    outputs.update(plain)
    outputs["pooled_output"] = pooler(state, plain["sequence_output"])

    mlm = uniter_forward(state, inputs["mlm_input_ids"], img_feat=inputs["img_feat"], **common)
    outputs["mlm_sequence_output"] = mlm["sequence_output"]
    labels = np.asarray(inputs["mlm_txt_labels"])
    outputs["mlm_prediction_scores"] = mlm_scores(state, mlm["sequence_output"], labels)
    outputs["mlm_loss"] = cross_entropy(outputs["mlm_prediction_scores"], labels[labels != -1])

    mrfr = uniter_forward(state, inputs["input_ids"], img_feat=inputs["mrfr_img_feat"],
                          img_masks=inputs["mrfr_img_masks"], **common)
    outputs["mrfr_sequence_output"] = mrfr["sequence_output"]
    outputs["mrfr_prediction_feat"] = mrfr_predictions(state, mrfr["sequence_output"], inputs["mrfr_img_mask_tgt"])
    outputs["mrfr_loss"] = (outputs["mrfr_prediction_feat"] - np.asarray(inputs["mrfr_feat_targets"], np.float64)) ** 2

    mrc = uniter_forward(state, inputs["input_ids"], img_feat=inputs["mrc_img_feat"], img_masks=inputs["mrc_img_masks"],
                         **common)
    outputs["mrc_sequence_output"] = mrc["sequence_output"]
    outputs["mrckl_prediction_logits"] = mrc_logits(state, mrc["sequence_output"], inputs["mrc_img_mask_tgt"])
    outputs["mrckl_loss"] = kl_div_elementwise(outputs["mrckl_prediction_logits"], inputs["mrc_label_targets"])

    targets = np.asarray(inputs["itm_targets"])
    outputs["itm_scores"] = itm_scores(state, outputs["pooled_output"])
    outputs["itm_loss"] = cross_entropy(outputs["itm_scores"], targets)
    ot = optimal_transport(plain["sequence_output"], inputs["itm_ot_scatter"], int(inputs["itm_scatter_max"]),
                           inputs["itm_txt_pad"], inputs["itm_img_pad"], beta, iterations, k)
    outputs.update(ot)
    outputs["ot_pos_dist"] = ot["ot_dist"][targets == 1]
    outputs["ot_neg_dist"] = ot["ot_dist"][targets == 0]
    ot_term = (outputs["ot_pos_dist"].sum() - outputs["ot_neg_dist"].sum()) / len(targets)
    outputs["itm_total_loss"] = np.asarray(outputs["itm_loss"].mean() + ot_lambda * ot_term)
    return {key: np.asarray(value, np.float32) for key, value in outputs.items()}
