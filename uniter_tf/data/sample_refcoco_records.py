"""Referring expressions on the rendered sample data: official-format annotations, then canonical records.

From a ``uniter sample-data`` directory (``images/``, ``boxes.json``) this writes, for every image with at
least two shapes:

* the official RefCOCO annotations: ``annotations/refs.json`` (the JSON form of ``refs(unc).p``: ``ref_id``,
  ``ann_id``, ``image_id``, ``split``, ``sentences[{sent_id, sent, raw, tokens}]``) and
  ``annotations/instances.json`` (COCO ``images`` with sizes, ``annotations`` with ``bbox`` ``[x, y, w, h]``);
* the canonical records, read back through the official reader
  (:func:`uniter_tf.data.readers.refcoco.read_refcoco`, as ``uniter ingest --format refcoco`` reads them):
  ``train-*.tfrecord.gz`` and ``eval-*.tfrecord.gz`` on the **ground-truth boxes** (one region per shape,
  the official training input), and ``eval_det-*.tfrecord.gz``, the held-out expressions on **simulated
  detections**: every shape's box jittered by up to :data:`DETECTION_JITTER` of its size, plus one
  background box, in a shuffled order (the target is then found by IoU, never by its slot).

Region features are the box-pixel features of the pretraining sample records. Expressions
(:func:`make_expressions`) name one shape by its colour and shape (``the red circle``), by its colour
alone (``the red shape``), or by its horizontal extreme (``the leftmost shape``, ``the rightmost
shape``). Held-out images: ``image_id % 5 == 0`` (split ``val``).

Run: ``python -m uniter_tf.data.sample_refcoco_records SAMPLE_DIR OUTPUT_DIR [--model tiny]``.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Dict, List, Tuple

import numpy as np

from uniter_tf.data import dead_letter, schema, tfrecord_io

#: Held-out images (split ``val``): ``image_id % EVAL_EVERY == 0``, as the other sample tasks.
EVAL_EVERY = 5
#: Largest shift of a simulated detection's side, as a fraction of the box size.
DETECTION_JITTER = 0.12
_COCO_CATEGORY = {"circle": 1, "square": 2, "triangle": 3}


def make_expressions(labels: List[str], boxes: List[List[float]]) -> List[Tuple[int, str]]:
    """The expressions of one image: ``(index of the referred shape, expression)``, each naming one shape only.

    Args:
        labels: ``"colour shape"`` per shape (colours are distinct within an image).
        boxes: pixel ``[x1, y1, x2, y2]`` per shape.

    Returns:
        For every shape ``the {colour} {shape}`` and ``the {colour} shape``; for the leftmost and the
        rightmost shape also ``the leftmost shape`` / ``the rightmost shape``.
    """
    expressions = []
    for index, label in enumerate(labels):
        colour, shape = label.split(" ")
        expressions.append((index, f"the {colour} {shape}"))
        expressions.append((index, f"the {colour} shape"))
    centres = [(box[0] + box[2]) / 2.0 for box in boxes]
    expressions.append((int(np.argmin(centres)), "the leftmost shape"))
    expressions.append((int(np.argmax(centres)), "the rightmost shape"))
    return expressions


def write_annotations(sample_dir: str, annotation_dir: str) -> Dict[str, str]:
    """Writes ``refs.json`` and ``instances.json`` (the official formats) for the sample images.

    Entries of ``boxes.json`` without an ``image_id`` are no sample scene (the NLVR2 pairs that
    :func:`uniter_tf.data.sample_nlvr2.add_to_sample_root` adds) and get no expressions.

    Returns:
        ``{"refs": path, "instances": path}``.
    """
    with open(os.path.join(sample_dir, "boxes.json"), encoding="utf-8") as handle:
        boxes = json.load(handle)
    images, annotations, refs = [], [], []
    for file_name in sorted(name for name, entry in boxes.items() if "image_id" in entry):
        entry = boxes[file_name]
        image_id = int(entry["image_id"])
        from PIL import Image  # the size is read, not assumed

        with Image.open(os.path.join(sample_dir, "images", file_name)) as image:
            width, height = image.size
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        ann_ids = []
        for index, (box, label) in enumerate(zip(entry["boxes"], entry["labels"])):
            ann_id = image_id * 100 + index
            ann_ids.append(ann_id)
            x1, y1, x2, y2 = (float(value) for value in box)
            annotations.append({"id": ann_id, "image_id": image_id, "bbox": [x1, y1, x2 - x1, y2 - y1],
                                "category_id": _COCO_CATEGORY[label.split(" ")[1]], "area": (x2 - x1) * (y2 - y1),
                                "iscrowd": 0})
        if len(entry["boxes"]) < 2:
            continue  # one shape: nothing to tell apart
        split = "val" if image_id % EVAL_EVERY == 0 else "train"
        by_object: Dict[int, List[str]] = {}
        for index, expression in make_expressions(entry["labels"], entry["boxes"]):
            by_object.setdefault(index, []).append(expression)
        for index, expressions in sorted(by_object.items()):
            ref_id = len(refs)
            sentences = [{"sent_id": ref_id * 10 + number, "sent": text, "raw": text, "tokens": text.split()}
                         for number, text in enumerate(expressions)]
            refs.append({"ref_id": ref_id, "ann_id": ann_ids[index], "image_id": image_id, "split": split,
                         "file_name": file_name, "category_id": annotations[-len(ann_ids) + index]["category_id"],
                         "sent_ids": [sentence["sent_id"] for sentence in sentences], "sentences": sentences})
    os.makedirs(annotation_dir, exist_ok=True)
    paths = {"refs": os.path.join(annotation_dir, "refs.json"),
             "instances": os.path.join(annotation_dir, "instances.json")}
    with open(paths["refs"], "w", encoding="utf-8") as handle:
        json.dump(refs, handle, indent=1)
    with open(paths["instances"], "w", encoding="utf-8") as handle:
        json.dump({"images": images, "annotations": annotations,
                   "categories": [{"id": value, "name": key} for key, value in _COCO_CATEGORY.items()]},
                  handle, indent=1)
    return paths


def simulated_detections(boxes: np.ndarray, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """Jittered copies of ``boxes`` plus one background box, shuffled (a stand-in for a detector's output)."""
    sizes = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)
    shift = rng.uniform(-DETECTION_JITTER, DETECTION_JITTER, size=boxes.shape) * np.concatenate([sizes, sizes], 1)
    jittered = boxes + shift
    background_size = rng.uniform(30, 60)
    x1 = rng.uniform(0, width - background_size)
    y1 = rng.uniform(0, height - background_size)
    detections = np.concatenate([jittered, [[x1, y1, x1 + background_size, y1 + background_size]]])
    detections[:, [0, 2]] = np.clip(detections[:, [0, 2]], 0, width)
    detections[:, [1, 3]] = np.clip(detections[:, [1, 3]], 0, height)
    return detections[rng.permutation(len(detections))].astype(np.float32)


def write_sample_refcoco_records(sample_dir: str, output_dir: str, model_config, *, seed: int = 0
                                 ) -> Dict[str, object]:
    """Builds the annotations and ``{output_dir}/train-*``, ``eval-*``, ``eval_det-*`` ``.tfrecord.gz``.

    Args:
        sample_dir: output of ``uniter sample-data``.
        output_dir: where ``annotations/`` and the shards go.
        model_config: :class:`~uniter_tf.config.UniterConfig` (``region_feature_dim``).
        seed: seed of the simulated detections.

    Returns:
        ``{"train": paths, "eval": paths, "eval_det": paths, "annotations": {...}, "counts": {split: n},
        "dead_letters": [(record id, reason)], "baselines": {split: {"random_region", "largest_region"}}}``:
        the expected accuracy of a random region and the accuracy of always choosing the largest region.
    """
    from PIL import Image

    from uniter_tf.data.readers.refcoco import read_refcoco
    from uniter_tf.models.refcoco_task import inclusive_iou
    from uniter_tf.tokenization import UniterTokenizer
    from uniter_tf.data.sample_records import _box_feature  # the pretraining sample's region features

    annotations = write_annotations(sample_dir, os.path.join(output_dir, "annotations"))
    items, result = [], {"annotations": annotations, "dead_letters": [], "counts": {}, "baselines": {}}
    for item in read_refcoco(annotations["refs"], annotations["instances"]):
        if isinstance(item, dead_letter.DeadLetter):
            result["dead_letters"].append((item.record_id, item.reason))
        else:
            items.append(item)
    with open(os.path.join(sample_dir, "boxes.json"), encoding="utf-8") as handle:
        boxes = {os.path.splitext(name)[0]: (name, entry) for name, entry in json.load(handle).items()}
    token_lists = UniterTokenizer().encode([item.text for item in items]) if items else []
    rng = np.random.default_rng(seed)
    cache = {}

    def regions(stem: str, detected: bool):
        key = (stem, detected)
        if key not in cache:
            file_name, entry = boxes[stem]
            pixels = np.asarray(Image.open(os.path.join(sample_dir, "images", file_name)).convert("RGB"))
            region_boxes = np.asarray(entry["boxes"], np.float32)
            if detected:
                region_boxes = simulated_detections(region_boxes, pixels.shape[1], pixels.shape[0], rng)
            features = np.stack([_box_feature(pixels, box, model_config.region_feature_dim) for box in region_boxes])
            cache[key] = (file_name, features, region_boxes, pixels.shape[0], pixels.shape[1])
        return cache[key]

    outputs = {"train": ("train", False), "eval": ("val", False), "eval_det": ("val", True)}
    for output, (split, detected) in outputs.items():
        counts = {"expressions": 0, "random_correct": 0.0, "largest_correct": 0}
        with tfrecord_io.ShardedTFRecordWriter(os.path.join(output_dir, output), num_shards=1) as writer:
            for item, token_ids in zip(items, token_lists):
                if item.split != split:
                    continue
                file_name, features, region_boxes, height, width = regions(item.image_ids[0], detected)
                writer.write(schema.make_example(
                        image_id=file_name, region_features=features, region_boxes=region_boxes,
                        image_height=height, image_width=width, example_id=item.example_id, text=item.text,
                        token_ids=token_ids, target_box=item.target_box, task=schema.TASK_REFCOCO))
                correct = inclusive_iou(region_boxes, np.asarray(item.target_box, np.float32)[None]).numpy() > 0.5
                areas = (region_boxes[:, 2] - region_boxes[:, 0]) * (region_boxes[:, 3] - region_boxes[:, 1])
                counts["expressions"] += 1
                counts["random_correct"] += float(np.mean(correct))
                counts["largest_correct"] += int(correct[int(np.argmax(areas))])
        result[output] = list(writer.paths)
        result["counts"][output] = counts["expressions"]
        total = max(counts["expressions"], 1)
        result["baselines"][output] = {"random_region": counts["random_correct"] / total,
                                       "largest_region": counts["largest_correct"] / total}
    return result


def main(argv=None) -> int:
    """``python -m uniter_tf.data.sample_refcoco_records SAMPLE_DIR OUTPUT_DIR``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sample_dir")
    parser.add_argument("output_dir")
    parser.add_argument("--model", default="tiny", help="UniterConfig preset or JSON (region feature dim D)")
    args = parser.parse_args(argv)
    from uniter_tf.config import UniterConfig

    result = write_sample_refcoco_records(args.sample_dir, args.output_dir, UniterConfig.resolve(args.model))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
