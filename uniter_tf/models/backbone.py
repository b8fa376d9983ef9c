"""The UNITER backbone: text and region embeddings, compact joint sequence, BERT encoder, pooler."""

from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Optional, Union

import keras
import tensorflow as tf

from uniter_tf.config import UniterConfig
from uniter_tf.layers.attention import additive_attention_bias
from uniter_tf.layers.joint_layout import compact_joint_index
from uniter_tf.layers.pooler import UniterPooler
from uniter_tf.layers.region_embeddings import UniterRegionEmbeddings
from uniter_tf.layers.text_embeddings import UniterTextEmbeddings
from uniter_tf.layers.transformer import UniterTransformerLayer

TEXT_INPUTS = ("token_ids", "text_mask")
REGION_INPUTS = ("region_features", "region_positions", "region_mask")
OPTIONAL_INPUTS = ("masked_regions", "token_type_ids", "region_type_ids")

# name → (rank, kind) of every backbone input; kind is "int", "float" or "mask" (bool or int).
_INPUT_SPECS = {
        "token_ids": (2, "int"),
        "text_mask": (2, "mask"),
        "token_type_ids": (2, "int"),
        "region_features": (3, "float"),
        "region_positions": (3, "float"),
        "region_mask": (2, "mask"),
        "masked_regions": (2, "mask"),
        "region_type_ids": (2, "int"),
}


# Dtype of each input in the recorded signature (what the data pipeline and the serving signatures feed).
_SIGNATURE_DTYPES = {"int": tf.int32, "mask": tf.int32, "float": tf.float32}
# Files of a preset directory: the layout ``uniter convert`` writes (uniter_tf.checkpoints.official).
PRESET_CONFIG_FILE = "config.json"
PRESET_WEIGHTS_FILE = "backbone.weights.h5"


def _shape_text(shape) -> str:
    return "[" + ", ".join("?" if dim is None else str(dim) for dim in shape) + "]"


@keras.saving.register_keras_serializable(package="uniter_tf")
class UniterBackbone(keras.Model):
    """UNITER encoder (official ``UniterModel`` + pooler).

    Inputs (a dict; names from docs/architecture.md):

    * ``token_ids`` ``[B, T]`` int: ``[CLS] w1 … wn [SEP]``, right-padded with 0.
    * ``text_mask`` ``[B, T]`` int/bool: 1 on real tokens, 0 on padding (a prefix of ones).
    * ``region_features`` ``[B, N, D]`` float: region features, 0-padded; D = ``region_feature_dim``.
    * ``region_positions`` ``[B, N, 7]`` float: ``[x1, y1, x2, y2, w, h, w*h]`` in [0, 1], 0-padded.
    * ``region_mask`` ``[B, N]`` int/bool: 1 on real regions (a prefix of ones).
    * ``masked_regions`` ``[B, N]`` bool, optional: MRM; those regions' features are replaced by the
      learned mask embedding.
    * ``token_type_ids`` ``[B, T]`` int, optional: text segment ids (default 0).
    * ``region_type_ids`` ``[B, N]`` int, optional: region type rows of the shared token-type table
      (default 1; NLVR2 uses 1 and 2 for its two images).

    Leaving out both text inputs gives the image-only mode, leaving out the three region inputs the
    text-only mode (the official code's ``input_ids is None`` / ``img_feat is None`` paths).

    Outputs (a dict):

    * ``sequence_output`` ``[B, L, H]``: last layer, in the compact joint layout (example i: tokens at
      ``[0, tl_i)``, regions at ``[tl_i, tl_i + nbb_i)``, padding after). ``L = T + N`` (static), or T /
      N in the single-modality modes.
    * ``joint_mask`` ``[B, L]`` int32: 1 on the valid positions.
    * ``pooled_output`` ``[B, H]``: ``tanh(W h_0 + b)``.
    * ``text_lengths`` ``[B]`` int32 (``tl_i``; 0 in image-only mode) — lets heads find the regions.
    * when ``output_hidden_states``: ``embedding_output`` ``[B, L, H]`` (the encoder input) and
      ``hidden_states`` ``[B, num_layers, L, H]`` (every layer's output, batch first so serving can
      batch it).
    * when ``output_attention_probs``: ``attention_probs`` ``[B, num_layers, A, L, L]``.

    Args:
        config: the model configuration.
        output_hidden_states: default of the call argument of the same name.
        output_attention_probs: default of the call argument of the same name.
        **kwargs: passed to ``keras.Model`` (e.g. ``name``). ``dtype`` (a policy name such as
            ``"mixed_bfloat16"`` or a ``keras.DTypePolicy``) reaches every sublayer, so a mixed-precision
            backbone needs no change of the global policy.

    Example:
        >>> backbone = UniterBackbone.from_preset("tiny", dtype="mixed_bfloat16")
        >>> backbone.export("/tmp/uniter_backbone")  # doctest: +SKIP
    """

    def __init__(self, config: UniterConfig, output_hidden_states: bool = False,
                 output_attention_probs: bool = False, **kwargs):
        kwargs.setdefault("name", "uniter_backbone")
        super().__init__(**kwargs)
        if isinstance(config, dict):
            config = UniterConfig.from_dict(config)
        self.config = config
        self.output_hidden_states = output_hidden_states
        self.output_attention_probs = output_attention_probs
        # keras sublayers do not inherit their parent's policy: each is given it (keras-hub's convention).
        policy = self.dtype_policy
        self.text_embeddings = UniterTextEmbeddings(
                vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                max_position_embeddings=config.max_position_embeddings, type_vocab_size=config.type_vocab_size,
                initializer_range=config.initializer_range, layer_norm_epsilon=config.layer_norm_epsilon,
                dropout_rate=config.hidden_dropout_prob, name="text_embeddings", dtype=policy)
        self.region_embeddings = UniterRegionEmbeddings(
                region_feature_dim=config.region_feature_dim, hidden_size=config.hidden_size,
                region_position_dim=config.region_position_dim, initializer_range=config.initializer_range,
                layer_norm_epsilon=config.layer_norm_epsilon, dropout_rate=config.hidden_dropout_prob,
                feature_standardization=config.region_feature_standardization, name="region_embeddings", dtype=policy)
        self.encoder_layers = [
                UniterTransformerLayer(
                        hidden_size=config.hidden_size, num_attention_heads=config.num_attention_heads,
                        intermediate_size=config.intermediate_size, initializer_range=config.initializer_range,
                        layer_norm_epsilon=config.layer_norm_epsilon,
                        hidden_dropout_rate=config.hidden_dropout_prob,
                        attention_dropout_rate=config.attention_probs_dropout_prob, name=f"layer_{index}",
                        dtype=policy)
                for index in range(config.num_hidden_layers)
        ]
        # tf.train.Checkpoint does not walk Keras' tracked lists, so each layer is also an attribute
        # of its own: without this, training checkpoints silently leave out the whole encoder.
        for index, layer in enumerate(self.encoder_layers):
            setattr(self, f"encoder_layer_{index}", layer)
        self.pooler = UniterPooler(config.hidden_size, config.initializer_range, name="pooler", dtype=policy)
        self._input_specs = self._make_input_specs({name: None for name in TEXT_INPUTS + REGION_INPUTS})
        # Every shape follows from the config, so variables exist right after construction (checkpoint
        # loading and weight tying need them before the first call).
        self.build()

    def build(self, input_shape=None):
        """Creates every variable (shapes follow from the config).

        Args:
            input_shape: optional dict of input name → shape; when given, those inputs (and shapes, batch
                dimension left free) become the recorded signature that :meth:`export` uses.
        """
        if isinstance(input_shape, Mapping):
            self._input_specs = self._make_input_specs(input_shape)
        self.text_embeddings.build()
        self.region_embeddings.build()
        for layer in self.encoder_layers:
            layer.build()
        self.pooler.build()
        self.built = True

    def _make_input_specs(self, shapes: Mapping[str, Any]) -> Dict[str, tf.TensorSpec]:
        unknown = sorted(set(shapes) - set(_INPUT_SPECS))
        if unknown:
            raise ValueError(f"UniterBackbone.build: unknown inputs {unknown}; known: {sorted(_INPUT_SPECS)}")
        specs = {}
        for name, shape in shapes.items():
            rank, kind = _INPUT_SPECS[name]
            dims = [None] * rank
            if shape is not None:
                dims = [None] + [None if dim is None else int(dim) for dim in tuple(shape)[1:]]
            if name == "region_features":
                dims[2] = self.config.region_feature_dim
            elif name == "region_positions":
                dims[2] = self.config.region_position_dim
            dtype = tf.bool if name == "masked_regions" else _SIGNATURE_DTYPES[kind]
            specs[name] = tf.TensorSpec(dims, dtype, name=name)
        self.validate_inputs({name: tf.zeros([1 if dim is None else dim for dim in spec.shape], spec.dtype)
                              for name, spec in specs.items()})
        return specs

    @property
    def input_specs(self) -> Dict[str, tf.TensorSpec]:
        """The recorded input signature: name → ``tf.TensorSpec`` with a free batch (and length) dimension.

        The five text and region inputs by default; :meth:`build` with a dict of shapes records others.
        """
        return dict(self._input_specs)

    def export(self, filepath, format="tf_saved_model",  # pylint: disable=redefined-builtin
               verbose=None, input_signature=None, **kwargs):
        """Exports the forward pass (``keras.Model.export``), by default with the recorded :attr:`input_specs`.

        Keras can infer a signature only for functional models or after a first call; the backbone knows
        its inputs from its config, so it exports right after construction.

        Args:
            filepath: the output directory.
            format: ``"tf_saved_model"`` (default) or another ``keras.Model.export`` format.
            verbose: print a summary of the export.
            input_signature: overrides the recorded signature (a list holding one dict of specs).
            **kwargs: passed to ``keras.Model.export``.
        """
        if input_signature is None:
            input_signature = [self.input_specs]
        return super().export(filepath, format=format, verbose=verbose, input_signature=input_signature, **kwargs)

    # ----------------------------------------------------------------------------------------------
    # Presets (keras-hub's ``from_preset`` / ``save_to_preset``).
    @classmethod
    def from_preset(cls, preset: Union[str, os.PathLike], load_weights: bool = True, **kwargs) -> "UniterBackbone":
        """Builds a backbone from a named preset or a preset directory; nothing is downloaded.

        A name of :data:`uniter_tf.config.PRESETS` (``"uniter-base"``, ``"uniter-large"``, ``"uniter-mini"``,
        ``"tiny"``; ``"base"`` etc. too) gives a configured, randomly initialised backbone: the released
        UNITER weights are PyTorch checkpoints, so they come in through ``uniter convert``. A directory
        (what :meth:`save_to_preset` or ``uniter convert`` writes: ``config.json`` and
        ``backbone.weights.h5``) gives its config and, with ``load_weights``, its weights.

        Args:
            preset: a preset name or a directory.
            load_weights: load the directory's ``backbone.weights.h5`` (ignored for a name).
            **kwargs: :class:`~uniter_tf.config.UniterConfig` fields override the preset's config; the rest
                (``dtype``, ``name``, ``output_hidden_states``, ...) go to the constructor.

        Raises:
            ValueError: an unknown preset name (listing the known ones) or an override that the
                preset's weights cannot take.
            FileNotFoundError: a directory without ``config.json``, or without weights when
                ``load_weights``.
        """
        field_names = set(UniterConfig.__dataclass_fields__)
        overrides = {key: kwargs.pop(key) for key in list(kwargs) if key in field_names}
        text = os.fspath(preset)
        if not os.path.isdir(text):
            return cls(UniterConfig.from_preset(text, **overrides), **kwargs)
        config_path = os.path.join(text, PRESET_CONFIG_FILE)
        weights_path = os.path.join(text, PRESET_WEIGHTS_FILE)
        if not os.path.isfile(config_path):
            raise FileNotFoundError(f"preset directory {text!r} has no {PRESET_CONFIG_FILE}")
        config = UniterConfig.from_json(config_path, allow_unknown=True).replace(**overrides)
        backbone = cls(config, **kwargs)
        if load_weights:
            if not os.path.isfile(weights_path):
                raise FileNotFoundError(f"preset directory {text!r} has no {PRESET_WEIGHTS_FILE}; pass "
                                        "load_weights=False for a freshly initialised backbone")
            try:
                backbone.load_weights(weights_path)
            except ValueError as error:
                raise ValueError(f"{weights_path}: the weights do not fit the config (overrides "
                                 f"{sorted(overrides)}): {error}") from error
        return backbone

    def save_to_preset(self, preset_dir: Union[str, os.PathLike]) -> None:
        """Writes ``config.json`` and ``backbone.weights.h5`` into ``preset_dir`` (created if needed), the
        directory :meth:`from_preset` reads back."""
        preset_dir = os.fspath(preset_dir)
        tf.io.gfile.makedirs(preset_dir)
        self.config.to_json(os.path.join(preset_dir, PRESET_CONFIG_FILE))
        self.save_weights(os.path.join(preset_dir, PRESET_WEIGHTS_FILE))

    # ----------------------------------------------------------------------------------------------
    # Tied weights, for the pretraining heads.
    @property
    def word_embedding_matrix(self) -> keras.Variable:
        """The ``[V, H]`` word table (tied to the MLM decoder)."""
        return self.text_embeddings.word_embeddings.embeddings

    @property
    def region_projection_kernel(self) -> keras.Variable:
        """The ``[D, H]`` ``img_linear`` kernel (tied, transposed, to the MRFR output projection)."""
        return self.region_embeddings.img_linear.kernel

    # ----------------------------------------------------------------------------------------------
    def validate_inputs(self, inputs: Mapping[str, Any]) -> None:
        """Checks names, ranks, dtypes and the static dims of the inputs.

        Raises:
            ValueError: naming the input, the expected shape and the received shape (or dtype).
        """
        if not isinstance(inputs, Mapping):
            raise ValueError(f"UniterBackbone expects a dict of inputs, got {type(inputs).__name__}")
        has_text = any(inputs.get(name) is not None for name in TEXT_INPUTS)
        has_regions = any(inputs.get(name) is not None for name in REGION_INPUTS)
        if not has_text and not has_regions:
            raise ValueError(f"UniterBackbone needs text inputs {TEXT_INPUTS} and/or region inputs {REGION_INPUTS}; "
                             f"received keys {sorted(inputs)}")
        required = (TEXT_INPUTS if has_text else ()) + (REGION_INPUTS if has_regions else ())
        for name in required:
            if inputs.get(name) is None:
                raise ValueError(f"UniterBackbone input {name!r} is missing (received keys {sorted(inputs)})")
        expected_dims = {
                "region_features": {2: self.config.region_feature_dim},
                "region_positions": {2: self.config.region_position_dim},
        }
        # The symbolic dims the inputs must share: B everywhere, T for text, N for regions.
        shared_dims = {"token_ids": ("B", "T"), "text_mask": ("B", "T"), "token_type_ids": ("B", "T"),
                       "region_features": ("B", "N", None), "region_positions": ("B", "N", None),
                       "region_mask": ("B", "N"), "masked_regions": ("B", "N"), "region_type_ids": ("B", "N")}
        seen_dims: Dict[str, tuple] = {}
        for name, (rank, kind) in _INPUT_SPECS.items():
            value = inputs.get(name)
            if value is None:
                continue
            if name in OPTIONAL_INPUTS and name != "token_type_ids" and not has_regions:
                raise ValueError(f"UniterBackbone input {name!r} needs the region inputs")
            if name == "token_type_ids" and not has_text:
                raise ValueError("UniterBackbone input 'token_type_ids' needs the text inputs")
            shape = tuple(value.shape)
            expected = [dim_name if dim_name else "?" for dim_name in shared_dims[name]]
            for axis, dim in expected_dims.get(name, {}).items():
                expected[axis] = str(dim)
            expected_text = "[" + ", ".join(expected) + "]"
            if len(shape) != rank:
                raise ValueError(f"UniterBackbone input {name!r}: expected shape {expected_text}, "
                                 f"received {_shape_text(shape)}")
            for axis, dim in expected_dims.get(name, {}).items():
                if shape[axis] is not None and shape[axis] != dim:
                    raise ValueError(f"UniterBackbone input {name!r}: expected shape {expected_text} (the config's "
                                     f"{'region_feature_dim' if name == 'region_features' else 'box width'} is "
                                     f"{dim}), received {_shape_text(shape)}")
            for axis, dim_name in enumerate(shared_dims[name]):
                if dim_name is None or shape[axis] is None:
                    continue
                if dim_name in seen_dims and seen_dims[dim_name][1] != shape[axis]:
                    other, other_size = seen_dims[dim_name]
                    raise ValueError(f"UniterBackbone input {name!r}: expected shape {expected_text} with "
                                     f"{dim_name}={other_size} as in {other!r}, received {_shape_text(shape)}")
                seen_dims.setdefault(dim_name, (name, shape[axis]))
            dtype = tf.as_dtype(getattr(value, "dtype", tf.float32))
            if kind == "int" and not dtype.is_integer:
                raise ValueError(f"UniterBackbone input {name!r}: expected an integer dtype, received {dtype.name}")
            if kind == "float" and not dtype.is_floating:
                raise ValueError(f"UniterBackbone input {name!r}: expected a float dtype, received {dtype.name}")
            if kind == "mask" and not (dtype.is_integer or dtype == tf.bool):
                raise ValueError(f"UniterBackbone input {name!r}: expected a bool or integer mask, "
                                 f"received {dtype.name}")
        text_length = seen_dims.get("T", (None, None))[1]
        if text_length is not None and text_length > self.config.max_position_embeddings:
            raise ValueError(f"UniterBackbone input 'token_ids': text length {text_length} exceeds "
                             f"max_position_embeddings={self.config.max_position_embeddings}")

    # ----------------------------------------------------------------------------------------------
    def call(self, inputs: Mapping[str, tf.Tensor], training: Optional[bool] = None,
             output_hidden_states: Optional[bool] = None,
             output_attention_probs: Optional[bool] = None) -> Dict[str, tf.Tensor]:
        """Encodes a batch; see the class docstring for inputs and outputs.

        Args:
            inputs: the input dict.
            training: enables dropout.
            output_hidden_states: also return ``embedding_output`` and ``hidden_states``.
            output_attention_probs: also return ``attention_probs``.
        """
        self.validate_inputs(inputs)
        if output_hidden_states is None:
            output_hidden_states = self.output_hidden_states
        if output_attention_probs is None:
            output_attention_probs = self.output_attention_probs
        has_text = inputs.get("token_ids") is not None
        has_regions = inputs.get("region_features") is not None

        text_embeddings = region_embeddings = None
        if has_text:
            token_ids = tf.cast(inputs["token_ids"], tf.int32)
            text_mask = tf.cast(inputs["text_mask"], tf.int32)
            token_type_ids = inputs.get("token_type_ids")
            if token_type_ids is not None:
                token_type_ids = tf.cast(token_type_ids, tf.int32)
            text_embeddings = self.text_embeddings(token_ids, token_type_ids, training=training)
            text_lengths = tf.reduce_sum(text_mask, axis=1)
        if has_regions:
            region_mask = tf.cast(inputs["region_mask"], tf.int32)
            region_type_ids = inputs.get("region_type_ids")
            if region_type_ids is None:
                region_type_ids = tf.ones_like(region_mask)
            type_embeddings = self.text_embeddings.type_embedding(tf.cast(region_type_ids, tf.int32))
            region_embeddings = self.region_embeddings(
                    inputs["region_features"], inputs["region_positions"], type_embeddings,
                    masked_regions=inputs.get("masked_regions"), training=training)
            region_lengths = tf.reduce_sum(region_mask, axis=1)

        if has_text and has_regions:
            gather_index, joint_mask = compact_joint_index(text_lengths, region_lengths, tf.shape(token_ids)[1],
                                                           tf.shape(region_mask)[1])
            concatenated = tf.concat([text_embeddings, tf.cast(region_embeddings, text_embeddings.dtype)], axis=1)
            embedding_output = tf.gather(concatenated, gather_index, batch_dims=1)
        elif has_text:
            embedding_output, joint_mask = text_embeddings, text_mask
        else:
            embedding_output, joint_mask = region_embeddings, region_mask
            text_lengths = tf.zeros_like(region_lengths)

        attention_bias = additive_attention_bias(joint_mask, tf.float32)
        hidden = embedding_output
        all_hidden, all_probabilities = [], []
        for layer in self.encoder_layers:
            hidden, probabilities = layer(hidden, attention_bias, training=training)
            if output_hidden_states:
                all_hidden.append(hidden)
            if output_attention_probs:
                all_probabilities.append(probabilities)

        outputs = {
                "sequence_output": hidden,
                "joint_mask": joint_mask,
                "pooled_output": self.pooler(hidden),
                "text_lengths": text_lengths,
        }
        if output_hidden_states:
            outputs["embedding_output"] = embedding_output
            outputs["hidden_states"] = tf.stack(all_hidden, axis=1)
        if output_attention_probs:
            outputs["attention_probs"] = tf.stack(all_probabilities, axis=1)
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update({
                "config": self.config.to_dict(),
                "output_hidden_states": self.output_hidden_states,
                "output_attention_probs": self.output_attention_probs,
        })
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["config"] = UniterConfig.from_dict(config["config"])
        return cls(**config)
