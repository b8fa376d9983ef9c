"""A small, learnable synthetic pretraining corpus of canonical records (tests, benchmarks, smoke runs).

Each image shows one of ``num_concepts`` concepts: its region features are the concept's random
prototype plus noise, and its soft labels peak at the concept's class. Each caption is the concept's word
between random filler words (real WordPiece ids of the vendored vocabulary are not needed: ids are
drawn from the real-word range of the model config). So every pretraining task has signal: MLM can recover
the concept word from the image, ITM can tell whether caption and image share a concept, MRFR/MRC can
reconstruct a region from its neighbours, and OT can align the concept word with the regions.
"""

from __future__ import annotations

import os
from typing import List

import numpy as np
import tensorflow as tf

from uniter_tf.data import schema
from uniter_tf.data import tfrecord_io


def write_synthetic_records(
        output_prefix: str,
        model_config,
        *,
        num_images: int = 64,
        captions_per_image: int = 2,
        num_concepts: int = 8,
        min_regions: int = 6,
        max_regions: int = 12,
        num_shards: int = 2,
        seed: int = 0,
        world_seed: int = 0,
        first_image: int = 0,
) -> List[str]:
    """Writes GZIP TFRecord shards of synthetic canonical records.

    Args:
        output_prefix: shard path prefix (``{prefix}-00000-of-00002.tfrecord.gz`` ...).
        model_config: a :class:`uniter_tf.config.UniterConfig` (D, C and the word-id range).
        num_images: distinct images.
        captions_per_image: text records per image.
        num_concepts: distinct concepts (image classes).
        min_regions: fewest regions of an image.
        max_regions: most regions of an image.
        num_shards: files to write.
        seed: numpy seed of the images and captions.
        world_seed: seed of the concept prototypes and words; keep it equal for train and held-out sets.
        first_image: index of the first image (distinct ranges give distinct image ids).

    Returns:
        The shard paths.
    """
    if not 1 <= min_regions <= max_regions:
        raise ValueError(f"need 1 <= min_regions <= max_regions, got {min_regions}, {max_regions}")
    world = np.random.default_rng(world_seed)
    rng = np.random.default_rng([seed, 1])
    feature_dim = model_config.region_feature_dim
    num_classes = model_config.num_soft_labels
    low, high = model_config.first_word_id, model_config.vocab_size
    vocabulary = world.choice(np.arange(low, min(high, low + 2000)), size=num_concepts + 20, replace=False)
    concept_words, filler_words = vocabulary[:num_concepts], vocabulary[num_concepts:]
    prototypes = world.normal(0.0, 1.0, size=(num_concepts, feature_dim)).astype(np.float32)
    directory = os.path.dirname(output_prefix)
    if directory:
        tf.io.gfile.makedirs(directory)  # gfile: the prefix may be on a non-local filesystem (ram://, gs://)
    with tfrecord_io.ShardedTFRecordWriter(output_prefix, num_shards=num_shards) as writer:
        for image_index in range(first_image, first_image + num_images):
            concept = image_index % num_concepts
            num_regions = int(rng.integers(min_regions, max_regions + 1))
            features = prototypes[concept] + 0.5 * rng.normal(size=(num_regions, feature_dim))
            features = np.maximum(features, 0.0).astype(np.float32)  # ReLU-like, as detector features
            x1 = rng.uniform(0, 80, size=num_regions)
            y1 = rng.uniform(0, 60, size=num_regions)
            boxes = np.stack([x1, y1, x1 + rng.uniform(8, 40, num_regions), y1 + rng.uniform(8, 30, num_regions)],
                             axis=1)
            soft_labels = np.full((num_regions, num_classes), 0.2 / (num_classes - 1), np.float32)
            soft_labels[:, 1 + concept % (num_classes - 1)] = 0.8
            for caption_index in range(captions_per_image):
                prefix = rng.choice(filler_words, size=int(rng.integers(2, 5)))
                suffix = rng.choice(filler_words, size=int(rng.integers(1, 4)))
                token_ids = np.concatenate([prefix, [concept_words[concept]], suffix]).astype(np.int64)
                example = schema.make_example(
                        image_id=f"img{image_index:05d}", region_features=features, region_boxes=boxes,
                        image_height=100, image_width=120, soft_labels=soft_labels,
                        example_id=f"img{image_index:05d}_cap{caption_index}", text=f"concept {concept}",
                        token_ids=token_ids, task=schema.TASK_CAPTION)
                writer.write(example)
    return list(writer.paths)


__all__ = ["write_synthetic_records"]
