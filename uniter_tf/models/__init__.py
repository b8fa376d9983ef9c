"""UNITER models: the backbone, the pretraining heads and model, losses, and downstream task models.

The public classes are importable from here (loaded lazily, so importing a submodule stays cheap):
:class:`UniterBackbone`, :class:`UniterPretrainingModel`, :class:`MlmHead`, :class:`MrfrHead`,
:class:`MrcHead`, :class:`ItmHead`.
"""

import importlib

_EXPORTS = {
        "UniterBackbone": "uniter_tf.models.backbone",
        "UniterPretrainingModel": "uniter_tf.models.pretraining_model",
        "MlmHead": "uniter_tf.models.pretraining_heads",
        "MrfrHead": "uniter_tf.models.pretraining_heads",
        "MrcHead": "uniter_tf.models.pretraining_heads",
        "ItmHead": "uniter_tf.models.pretraining_heads",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'uniter_tf.models' has no attribute {name!r}")
