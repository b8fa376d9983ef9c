"""Canonical pretraining records from the rendered sample data with ground-truth-box pixel features.

A detector-free path from ``uniter sample-data`` to pretraining, for smoke runs, the learning check and the
local config: each ground-truth box of ``boxes.json`` becomes one region whose feature is the box's pixels
(resized to ``grid × grid`` RGB in [0, 1], then a colour histogram), zero-padded or cut to
``region_feature_dim``; its soft label puts 0.9 on the box's ``colour shape`` class (1 + index, 0 =
background). Captions are WordPiece-tokenised with the vendored ``bert-base-cased`` vocabulary. Images are
split into train/eval by ``image_id % eval_every == 0``.

Run: ``python -m uniter_tf.data.sample_records SAMPLE_DIR OUTPUT_DIR [--model tiny] [--eval-every 5]``.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Dict, List

import numpy as np

from uniter_tf.data import schema
from uniter_tf.data import tfrecord_io

GRID = 4
HISTOGRAM_BINS = 4


def _box_feature(image: np.ndarray, box, feature_dim: int) -> np.ndarray:
    from PIL import Image

    x1, y1, x2, y2 = [int(round(value)) for value in box]
    crop = image[max(y1, 0):max(y2, y1 + 1), max(x1, 0):max(x2, x1 + 1)]
    small = np.asarray(Image.fromarray(crop).resize((GRID, GRID), Image.BILINEAR), np.float32) / 255.0
    pixels = crop.reshape(-1, 3).astype(np.float32) / 255.0
    histogram = [np.histogram(pixels[:, channel], bins=HISTOGRAM_BINS, range=(0.0, 1.0))[0] / len(pixels)
                 for channel in range(3)]
    feature = np.concatenate([small.reshape(-1), np.concatenate(histogram)]).astype(np.float32)
    padded = np.zeros([feature_dim], np.float32)
    padded[:min(feature_dim, feature.size)] = feature[:feature_dim]
    return padded


def write_sample_pretraining_records(sample_dir: str, output_dir: str, model_config, *, eval_every: int = 5,
                                     num_shards: int = 2) -> Dict[str, List[str]]:
    """Builds ``{output_dir}/train-*.tfrecord.gz`` and ``eval-*`` from a ``uniter sample-data`` directory.

    Args:
        sample_dir: output of ``uniter sample-data`` (``images/``, ``captions.json``, ``boxes.json``).
        output_dir: where the shards go.
        model_config: :class:`~uniter_tf.config.UniterConfig` (``region_feature_dim``, ``num_soft_labels``).
        eval_every: images with ``image_id % eval_every == 0`` go to eval.
        num_shards: shards per split.

    Returns:
        ``{"train": paths, "eval": paths}``.

    Raises:
        FileNotFoundError: the sample directory lacks a file; ValueError: a caption names an unknown image.
    """
    from PIL import Image

    from uniter_tf.data.sample_data import COLORS, SHAPES
    from uniter_tf.tokenization import UniterTokenizer

    with open(os.path.join(sample_dir, "captions.json"), encoding="utf-8") as handle:
        captions = json.load(handle)
    with open(os.path.join(sample_dir, "boxes.json"), encoding="utf-8") as handle:
        boxes = json.load(handle)
    classes = [f"{color} {shape}" for color in COLORS for shape in SHAPES]
    if len(classes) + 1 > model_config.num_soft_labels:
        raise ValueError(f"num_soft_labels={model_config.num_soft_labels} cannot hold {len(classes)} classes")
    images = {image["id"]: image for image in captions["images"]}
    tokenizer = UniterTokenizer()
    texts = [annotation["caption"] for annotation in captions["annotations"]]
    token_lists = tokenizer.encode(texts) if texts else []
    image_cache = {}
    paths = {}
    writers = {split: tfrecord_io.ShardedTFRecordWriter(os.path.join(output_dir, split), num_shards=num_shards)
               for split in ("train", "eval")}
    for writer in writers.values():
        writer.__enter__()
    try:
        for annotation, token_ids in zip(captions["annotations"], token_lists):
            image_id = annotation["image_id"]
            if image_id not in images:
                raise ValueError(f"caption {annotation['id']} names unknown image {image_id}")
            file_name = images[image_id]["file_name"]
            if image_id not in image_cache:
                pixels = np.asarray(Image.open(os.path.join(sample_dir, "images", file_name)).convert("RGB"))
                entry = boxes[file_name]
                features = np.stack([_box_feature(pixels, box, model_config.region_feature_dim)
                                     for box in entry["boxes"]])
                soft_labels = np.full([len(entry["boxes"]), model_config.num_soft_labels],
                                      0.1 / (model_config.num_soft_labels - 1), np.float32)
                for row, label in enumerate(entry["labels"]):
                    soft_labels[row, 1 + classes.index(label)] = 0.9
                image_cache[image_id] = (features, np.asarray(entry["boxes"], np.float32), soft_labels,
                                         pixels.shape[0], pixels.shape[1])
            features, region_boxes, soft_labels, height, width = image_cache[image_id]
            split = "eval" if image_id % eval_every == 0 else "train"
            writers[split].write(schema.make_example(
                    image_id=file_name, region_features=features, region_boxes=region_boxes, image_height=height,
                    image_width=width, soft_labels=soft_labels, example_id=str(annotation["id"]),
                    text=annotation["caption"], token_ids=token_ids, task=schema.TASK_CAPTION))
    finally:
        for split, writer in writers.items():
            writer.close()
            paths[split] = list(writer.paths)
    return paths


def main(argv=None) -> int:
    """``python -m uniter_tf.data.sample_records SAMPLE_DIR OUTPUT_DIR``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sample_dir")
    parser.add_argument("output_dir")
    parser.add_argument("--model", default="tiny", help="UniterConfig preset or JSON (D and C)")
    parser.add_argument("--eval-every", type=int, default=5)
    args = parser.parse_args(argv)
    from uniter_tf.config import UniterConfig

    paths = write_sample_pretraining_records(args.sample_dir, args.output_dir, UniterConfig.resolve(args.model),
                                             eval_every=args.eval_every)
    print(json.dumps(paths, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
