"""A shared test harness for UNITER's Keras layers and models, in the manner of keras-hub's ``TestCase``.

Every layer in :mod:`uniter_tf.layers`, the backbone and every task model go through the same checks, so a
new head or task (the next issues' NLVR2, retrieval, RefCOCO, VCR) gets them by one call:

* :func:`run_layer_test`: build, call, output shapes, trainable-weight count, ``get_config`` →
  ``from_config`` giving the same config and (with the weights copied) the same outputs, and the
  ``dtype=`` policy reaching every sublayer.
* :func:`run_serialization_test`: the config is JSON-serialisable and round-trips, the revived object gives
  equal outputs, and a ``.keras`` file written under a temporary directory loads back with equal outputs
  (a layer is saved inside :class:`LayerHolder`, since only models save to ``.keras``).
* :func:`run_model_saving_test`: ``model.save`` → ``keras.saving.load_model`` and ``save_weights`` →
  ``load_weights`` into a fresh ``from_config`` model, both with equal outputs.
* :data:`TINY_CONFIG` and :func:`tiny_backbone_inputs`: one tiny configuration (2 layers, hidden 16, a
  120-entry toy vocabulary) and a padded batch for it.

The functions raise ``AssertionError`` with a message naming the class and the check, so they work in
pytest and in plain scripts alike. Calls run with ``training=False`` where the callee takes it, so
dropout does not make equal weights give different outputs.
"""

from __future__ import annotations

import inspect
import json
import os
import tempfile
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import keras
import numpy as np
import tensorflow as tf

from uniter_tf.config import UniterConfig

#: The harness's tiny model: every shape small, toy special ids (as the parity fixtures' vocabulary).
TINY_CONFIG = UniterConfig(vocab_size=120, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=32, region_feature_dim=12, num_soft_labels=5,
                           unk_token_id=4, cls_token_id=1, sep_token_id=2, mask_token_id=3, first_word_id=5)

Structure = Any  # a tensor, or a (nested) dict / tuple / list of tensors


def tiny_backbone_inputs(config: UniterConfig = TINY_CONFIG, batch_size: int = 2, text_length: int = 5,
                         num_regions: int = 3, seed: int = 0) -> Dict[str, np.ndarray]:
    """A padded backbone batch for ``config``: example i has ``text_length - i`` tokens and
    ``num_regions - (1 - i % 2)`` regions, so both text and region padding occur.

    Returns:
        ``token_ids``, ``text_mask``, ``region_features``, ``region_positions``, ``region_mask`` as numpy.
    """
    rng = np.random.default_rng(seed)
    text_lengths = np.maximum(text_length - np.arange(batch_size), 3)
    region_lengths = np.maximum(num_regions - (1 - np.arange(batch_size) % 2), 1)
    text_mask = (np.arange(text_length)[None, :] < text_lengths[:, None]).astype(np.int32)
    token_ids = rng.integers(config.first_word_id, config.vocab_size, size=(batch_size, text_length)).astype(np.int32)
    token_ids[:, 0] = config.cls_token_id
    token_ids[np.arange(batch_size), text_lengths - 1] = config.sep_token_id
    token_ids *= text_mask
    region_mask = (np.arange(num_regions)[None, :] < region_lengths[:, None]).astype(np.int32)
    features = rng.random((batch_size, num_regions, config.region_feature_dim), dtype=np.float32)
    positions = rng.random((batch_size, num_regions, 7), dtype=np.float32)
    return {"token_ids": token_ids, "text_mask": text_mask,
            "region_features": features * region_mask[:, :, None],
            "region_positions": positions * region_mask[:, :, None],
            "region_mask": region_mask}


# ------------------------------------------------------------------------------------------------- helpers

def _as_args(input_data) -> Tuple[tuple, dict]:
    """``input_data`` as positional arguments: a tuple is several, anything else (a dict too) is one."""
    if isinstance(input_data, tuple):
        return input_data, {}
    return (input_data,), {}


def _call(obj, input_data, call_kwargs: Optional[Mapping[str, Any]]):
    args, _ = _as_args(input_data)
    kwargs = dict(call_kwargs or {})
    if "training" in inspect.signature(obj.call).parameters:
        kwargs.setdefault("training", False)
    return obj(*args, **kwargs)


def _flatten(structure: Structure, prefix: str = "") -> Dict[str, Any]:
    """``{path: leaf}`` of a nested dict / tuple / list (dict keys sorted)."""
    if isinstance(structure, Mapping):
        flat = {}
        for key in sorted(structure):
            flat.update(_flatten(structure[key], f"{prefix}/{key}"))
        return flat
    if isinstance(structure, (tuple, list)):
        flat = {}
        for index, value in enumerate(structure):
            flat.update(_flatten(value, f"{prefix}[{index}]"))
        return flat
    return {prefix or "output": structure}


def assert_outputs_close(actual: Structure, expected: Structure, atol: float = 1e-6, what: str = "outputs") -> None:
    """Asserts two output structures have the same keys, shapes, dtypes and values (within ``atol``)."""
    actual_flat, expected_flat = _flatten(actual), _flatten(expected)
    if sorted(actual_flat) != sorted(expected_flat):
        raise AssertionError(f"{what}: the structures differ: {sorted(actual_flat)} vs {sorted(expected_flat)}")
    for path, expected_value in expected_flat.items():
        actual_value = actual_flat[path]
        if tf.as_dtype(actual_value.dtype) != tf.as_dtype(expected_value.dtype):
            raise AssertionError(f"{what}{path}: dtype {actual_value.dtype} vs {expected_value.dtype}")
        np.testing.assert_allclose(np.asarray(tf.cast(actual_value, tf.float64)),
                                   np.asarray(tf.cast(expected_value, tf.float64)), atol=atol, rtol=0,
                                   err_msg=f"{what}{path}")


def _flatten_shapes(structure, prefix: str = "") -> Dict[str, Tuple[int, ...]]:
    """``{path: shape}`` of a nested structure whose leaves are shape tuples (tuples of ints)."""
    if isinstance(structure, tuple) and all(isinstance(dim, int) for dim in structure):
        return {prefix or "output": structure}
    if isinstance(structure, Mapping):
        return {path: shape for key in sorted(structure)
                for path, shape in _flatten_shapes(structure[key], f"{prefix}/{key}").items()}
    return {path: shape for index, value in enumerate(structure)
            for path, shape in _flatten_shapes(value, f"{prefix}[{index}]").items()}


def _check_shapes(outputs: Structure, expected_output_shape: Structure, name: str) -> None:
    actual_shapes = {path: tuple(value.shape) for path, value in _flatten(outputs).items()}
    expected_shapes = _flatten_shapes(expected_output_shape)
    if actual_shapes != expected_shapes:
        raise AssertionError(f"{name}: output shapes {actual_shapes}, expected {expected_shapes}")


def _json_config(obj) -> dict:
    """``get_config`` after a JSON round trip (what a ``.keras`` file stores)."""
    serialized = keras.saving.serialize_keras_object(obj)
    try:
        text = json.dumps(serialized)
    except TypeError as error:
        raise AssertionError(f"{type(obj).__name__}.get_config() is not JSON-serialisable: {error}") from error
    return json.loads(text)["config"]


def _revive(obj, config: dict):
    revived = type(obj).from_config(config)
    if not revived.built:
        revived.build()
    return revived


def _copy_weights(source, target, name: str) -> None:
    source_weights, target_weights = source.weights, target.weights
    if [tuple(weight.shape) for weight in source_weights] != [tuple(weight.shape) for weight in target_weights]:
        raise AssertionError(f"{name}: the revived object's weights differ in number or shape")
    for source_weight, target_weight in zip(source_weights, target_weights):
        target_weight.assign(source_weight)


def _with_tmp_dir(tmp_dir: Optional[Union[str, os.PathLike]], function: Callable[[str], Any]):
    if tmp_dir is not None:
        os.makedirs(tmp_dir, exist_ok=True)
        return function(os.fspath(tmp_dir))
    with tempfile.TemporaryDirectory() as directory:
        return function(directory)


# ------------------------------------------------------------------------------------------- harness

@keras.saving.register_keras_serializable(package="uniter_tf_testing")
class LayerHolder(keras.Model):
    """A model around one layer, so that a layer can go through a ``.keras`` file.

    Args:
        layer: the layer (built by :meth:`build` if it is not yet).
        **kwargs: passed to ``keras.Model``.
    """

    def __init__(self, layer: keras.layers.Layer, **kwargs):
        super().__init__(**kwargs)
        self.layer = layer
        # Built here so that load_model finds every variable before it assigns the saved ones.
        self.build()

    def build(self, input_shape=None):
        if not self.layer.built:
            self.layer.build()
        self.built = True

    def call(self, *args, **kwargs):
        return self.layer(*args, **kwargs)

    def get_config(self):
        config = super().get_config()
        config["layer"] = keras.saving.serialize_keras_object(self.layer)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["layer"] = keras.saving.deserialize_keras_object(config["layer"])
        return cls(**config)


def run_precision_test(make: Callable[..., keras.layers.Layer], input_data, call_kwargs=None,
                       policies: Sequence[str] = ("mixed_bfloat16",)) -> None:
    """Builds ``make(dtype=policy)`` for each policy under a float32 global policy and checks that every
    sublayer carries the policy, the variables have its variable dtype, and the floating outputs are finite.

    Args:
        make: ``dtype -> layer or model``.
        input_data: the call's input (a tuple for several positional arguments).
        call_kwargs: keyword arguments of the call.
        policies: the policies to try.
    """
    if keras.config.dtype_policy().name != "float32":
        raise AssertionError("run_precision_test needs the float32 global policy (the point is not to need another)")
    for policy_name in policies:
        instance = make(dtype=policy_name)
        policy = keras.DTypePolicy(policy_name)
        name = type(instance).__name__
        wrong = sorted({f"{layer.path}: {layer.dtype_policy.name}"
                        for layer in instance._flatten_layers(include_self=True)  # pylint: disable=protected-access
                        if layer.dtype_policy.name != policy.name})
        if wrong:
            raise AssertionError(f"{name}(dtype={policy_name!r}): sublayers with another policy: {wrong}")
        if not instance.built:
            instance.build()
        variable_dtypes = {variable.dtype for variable in instance.weights}
        if variable_dtypes - {policy.variable_dtype}:
            raise AssertionError(f"{name}(dtype={policy_name!r}): variable dtypes {variable_dtypes}, expected "
                                 f"{policy.variable_dtype}")
        outputs = _call(instance, input_data, call_kwargs)
        for path, value in _flatten(outputs).items():
            if tf.as_dtype(value.dtype).is_floating and not np.isfinite(np.asarray(tf.cast(value, tf.float32))).all():
                raise AssertionError(f"{name}(dtype={policy_name!r}): output {path} is not finite")


def run_layer_test(layer_cls: type, init_kwargs: Mapping[str, Any], input_data, call_kwargs=None,
                   expected_output_shape: Structure = None, expected_num_trainable_weights: Optional[int] = None,
                   expected_num_non_trainable_weights: int = 0, run_precision_check: bool = True,
                   atol: float = 1e-6):
    """The basic checks of a layer (or model) class.

    Args:
        layer_cls: the class.
        init_kwargs: constructor arguments.
        input_data: the call's input (a tuple for several positional arguments, a dict is one argument).
        call_kwargs: keyword arguments of the call.
        expected_output_shape: the output shapes, in the outputs' structure (a dict of shape tuples for a dict
            of outputs).
        expected_num_trainable_weights: the number of trainable variables after the call (tied weights
            passed as inputs do not count).
        expected_num_non_trainable_weights: the number of non-trainable variables.
        run_precision_check: also run :func:`run_precision_test` with ``dtype="mixed_bfloat16"``.
        atol: tolerance of the from_config output comparison.

    Returns:
        The layer and its outputs.
    """
    name = layer_cls.__name__
    layer = layer_cls(**init_kwargs)
    outputs = _call(layer, input_data, call_kwargs)
    if not layer.built:
        raise AssertionError(f"{name}: not built after a call")
    if expected_output_shape is not None:
        _check_shapes(outputs, expected_output_shape, name)
    if expected_num_trainable_weights is not None and len(layer.trainable_weights) != expected_num_trainable_weights:
        raise AssertionError(f"{name}: {len(layer.trainable_weights)} trainable weights, expected "
                             f"{expected_num_trainable_weights}: {[weight.path for weight in layer.trainable_weights]}")
    if len(layer.non_trainable_weights) != expected_num_non_trainable_weights:
        raise AssertionError(f"{name}: {len(layer.non_trainable_weights)} non-trainable weights, expected "
                             f"{expected_num_non_trainable_weights}")
    config = layer.get_config()
    revived = _revive(layer, _json_config(layer))
    if revived.get_config() != config:
        raise AssertionError(f"{name}: from_config(get_config()).get_config() differs:\n{revived.get_config()}\n"
                             f"vs\n{config}")
    _copy_weights(layer, revived, name)
    assert_outputs_close(_call(revived, input_data, call_kwargs), outputs, atol, what=f"{name} from_config")
    if run_precision_check:
        run_precision_test(lambda **dtype: layer_cls(**dict(init_kwargs, **dtype)), input_data, call_kwargs)
    return layer, outputs


def run_serialization_test(instance: keras.layers.Layer, input_data, call_kwargs=None,
                           tmp_dir: Optional[Union[str, os.PathLike]] = None, atol: float = 1e-6) -> None:
    """Config and ``.keras`` round trips of one (built or buildable) layer or model.

    ``get_config`` → JSON → ``from_config`` (weights copied) must give the same config and equal outputs;
    ``keras.saving.save_model`` to ``tmp_dir`` (a temporary directory when ``None``) → ``load_model``
    must give equal outputs without copying anything.
    """
    name = type(instance).__name__
    expected = _call(instance, input_data, call_kwargs)
    config = instance.get_config()
    revived = _revive(instance, _json_config(instance))
    if revived.get_config() != config:
        raise AssertionError(f"{name}: the revived config differs:\n{revived.get_config()}\nvs\n{config}")
    _copy_weights(instance, revived, name)
    assert_outputs_close(_call(revived, input_data, call_kwargs), expected, atol, what=f"{name} from_config")

    def save_and_load(directory):
        model = instance if isinstance(instance, keras.Model) else LayerHolder(instance)
        path = os.path.join(directory, f"{name.lower()}.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
        if not isinstance(instance, keras.Model):
            loaded = loaded.layer
        if type(loaded) is not type(instance):
            raise AssertionError(f"{name}: the .keras file loads as {type(loaded).__name__}")
        assert_outputs_close(_call(loaded, input_data, call_kwargs), expected, atol, what=f"{name} .keras")

    _with_tmp_dir(tmp_dir, save_and_load)


def run_model_saving_test(model: keras.Model, input_data, call_kwargs=None,
                          tmp_dir: Optional[Union[str, os.PathLike]] = None, atol: float = 1e-6) -> None:
    """Whole-model and weights-only saving of a model.

    ``model.save`` → ``keras.saving.load_model`` gives equal outputs, and ``save_weights`` →
    ``from_config(get_config())`` + ``load_weights`` gives equal outputs (the path a trained run's weights
    take into a freshly configured model).
    """
    name = type(model).__name__
    if not isinstance(model, keras.Model):
        raise AssertionError(f"run_model_saving_test needs a keras.Model, got {name}")
    expected = _call(model, input_data, call_kwargs)

    def save_and_load(directory):
        path = os.path.join(directory, f"{name.lower()}_model.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
        assert_outputs_close(_call(loaded, input_data, call_kwargs), expected, atol, what=f"{name} load_model")
        weights_path = os.path.join(directory, f"{name.lower()}.weights.h5")
        model.save_weights(weights_path)
        fresh = _revive(model, _json_config(model))
        fresh.load_weights(weights_path)
        assert_outputs_close(_call(fresh, input_data, call_kwargs), expected, atol, what=f"{name} load_weights")

    _with_tmp_dir(tmp_dir, save_and_load)
