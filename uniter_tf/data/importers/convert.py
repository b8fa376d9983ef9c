"""Converts any importable feature source into canonical per-image TFRecords (what ``uniter extract`` writes).

Streams one image at a time into sharded GZIP TFRecords; bad records go to a dead-letter JSONL file.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict, Optional

from uniter_tf.data import boxes as boxes_lib
from uniter_tf.data import dead_letter


@dataclasses.dataclass
class ConversionResult:
    """What :func:`convert_features` wrote.

    Attributes:
        paths: the TFRecord shards.
        counts: ``images_written``, ``unknown_image_size`` and one count per dead-letter reason.
        dead_letter_path: the JSONL file of rejected records.
    """

    paths: list
    counts: Dict[str, int]
    dead_letter_path: str


def convert_features(features: str, output_prefix: str, feature_format: str = "auto",
                     feature_dim: Optional[int] = None, num_shards: int = 1,
                     selection: Optional[boxes_lib.BoxSelection] = boxes_lib.BoxSelection()) -> ConversionResult:
    """Writes ``{output_prefix}-SSSSS-of-NNNNN.tfrecord.gz`` per-image canonical records.

    Sources without an image size (the official img_db) keep normalised boxes and record the size as
    1x1 (counted as ``unknown_image_size``).

    Args:
        features: feature location (see :func:`uniter_tf.data.importers.list_shards`).
        output_prefix: output path prefix; the dead letters go to ``{output_prefix}-dead_letters.jsonl``.
        feature_format: the source format or ``auto``.
        feature_dim: expected D (None accepts any).
        num_shards: output files (round-robin).
        selection: box-selection rule (None keeps every stored region).
    """
    import tensorflow as tf

    from uniter_tf.data import importers, schema, tfrecord_io
    from uniter_tf.data.importers import feature_record

    counts: Dict[str, int] = {"images_written": 0}
    dead_letter_path = f"{output_prefix}-dead_letters.jsonl"
    directory = os.path.dirname(output_prefix)
    if directory:  # output through tf.io.gfile: any TensorFlow filesystem (gs://, ram://) works
        tf.io.gfile.makedirs(directory)
    with tfrecord_io.ShardedTFRecordWriter(output_prefix, num_shards) as writer, \
            tf.io.gfile.GFile(dead_letter_path, "w") as letters:
        for result in importers.iter_features(features, feature_format, selection):
            problem = result if isinstance(result, dead_letter.DeadLetter) else result.problem(feature_dim)
            if problem is None:
                height, width, region_boxes = result.image_height, result.image_width, result.boxes
                if region_boxes is None or not (height > 0 and width > 0):
                    height, width = 1, 1
                    region_boxes = feature_record.pixel_boxes_from_normalized(result.positions, 1, 1)
                    counts["unknown_image_size"] = counts.get("unknown_image_size", 0) + 1
                writer.write(schema.make_example(
                        image_id=result.image_id, region_features=result.features, region_boxes=region_boxes,
                        region_positions=result.positions, image_height=height, image_width=width,
                        soft_labels=result.soft_labels))
                counts["images_written"] += 1
                continue
            counts[problem.reason] = counts.get(problem.reason, 0) + 1
            letters.write(problem.to_json() + "\n")
    with tf.io.gfile.GFile(f"{output_prefix}-summary.json", "w") as handle:
        handle.write(json.dumps(counts, indent=2, sort_keys=True))
    return ConversionResult(paths=writer.paths, counts=counts, dead_letter_path=dead_letter_path)
