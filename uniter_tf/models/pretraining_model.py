"""UNITER pretraining model: an injected backbone plus the MLM / MRFR / MRC(-kl) / ITM(+WRA) heads."""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple

import keras
import tensorflow as tf

from uniter_tf.config import UniterConfig
from uniter_tf.layers.optimal_transport import optimal_transport_distance
from uniter_tf.models import losses
from uniter_tf.models.backbone import UniterBackbone
from uniter_tf.models.pretraining_heads import ItmHead, MlmHead, MrcHead, MrfrHead

TASKS = ("mlm", "mrfr", "mrc", "mrckl", "itm")


def first_masked_indices(mask: tf.Tensor, max_count: Optional[int] = None) -> Tuple[tf.Tensor, tf.Tensor]:
    """Compacts a ``[B, S]`` mask into the indices of its first K true entries per row.

    A fixed-shape alternative to ``tf.boolean_mask`` (works under XLA when ``max_count`` is given):
    the indices keep row-major order, so the real rows in order are exactly the official
    ``tensor[mask]`` selection.

    Args:
        mask: ``[B, S]`` bool/int mask.
        max_count: K. ``None`` uses the largest count in the batch (a dynamic shape, not XLA-friendly).
            True entries beyond K in a row are dropped.

    Returns:
        ``(indices [B, K] int32, weights [B, K] float32)``; weights are 1 on real entries, 0 on
        padding entries (whose index points at some unmasked position).
    """
    mask = tf.cast(tf.cast(mask, tf.bool), tf.float32)
    width = tf.shape(mask)[1]
    if max_count is None:
        count = tf.cast(tf.reduce_max(tf.reduce_sum(mask, axis=1)), tf.int32)
        count = tf.maximum(count, 1)
    else:
        count = tf.minimum(tf.constant(max_count, tf.int32), width)
    positions = tf.cast(tf.range(width), tf.float32)
    # Masked entries score above every unmasked one; within a group, earlier positions score higher.
    scores = mask * tf.cast(width, tf.float32) + (tf.cast(width, tf.float32) - 1.0 - positions)[tf.newaxis, :]
    _, indices = tf.math.top_k(scores, k=count, sorted=True)
    weights = tf.gather(mask, indices, batch_dims=1)
    return indices, weights


@keras.saving.register_keras_serializable(package="uniter_tf")
class UniterPretrainingModel(keras.Model):
    """The backbone with the four pretraining heads (official ``UniterForPretraining``).

    Use it through :meth:`compute_task_loss` (what the trainer calls) or ``model(batch, task=...)``
    (all outputs). Tasks: ``"mlm"``, ``"mrfr"``, ``"mrc"``, ``"mrckl"``, ``"itm"`` (ITM includes the
    WRA/optimal-transport loss when ``config.itm_ot_lambda > 0`` and ``use_ot``).

    Batch dict = the backbone inputs (``token_ids``, ``text_mask``, ``region_features``,
    ``region_positions``, ``region_mask``) plus, per task:

    * ``mlm``: ``mlm_labels [B, T]`` int, the original id at masked positions and -1 elsewhere (with
      ``token_ids`` already masked). Alternatively the padded form ``mlm_positions [B, K]`` int,
      ``mlm_label_ids [B, K]`` int and ``mlm_weights [B, K]`` float (1 on real entries).
    * ``mrfr``: ``masked_regions [B, N]`` bool and ``region_feature_targets [B, N, D]`` float (the
      unmasked features). Without ``region_feature_targets`` the targets are ``region_features``:
      this is right when the pipeline leaves masked rows unzeroed, which it may, because the backbone
      replaces masked rows by the mask embedding itself.
    * ``mrc`` / ``mrckl``: ``masked_regions [B, N]`` and ``soft_labels [B, N, C]`` (detector class
      distributions, class 0 = background).
    * ``itm``: ``itm_labels [B]`` int, 1 = matched.

    Heads run only on masked positions, gathered with fixed-shape indices
    (:func:`first_masked_indices`): give ``max_masked_tokens`` / ``max_masked_regions`` to make
    every shape static for ``jit_compile=True`` (masked items past the cap are ignored); leave them
    ``None`` for exact official behaviour with a data-dependent K. Everything else is
    ``tf.function``-safe.

    Args:
        backbone: a :class:`~uniter_tf.models.backbone.UniterBackbone` (injected, so a pretrained or
            converted one can be used).
        max_masked_tokens: static K for MLM, or ``None``.
        max_masked_regions: static K for MRFR/MRC, or ``None``.
        use_ot: add the WRA loss to ITM (with weight ``config.itm_ot_lambda``).
        **kwargs: passed to ``keras.Model``.
    """

    def __init__(self, backbone: UniterBackbone, max_masked_tokens: Optional[int] = None,
                 max_masked_regions: Optional[int] = None, use_ot: bool = True, **kwargs):
        kwargs.setdefault("name", "uniter_pretraining")
        # The heads compute in the backbone's precision unless told otherwise (keras-hub task models do the same).
        kwargs.setdefault("dtype", backbone.dtype_policy)
        super().__init__(**kwargs)
        self.backbone = backbone
        self.max_masked_tokens = max_masked_tokens
        self.max_masked_regions = max_masked_regions
        self.use_ot = use_ot
        config: UniterConfig = backbone.config
        self.config = config
        common = dict(initializer_range=config.initializer_range, layer_norm_epsilon=config.layer_norm_epsilon,
                      dtype=self.dtype_policy)
        self.mlm_head = MlmHead(config.hidden_size, config.vocab_size, name="mlm_head", **common)
        self.mrfr_head = MrfrHead(config.hidden_size, config.region_feature_dim, name="mrfr_head", **common)
        self.mrc_head = MrcHead(config.hidden_size, config.num_soft_labels, name="mrc_head", **common)
        self.itm_head = ItmHead(config.hidden_size, config.initializer_range, name="itm_head", dtype=self.dtype_policy)
        self.build()

    def build(self, input_shape=None):
        for head in (self.mlm_head, self.mrfr_head, self.mrc_head, self.itm_head):
            if not head.built:
                head.build()
        self.built = True

    # ----------------------------------------------------------------------------------------------
    @staticmethod
    def _require(batch: Mapping[str, tf.Tensor], task: str, *names: str) -> None:
        missing = [name for name in names if batch.get(name) is None]
        if missing:
            raise ValueError(f"the {task!r} batch needs {missing} (received keys {sorted(batch)})")

    def validate_task_inputs(self, task: str, batch: Mapping[str, tf.Tensor]) -> None:
        """Checks the static shapes of the task keys against the backbone inputs and the config.

        Raises:
            ValueError: naming the key, the expected shape and the received shape.
        """
        def dims(name):
            value = batch.get(name)
            return None if value is None else tuple(value.shape)

        token_shape, region_shape = dims("token_ids"), dims("region_features")
        batch_size = (token_shape or region_shape or (None,))[0]
        text_length = token_shape[1] if token_shape and len(token_shape) > 1 else None
        num_regions = region_shape[1] if region_shape and len(region_shape) > 1 else None
        expectations = {
                "mlm_labels": (("B", batch_size), ("T", text_length)),
                "masked_regions": (("B", batch_size), ("N", num_regions)),
                "region_feature_targets": (("B", batch_size), ("N", num_regions),
                                           ("D", self.config.region_feature_dim)),
                "soft_labels": (("B", batch_size), ("N", num_regions), ("C", self.config.num_soft_labels)),
                "itm_labels": (("B", batch_size),),
                "mlm_positions": (("B", batch_size), ("K", None)),
                "mlm_label_ids": (("B", batch_size), ("K", None)),
                "mlm_weights": (("B", batch_size), ("K", None)),
        }
        for name, expected in expectations.items():
            shape = dims(name)
            if shape is None:
                continue
            expected_text = "[" + ", ".join(label if size is None else str(size) for label, size in expected) + "]"
            received_text = "[" + ", ".join("?" if dim is None else str(dim) for dim in shape) + "]"
            mismatch = len(shape) != len(expected) or any(
                    size is not None and dim is not None and dim != size for dim, (_, size) in zip(shape, expected))
            if mismatch:
                raise ValueError(f"the {task!r} batch input {name!r}: expected shape {expected_text}, "
                                 f"received {received_text}")

    def _mlm(self, batch, encoded) -> Dict[str, tf.Tensor]:
        if batch.get("mlm_positions") is not None:
            self._require(batch, "mlm", "mlm_label_ids", "mlm_weights")
            positions = tf.cast(batch["mlm_positions"], tf.int32)
            labels = tf.cast(batch["mlm_label_ids"], tf.int32)
            weights = tf.cast(batch["mlm_weights"], tf.float32)
        else:
            self._require(batch, "mlm", "mlm_labels")
            label_grid = tf.cast(batch["mlm_labels"], tf.int32)
            positions, weights = first_masked_indices(label_grid >= 0, self.max_masked_tokens)
            labels = tf.gather(label_grid, positions, batch_dims=1)
        labels = tf.where(weights > 0, labels, -1)
        hidden = tf.gather(encoded["sequence_output"], positions, batch_dims=1)
        logits = self.mlm_head(hidden, self.backbone.word_embedding_matrix)
        token_losses = losses.mlm_token_losses(logits, labels)
        return {
                "mlm_logits": logits,
                "mlm_labels": labels,
                "mlm_positions": positions,
                "mlm_weights": weights,
                "mlm_token_losses": token_losses,
                "loss": losses.weighted_mean(token_losses, weights),
                "mlm_accuracy": losses.mlm_accuracy(logits, labels, weights),
        }

    def _masked_region_hidden(self, batch, encoded, task):
        self._require(batch, task, "masked_regions")
        region_indices, weights = first_masked_indices(batch["masked_regions"], self.max_masked_regions)
        joint_positions = encoded["text_lengths"][:, tf.newaxis] + region_indices
        hidden = tf.gather(encoded["sequence_output"], joint_positions, batch_dims=1)
        return region_indices, weights, hidden

    def _mrfr(self, batch, encoded) -> Dict[str, tf.Tensor]:
        region_indices, weights, hidden = self._masked_region_hidden(batch, encoded, "mrfr")
        targets = batch.get("region_feature_targets")
        if targets is None:
            targets = batch["region_features"]
        targets = tf.gather(self.backbone.region_embeddings.standardize(targets), region_indices, batch_dims=1)
        predicted = self.mrfr_head(hidden, self.backbone.region_projection_kernel)
        elementwise = losses.mrfr_elementwise_losses(predicted, targets)
        return {
                "mrfr_predictions": predicted,
                "mrfr_targets": targets,
                "mrfr_region_indices": region_indices,
                "mrfr_weights": weights,
                "mrfr_elementwise_losses": elementwise,
                "loss": losses.weighted_mean(tf.reduce_mean(elementwise, axis=-1), weights),
        }

    def _mrc(self, batch, encoded, task) -> Dict[str, tf.Tensor]:
        self._require(batch, task, "soft_labels")
        region_indices, weights, hidden = self._masked_region_hidden(batch, encoded, task)
        soft_labels = tf.gather(tf.cast(batch["soft_labels"], tf.float32), region_indices, batch_dims=1)
        logits = self.mrc_head(hidden)
        outputs = {
                "mrc_logits": logits,
                "mrc_soft_labels": soft_labels,
                "mrc_region_indices": region_indices,
                "mrc_weights": weights,
                "mrc_accuracy": losses.mrc_accuracy(logits, soft_labels, weights),
        }
        if task == "mrckl":
            elementwise = losses.mrc_kl_elementwise_losses(logits, soft_labels)
            outputs["mrckl_elementwise_losses"] = elementwise
            outputs["loss"] = losses.weighted_mean(tf.reduce_mean(elementwise, axis=-1), weights)
        else:
            outputs["loss"] = losses.mrc_loss(logits, soft_labels, weights)
        return outputs

    def ot_embeddings(self, batch, encoded) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        """Undoes the compact layout for WRA (the official ``ot_scatter``).

        Returns:
            ``(text [B, T, H], regions [B, N, H], text_padding [B, T], region_padding [B, N])``, with
            padded rows zeroed.
        """
        sequence = encoded["sequence_output"]
        text_mask = tf.cast(batch["text_mask"], tf.bool)
        region_mask = tf.cast(batch["region_mask"], tf.bool)
        text_width = tf.shape(text_mask)[1]
        region_width = tf.shape(region_mask)[1]
        text = sequence[:, :text_width] * tf.cast(text_mask, sequence.dtype)[:, :, tf.newaxis]
        region_positions = encoded["text_lengths"][:, tf.newaxis] + tf.range(region_width)[tf.newaxis, :]
        region_positions = tf.minimum(region_positions, tf.shape(sequence)[1] - 1)
        regions = tf.gather(sequence, region_positions, batch_dims=1)
        regions = regions * tf.cast(region_mask, sequence.dtype)[:, :, tf.newaxis]
        return text, regions, tf.logical_not(text_mask), tf.logical_not(region_mask)

    def _itm(self, batch, encoded) -> Dict[str, tf.Tensor]:
        self._require(batch, "itm", "itm_labels")
        labels = tf.cast(batch["itm_labels"], tf.int32)
        logits = self.itm_head(encoded["pooled_output"])
        example_losses = losses.itm_example_losses(logits, labels)
        ce_loss = tf.reduce_mean(example_losses)
        outputs = {
                "itm_logits": logits,
                "itm_example_losses": example_losses,
                "itm_ce_loss": ce_loss,
                "itm_accuracy": losses.itm_accuracy(logits, labels),
                "loss": ce_loss,
        }
        if self.use_ot and self.config.itm_ot_lambda > 0:
            text, regions, text_padding, region_padding = self.ot_embeddings(batch, encoded)
            distance, cost, plan = optimal_transport_distance(
                    text, regions, text_padding, region_padding, beta=self.config.ot_beta,
                    iterations=self.config.ot_iterations, inner_iterations=self.config.ot_inner_iterations)
            wra_loss = losses.ot_loss(distance, labels)
            positive = tf.cast(tf.equal(labels, 1), tf.float32)
            outputs.update({
                    "ot_distance": distance,
                    "ot_cost": cost,
                    "ot_plan": plan,
                    "ot_text_embeddings": text,
                    "ot_region_embeddings": regions,
                    "ot_loss": wra_loss,
                    "ot_positive_mean": losses.weighted_mean(distance, positive),
                    "ot_negative_mean": losses.weighted_mean(distance, 1.0 - positive),
                    "loss": ce_loss + self.config.itm_ot_lambda * wra_loss,
            })
        return outputs

    # ----------------------------------------------------------------------------------------------
    def call(self, batch: Mapping[str, tf.Tensor], task: str = "itm", training: Optional[bool] = None,
             output_hidden_states: bool = False) -> Dict[str, tf.Tensor]:
        """Runs the backbone and the head of ``task``.

        Args:
            batch: the task batch (see the class docstring).
            task: one of :data:`TASKS`.
            training: enables dropout.
            output_hidden_states: also return the backbone's hidden states.

        Returns:
            A dict with ``loss`` (scalar float32), the task's predictions in the padded ``[B, K, …]``
            layout with their ``*_weights``, per-item losses, metrics, and the backbone's
            ``sequence_output`` / ``pooled_output`` / ``joint_mask``.
        """
        if task not in TASKS:
            raise ValueError(f"unknown pretraining task {task!r}; expected one of {TASKS}")
        self.validate_task_inputs(task, batch)
        backbone_inputs = {name: batch[name] for name in ("token_ids", "text_mask", "region_features",
                                                          "region_positions", "region_mask", "token_type_ids",
                                                          "region_type_ids") if batch.get(name) is not None}
        if task in ("mrfr", "mrc", "mrckl"):
            self._require(batch, task, "masked_regions")
            backbone_inputs["masked_regions"] = batch["masked_regions"]
        encoded = self.backbone(backbone_inputs, training=training, output_hidden_states=output_hidden_states)
        if task == "mlm":
            outputs = self._mlm(batch, encoded)
        elif task == "mrfr":
            outputs = self._mrfr(batch, encoded)
        elif task in ("mrc", "mrckl"):
            outputs = self._mrc(batch, encoded, task)
        else:
            outputs = self._itm(batch, encoded)
        outputs.update({key: value for key, value in encoded.items() if key not in outputs})
        return outputs

    def compute_task_loss(self, task: str, batch: Mapping[str, tf.Tensor],
                          training: bool = False) -> Tuple[tf.Tensor, Dict[str, tf.Tensor]]:
        """The trainer's entry point: loss and scalar metrics of one task batch.

        Call it inside ``tf.GradientTape`` (and ``tf.function``; one trace per task). The loss uses the
        official reduction of the task (MLM: mean over masked tokens; MRFR: mean over masked regions
        and feature dims; MRC-kl: mean over regions and classes; ITM: mean CE + λ·signed OT over the
        batch).

        Args:
            task: one of ``"mlm"``, ``"mrfr"``, ``"mrc"``, ``"mrckl"``, ``"itm"``.
            batch: the task batch (class docstring).
            training: enables dropout.

        Returns:
            ``(loss, metrics)``: the scalar float32 loss and a dict of scalar float32 metrics, e.g.
            ``{"mlm_loss", "mlm_accuracy"}``, ``{"itm_loss", "itm_ce_loss", "itm_accuracy", "ot_loss",
            "ot_positive_mean", "ot_negative_mean"}``.
        """
        outputs = self(batch, task=task, training=training)
        loss = outputs["loss"]
        metrics = {f"{task}_loss": loss}
        for key in ("mlm_accuracy", "mrc_accuracy", "itm_accuracy", "itm_ce_loss", "ot_loss", "ot_positive_mean",
                    "ot_negative_mean"):
            if key in outputs:
                name = key.replace("mrc_", f"{task}_") if key.startswith("mrc_") else key
                metrics[name] = outputs[key]
        return loss, metrics

    def get_config(self):
        config = super().get_config()
        config.update({
                "backbone": keras.saving.serialize_keras_object(self.backbone),
                "max_masked_tokens": self.max_masked_tokens,
                "max_masked_regions": self.max_masked_regions,
                "use_ot": self.use_ot,
        })
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)
