"""Conditional masking for UNITER pretraining, on plain (unbatched) tensors (spec §3.2-3.3).

Every function takes a stateless ``seed`` (an int32/int64 tensor of shape ``[2]``), so a mask is a pure
function of its seed. The input pipeline derives the seed from ``(run seed, task, epoch, position in the
epoch)``, which redraws the masks every epoch while keeping a run reproducible and resumable.

* :func:`mask_tokens`: MLM, 15% of the words with the 80/10/10 rule and at least one masked word.
* :func:`sample_region_mask`: MRM, 15% of the regions (no 80/10/10) and at least one masked region.
* :func:`mask_region_features`: zeroes the masked rows (the model adds its mask embedding there).
"""

from __future__ import annotations

from typing import Sequence, Tuple

import tensorflow as tf

#: Label of a token that is not an MLM target (and of [CLS], [SEP] and padding), as the official code.
IGNORE_LABEL = -1


def _split_seed(seed, count: int):
    return tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=count))


def mask_tokens(
        token_ids,
        seed,
        *,
        mask_token_id: int,
        random_token_range: Sequence[int],
        mask_probability: float = 0.15,
) -> Tuple[tf.Tensor, tf.Tensor]:
    """Masks WordPiece ids for MLM exactly as the official ``random_word`` (spec §3.2).

    Each word is selected independently with ``mask_probability``; a selected word becomes ``[MASK]``
    with probability 0.8, a uniformly random id from ``random_token_range`` with 0.1 and stays unchanged
    with 0.1. If no word was selected, the first word is forced to ``[MASK]`` (no 80/10/10 for it).

    Args:
        token_ids: ``[t]`` int32 ids **without** ``[CLS]``/``[SEP]``.
        seed: stateless seed, shape ``[2]``.
        mask_token_id: the ``[MASK]`` id.
        random_token_range: ``(low, high)``: random replacements are drawn from ``[low, high)``, the
            real-word range of the vocabulary (official ``v_range``: id of ``!`` .. vocab size).
        mask_probability: selection probability per word.

    Returns:
        ``(masked_ids, labels)``, both ``[t]`` int32; ``labels`` holds the original id at selected
        positions and :data:`IGNORE_LABEL` elsewhere.
    """
    low, high = int(random_token_range[0]), int(random_token_range[1])
    if not 0 <= low < high:
        raise ValueError(f"random_token_range must be (low, high) with 0 <= low < high, got {random_token_range}")
    token_ids = tf.convert_to_tensor(token_ids, tf.int32)
    length = tf.shape(token_ids)[0]
    select_seed, action_seed, replace_seed = _split_seed(seed, 3)
    selected = tf.random.stateless_uniform([length], select_seed) < mask_probability
    action = tf.random.stateless_uniform([length], action_seed)
    random_ids = tf.random.stateless_uniform([length], replace_seed, minval=low, maxval=high, dtype=tf.int32)
    masked_ids = tf.where(selected & (action < 0.8), mask_token_id,
                          tf.where(selected & (action < 0.9), random_ids, token_ids))
    # The official guarantee: nothing selected -> the first word becomes [MASK].
    forced = tf.logical_and(tf.logical_not(tf.reduce_any(selected)), tf.range(length) == 0)
    masked_ids = tf.where(forced, mask_token_id, masked_ids)
    selected = selected | forced
    labels = tf.where(selected, token_ids, IGNORE_LABEL)
    return masked_ids, labels


def sample_region_mask(num_regions, seed, *, mask_probability: float = 0.15) -> tf.Tensor:
    """Draws the MRM region mask of one image (official ``_get_img_mask``, spec §3.3).

    Args:
        num_regions: scalar int, the number of real regions ``n``.
        seed: stateless seed, shape ``[2]``.
        mask_probability: selection probability per region.

    Returns:
        ``[n]`` bool; at least one region is masked (a uniformly random one if the draw selected none)
        whenever ``n > 0``.
    """
    num_regions = tf.cast(num_regions, tf.int32)
    select_seed, fallback_seed = _split_seed(seed, 2)
    selected = tf.random.stateless_uniform([num_regions], select_seed) < mask_probability
    fallback_index = tf.random.stateless_uniform([], fallback_seed, minval=0,
                                                 maxval=tf.maximum(num_regions, 1), dtype=tf.int32)
    forced = tf.logical_and(tf.logical_not(tf.reduce_any(selected)), tf.range(num_regions) == fallback_index)
    return selected | forced


def mask_region_features(region_features, region_mask) -> tf.Tensor:
    """Zeroes the rows of masked regions (official ``_mask_img_feat``).

    Args:
        region_features: ``[n, D]`` float.
        region_mask: ``[n]`` bool from :func:`sample_region_mask`.

    Returns:
        ``[n, D]``: the features with masked rows set to 0.
    """
    keep = tf.cast(tf.logical_not(region_mask), region_features.dtype)[:, None]
    return region_features * keep


def example_seed(base_seed, epoch, index) -> tf.Tensor:
    """The stateless seed of one example: a function of the run seed, the epoch and its position.

    Args:
        base_seed: int, the run (and task) seed.
        epoch: scalar int64 tensor.
        index: scalar int64 tensor, position of the example within the epoch.

    Returns:
        int64 ``[2]`` seed.
    """
    epoch_seed = tf.stack([tf.constant(base_seed, tf.int64), tf.cast(epoch, tf.int64)])
    return tf.random.experimental.stateless_fold_in(epoch_seed, tf.cast(index, tf.int64))


__all__ = ["IGNORE_LABEL", "mask_tokens", "sample_region_mask", "mask_region_features", "example_seed"]
