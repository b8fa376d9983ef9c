"""Writes a UNITER SavedModel with named serving signatures via ``keras.export.ExportArchive``.

Signatures (see docs/serving.md for every input and output):

* ``serving_default``: ``text [B]`` strings (tokenised in-graph with tensorflow-text),
  ``region_features [B, N, D]``, ``region_boxes [B, N, 4]`` pixels, ``image_size [B, 2]``
  (height, width), ``num_regions [B]``;
* ``score_positions``: the same with ``region_positions [B, N, 7]`` instead of boxes and size;
* ``score_tensors``: the backbone inputs (pre-tokenised ids and masks);
* ``serve_examples``: ``examples [B]`` serialized canonical ``tf.Example`` records;
* ``tokenize``: ``text [B]`` -> ids, mask and vocabulary entries.

The scoring signatures answer ``itm_score [B]`` (P(match)), ``itm_logits [B, 2]`` and
``pooled_output [B, H]``, plus ``task_logits`` / ``answers`` / ``answer_scores`` when a task head is
given; a two-image task (an ``image_pair`` declaration: NLVR2) gets the pair signatures of
:mod:`uniter_tf.export.pair_signatures` (the right image's inputs with the suffix ``_2``, outputs
``p_true`` / ``label`` / ``task_logits`` / ``labels`` / ``label_scores``). A run with a retrieval first
stage adds ``embed_text`` / ``embed_image`` (:mod:`uniter_tf.export.embedding_signatures`). The vocabulary and the
answer list are SavedModel assets; ``assets.extra`` holds TF Serving warm-up requests and
``uniter_export.json`` (the limits and buckets, for clients).

Every file is written, listed and moved through ``tf.io.gfile``, so the base path may be on any
TensorFlow filesystem (``gs://``, ``ram://``, ...), not only the local disk.
"""

from __future__ import annotations

import json
import os
import posixpath
import uuid
from typing import Dict, Optional

import numpy as np

from uniter_tf.export.signatures import (SCORE_POSITIONS, SCORE_TENSORS, SERVE_EXAMPLES, SERVING_DEFAULT, TOKENIZE,
                                         ExportOptions, ServingGraph)
# Two-image tasks (an image_pair declaration) get the pair signatures (uniter_tf/export/pair_signatures.py).
from uniter_tf.export.pair_signatures import PairServingGraph, is_image_pair
# Multiple-choice tasks (a multiple_choice declaration: VCR) get the choice signatures (choice_signatures.py).
from uniter_tf.export.choice_signatures import ChoiceServingGraph, is_multiple_choice
from uniter_tf.export.task_heads import TaskHeadExport
# A run with a retrieval first stage gets embed_text / embed_image (embedding_signatures.py).
from uniter_tf.export.embedding_signatures import EmbeddingSignatures

EXPORT_METADATA_FILE = "uniter_export.json"
WARMUP_FILE = "tf_serving_warmup_requests"
VOCAB_ASSET = "vocab.txt"
LABELS_ASSET = "answers.txt"


def next_version(base_path: str) -> int:
    """One more than the largest numeric version under ``base_path`` (1 when there is none)."""
    import tensorflow as tf

    if not tf.io.gfile.isdir(base_path):
        return 1
    # Object stores list sub-directories with a trailing slash.
    names = (name.rstrip("/") for name in tf.io.gfile.listdir(base_path))
    versions = [int(name) for name in names if name.isdigit()]
    return max(versions, default=0) + 1


def _is_local(path: str) -> bool:
    """Whether ``path`` is on the local disk (no ``scheme://`` other than ``file://``)."""
    return "://" not in path or path.startswith("file://")


def _parent(path: str) -> str:
    """The directory holding ``path``; local paths are made absolute, ``scheme://`` paths kept as they are."""
    if _is_local(path):
        return os.path.dirname(os.path.abspath(path))
    return posixpath.dirname(path.rstrip("/"))


def _basename(path: str) -> str:
    return posixpath.basename(path.rstrip("/"))


def _move_directory(source: str, target: str) -> None:
    """Moves the directory ``source`` to ``target`` (which must not exist).

    On the local disk this is one ``rename`` (atomic: a polling server sees all of the SavedModel or
    none). Other filesystems have no atomic directory rename (``ram://`` renames only the directory's
    own entry, object stores copy object by object), so the files are copied with ``saved_model.pb``
    last, as a loader looks for it first, and the source is then deleted.
    """
    import tensorflow as tf

    if _is_local(source) and _is_local(target):
        tf.io.gfile.rename(source, target)
        return
    source = source.rstrip("/")
    last = []
    for directory, _, files in tf.io.gfile.walk(source):
        relative = directory.rstrip("/")[len(source):].lstrip("/")
        destination = posixpath.join(target, relative) if relative else target
        tf.io.gfile.makedirs(destination)
        for name in files:
            pair = (posixpath.join(directory, name), posixpath.join(destination, name))
            if not tf.io.gfile.exists(pair[0]):
                continue  # a phantom entry (ram:// lists "assets.extra/x" under "assets" as ".extra")
            if not relative and name == "saved_model.pb":
                last.append(pair)
            else:
                tf.io.gfile.copy(*pair, overwrite=False)
    for pair in last:
        tf.io.gfile.copy(*pair, overwrite=False)
    _remove_tree(source)


def _remove_tree(path: str) -> None:
    """Deletes the directory ``path`` and everything under it.

    ``tf.io.gfile.rmtree`` is used on the local disk; elsewhere the tree is emptied bottom-up first,
    because ``ram://``'s recursive delete leaves a directory holding files in place, and its listings
    hold phantom entries (a sibling ``assets.extra/x`` appears in ``assets`` as ``.extra``).
    """
    import tensorflow as tf

    if not _is_local(path):
        for directory, _, files in tf.io.gfile.walk(path, topdown=False):
            for name in files:
                if tf.io.gfile.exists(posixpath.join(directory, name)):  # ram:// lists phantom entries
                    tf.io.gfile.remove(posixpath.join(directory, name))
            if tf.io.gfile.exists(directory):
                try:
                    tf.io.gfile.rmtree(directory)  # now without files
                except tf.errors.NotFoundError:
                    # ram:// fails on the phantom entries it lists; its directories are plain entries, or
                    # exist only as the prefix of others (then nothing is left to delete).
                    try:
                        tf.io.gfile.remove(directory)
                    except tf.errors.NotFoundError:
                        pass
    elif tf.io.gfile.exists(path):
        tf.io.gfile.rmtree(path)


def _text_file_table(path: str, key_is_line_number: bool = True):
    import tensorflow as tf

    initializer = tf.lookup.TextFileInitializer(
            path, key_dtype=tf.int64, key_index=tf.lookup.TextFileIndex.LINE_NUMBER,
            value_dtype=tf.string, value_index=tf.lookup.TextFileIndex.WHOLE_LINE)
    return tf.lookup.StaticHashTable(initializer, default_value="")


def export_uniter(output_dir: str, backbone, itm_head, preprocessor=None, task: Optional[TaskHeadExport] = None,
                  options: Optional[ExportOptions] = None, version: Optional[int] = None,
                  record_ops: bool = False, first_stage=None, before_publish=None) -> str:
    """Exports a UNITER model as a servable SavedModel version ``output_dir/<version>``.

    Args:
        output_dir: the model's base path; the export goes to ``output_dir/<version>``.
        backbone: the built :class:`~uniter_tf.models.backbone.UniterBackbone`.
        itm_head: the built ITM head (pooled output -> ``[B, 2]`` logits).
        preprocessor: a :class:`~uniter_tf.tokenization.UniterPreprocessor`; by default the vendored
            cased vocabulary with ``options.max_text_length`` and ``options.text_buckets``.
        task: an optional fine-tuned task head (:meth:`TaskHeadExport.from_task`).
        options: limits and buckets.
        version: the version number; by default one more than the newest under ``output_dir``.
        record_ops: list the ops outside core TensorFlow in the metadata (``non_core_ops``; runs a
            subprocess, see :mod:`uniter_tf.export.op_inventory`).
        first_stage: a retrieval :class:`~uniter_tf.retrieval.first_stage.FirstStage`: adds the ``embed_text``
            / ``embed_image`` signatures (:mod:`uniter_tf.export.embedding_signatures`).
        before_publish: ``(staged SavedModel directory) -> None``, run after everything else is written and
            before the version is moved into place (``uniter export --index`` writes the retrieval assets).

    Returns:
        The path of the written version.

    Raises:
        FileExistsError: when the version already exists.
        ValueError: when the tokenizer's vocabulary does not fit the model.
    """
    import tensorflow as tf

    version = next_version(output_dir) if version is None else int(version)
    target = posixpath.join(output_dir, str(version))
    if tf.io.gfile.exists(target):
        raise FileExistsError(f"version {version} already exists at {target}; pick another --version")
    return write_saved_model(target, backbone, itm_head, preprocessor=preprocessor, task=task, options=options,
                             record_ops=record_ops, first_stage=first_stage, before_publish=before_publish)


def write_saved_model(target: str, backbone, itm_head, preprocessor=None, task: Optional[TaskHeadExport] = None,
                      options: Optional[ExportOptions] = None, record_ops: bool = False, first_stage=None,
                      before_publish=None) -> str:
    """Writes the SavedModel exactly at ``target`` (what a TFX Trainer's ``serving_model_dir`` wants).

    The SavedModel is written beside the target and moved into place (:func:`_move_directory`: one
    atomic rename on the local disk, so a polling server never sees half of it). Arguments as
    :func:`export_uniter`; ``target`` may be on any ``tf.io.gfile`` filesystem.

    Returns:
        ``target``.

    Raises:
        FileExistsError: ``target`` exists and is not an empty directory.
    """
    import keras
    import tensorflow as tf

    from uniter_tf.tokenization import UniterPreprocessor, check_vocab_size

    options = options or ExportOptions()
    config = backbone.config
    if preprocessor is None:
        preprocessor = UniterPreprocessor(sequence_length=options.max_text_length,
                                          bucket_boundaries=list(options.text_buckets))
    # A multiple-choice task's word table also has its object-reference rows after the vocabulary.
    reference_ids = int(task.outputs.num_reference_ids) if is_multiple_choice(task) else 0
    check_vocab_size(preprocessor.tokenizer.vocab_size + reference_ids, config.vocab_size,
                     source="the tokenizer's vocabulary" + (f" + {reference_ids} reference ids" if reference_ids else ""))
    if tf.io.gfile.exists(target) and (not tf.io.gfile.isdir(target) or tf.io.gfile.listdir(target)):
        raise FileExistsError(f"the export target {target} already exists and is not an empty directory")
    parent = _parent(target)
    tf.io.gfile.makedirs(parent)

    # A hidden sibling of the target (TF Serving only loads numeric version folders), unique per call.
    staging_root = posixpath.join(parent, f".export-{_basename(target)}-{uuid.uuid4().hex[:12]}")
    tf.io.gfile.makedirs(staging_root)
    try:
        asset_dir = posixpath.join(staging_root, "source_assets")
        tf.io.gfile.makedirs(asset_dir)
        vocab_path = posixpath.join(asset_dir, VOCAB_ASSET)
        with tf.io.gfile.GFile(vocab_path, "w") as handle:
            handle.write("\n".join(preprocessor.tokenizer.vocabulary) + "\n")
        tables = tf.Module(name="serving_tables")
        tables.vocab = _text_file_table(vocab_path)
        label_table = None
        if task is not None and task.labels is not None:
            labels_path = posixpath.join(asset_dir, LABELS_ASSET)
            with tf.io.gfile.GFile(labels_path, "w") as handle:
                handle.write("\n".join(task.labels) + "\n")
            tables.labels = label_table = _text_file_table(labels_path)

        graph_class = (PairServingGraph if is_image_pair(task)
                       else ChoiceServingGraph if is_multiple_choice(task) else ServingGraph)
        graph = graph_class(backbone, itm_head, preprocessor, options, task=task, label_table=label_table,
                            vocab_table=tables.vocab)
        archive = keras.export.ExportArchive()
        for resource in (backbone, itm_head, preprocessor, preprocessor.tokenizer, tables):
            archive.track(resource)
        if task is not None:
            archive.track(task.head)
        functions, signature_specs = graph.functions(), dict(graph.input_signatures())
        embeddings = None
        if first_stage is not None:
            embeddings = EmbeddingSignatures(first_stage, graph)
            for resource in embeddings.resources():
                archive.track(resource)
            functions.update(embeddings.functions())
            signature_specs.update(embeddings.input_signatures())
        for name, specs in signature_specs.items():
            archive.add_endpoint(name=name, fn=functions[name], input_signature=list(specs))
        saved_model_dir = posixpath.join(staging_root, "saved_model")
        archive.write_out(saved_model_dir, verbose=False)

        extra = posixpath.join(saved_model_dir, "assets.extra")
        tf.io.gfile.makedirs(extra)
        metadata = {
                "signatures": {name: [spec.name for spec in specs] for name, specs in signature_specs.items()},
                "region_feature_dim": int(config.region_feature_dim),
                "hidden_size": int(config.hidden_size),
                "max_regions": options.max_regions,
                "region_buckets": list(options.region_buckets),
                "max_text_length": graph.max_text_length,
                "text_buckets": list(options.text_buckets),
                "task": None if task is None else {
                        "name": task.name, "num_labels": None if task.labels is None else len(task.labels),
                        "top_k": graph.top_k, "activation": task.outputs.activation,
                        "outputs": {"logits": task.outputs.logits_output, "labels": task.outputs.labels_output,
                                    "scores": task.outputs.scores_output},
                        "region_choice": bool(getattr(task.outputs, "region_choice", False)),
                        "image_pair": is_image_pair(task),
                        "multiple_choice": is_multiple_choice(task)},
                "model_config": config.to_dict(),
                "first_stage": None if embeddings is None else embeddings.metadata(),
        }
        if record_ops:
            from uniter_tf.export.op_inventory import non_core_ops

            metadata["non_core_ops"] = non_core_ops(saved_model_dir)
        with tf.io.gfile.GFile(posixpath.join(extra, EXPORT_METADATA_FILE), "w") as handle:
            handle.write(json.dumps(metadata, indent=2, sort_keys=True))
        if options.warmup:
            write_warmup_requests(posixpath.join(extra, WARMUP_FILE), int(config.region_feature_dim),
                                  image_pair=is_image_pair(task),
                                  num_choices=int(task.outputs.num_choices) if is_multiple_choice(task) else 0)
        if before_publish is not None:
            before_publish(saved_model_dir)
        if tf.io.gfile.isdir(target):
            _remove_tree(target)  # empty (checked above): TFX may create serving_model_dir beforehand
        _move_directory(saved_model_dir, target)
    finally:
        if tf.io.gfile.exists(staging_root):
            _remove_tree(staging_root)
    return target


def read_metadata(saved_model_dir: str) -> dict:
    """The ``assets.extra/uniter_export.json`` of an export (any ``tf.io.gfile`` path)."""
    import tensorflow as tf

    with tf.io.gfile.GFile(posixpath.join(saved_model_dir, "assets.extra", EXPORT_METADATA_FILE), "r") as handle:
        return json.load(handle)


def example_inputs(feature_dim: int, batch_size: int = 1, num_regions: int = 4, seed: int = 0,
                   captions=None) -> Dict[str, Dict[str, np.ndarray]]:
    """Small valid inputs for every signature (warm-up requests, smoke tests)."""
    from uniter_tf.data import schema

    rng = np.random.default_rng(seed)
    captions = list(captions or ["a dog runs on the grass"] * batch_size)
    features = rng.standard_normal((batch_size, num_regions, feature_dim)).astype(np.float32)
    corners = np.sort(rng.uniform(0, 1, (batch_size, num_regions, 2, 2)), axis=2)
    boxes = np.stack([corners[..., 0, 0], corners[..., 0, 1], corners[..., 1, 0], corners[..., 1, 1]], axis=-1)
    boxes = (boxes * np.array([640, 480, 640, 480], np.float32)).astype(np.float32)
    image_size = np.tile(np.array([[480, 640]], np.float32), (batch_size, 1))
    widths = (boxes[..., 2] - boxes[..., 0]) / 640
    heights = (boxes[..., 3] - boxes[..., 1]) / 480
    positions = np.concatenate([boxes / np.array([640, 480, 640, 480], np.float32), widths[..., None],
                                heights[..., None], (widths * heights)[..., None]], axis=-1).astype(np.float32)
    text = np.array([caption.encode("utf-8") for caption in captions], dtype=object)
    num_regions_array = np.full((batch_size,), num_regions, np.int32)
    token_ids = np.array([[101, 170, 3676, 102]] * batch_size, np.int32)
    examples = np.array([schema.make_example(
            image_id=f"image-{index}", example_id=f"example-{index}", text=captions[index],
            region_features=features[index], region_boxes=boxes[index], image_height=480, image_width=640,
            ).SerializeToString() for index in range(batch_size)], dtype=object)
    return {
            SERVING_DEFAULT: {"text": text, "region_features": features, "region_boxes": boxes,
                              "image_size": image_size, "num_regions": num_regions_array},
            SCORE_POSITIONS: {"text": text, "region_features": features, "region_positions": positions,
                              "num_regions": num_regions_array},
            SCORE_TENSORS: {"token_ids": token_ids, "text_mask": np.ones_like(token_ids),
                            "region_features": features, "region_positions": positions,
                            "region_mask": np.ones((batch_size, num_regions), np.int32)},
            SERVE_EXAMPLES: {"examples": examples},
            TOKENIZE: {"text": text},
    }


def write_warmup_requests(path: str, feature_dim: int, image_pair: bool = False, num_choices: int = 0) -> None:
    """Writes one ``PredictionLog`` per signature in TF Serving's warm-up format (with ``image_pair``,
    requests of the two-image signatures; with ``num_choices``, of the multiple-choice signatures)."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    from uniter_tf.export.pair_signatures import pair_example_inputs

    from uniter_tf.export.choice_signatures import choice_example_inputs

    requests = (pair_example_inputs(feature_dim) if image_pair
                else choice_example_inputs(feature_dim, num_choices) if num_choices else example_inputs(feature_dim))
    with tf.io.TFRecordWriter(path) as writer:
        for signature_name, inputs in requests.items():
            request = predict_pb2.PredictRequest()
            request.model_spec.signature_name = signature_name
            for name, array in inputs.items():
                request.inputs[name].CopyFrom(tf.make_tensor_proto(array))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
