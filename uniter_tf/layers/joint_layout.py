"""The compact joint [text | regions] layout of the official ``gather_index``.

Example i puts its ``tl_i`` tokens at joint positions ``[0, tl_i)``, its ``nbb_i`` regions at
``[tl_i, tl_i + nbb_i)`` and padding after. The joint length here is the static ``T + N`` (the official
code uses ``max_i(tl_i + nbb_i)``); valid positions are identical, and padded positions use the
official identity index, so they hold the same (meaningless, masked-out) values too.
"""

from __future__ import annotations

from typing import Tuple

import tensorflow as tf


def compact_joint_index(text_lengths: tf.Tensor, region_lengths: tf.Tensor, text_width: tf.Tensor,
                        region_width: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """Builds the gather index into ``concat([text (T), regions (N)], axis=1)`` and the joint mask.

    Args:
        text_lengths: ``[B]`` int32, tokens per example (incl. CLS/SEP).
        region_lengths: ``[B]`` int32, regions per example.
        text_width: T, the padded text length (scalar int32).
        region_width: N, the padded region count (scalar int32).

    Returns:
        ``(gather_index [B, T+N] int32, joint_mask [B, T+N] int32)``.
    """
    joint_positions = tf.range(text_width + region_width)[tf.newaxis, :]
    text_lengths = text_lengths[:, tf.newaxis]
    valid_end = text_lengths + region_lengths[:, tf.newaxis]
    region_index = text_width + joint_positions - text_lengths
    is_region = tf.logical_and(joint_positions >= text_lengths, joint_positions < valid_end)
    gather_index = tf.where(is_region, region_index, joint_positions)
    joint_mask = tf.cast(joint_positions < valid_end, tf.int32)
    return gather_index, joint_mask

