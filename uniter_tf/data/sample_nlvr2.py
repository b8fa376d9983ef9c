"""Rendered NLVR2-style sample data: image pairs with true/false statements about both, as pair records.

The detector-free path from rendered pixels to ``uniter train`` for the ``nlvr2`` task (as
:mod:`uniter_tf.data.sample_ve_records` is for SNLI-VE):

1. scenes of 1–4 coloured shapes are rendered with :mod:`uniter_tf.data.sample_data`'s renderer (PNG
   files under ``images/``, named as the official NLVR2 images ``{split}-{set}-{pair}-img0/1.png``);
2. statements about both images of a pair are written in the official NLVR2 json-lines format
   (``train.json`` / ``dev.json``: ``identifier``, ``sentence``, ``label`` "True"/"False"). Every sentence
   of a set is asked of :data:`PAIRS_PER_SET` image pairs, as in NLVR2, so consistency (all pairs of a
   sentence right) is measurable. The statements compare or state the shape counts of the two images
   ("The left image has more shapes than the right image.", "The right image has exactly two shapes."),
   the property a small model from scratch grounds quickly; whether a statement is true depends on both
   the sentence and the pixels, and the two labels are balanced per template, so neither the sentence nor
   the images alone predict the label;
3. the json lines are read back with the official reader (:func:`uniter_tf.data.readers.nlvr2.read_nlvr2`,
   so labels are mapped as ``uniter ingest --format nlvr2`` maps them) and each statement becomes one
   canonical pair record: the regions of each image are its ground-truth boxes with the box-pixel
   features of the pretraining sample records (:func:`uniter_tf.data.sample_records._box_feature`).

``train`` statements go to ``records/train-*.tfrecord.gz``, ``dev`` ones to ``records/eval-*``.

For the TFX pipeline, :func:`add_to_sample_root` writes steps 1–2 only (images, boxes, json lines) into a
``uniter sample-data`` root, beside the captioned scenes; the pipeline extracts and joins them itself.

Run: ``python -m uniter_tf.data.sample_nlvr2 OUTPUT_DIR [--train-sets 150 --eval-sets 30 --model tiny]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from typing import Dict, Optional, Tuple

import numpy as np

from uniter_tf.data import dead_letter, schema, tfrecord_io
from uniter_tf.data import sample_data

#: Image pairs per sentence set (one sentence is asked of each; NLVR2 has up to 4).
PAIRS_PER_SET = 2
#: Sentences per set.
SENTENCES_PER_SET = 2
#: Split name in identifiers → (json-lines file, output records prefix).
SPLITS = {"train": ("train.json", "train"), "dev": ("dev.json", "eval")}
_SIDES = ("left", "right")
STATEMENT_FAMILIES = ("compare", "exact")


@dataclasses.dataclass(frozen=True)
class SampleNlvr2Config:
    """Generator settings.

    Attributes:
        train_sets: sentence sets of the training split (each: PAIRS_PER_SET pairs × SENTENCES_PER_SET
            sentences = 4 statements, 4 images).
        eval_sets: sentence sets of the held-out ``dev`` split.
        seed: random seed (same seed, same files).
        image_size: ``(width, height)`` of the rendered images (small: rendering is most of the cost).
        min_objects: fewest shapes per image.
        max_objects: most shapes per image.
        statements: the statement families: ``compare`` ("The left image has more shapes than the right
            image.", drawn only for pairs with different counts) and ``exact`` ("The right image has exactly
            two shapes.").
    """

    train_sets: int = 150
    eval_sets: int = 30
    seed: int = 0
    image_size: Tuple[int, int] = (128, 96)
    min_objects: int = 1
    max_objects: int = 4
    # "exact" needs word grounding of the number words: 400 updates of the tiny model from scratch stay at
    # the majority baseline on a compare + exact mix (measured), while "compare" alone is learnt.
    statements: Tuple[str, ...] = ("compare",)

    def __post_init__(self):
        unknown = sorted(set(self.statements) - set(STATEMENT_FAMILIES))
        if unknown or not self.statements:
            raise ValueError(f"statements must be a non-empty subset of {STATEMENT_FAMILIES}, got {self.statements}")

    def scene_config(self) -> sample_data.SampleDataConfig:
        """The renderer's settings (object sizes scaled to the small image)."""
        return sample_data.SampleDataConfig(num_images=1, seed=self.seed, image_size=self.image_size,
                                            min_objects=self.min_objects, max_objects=self.max_objects,
                                            min_object_size=16, max_object_size=min(self.image_size) // 3)


def _statement(rng: np.random.Generator, counts: Tuple[int, int], want_true: bool,
               config: SampleNlvr2Config) -> Optional[str]:
    """A statement about a pair with shape counts ``counts`` (left, right), true iff ``want_true``.

    A comparison needs different counts: for a pair with equal counts an ``exact`` statement is written
    when that family is allowed, else None (the caller draws other images).
    """
    family = str(rng.choice(list(config.statements)))
    if family == "compare" and counts[0] != counts[1]:
        more = 0 if counts[0] > counts[1] else 1  # the side that has more
        side = more if want_true else 1 - more
        return f"The {_SIDES[side]} image has more shapes than the {_SIDES[1 - side]} image."
    if "exact" not in config.statements:
        return None
    side = int(rng.integers(2))
    if want_true:
        number = counts[side]
    else:
        wrong = [n for n in range(config.min_objects, config.max_objects + 1) if n != counts[side]]
        number = int(rng.choice(wrong))
    return f"The {_SIDES[side]} image has exactly {sample_data.NUMBER_WORDS[number]} shape" \
           f"{'' if number == 1 else 's'}."


def statement_is_true(sentence: str, counts: Tuple[int, int]) -> bool:
    """The truth of a generated statement given the pair's shape counts (the labels' ground truth).

    Raises:
        ValueError: a sentence this generator does not write.
    """
    words = sentence.rstrip(".").split()
    side = _SIDES.index(words[1])
    if "more" in words:
        return counts[side] > counts[1 - side]
    if "exactly" in words:
        return counts[side] == sample_data.NUMBER_WORDS.index(words[words.index("exactly") + 1])
    raise ValueError(f"not a sample NLVR2 statement: {sentence!r}")


def _draw_set(rng: np.random.Generator, scene_config, config: SampleNlvr2Config):
    """One sentence set: ``(object lists per pair and side, sentences, labels [sentence][pair])``.

    The sentences are written for the first pair, true or false with equal odds; every other pair's
    objects are re-drawn (placements only, nothing is rendered yet) until each sentence's truth on it
    matches a fresh fair coin too (coins tossed again for an impossible combination), so both labels are
    about equally likely for every pair.
    """
    def place_pair():
        return [sample_data._place_objects(rng, scene_config) for _ in _SIDES]  # pylint: disable=protected-access

    sentences = [None]
    while None in sentences:
        first = place_pair()
        first_counts = (len(first[0]), len(first[1]))
        sentences = [_statement(rng, first_counts, bool(rng.integers(2)), config) for _ in range(SENTENCES_PER_SET)]
    pairs = [first]
    for _ in range(1, PAIRS_PER_SET):
        # Some label combinations are impossible ("the left image has exactly two" and "... exactly
        # three" both true): after 100 placements the coins are tossed again.
        for _ in range(20):
            wanted = [bool(rng.integers(2)) for _ in sentences]
            candidates = (place_pair() for _ in range(100))
            candidate = next((pair for pair in candidates if [statement_is_true(sentence, (len(pair[0]), len(pair[1])))
                                                              for sentence in sentences] == wanted), None)
            if candidate is not None:
                break
        pairs.append(candidate if candidate is not None else place_pair())
    labels = [[statement_is_true(sentence, (len(pair[0]), len(pair[1]))) for pair in pairs] for sentence in sentences]
    return pairs, sentences, labels


def write_pair_annotations(output_dir: str, config: SampleNlvr2Config
                           ) -> Tuple[Dict[str, str], Dict[str, Tuple[np.ndarray, np.ndarray]]]:
    """Renders the pair images into ``output_dir/images`` and writes the NLVR2 json lines beside them.

    Args:
        output_dir: gets ``images/{split}-{set}-{pair}-img0/1.png``, ``train.json`` and ``dev.json``.
        config: the generator settings.

    Returns:
        ``({split: json path}, {image id: (RGB pixels, boxes [n, 4] float32)})``.
    """
    rng = np.random.default_rng(config.seed)
    scene_config = config.scene_config()
    image_dir = os.path.join(output_dir, "images")
    os.makedirs(image_dir, exist_ok=True)
    rendered: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
    annotations: Dict[str, str] = {}
    for split, (file_name, _) in SPLITS.items():
        num_sets = config.train_sets if split == "train" else config.eval_sets
        entries = []
        for set_index in range(num_sets):
            pairs, sentences, labels = _draw_set(rng, scene_config, config)
            for pair_index, pair in enumerate(pairs):
                for side, objects in enumerate(pair):
                    image_id = f"{split}-{set_index}-{pair_index}-img{side}"
                    image = sample_data.render_scene(objects, config.image_size, rng)
                    image.save(os.path.join(image_dir, f"{image_id}.png"))
                    rendered[image_id] = (np.asarray(image.convert("RGB")),
                                          np.asarray([obj.box for obj in objects], np.float32))
            for sentence_index, sentence in enumerate(sentences):
                for pair_index in range(len(pairs)):
                    entries.append({"identifier": f"{split}-{set_index}-{pair_index}-{sentence_index}",
                                    "sentence": sentence, "label": str(labels[sentence_index][pair_index])})
        annotations[split] = os.path.join(output_dir, file_name)
        with open(annotations[split], "w", encoding="utf-8") as handle:
            for entry in entries:
                handle.write(json.dumps(entry) + "\n")
    return annotations, rendered


def add_to_sample_root(data_root: str, config: SampleNlvr2Config) -> Dict[str, object]:
    """Adds the NLVR2 pairs to a ``uniter sample-data`` root, for the pipeline's ``nlvr2`` fine-tuning task.

    The pair images go into the root's ``images/`` beside the captioned scenes, their ground-truth boxes into
    its ``boxes.json`` (entries without ``image_id``: they are no caption scene), and ``train.json`` /
    ``dev.json`` beside ``captions.json``. The pipeline's region extraction then covers both, its
    ``Nlvr2ExampleGen`` joins the pairs by whole name, and its ``CaptionExampleGen`` joins the captions by
    the scenes' file names (``DownstreamTaskData.caption_image_key_mode``, ``name`` for NLVR2): by the last
    run of digits, every ``...-img0`` / ``...-img1`` would share the key of ``sample_000000`` /
    ``sample_000001`` and ingest would reject those scenes (``duplicate_image_id``).

    Args:
        data_root: a sample-data root (``captions.json``, ``boxes.json``, ``images/``).
        config: the generator settings.

    Returns:
        ``{"annotations": {split: path}, "images": number of pair images added}``.

    Raises:
        FileNotFoundError: ``data_root`` has no ``boxes.json`` (not a sample-data root).
        ValueError: a pair image name is already in ``boxes.json`` with other boxes (named).
    """
    boxes_path = os.path.join(data_root, "boxes.json")
    if not os.path.exists(boxes_path):
        raise FileNotFoundError(f"{boxes_path} is missing: data_root must be a `uniter sample-data` root")
    with open(boxes_path, encoding="utf-8") as handle:
        boxes = json.load(handle)
    annotations, rendered = write_pair_annotations(data_root, config)
    for image_id, (_, image_boxes) in sorted(rendered.items()):
        file_name = f"{image_id}.png"
        entry = {"boxes": image_boxes.tolist()}
        if file_name in boxes and boxes[file_name].get("boxes") != entry["boxes"]:
            raise ValueError(f"{boxes_path}: {file_name} already has other boxes (a sample scene of that name?)")
        boxes[file_name] = entry
    sample_data._write_json(boxes_path, boxes)  # pylint: disable=protected-access  (the sample root's format)
    return {"annotations": annotations, "images": len(rendered)}


def write_sample_nlvr2(output_dir: str, config: SampleNlvr2Config, model_config, *, num_shards: int = 1
                       ) -> Dict[str, object]:
    """Renders the images, writes the NLVR2 json lines and the canonical pair records.

    Args:
        output_dir: gets ``images/``, ``train.json``, ``dev.json`` and ``records/{train,eval}-*.tfrecord.gz``.
        config: the generator settings.
        model_config: :class:`~uniter_tf.config.UniterConfig` (``region_feature_dim``).
        num_shards: record shards per split.

    Returns:
        ``{"train": paths, "eval": paths, "counts": {split: {"True": n, "False": n}}, "dead_letters": [...],
        "annotations": {split: json path}}``; statements the reader refuses are dead letters (id, reason).
    """
    from uniter_tf.data.readers.nlvr2 import read_nlvr2
    from uniter_tf.data.sample_records import _box_feature  # the pretraining sample's region features
    from uniter_tf.tokenization import UniterTokenizer

    annotation_paths, rendered = write_pair_annotations(output_dir, config)
    images: Dict[str, Tuple[np.ndarray, np.ndarray]] = {  # image id -> (features, boxes)
            image_id: (np.stack([_box_feature(pixels, box, model_config.region_feature_dim) for box in boxes]), boxes)
            for image_id, (pixels, boxes) in rendered.items()}
    result: Dict[str, object] = {"counts": {}, "dead_letters": [], "annotations": annotation_paths}
    tokenizer = UniterTokenizer()
    for split, (_, prefix) in SPLITS.items():
        items = []
        for item in read_nlvr2(annotation_paths[split]):
            if isinstance(item, dead_letter.DeadLetter):
                result["dead_letters"].append((item.record_id, item.reason))
            elif any(image_id not in images for image_id in item.image_ids):
                result["dead_letters"].append((item.example_id, dead_letter.UNKNOWN_IMAGE))
            else:
                items.append(item)
        token_lists = tokenizer.encode([item.text for item in items]) if items else []
        counts = {"True": 0, "False": 0}
        height, width = config.image_size[1], config.image_size[0]
        with tfrecord_io.ShardedTFRecordWriter(os.path.join(output_dir, "records", prefix),
                                               num_shards=num_shards) as writer:
            for item, token_ids in zip(items, token_lists):
                (left_features, left_boxes), (right_features, right_boxes) = (images[i] for i in item.image_ids)
                writer.write(schema.make_example(
                        image_id=item.image_ids[0], region_features=left_features, region_boxes=left_boxes,
                        image_height=height, image_width=width, example_id=item.example_id, text=item.text,
                        token_ids=token_ids, label=item.label, task=schema.TASK_NLVR2,
                        second_image=dict(image_id=item.image_ids[1], region_features=right_features,
                                          region_boxes=right_boxes, image_height=height, image_width=width)))
                counts["True" if item.label else "False"] += 1
        result[prefix] = list(writer.paths)
        result["counts"][prefix] = counts
    return result


def main(argv=None) -> int:
    """``python -m uniter_tf.data.sample_nlvr2 OUTPUT_DIR``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("output_dir")
    parser.add_argument("--train-sets", type=int, default=SampleNlvr2Config.train_sets)
    parser.add_argument("--eval-sets", type=int, default=SampleNlvr2Config.eval_sets)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--statements", nargs="+", default=list(SampleNlvr2Config.statements),
                        choices=STATEMENT_FAMILIES)
    parser.add_argument("--model", default="tiny", help="UniterConfig preset or JSON (region feature dim D)")
    args = parser.parse_args(argv)
    from uniter_tf.config import UniterConfig

    config = SampleNlvr2Config(train_sets=args.train_sets, eval_sets=args.eval_sets, seed=args.seed,
                               statements=tuple(args.statements))
    result = write_sample_nlvr2(args.output_dir, config, UniterConfig.resolve(args.model))
    print(json.dumps({key: value for key, value in result.items() if key in ("counts", "dead_letters",
                                                                              "annotations")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
