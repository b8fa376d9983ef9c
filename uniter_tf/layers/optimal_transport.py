"""Word-region alignment by optimal transport (IPOT), as the official ``model/ot.py``.

All functions are batched, use fixed shapes (XLA / ``jit_compile`` compatible) and run in float32
whatever the input dtype. The transport plan is computed under ``tf.stop_gradient``: gradients reach
the embeddings only through the cosine cost, as in the official code (``no_grad`` + ``detach``).
"""

from __future__ import annotations

from typing import Tuple

import tensorflow as tf

# F.normalize's epsilon in the official cosine cost.
_NORMALIZE_EPSILON = 1e-5
# Added to the denominators at padded entries so that they become ~1e-4 instead of 1/0.
_PAD_DENOMINATOR = 1e4


def _safe_norm(values: tf.Tensor) -> tf.Tensor:
    """``max(||x||, eps)`` computed as ``sqrt(max(Σx², eps²))``: same value, but a zero (padded) vector
    gets a zero gradient instead of the NaN of ``sqrt'(0)``."""
    squared = tf.reduce_sum(tf.square(values), axis=-1, keepdims=True)
    return tf.sqrt(tf.maximum(squared, _NORMALIZE_EPSILON ** 2))


def cosine_cost(text_embeddings: tf.Tensor, region_embeddings: tf.Tensor, text_padding: tf.Tensor,
                region_padding: tf.Tensor) -> tf.Tensor:
    """``C[b, m, n] = 1 - cos(text_m, region_n)``, zero where either side is padding.

    Args:
        text_embeddings: ``[B, M, H]``.
        region_embeddings: ``[B, N, H]``.
        text_padding: ``[B, M]`` bool, True at text padding.
        region_padding: ``[B, N]`` bool, True at region padding.

    Returns:
        ``[B, M, N]`` float32 cost.
    """
    text_embeddings = tf.cast(text_embeddings, tf.float32)
    region_embeddings = tf.cast(region_embeddings, tf.float32)
    text_unit = text_embeddings / _safe_norm(text_embeddings)
    region_unit = region_embeddings / _safe_norm(region_embeddings)
    cost = 1.0 - tf.matmul(text_unit, region_unit, transpose_b=True)
    joint_padding = tf.logical_or(text_padding[:, :, tf.newaxis], region_padding[:, tf.newaxis, :])
    return tf.where(joint_padding, tf.zeros_like(cost), cost)


def ipot_plan(cost: tf.Tensor, text_padding: tf.Tensor, region_padding: tf.Tensor, beta: float = 0.5,
              iterations: int = 50, inner_iterations: int = 1, jit_compile: bool = True) -> tf.Tensor:
    """The IPOT transport plan (official ``ipot``), with uniform marginals over the real positions.

    The 50 iterations are a few tiny element-wise ops and mat-vecs each, so outside XLA their cost is
    the per-op overhead of TensorFlow's executor (a while loop of ~800 kernel launches): by default the
    plan is one XLA-compiled function (3x faster on CPU, same numbers up to float32 round-off), also
    inside a training step that is not compiled as a whole. It compiles once per (batch, text, region)
    shape; the persistent XLA cache (:mod:`uniter_tf.training.performance`) keeps those compiles.

    Args:
        cost: ``[B, M, N]`` cost, already zero at padding.
        text_padding: ``[B, M]`` bool.
        region_padding: ``[B, N]`` bool.
        beta: proximal step size.
        iterations: outer iterations.
        inner_iterations: Sinkhorn iterations per outer iteration (``k``).
        jit_compile: compile the plan with XLA (False: TensorFlow's graph executor).

    Returns:
        ``[B, N, M]`` float32 plan (region × text, transposed w.r.t. the cost), zero at padding; no
        gradient flows through it.
    """
    function = _ipot_plan_xla if jit_compile else _ipot_plan
    return function(tf.stop_gradient(tf.cast(cost, tf.float32)), tf.cast(text_padding, tf.bool),
                    tf.cast(region_padding, tf.bool), float(beta), int(iterations), int(inner_iterations))


def _ipot_plan(cost: tf.Tensor, text_padding: tf.Tensor, region_padding: tf.Tensor, beta: float,
               iterations: int, inner_iterations: int) -> tf.Tensor:
    cost = tf.stop_gradient(tf.cast(cost, tf.float32))
    text_pad = tf.cast(text_padding, tf.float32)
    region_pad = tf.cast(region_padding, tf.float32)
    text_width = tf.cast(tf.shape(cost)[1], tf.float32)
    region_width = tf.cast(tf.shape(cost)[2], tf.float32)
    text_lengths = (text_width - tf.reduce_sum(text_pad, axis=1))[:, tf.newaxis]  # [B, 1]
    region_lengths = (region_width - tf.reduce_sum(region_pad, axis=1))[:, tf.newaxis]
    joint_valid = (1.0 - region_pad)[:, :, tf.newaxis] * (1.0 - text_pad)[:, tf.newaxis, :]  # [B, N, M]
    kernel = tf.exp(-tf.transpose(cost, [0, 2, 1]) / beta) * joint_valid
    plan = joint_valid
    sigma = (1.0 - text_pad) / text_lengths  # [B, M]
    text_mask = _PAD_DENOMINATOR * text_pad
    region_mask = _PAD_DENOMINATOR * region_pad
    delta = tf.zeros_like(region_pad)

    def outer_step(step, plan, sigma, delta):
        weighted = kernel * plan  # Q, [B, N, M]
        for _ in range(inner_iterations):
            delta = 1.0 / (region_lengths * tf.linalg.matvec(weighted, sigma) + region_mask)  # [B, N]
            sigma = 1.0 / (text_lengths * tf.linalg.matvec(weighted, delta, transpose_a=True) + text_mask)
        plan = delta[:, :, tf.newaxis] * weighted * sigma[:, tf.newaxis, :]
        return step + 1, plan, sigma, delta

    _, plan, _, _ = tf.while_loop(lambda step, *_: step < iterations, outer_step,
                                  (tf.constant(0), plan, sigma, delta))
    return tf.stop_gradient(plan * joint_valid)


# Python scalars (beta, iterations) are part of the trace key, so each setting is its own compile.
_ipot_plan_xla = tf.function(_ipot_plan, jit_compile=True, reduce_retracing=True)


def optimal_transport_distance(text_embeddings: tf.Tensor, region_embeddings: tf.Tensor, text_padding: tf.Tensor,
                               region_padding: tf.Tensor, beta: float = 0.5, iterations: int = 50,
                               inner_iterations: int = 1) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The official ``optimal_transport_dist``: ``trace(C T)`` per example.

    Args:
        text_embeddings: ``[B, M, H]`` contextual token embeddings (CLS/SEP included).
        region_embeddings: ``[B, N, H]`` contextual region embeddings.
        text_padding: ``[B, M]`` bool, True at padding.
        region_padding: ``[B, N]`` bool, True at padding.
        beta: IPOT step size (0.5).
        iterations: IPOT iterations (50).
        inner_iterations: IPOT ``k`` (1).

    Returns:
        ``(distance [B], cost [B, M, N], plan [B, N, M])``, all float32; the distance is
        differentiable through the cost only.
    """
    text_padding = tf.cast(text_padding, tf.bool)
    region_padding = tf.cast(region_padding, tf.bool)
    cost = cosine_cost(text_embeddings, region_embeddings, text_padding, region_padding)
    plan = ipot_plan(cost, text_padding, region_padding, beta, iterations, inner_iterations)
    distance = tf.reduce_sum(cost * tf.transpose(plan, [0, 2, 1]), axis=[1, 2])
    return distance, cost, plan
