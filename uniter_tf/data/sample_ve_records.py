"""Canonical SNLI-VE records from the rendered sample data, with ground-truth-box pixel features.

The detector-free path from ``uniter sample-data`` to ``uniter finetune --task ve`` (as
:mod:`uniter_tf.data.sample_records` is for pretraining): the hypotheses are read from the sample's
``snli_ve_train.jsonl`` / ``snli_ve_dev.jsonl`` with the official SNLI-VE reader
(:func:`uniter_tf.data.readers.snli_ve.read_snli_ve`, so the labels are mapped exactly as ``uniter ingest
--format snli_ve`` maps them), each image's regions are its ground-truth boxes with the box-pixel features
of the pretraining sample records, and each record carries ``label`` (contradiction 0 / entailment 1 /
neutral 2). ``train`` hypotheses go to ``train-*.tfrecord.gz``, ``dev`` ones to ``eval-*.tfrecord.gz``.

Run: ``python -m uniter_tf.data.sample_ve_records SAMPLE_DIR OUTPUT_DIR [--model tiny]``.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Dict, List

import numpy as np

from uniter_tf.data import dead_letter, schema, tfrecord_io

#: Sample file → output split.
SPLIT_FILES = {"train": "snli_ve_train.jsonl", "eval": "snli_ve_dev.jsonl"}


def write_sample_ve_records(sample_dir: str, output_dir: str, model_config, *, num_shards: int = 1
                            ) -> Dict[str, object]:
    """Builds ``{output_dir}/train-*.tfrecord.gz`` and ``eval-*`` from a ``uniter sample-data`` directory.

    Args:
        sample_dir: output of ``uniter sample-data`` (``images/``, ``boxes.json``, ``snli_ve_*.jsonl``).
        output_dir: where the shards go.
        model_config: :class:`~uniter_tf.config.UniterConfig` (``region_feature_dim``).
        num_shards: shards per split.

    Returns:
        ``{"train": paths, "eval": paths, "counts": {split: {label name: n}}, "dead_letters": [...]}``;
        hypotheses the reader refuses, or whose image has no boxes, are dead letters (record id, reason).

    Raises:
        FileNotFoundError: the sample directory lacks a file.
    """
    from PIL import Image

    from uniter_tf.data.readers.snli_ve import SNLI_VE_LABELS, read_snli_ve
    from uniter_tf.tokenization import UniterTokenizer
    from uniter_tf.data.sample_records import _box_feature  # the pretraining sample's region features

    label_names = {index: name for name, index in SNLI_VE_LABELS.items()}
    with open(os.path.join(sample_dir, "boxes.json"), encoding="utf-8") as handle:
        boxes = json.load(handle)
    boxes_by_stem = {os.path.splitext(file_name)[0]: (file_name, entry) for file_name, entry in boxes.items()}
    tokenizer = UniterTokenizer()
    image_cache = {}
    result: Dict[str, object] = {"counts": {}, "dead_letters": []}
    for split, file_name in SPLIT_FILES.items():
        items = []
        for item in read_snli_ve(os.path.join(sample_dir, file_name)):
            if isinstance(item, dead_letter.DeadLetter):
                result["dead_letters"].append((item.record_id, item.reason))
            elif item.image_ids[0] not in boxes_by_stem:
                result["dead_letters"].append((item.example_id, dead_letter.UNKNOWN_IMAGE))
            else:
                items.append(item)
        token_lists = tokenizer.encode([item.text for item in items]) if items else []
        counts = {name: 0 for name in SNLI_VE_LABELS}
        with tfrecord_io.ShardedTFRecordWriter(os.path.join(output_dir, split), num_shards=num_shards) as writer:
            for item, token_ids in zip(items, token_lists):
                image_file, entry = boxes_by_stem[item.image_ids[0]]
                if image_file not in image_cache:
                    pixels = np.asarray(Image.open(os.path.join(sample_dir, "images", image_file)).convert("RGB"))
                    features = np.stack([_box_feature(pixels, box, model_config.region_feature_dim)
                                         for box in entry["boxes"]])
                    image_cache[image_file] = (features, np.asarray(entry["boxes"], np.float32), pixels.shape[0],
                                               pixels.shape[1])
                features, region_boxes, height, width = image_cache[image_file]
                writer.write(schema.make_example(
                        image_id=image_file, region_features=features, region_boxes=region_boxes,
                        image_height=height, image_width=width, example_id=item.example_id, text=item.text,
                        token_ids=token_ids, label=item.label, task=schema.TASK_SNLI_VE))
                counts[label_names[item.label]] += 1
        result[split] = list(writer.paths)
        result["counts"][split] = counts
    return result


def main(argv=None) -> int:
    """``python -m uniter_tf.data.sample_ve_records SAMPLE_DIR OUTPUT_DIR``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sample_dir")
    parser.add_argument("output_dir")
    parser.add_argument("--model", default="tiny", help="UniterConfig preset or JSON (region feature dim D)")
    args = parser.parse_args(argv)
    from uniter_tf.config import UniterConfig

    result = write_sample_ve_records(args.sample_dir, args.output_dir, UniterConfig.resolve(args.model))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
