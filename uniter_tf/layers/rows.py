"""Dense layers applied to rows: ``[..., in]`` flattened to one 2-D matmul.

Keras 3's ``Dense`` on a rank-3 input calls ``tf.matmul([B, L, in], [in, out])``, a broadcasting
``BatchMatMul``. Its kernel gradient is computed as ``B`` small matmuls (``[in, L] @ [L, out]`` each)
followed by a sum over ``B``: for uniter-base's feed-forward kernels that writes an ``[8, 768, 3072]``
temporary per layer and multiplies matrices whose inner dimension is only ``L``. Flattening the rows
first makes the forward one ``MatMul`` and the kernel gradient one ``[in, B·L] @ [B·L, out]`` GEMM, as
PyTorch's ``nn.Linear`` does. The numbers are the same up to float32 summation order.
"""

from __future__ import annotations

import tensorflow as tf


def dense_rows(dense, inputs: tf.Tensor) -> tf.Tensor:
    """Applies the Keras ``Dense`` layer ``dense`` to every row of ``inputs [..., in]``.

    Args:
        dense: a built ``keras.layers.Dense``.
        inputs: a tensor of rank >= 2 whose last dimension is the layer's input size.

    Returns:
        ``[..., units]``, the same values as ``dense(inputs)``.
    """
    if inputs.shape.rank is not None and inputs.shape.rank <= 2:
        return dense(inputs)
    leading = tf.shape(inputs)[:-1]
    # The kernel knows the input size even when the tensor's static shape has lost it.
    rows = tf.reshape(inputs, [-1, int(dense.kernel.shape[0])])
    outputs = tf.reshape(dense(rows), tf.concat([leading, [dense.units]], axis=0))
    outputs.set_shape(inputs.shape[:-1].concatenate([dense.units]))
    return outputs
