"""Scorers for :func:`uniter_tf.evaluation.evaluate`: from an exported SavedModel or from Keras layers.

A scorer maps a list of serialized canonical records to ``{"itm_logits": [B, 2], "task_logits": [B, C]}``
numpy arrays (``task_logits`` only for a model with a task head).
"""

from __future__ import annotations

import logging
from typing import List, Optional

from uniter_tf.evaluation.evaluator import ITM_LOGITS, VQA_LOGITS, Scorer

_LOG = logging.getLogger(__name__)

#: The export's serialized-records signature (uniter_tf.export.signatures.SERVE_EXAMPLES).
PREFERRED_SIGNATURE = "serve_examples"
#: Where a TFX ``Model`` artifact keeps its SavedModel (tfx.utils.path_utils).
TFX_SERVING_SUBDIR = "Format-Serving"
#: Where a fine-tuning run's exports go (``<run>/export/<version>``).
RUN_EXPORT_SUBDIR = "export"
SAVED_MODEL_FILE = "saved_model.pb"


def _is_saved_model(path: str) -> bool:
    import tensorflow as tf

    return tf.io.gfile.exists(f"{path.rstrip('/')}/{SAVED_MODEL_FILE}")


def _latest_version(base: str) -> Optional[str]:
    import tensorflow as tf

    if not tf.io.gfile.isdir(base):
        return None
    versions: List[int] = []
    for name in tf.io.gfile.listdir(base):
        name = name.rstrip("/")
        if name.isdigit() and _is_saved_model(f"{base.rstrip('/')}/{name}"):
            versions.append(int(name))
    return f"{base.rstrip('/')}/{max(versions)}" if versions else None


def resolve_saved_model(run: str) -> str:
    """The SavedModel directory that ``run`` names.

    Accepted, in this order: a SavedModel directory; a TFX ``Model`` artifact (``run/Format-Serving``,
    what the pipeline's evaluator reads); a serving base path with numbered versions (``uniter export``
    output, TF Serving's layout: the newest version); a fine-tuning run (``run/export/<version>``).

    Raises:
        ValueError: none of these holds a ``saved_model.pb``; the message names ``run``.
    """
    import tensorflow as tf

    if not tf.io.gfile.exists(run):
        raise ValueError(f"--run {run}: no such directory")
    if _is_saved_model(run):
        return run
    candidates = [f"{run.rstrip('/')}/{TFX_SERVING_SUBDIR}"]
    for candidate in candidates:
        if _is_saved_model(candidate):
            return candidate
    for base in (run, f"{run.rstrip('/')}/{RUN_EXPORT_SUBDIR}", f"{run.rstrip('/')}/{TFX_SERVING_SUBDIR}"):
        latest = _latest_version(base)
        if latest is not None:
            return latest
    raise ValueError(f"--run {run}: no SavedModel there (looked for {SAVED_MODEL_FILE} in it, in "
                     f"{TFX_SERVING_SUBDIR}/, in numbered version folders and in {RUN_EXPORT_SUBDIR}/<version>/); "
                     f"export a training run first with `uniter export`")


def saved_model_scorer(model_dir: str, required_output: str = ITM_LOGITS) -> Scorer:
    """Loads a SavedModel (any path :func:`resolve_saved_model` accepts) and scores with its records signature.

    The signature is ``serve_examples`` when present, else any whose only input is a string tensor and
    whose outputs include ``required_output`` (``itm_logits``; ``task_logits`` for a two-image export, which
    has no ITM outputs). Long texts are truncated by the signature (its ``max_text_length``).

    Raises:
        ValueError: no SavedModel at ``model_dir``, or it has no such signature.
    """
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  pylint: disable=unused-import  (registers the tokenizer ops)

    model_dir = resolve_saved_model(model_dir)
    loaded = tf.saved_model.load(model_dir)
    # serve_examples first (the export's name for it), then any signature of the same shape.
    ordered = sorted(loaded.signatures.items(), key=lambda item: (item[0] != PREFERRED_SIGNATURE, item[0]))
    for name, function in ordered:
        _, input_specs = function.structured_input_signature
        output_names = set(function.structured_outputs)
        if (len(input_specs) == 1 and next(iter(input_specs.values())).dtype == tf.string
                and required_output in output_names):
            input_name = next(iter(input_specs))
            _LOG.info("evaluation: scoring %s with signature %r", model_dir, name)

            def scorer(serialized, function=function, input_name=input_name):
                outputs = function(**{input_name: tf.constant(list(serialized), dtype=tf.string)})
                return {key: value.numpy() for key, value in outputs.items()}

            scorer.loaded_model = loaded  # keeps the variables alive as long as the scorer
            scorer.model_dir = model_dir
            return scorer
    raise ValueError(f"the SavedModel at {model_dir} has no signature that takes serialized records and "
                     f"returns {required_output!r}; signatures: {sorted(loaded.signatures)}")


def keras_scorer(backbone, itm_head, model_config, task_head=None, max_text_length: int = 60) -> Scorer:
    """A scorer over in-memory Keras layers (the trainer's periodic evaluation; no export needed).

    Args:
        backbone: the UNITER backbone (input dict → dict with ``pooled_output``).
        itm_head: the ITM head (pooled output → ``[B, 2]``).
        model_config: the backbone's :class:`~uniter_tf.config.UniterConfig` (feature dim, special ids).
        task_head: optional task head (the backbone's output dict → ``[B, C]``), e.g. ``TaskModel.head``.
        max_text_length: longer texts are truncated to this many WordPieces (never dropped), as the
            export's ``serve_examples`` does.

    Returns:
        The scorer; records are parsed with :func:`uniter_tf.data.schema.parse_and_decode` and packed by
        :func:`uniter_tf.data.finetune_inputs.example_to_model_inputs`, exactly as fine-tuning packs them
        (tests/test_evaluation_library.py compares the logits).
    """
    import tensorflow as tf

    from uniter_tf.data import finetune_inputs, schema

    feature_dim = int(model_config.region_feature_dim)
    ragged = {
            "token_ids": tf.RaggedTensorSpec([None], tf.int32, ragged_rank=0),
            "text_mask": tf.RaggedTensorSpec([None], tf.int32, ragged_rank=0),
            "region_features": tf.RaggedTensorSpec([None, feature_dim], tf.float32, ragged_rank=0),
            "region_positions": tf.RaggedTensorSpec([None, 7], tf.float32, ragged_rank=0),
            "region_mask": tf.RaggedTensorSpec([None], tf.int32, ragged_rank=0),
    }

    def pack_one(serialized):
        parsed = schema.parse_and_decode(serialized, feature_dim)
        inputs = finetune_inputs.example_to_model_inputs(parsed, model_config, max_text_length=max_text_length)
        return {key: inputs[key] for key in ragged}

    # One trace for every batch: records are parsed and packed inside the function, and the batch is
    # padded with 0 to its longest text / region count (as fine-tuning's padded_batch does).
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def score(serialized):
        packed = tf.map_fn(pack_one, serialized, fn_output_signature=ragged)
        inputs = {key: value.to_tensor() for key, value in packed.items()}
        outputs = dict(backbone(inputs, training=False))
        result = {ITM_LOGITS: itm_head(outputs["pooled_output"])}
        if task_head is not None:
            outputs.setdefault("region_mask", inputs["region_mask"])
            result[VQA_LOGITS] = task_head(outputs, training=False)
        return result

    def scorer(serialized):
        outputs = score(tf.constant(list(serialized), tf.string))
        return {key: value.numpy() for key, value in outputs.items()}

    return scorer
