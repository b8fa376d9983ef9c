"""Small files in the exact public formats, for the importer / reader / ingest tests."""

from __future__ import annotations

import json
import os

import numpy as np

FEATURE_DIM = 8
NUM_CLASSES = 5


def image_arrays(seed: int, num_regions: int = 12, feature_dim: int = FEATURE_DIM, confident: int = 11):
    """Official npz arrays of one image: features, norm_bb (6 columns), conf, soft_labels."""
    rng = np.random.default_rng(seed)
    x1 = rng.uniform(0, 0.5, num_regions)
    y1 = rng.uniform(0, 0.5, num_regions)
    x2 = x1 + rng.uniform(0.1, 0.5, num_regions)
    y2 = y1 + rng.uniform(0.1, 0.5, num_regions)
    norm_bb = np.stack([x1, y1, x2, y2, x2 - x1, y2 - y1], axis=1).astype(np.float32)
    conf = np.concatenate([np.linspace(0.9, 0.3, confident), np.full(num_regions - confident, 0.1)])
    soft = rng.uniform(0, 1, (num_regions, NUM_CLASSES)).astype(np.float32)
    return {
            "features": rng.normal(size=(num_regions, feature_dim)).astype(np.float32),
            "norm_bb": norm_bb,
            "conf": conf.astype(np.float32),
            "soft_labels": soft / soft.sum(axis=1, keepdims=True),
    }


def write_npz_dir(directory, images):
    """``{name: arrays}`` -> ``directory/name.npz``."""
    os.makedirs(directory, exist_ok=True)
    for name, arrays in images.items():
        np.savez(os.path.join(directory, f"{name}.npz"), **arrays)
    return str(directory)


def write_json(path, data):
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle)
    return str(path)


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    return str(path)


def coco_captions(image_ids, captions_per_image=2, split="train2014"):
    """A COCO captions JSON object: images with file_name/size, annotations with id/image_id/caption."""
    images = [{"id": image_id, "file_name": f"COCO_{split}_{image_id:012d}.jpg", "height": 480, "width": 640}
              for image_id in image_ids]
    annotations = []
    for image_id in image_ids:
        for index in range(captions_per_image):
            annotations.append({"image_id": image_id, "id": image_id * 100 + index,
                                "caption": f"A photo number {index} of image {image_id}."})
    return {"info": {}, "licenses": [], "images": images, "annotations": annotations}


def read_tfrecords(directory, pattern="*.tfrecord.gz"):
    """Every record of the GZIP shards under ``directory`` matching ``pattern``, decoded with the schema's
    numpy decoder."""
    import tensorflow as tf

    from uniter_tf.data import schema

    files = sorted(tf.io.gfile.glob(os.path.join(directory, pattern)))
    records = []
    for path in files:
        for serialized in tf.data.TFRecordDataset(path, compression_type="GZIP").as_numpy_iterator():
            records.append(schema.decode_example(serialized))
    return records


def read_dead_letter_dir(directory):
    from uniter_tf.data import dead_letter

    files = sorted(os.path.join(directory, name) for name in os.listdir(directory) if name.endswith(".jsonl"))
    return dead_letter.read_dead_letters(files)
