"""Official state-dict names ↔ the variables of a downstream head (shared by every head module).

Each head declares a table ``{official key: (sub-layer attribute, variable attribute, transpose?)}``;
these helpers turn it into the variable map the converter consumes and assign official arrays with
errors that name the key. ``transpose`` is True for ``nn.Linear`` weights (PyTorch ``[out, in]`` vs
the Keras ``[in, out]`` kernel).
"""

from __future__ import annotations

from typing import Dict, Mapping, Tuple

import keras
import numpy as np

#: official key → (sub-layer attribute, variable attribute, transpose?)
ParameterTable = Mapping[str, Tuple[str, str, bool]]


def linear_entries(official_prefix: str, sublayer: str) -> Dict[str, Tuple[str, str, bool]]:
    """The two entries of an ``nn.Linear`` stored under ``official_prefix`` mapped to a Keras Dense."""
    return {f"{official_prefix}.weight": (sublayer, "kernel", True),
            f"{official_prefix}.bias": (sublayer, "bias", False)}


def layer_norm_entries(official_prefix: str, sublayer: str) -> Dict[str, Tuple[str, str, bool]]:
    """The two entries of a (Fused)LayerNorm mapped to a Keras LayerNormalization."""
    return {f"{official_prefix}.weight": (sublayer, "gamma", False),
            f"{official_prefix}.bias": (sublayer, "beta", False)}


def official_weight_map(layer: keras.layers.Layer,
                        table: ParameterTable) -> Dict[str, Tuple[keras.Variable, bool]]:
    """Official key → (variable of ``layer``, whether the official array must be transposed).

    Args:
        layer: a built head layer.
        table: its parameter table.
    """
    if not layer.built:
        layer.build()
    mapping = {}
    for official_key, (sublayer_name, variable_name, transpose) in table.items():
        mapping[official_key] = (getattr(getattr(layer, sublayer_name), variable_name), transpose)
    return mapping


def assign_official_weights(layer: keras.layers.Layer, table: ParameterTable,
                            state_dict: Mapping[str, np.ndarray], prefix: str = "") -> None:
    """Assigns ``state_dict``'s arrays (PyTorch layout) to the head's variables.

    Args:
        layer: the head.
        table: its parameter table.
        state_dict: official key → array.
        prefix: a prefix in front of the head's keys, if any.

    Raises:
        KeyError: a parameter of the head is missing (naming the key).
        ValueError: a shape does not match (naming the key and both shapes).
    """
    assignments = []
    for official_key, (variable, transpose) in official_weight_map(layer, table).items():
        full_key = prefix + official_key
        if full_key not in state_dict:
            raise KeyError(f"official {type(layer).__name__} parameter {full_key!r} is missing from the state dict")
        array = np.asarray(state_dict[full_key], dtype=np.float32)
        if transpose:
            array = array.T
        if tuple(array.shape) != tuple(variable.shape):
            raise ValueError(f"{full_key}: shape {tuple(array.shape)} (after transpose={transpose}) does not match "
                             f"{variable.path} {tuple(variable.shape)}")
        assignments.append((variable, array))
    # Assign only after every check passed, so a bad state dict leaves the head untouched.
    for variable, array in assignments:
        variable.assign(array)


class OfficialHead(keras.layers.Layer):
    """Base of the downstream heads that load official weights.

    Subclasses implement :meth:`parameter_table` (and ``build`` so every variable exists before the
    first call); they get :meth:`official_weight_map` and :meth:`load_official_weights`.

    Args:
        hidden_size: H of the backbone whose pooled or sequence output the head reads.
        initializer_range: standard deviation of the normal kernel initialiser (official 0.02).
        **kwargs: passed to ``keras.layers.Layer``.
    """

    def __init__(self, hidden_size: int, initializer_range: float = 0.02, **kwargs):
        super().__init__(**kwargs)
        if hidden_size <= 0:
            raise ValueError(f"{type(self).__name__} needs hidden_size > 0, got {hidden_size}")
        self.hidden_size = hidden_size
        self.initializer_range = initializer_range

    def get_config(self):
        config = super().get_config()
        config.update({"hidden_size": self.hidden_size, "initializer_range": self.initializer_range})
        return config

    def parameter_table(self) -> ParameterTable:
        """Official key → (sub-layer attribute, variable attribute, transpose?) of this head."""
        raise NotImplementedError(f"{type(self).__name__} does not declare its official parameters")

    def official_weight_map(self) -> Dict[str, Tuple[keras.Variable, bool]]:
        """Official state-dict key → (this head's variable, whether the array must be transposed)."""
        return official_weight_map(self, self.parameter_table())

    def load_official_weights(self, state_dict: Mapping[str, np.ndarray], prefix: str = "") -> None:
        """Assigns the head's official parameters (see :func:`assign_official_weights`)."""
        assign_official_weights(self, self.parameter_table(), state_dict, prefix)
