"""First stage of retrieve-then-rerank (issue 13): a dual encoder trained contrastively (InfoNCE).

The cross-encoder (the retrieval task's rank score) needs one transformer pass per caption-image pair:
``n_text × n_image`` passes for a full gallery. The first stage embeds each side **alone**, so an image
gallery is embedded once and a text query costs one pass plus an inner product with every image:

* text: the UNITER backbone on ``[CLS] words [SEP]`` with no region (one zero region, masked out);
* image: the backbone on ``[CLS] [SEP]`` and the image's regions (the joint layout of the cross-encoder,
  with an empty caption);
* each side: the backbone's pooled output → its own ``Dense(embedding_dim)`` projection → L2 normalised.
  Score = inner product (cosine).

The backbone is initialised from the cross-encoder's run (LightningDOT initialises its two encoders from
UNITER too) and fine-tuned with the projections and a learnable temperature on the same training pairs:
symmetric InfoNCE with in-batch negatives (text → image and image → text cross-entropy over the batch's
similarity matrix). A batch takes ``batch_size`` **distinct** images and one random caption of each, so
no in-batch negative is a caption of the positive image.

A trained first stage is a directory (``RUN/first_stage`` by default, :func:`save_first_stage`):
``first_stage.json`` (model config, sizes, the source run, the training figures and ``model_version``, a
SHA-256 of every weight: an index records it, :mod:`uniter_tf.retrieval.index`) and a TensorFlow
checkpoint ``weights-*``. Nothing is unpickled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

#: Where :func:`train_first_stage` puts the first stage inside a run directory.
FIRST_STAGE_SUBDIR = "first_stage"
CONFIG_FILE = "first_stage.json"
WEIGHTS_PREFIX = "weights"
FORMAT = "uniter-first-stage/1"
#: ``mean``: the mean of the valid joint-sequence outputs; ``cls``: the backbone's pooled ``[CLS]`` output.
POOLINGS = ("mean", "cls")


@dataclasses.dataclass
class Gallery:
    """Caption-image records of a split, decoded once (numpy).

    Attributes:
        text_ids: the caption records' ``example_id``.
        texts: raw caption texts.
        word_ids: WordPiece ids of each caption (no ``[CLS]`` / ``[SEP]``), int32 arrays.
        text_to_image: the row in ``image_ids`` of each caption's image.
        image_ids: distinct image ids, in order of first appearance.
        region_features: ``[n_i, D]`` float32 per image; region_positions: ``[n_i, 7]`` float32 per image.
        image_parts: image id → the serialized image part of its record (what the cross-encoder pairs with
            a caption, :meth:`uniter_tf.evaluation.records.EvalRecords.serialized_image`).
        text_parts: the serialized text part of each caption record (a pair = text part + image part).
    """

    text_ids: List[str]
    texts: List[str]
    word_ids: List[np.ndarray]
    text_to_image: np.ndarray
    image_ids: List[str]
    region_features: List[np.ndarray]
    region_positions: List[np.ndarray]
    image_parts: Dict[str, bytes]
    text_parts: List[bytes] = dataclasses.field(default_factory=list)

    @property
    def num_images(self) -> int:
        return len(self.image_ids)


def read_gallery(files, feature_dim: Optional[int] = None, require_captions: bool = True) -> Gallery:
    """Reads canonical records: every caption and one image part per distinct image.

    Args:
        files: TFRecord file patterns (GZIP when ``.gz``): caption records, or the per-image region
            feature records of ``uniter extract`` (then ``require_captions=False``).
        feature_dim: if given, every image's ``feature_dim`` must equal it.
        require_captions: refuse files without caption records.

    Raises:
        ValueError: no file matches, a record cannot be decoded (named by file position and id), a feature
            size differs from ``feature_dim``, or no caption / image is found.
    """
    import tensorflow as tf

    from uniter_tf.data import schema
    from uniter_tf.evaluation import records as records_lib

    paths = records_lib.list_record_files(files)
    if not paths:
        raise ValueError(f"no record file matches {files}")
    text_ids, texts, word_ids, caption_images, text_parts = [], [], [], [], []
    image_ids: List[str] = []
    image_row: Dict[str, int] = {}
    features, positions, parts = [], [], {}
    for index, serialized in enumerate(records_lib.iter_serialized_records(paths)):
        try:
            example = tf.train.Example.FromString(serialized)
            text_part, image_part = records_lib.split_parts(example)
            image = records_lib.image_id(example).decode("utf-8", "replace")
        except Exception as error:  # a broken protobuf or a record without image_id
            raise ValueError(f"record #{index} of {files} cannot be read: {error}") from error
        if image not in image_row:
            try:
                decoded = schema.decode_example(image_part)
            except ValueError as error:
                raise ValueError(f"record #{index} (image {image!r}) of {files}: {error}") from error
            region_features = np.asarray(decoded[schema.REGION_FEATURES], np.float32)
            if feature_dim is not None and region_features.shape[-1] != feature_dim:
                raise ValueError(f"record #{index} (image {image!r}): {schema.FEATURE_DIM} is "
                                 f"{region_features.shape[-1]}, the model expects {feature_dim}")
            if region_features.shape[0] < 1:
                raise ValueError(f"record #{index} (image {image!r}) has no region")
            image_row[image] = len(image_ids)
            image_ids.append(image)
            features.append(region_features)
            positions.append(np.asarray(decoded[schema.REGION_POSITIONS], np.float32))
            parts[image] = image_part.SerializeToString()
        if records_lib.has_text(example) and records_lib.record_task(example) == records_lib.CAPTION:
            feature_map = example.features.feature
            ids = np.asarray(feature_map[schema.TOKEN_IDS].int64_list.value, np.int32)
            if ids.size == 0:
                continue
            text_ids.append(records_lib._record_name(text_part))  # pylint: disable=protected-access
            raw = feature_map[schema.TEXT].bytes_list.value if schema.TEXT in feature_map else []
            texts.append(raw[0].decode("utf-8", "replace") if raw else "")
            word_ids.append(ids)
            caption_images.append(image_row[image])
            text_parts.append(text_part.SerializeToString())
    if not image_ids:
        raise ValueError(f"the records of {files} hold no image")
    if require_captions and not text_ids:
        raise ValueError(f"the records of {files} hold no caption record")
    return Gallery(text_ids, texts, word_ids, np.asarray(caption_images, np.int64), image_ids, features, positions,
                   parts, text_parts)


def pack_texts(word_ids: Sequence[np.ndarray], model_config, max_text_length: int):
    """``(token_ids, text_mask)`` int32 ``[B, max_text_length + 2]``: ``[CLS] words [SEP]``, truncated, 0-padded.

    A fixed width keeps one trace of the embedding functions.
    """
    width = max_text_length + 2
    token_ids = np.zeros([len(word_ids), width], np.int32)
    for row, ids in enumerate(word_ids):
        ids = np.asarray(ids, np.int32)[:max_text_length]
        token_ids[row, :ids.size + 2] = np.concatenate([[model_config.cls_token_id], ids, [model_config.sep_token_id]])
    return token_ids, _mask_from_lengths(word_ids, max_text_length, width)


def _mask_from_lengths(word_ids, max_text_length: int, width: int) -> np.ndarray:
    lengths = np.asarray([min(len(ids), max_text_length) + 2 for ids in word_ids], np.int32)
    return (np.arange(width)[None, :] < lengths[:, None]).astype(np.int32)


def pack_images(features: Sequence[np.ndarray], positions: Sequence[np.ndarray], max_regions: int):
    """``(region_features [B, R, D], region_positions [B, R, 7], region_mask [B, R])``, 0-padded, cut at R."""
    dim = features[0].shape[-1]
    out_features = np.zeros([len(features), max_regions, dim], np.float32)
    out_positions = np.zeros([len(features), max_regions, 7], np.float32)
    mask = np.zeros([len(features), max_regions], np.int32)
    for row, (feature, position) in enumerate(zip(features, positions)):
        count = min(feature.shape[0], max_regions)
        out_features[row, :count] = feature[:count]
        out_positions[row, :count] = position[:count]
        mask[row, :count] = 1
    return out_features, out_positions, mask


class FirstStage:
    """The dual encoder: a UNITER backbone run on one modality at a time plus two projections.

    Args:
        backbone: a :class:`~uniter_tf.models.backbone.UniterBackbone` (trained with the projections).
        model_config: its :class:`~uniter_tf.config.UniterConfig`.
        embedding_dim: size of the unit embeddings.
        max_text_length: WordPieces kept of a text (longer ones are truncated).
        max_regions: regions kept of an image.
    """

    def __init__(self, backbone, model_config, embedding_dim: int = 256, max_text_length: int = 60,
                 max_regions: int = 100, seed: int = 0, pooling: str = "mean"):
        import keras
        import tensorflow as tf

        self.backbone = backbone
        self.model_config = model_config
        self.embedding_dim = int(embedding_dim)
        self.max_text_length = int(max_text_length)
        self.max_regions = int(max_regions)
        if pooling not in POOLINGS:
            raise ValueError(f"first stage pooling must be one of {POOLINGS}, got {pooling!r}")
        self.pooling = pooling
        hidden = model_config.hidden_size
        initializer = keras.initializers.TruncatedNormal(stddev=model_config.initializer_range, seed=seed)
        self.text_projection = keras.layers.Dense(self.embedding_dim, kernel_initializer=initializer,
                                                  name="text_projection")
        self.image_projection = keras.layers.Dense(self.embedding_dim, kernel_initializer=initializer,
                                                   name="image_projection")
        self.text_projection.build((None, hidden))
        self.image_projection.build((None, hidden))
        # CLIP's learnable temperature, log(1 / 0.07), clipped at log(100) in the loss.
        self.log_scale = tf.Variable(math.log(1 / 0.07), dtype=tf.float32, name="log_scale")
        dim = model_config.region_feature_dim
        self._embed_text = tf.function(self._text_embeddings, input_signature=[
                tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None, None], tf.int32)], reduce_retracing=True)
        self._embed_image = tf.function(self._image_embeddings, input_signature=[
                tf.TensorSpec([None, None, dim], tf.float32), tf.TensorSpec([None, None, 7], tf.float32),
                tf.TensorSpec([None, None], tf.int32)], reduce_retracing=True)

    # ------------------------------------------------------------------ the two encoders (graph code)
    def _text_embeddings(self, token_ids, text_mask, training=False):
        import tensorflow as tf

        batch = tf.shape(token_ids)[0]
        dim = self.model_config.region_feature_dim
        inputs = {"token_ids": token_ids, "text_mask": text_mask,
                  # One all-zero region, masked out: the backbone's joint layout then holds the text only.
                  "region_features": tf.zeros([batch, 1, dim]), "region_positions": tf.zeros([batch, 1, 7]),
                  "region_mask": tf.zeros([batch, 1], tf.int32)}
        return tf.math.l2_normalize(self.text_projection(self._pool(inputs, training)), axis=-1)

    def _image_embeddings(self, region_features, region_positions, region_mask, training=False):
        import tensorflow as tf

        batch = tf.shape(region_features)[0]
        empty_caption = tf.tile(tf.constant([[self.model_config.cls_token_id, self.model_config.sep_token_id]],
                                            tf.int32), [batch, 1])
        inputs = {"token_ids": empty_caption, "text_mask": tf.ones_like(empty_caption),
                  "region_features": region_features, "region_positions": region_positions,
                  "region_mask": region_mask}
        return tf.math.l2_normalize(self.image_projection(self._pool(inputs, training)), axis=-1)

    def _pool(self, inputs, training):
        import tensorflow as tf

        outputs = self.backbone(inputs, training=training)
        if self.pooling == "cls":
            return tf.cast(outputs["pooled_output"], tf.float32)
        # Mean of the valid positions of the joint sequence (words, or [CLS] [SEP] and the regions).
        mask = tf.cast(outputs["joint_mask"], tf.float32)[:, :, None]
        total = tf.reduce_sum(tf.cast(outputs["sequence_output"], tf.float32) * mask, axis=1)
        return total / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)

    # ------------------------------------------------------------------ numpy API
    def embed_word_ids(self, word_ids: Sequence[np.ndarray], batch_size: int = 128) -> np.ndarray:
        """``[n, embedding_dim]`` float32 unit text embeddings of WordPiece id lists."""
        chunks = [np.zeros([0, self.embedding_dim], np.float32)]
        for start in range(0, len(word_ids), batch_size):
            token_ids, text_mask = pack_texts(word_ids[start:start + batch_size], self.model_config,
                                              self.max_text_length)
            chunks.append(self._embed_text(token_ids, text_mask).numpy())
        return np.concatenate(chunks)

    def embed_texts(self, texts: Sequence[str], tokenizer=None) -> np.ndarray:
        """``[n, embedding_dim]`` text embeddings of raw strings (WordPiece with the bundled vocabulary).

        Raises:
            ValueError: a text is empty or has no WordPiece.
        """
        if tokenizer is None:
            from uniter_tf.tokenization import UniterTokenizer

            tokenizer = UniterTokenizer()
        for position, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"text #{position} is empty")
        word_ids = [np.asarray(ids, np.int32) for ids in tokenizer.encode(list(texts))]
        for position, ids in enumerate(word_ids):
            if ids.size == 0:
                raise ValueError(f"text #{position} ({texts[position]!r}) has no WordPiece")
        return self.embed_word_ids(word_ids)

    def embed_images(self, features: Sequence[np.ndarray], positions: Sequence[np.ndarray],
                     batch_size: int = 128) -> np.ndarray:
        """``[n, embedding_dim]`` float32 unit image embeddings of region feature / position arrays."""
        chunks = [np.zeros([0, self.embedding_dim], np.float32)]
        width = max(1, min(self.max_regions, max((feature.shape[0] for feature in features), default=1)))
        for start in range(0, len(features), batch_size):
            packed = pack_images(features[start:start + batch_size], positions[start:start + batch_size], width)
            chunks.append(self._embed_image(*packed).numpy())
        return np.concatenate(chunks)

    # ------------------------------------------------------------------ checkpointing
    def variables(self) -> list:
        """Every weight, in a fixed order (the backbone's, the projections', the temperature)."""
        return (list(self.backbone.weights) + list(self.text_projection.weights) + list(self.image_projection.weights)
                + [self.log_scale])

    def model_version(self) -> str:
        """SHA-256 (first 16 hex digits) of every weight's values: changes with any retraining."""
        digest = hashlib.sha256()
        for variable in self.variables():
            digest.update(np.ascontiguousarray(variable.numpy()).tobytes())
        return digest.hexdigest()[:16]

    def checkpoint(self):
        import tensorflow as tf

        return tf.train.Checkpoint(backbone=self.backbone, text_projection=self.text_projection,
                                   image_projection=self.image_projection, log_scale=self.log_scale)


def info_nce_loss(text_embeddings, image_embeddings, log_scale):
    """Symmetric InfoNCE: row i of each side is the positive of row i of the other; the rest of the batch are
    negatives. Returns ``(loss, text→image top-1 accuracy)``."""
    import tensorflow as tf

    scale = tf.exp(tf.minimum(log_scale, math.log(100.0)))
    logits = scale * tf.matmul(text_embeddings, image_embeddings, transpose_b=True)
    labels = tf.range(tf.shape(logits)[0])
    text_to_image = tf.keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    image_to_text = tf.keras.losses.sparse_categorical_crossentropy(labels, tf.transpose(logits), from_logits=True)
    loss = (tf.reduce_mean(text_to_image) + tf.reduce_mean(image_to_text)) / 2
    accuracy = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), labels), tf.float32))
    return loss, accuracy


def train_first_stage(run_dir: str, train_files, *, steps: int = 300, batch_size: int = 32,
                      learning_rate: float = 2e-4, embedding_dim: int = 256, seed: int = 0, pooling: str = "mean",
                      head_learning_rate_multiplier: float = 1.0,
                      output_dir: Optional[str] = None, log: Callable[[str], None] = print) -> FirstStage:
    """Trains the first stage of a retrieval (or any task) run on its training records and saves it.

    Args:
        run_dir: the cross-encoder's run directory (its backbone initialises the dual encoder).
        train_files: caption records (the pairs the cross-encoder was trained on).
        steps: updates (Adam, constant rate).
        batch_size: distinct images per batch (capped at the number of training images).
        learning_rate: Adam's rate.
        embedding_dim: size of the embeddings.
        seed: sampling and projection initialisation seed.
        pooling: ``mean`` or ``cls`` (:data:`POOLINGS`).
        head_learning_rate_multiplier: the projections' and the temperature's rate over the backbone's
            (a second Adam: Adam is invariant to gradient scale, so scaling gradients would not do).
        output_dir: where to save (default ``run_dir/first_stage``).
        log: progress lines.

    Returns:
        The trained :class:`FirstStage` (also saved).

    Raises:
        ValueError: bad arguments, fewer than 2 training images, or unreadable records.
    """
    import keras
    import tensorflow as tf

    from uniter_tf.runs import load_task_run

    if steps < 1 or batch_size < 2 or learning_rate <= 0 or embedding_dim < 1:
        raise ValueError(f"train_first_stage: steps >= 1, batch_size >= 2, learning_rate > 0 and embedding_dim "
                         f">= 1 are required (got {steps}, {batch_size}, {learning_rate}, {embedding_dim})")
    started = time.perf_counter()
    run = load_task_run(run_dir)
    max_text_length = run.max_text_length or 60
    gallery = read_gallery(train_files, feature_dim=run.model_config.region_feature_dim)
    if gallery.num_images < 2:
        raise ValueError(f"the training records {train_files} hold {gallery.num_images} image(s); InfoNCE needs >= 2")
    max_regions = max(feature.shape[0] for feature in gallery.region_features)
    stage = FirstStage(run.backbone, run.model_config, embedding_dim=embedding_dim, max_text_length=max_text_length,
                       max_regions=max_regions, seed=seed, pooling=pooling)
    backbone_optimizer = keras.optimizers.Adam(learning_rate)
    head_optimizer = keras.optimizers.Adam(learning_rate * head_learning_rate_multiplier)
    backbone_variables = [variable for variable in stage.backbone.trainable_variables]
    head_variables = (list(stage.text_projection.trainable_variables) + list(stage.image_projection.trainable_variables)
                      + [stage.log_scale])
    captions_of = [[] for _ in range(gallery.num_images)]
    for row, image in enumerate(gallery.text_to_image):
        captions_of[image].append(row)
    trainable_images = [image for image, rows in enumerate(captions_of) if rows]
    batch_size = min(batch_size, len(trainable_images))
    dim = run.model_config.region_feature_dim

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None, None], tf.int32),
                                  tf.TensorSpec([None, None, dim], tf.float32), tf.TensorSpec([None, None, 7], tf.float32),
                                  tf.TensorSpec([None, None], tf.int32)])
    def train_step(token_ids, text_mask, region_features, region_positions, region_mask):
        with tf.GradientTape() as tape:
            text = stage._text_embeddings(token_ids, text_mask, training=True)  # pylint: disable=protected-access
            image = stage._image_embeddings(region_features, region_positions, region_mask,  # pylint: disable=protected-access
                                            training=True)
            loss, accuracy = info_nce_loss(text, image, stage.log_scale)
        gradients = tape.gradient(loss, backbone_variables + head_variables)
        # The region mask embedding gets no gradient (no region is masked here): skipped, not zero-updated.
        pairs = [(g, v) for g, v in zip(gradients[:len(backbone_variables)], backbone_variables) if g is not None]
        backbone_optimizer.apply_gradients(pairs)
        head_optimizer.apply_gradients(zip(gradients[len(backbone_variables):], head_variables))
        return loss, accuracy

    rng = np.random.default_rng(seed)
    history = []
    for step in range(1, steps + 1):
        images = rng.choice(trainable_images, size=batch_size, replace=False)
        rows = [captions_of[image][rng.integers(len(captions_of[image]))] for image in images]
        token_ids, text_mask = pack_texts([gallery.word_ids[row] for row in rows], run.model_config, max_text_length)
        packed = pack_images([gallery.region_features[image] for image in images],
                             [gallery.region_positions[image] for image in images], max_regions)
        loss, accuracy = train_step(token_ids, text_mask, *packed)
        history.append((float(loss), float(accuracy)))
        if step == 1 or step % 50 == 0 or step == steps:
            recent = history[-50:]
            log(f"first stage: step {step}/{steps} InfoNCE {np.mean([h[0] for h in recent]):.3f} "
                f"in-batch text->image accuracy {np.mean([h[1] for h in recent]):.3f} (batch {batch_size})")
    training = {"steps": steps, "batch_size": batch_size, "learning_rate": learning_rate, "seed": seed,
                "pooling": pooling, "head_learning_rate_multiplier": head_learning_rate_multiplier,
                "train_files": [str(pattern) for pattern in ([train_files] if isinstance(train_files, str)
                                                            else train_files)],
                "final_loss": float(np.mean([h[0] for h in history[-20:]])),
                "final_in_batch_accuracy": float(np.mean([h[1] for h in history[-20:]])),
                "seconds": round(time.perf_counter() - started, 1)}
    save_first_stage(stage, output_dir or os.path.join(run_dir, FIRST_STAGE_SUBDIR), source_run=run_dir,
                     training=training)
    return stage


def save_first_stage(stage: FirstStage, output_dir: str, *, source_run: Optional[str] = None,
                     training: Optional[dict] = None) -> str:
    """Writes ``first_stage.json`` and the checkpoint; returns the ``model_version``."""
    import tensorflow as tf

    tf.io.gfile.makedirs(output_dir)
    stage.checkpoint().write(os.path.join(output_dir, WEIGHTS_PREFIX))
    version = stage.model_version()
    description = {"format": FORMAT, "model_version": version, "model": stage.model_config.to_dict(),
                   "embedding_dim": stage.embedding_dim, "max_text_length": stage.max_text_length,
                   "max_regions": stage.max_regions, "pooling": stage.pooling, "source_run": source_run, "training": training or {}}
    with tf.io.gfile.GFile(os.path.join(output_dir, CONFIG_FILE), "w") as handle:
        handle.write(json.dumps(description, indent=1, sort_keys=True))
    return version


def first_stage_dir(path: str) -> str:
    """``path`` itself if it holds ``first_stage.json``, else ``path/first_stage`` (a run directory)."""
    import tensorflow as tf

    if tf.io.gfile.exists(os.path.join(path, CONFIG_FILE)):
        return path
    return os.path.join(path, FIRST_STAGE_SUBDIR)


def read_first_stage_description(path: str) -> dict:
    """The ``first_stage.json`` of a first-stage directory or of a run holding one.

    Raises:
        ValueError: there is none, or it is not a first stage's description.
    """
    import tensorflow as tf

    config_path = os.path.join(first_stage_dir(path), CONFIG_FILE)
    if not tf.io.gfile.exists(config_path):
        raise ValueError(f"{path} holds no trained first stage ({config_path} is missing; train one with "
                         f"`uniter index --train-files ...` or uniter_tf.retrieval.first_stage.train_first_stage)")
    from uniter_tf.retrieval.index import read_format_json

    return read_format_json(config_path, FORMAT, "a first-stage description")


def load_first_stage(path: str) -> FirstStage:
    """Rebuilds a saved first stage (a first-stage directory or a run holding ``first_stage/``).

    Raises:
        ValueError: no first stage there, or its weights do not hash to the recorded ``model_version``.
    """
    from uniter_tf.config import UniterConfig
    from uniter_tf.models.backbone import UniterBackbone

    description = read_first_stage_description(path)
    config = UniterConfig.from_dict(description["model"], allow_unknown=True)
    stage = FirstStage(UniterBackbone(config), config, embedding_dim=description["embedding_dim"],
                       max_text_length=description["max_text_length"], max_regions=description["max_regions"],
                       pooling=description.get("pooling", "cls"))
    status = stage.checkpoint().read(os.path.join(first_stage_dir(path), WEIGHTS_PREFIX))
    status.assert_existing_objects_matched()
    version = stage.model_version()
    if version != description["model_version"]:
        raise ValueError(f"the first stage at {path} has weights of version {version}, its description says "
                         f"{description['model_version']}: the directory is inconsistent")
    return stage


__all__ = ["FirstStage", "Gallery", "read_gallery", "train_first_stage", "save_first_stage", "load_first_stage",
           "read_first_stage_description", "first_stage_dir", "info_nce_loss", "pack_texts", "pack_images",
           "FIRST_STAGE_SUBDIR"]
