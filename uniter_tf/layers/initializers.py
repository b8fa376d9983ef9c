"""Weight initialisers shared by the UNITER layers."""

import keras


def normal_initializer(stddev: float) -> keras.initializers.Initializer:
    """The official ``init_weights``: a plain (not truncated) normal N(0, stddev) for dense and
    embedding weights.

    Args:
        stddev: ``UniterConfig.initializer_range`` (0.02).
    """
    return keras.initializers.RandomNormal(mean=0.0, stddev=stddev)
