"""VCR-style sample data over the rendered scenes, in the released VCR format, and its canonical records.

Two steps, the detector-free path from ``uniter sample-data`` scenes to ``uniter train`` with
``configs/finetune_vcr_tiny.json``:

1. :func:`write_sample_vcr_annotations` writes a VCR directory: ``vcr1images/{image}.png`` with its
   metadata ``{image}.json`` (``boxes`` ``[x1, y1, x2, y2, 1.0]`` of the ground-truth shapes, ``names``,
   ``width``, ``height``) and ``train.jsonl`` / ``val.jsonl`` lines in the VCR annotation format
   (``annot_id``, ``img_fn``, ``metadata_fn``, ``objects`` = the shapes' class names, token lists with
   object references as index lists, ``answer_label``, ``rationale_label``). ``val`` holds the images with
   ``image_id % 4 == 0``.
2. :func:`write_sample_vcr_records` reads them back with the VCR reader
   (:func:`uniter_tf.data.readers.vcr.read_vcr`), maps references in-graph
   (:func:`uniter_tf.tokenization.tokenize_with_references`), computes the box-pixel region features of
   the pretraining sample records (:mod:`uniter_tf.data.sample_records`) for the ground-truth boxes
   (first in the region list, as official) and writes ``train-*.tfrecord.gz`` / ``eval-*.tfrecord.gz`` (:func:`uniter_tf.models.vcr_task.make_vcr_example`).

The items, one per shape of a scene: "Which of these shapes is in the picture ?" with four answers
"the {colour} shape ." of which only the right one has the colour of a shape in the picture (the
distractors' colours are in no shape of it), and four rationales "[i] {class} has the colour {colour} ." that all refer to the shape of the right
answer and differ only in the colour. Every colour is as often right as wrong, so the text alone gives
25 %; the picture decides. Scenes have one or two shapes (five colours leave three absent ones).

Run: ``python -m uniter_tf.data.sample_vcr_records SAMPLE_DIR VCR_DIR RECORDS_DIR [--model tiny]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from typing import Dict

import numpy as np

from uniter_tf.data import dead_letter, tfrecord_io

#: Held-out images: ``image_id % VAL_EVERY == 0``.
VAL_EVERY = 4
#: The scene settings of the VCR sample (one or two shapes, so three colours are absent from each image).
MAX_OBJECTS = 2
QUESTION = ["Which", "of", "these", "shapes", "is", "in", "the", "picture", "?"]


def sample_scene_config(num_images: int, seed: int = 0):
    """The :class:`~uniter_tf.data.sample_data.SampleDataConfig` of the VCR sample scenes."""
    from uniter_tf.data.sample_data import SampleDataConfig

    return SampleDataConfig(num_images=num_images, seed=seed, min_objects=1, max_objects=MAX_OBJECTS)


def write_sample_vcr_annotations(sample_dir: str, vcr_dir: str, seed: int = 0) -> Dict[str, int]:
    """Writes the VCR-format directory of a ``uniter sample-data`` directory (see the module docstring).

    Returns:
        Questions per split, ``{"train": n, "val": n}``.
    """
    from uniter_tf.data.sample_data import COLORS

    with open(os.path.join(sample_dir, "boxes.json"), encoding="utf-8") as handle:
        boxes = json.load(handle)
    image_dir = os.path.join(vcr_dir, "vcr1images")
    os.makedirs(image_dir, exist_ok=True)
    lines = {"train": [], "val": []}
    for file_name in sorted(boxes):
        entry = boxes[file_name]
        image_id = int(entry["image_id"])
        colors = [label.split()[0] for label in entry["labels"]]
        shapes = [label.split()[1] for label in entry["labels"]]
        absent = [color for color in COLORS if color not in colors]
        if not entry["boxes"] or len(absent) < 3:
            continue  # a scene outside the sample settings has no item
        shutil.copyfile(os.path.join(sample_dir, "images", file_name), os.path.join(image_dir, file_name))
        stem = os.path.splitext(file_name)[0]
        metadata = {"boxes": [list(map(float, box)) + [1.0] for box in entry["boxes"]], "names": shapes,
                    "width": _image_size(sample_dir, file_name)[0],
                    "height": _image_size(sample_dir, file_name)[1]}
        with open(os.path.join(image_dir, f"{stem}.json"), "w", encoding="utf-8") as handle:
            json.dump(metadata, handle)
        rng = np.random.default_rng([seed, image_id, 14])
        split = "val" if image_id % VAL_EVERY == 0 else "train"
        for target in range(len(colors)):  # one question per shape: the right answer names that shape
            distractor_colors = list(rng.permutation(absent)[:3])
            answer_label, rationale_label = int(rng.integers(4)), int(rng.integers(4))
            answer_colors = distractor_colors[:answer_label] + [colors[target]] + distractor_colors[answer_label:]
            rationale_colors = list(rng.permutation(absent)[:3])
            rationale_colors = (rationale_colors[:rationale_label] + [colors[target]]
                                + rationale_colors[rationale_label:])
            lines[split].append({
                    "annot_id": f"{split}-{len(lines[split])}", "img_id": f"{split}-{image_id}", "img_fn": file_name,
                    "metadata_fn": f"{stem}.json", "objects": shapes, "question": QUESTION,
                    "answer_choices": [["the", color, "shape", "."] for color in answer_colors],
                    "rationale_choices": [[[target], "has", "the", "colour", color, "."] for color in rationale_colors],
                    "answer_label": answer_label, "rationale_label": rationale_label})
    for split, split_lines in lines.items():
        with open(os.path.join(vcr_dir, f"{split}.jsonl"), "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(line, sort_keys=True) + "\n" for line in split_lines)
    return {split: len(split_lines) for split, split_lines in lines.items()}


def _image_size(sample_dir: str, file_name: str):
    from PIL import Image

    with Image.open(os.path.join(sample_dir, "images", file_name)) as image:
        return image.size  # (width, height)


#: VCR annotation file → record split.
SPLIT_FILES = {"train": "train.jsonl", "eval": "val.jsonl"}


def write_sample_vcr_records(vcr_dir: str, output_dir: str, model_config, *, num_shards: int = 1) -> Dict[str, object]:
    """Reads a VCR-format directory with the VCR reader and writes canonical VCR records.

    Args:
        vcr_dir: ``train.jsonl``, ``val.jsonl`` and ``vcr1images/``.
        output_dir: where ``train-*.tfrecord.gz`` / ``eval-*.tfrecord.gz`` go.
        model_config: :class:`~uniter_tf.config.UniterConfig` (``region_feature_dim``).
        num_shards: shards per split.

    Returns:
        ``{"train": paths, "eval": paths, "counts": {split: questions}, "dead_letters": [(id, reason)]}``.
    """
    import tensorflow as tf
    from PIL import Image

    from uniter_tf.data.readers.vcr import read_vcr
    from uniter_tf.tokenization import UniterTokenizer, tokenize_with_references
    from uniter_tf.data.sample_records import _box_feature  # the pretraining sample's region features

    tokenizer = UniterTokenizer()
    encode = tf.function(lambda texts: tokenize_with_references(tokenizer, texts),
                         input_signature=[tf.TensorSpec([None], tf.string)])
    image_dir = os.path.join(vcr_dir, "vcr1images")
    result: Dict[str, object] = {"counts": {}, "dead_letters": []}
    for split, file_name in SPLIT_FILES.items():
        items = []
        for item in read_vcr(os.path.join(vcr_dir, file_name), image_dir):
            if isinstance(item, dead_letter.DeadLetter):
                result["dead_letters"].append((item.record_id, item.reason))
            else:
                items.append(item)
        # One in-graph call per split: a call per question costs more than the tokenization itself.
        texts = [text for item in items for text in (item.question, *item.answers, *item.rationales)]
        all_ids = encode(tf.constant(texts)).to_list() if texts else []
        images = {}
        with tfrecord_io.ShardedTFRecordWriter(os.path.join(output_dir, split), num_shards=num_shards) as writer:
            for index, item in enumerate(items):
                ids = all_ids[9 * index:9 * index + 9]
                if item.image_file not in images:
                    pixels = np.asarray(Image.open(os.path.join(image_dir, item.image_file)).convert("RGB"))
                    images[item.image_file] = np.stack([_box_feature(pixels, box, model_config.region_feature_dim)
                                                        for box in item.gt_boxes])
                features = images[item.image_file]
                writer.write(_make_example(item, ids, features, _soft_labels(item.objects, model_config)))
        result[split] = list(writer.paths)
        result["counts"][split] = len(items)
    return result


def _soft_labels(objects, model_config):
    """0.9 on each region's shape class (1 + index into the sample's shapes), the rest spread: MRC-kl targets."""
    from uniter_tf.data.sample_data import SHAPES

    classes = int(model_config.num_soft_labels)
    if len(SHAPES) + 1 > classes:
        raise ValueError(f"num_soft_labels={classes} cannot hold the {len(SHAPES)} sample shapes")
    soft = np.full([len(objects), classes], 0.1 / (classes - 1), np.float32)
    for row, name in enumerate(objects):
        soft[row, 1 + SHAPES.index(name)] = 0.9
    return soft


def _make_example(item, ids, features, soft_labels=None):
    from uniter_tf.models.vcr_task import make_vcr_example

    return make_vcr_example(
            example_id=item.example_id, image_id=item.image_file, question=item.question, question_ids=ids[0],
            answers=item.answers, answer_ids=ids[1:5], rationales=item.rationales, rationale_ids=ids[5:9],
            answer_label=item.answer_label, rationale_label=item.rationale_label, region_features=features,
            region_boxes=item.gt_boxes, image_height=item.image_height, image_width=item.image_width,
            num_gt_regions=len(item.gt_boxes), soft_labels=soft_labels)


def main(argv=None) -> int:
    """``python -m uniter_tf.data.sample_vcr_records SAMPLE_DIR VCR_DIR RECORDS_DIR``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sample_dir", help="a `uniter sample-data` directory (render it with --max-objects 2 "
                                           "or through generate_sample below)")
    parser.add_argument("vcr_dir")
    parser.add_argument("records_dir")
    parser.add_argument("--num-images", type=int, default=0,
                        help="render this many VCR sample scenes into SAMPLE_DIR first (0: use SAMPLE_DIR as it is)")
    parser.add_argument("--model", default="tiny", help="UniterConfig preset or JSON (region feature dim D)")
    args = parser.parse_args(argv)
    from uniter_tf.config import UniterConfig
    from uniter_tf.data import sample_data

    if args.num_images:
        sample_data.generate(args.sample_dir, sample_scene_config(args.num_images))
    counts = write_sample_vcr_annotations(args.sample_dir, args.vcr_dir)
    result = write_sample_vcr_records(args.vcr_dir, args.records_dir, UniterConfig.resolve(args.model))
    print(json.dumps({"questions": counts, **result}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
