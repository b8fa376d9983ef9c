"""A deterministic, learnable sample dataset of rendered scenes (PIL) for extraction, pretraining and fine-tuning.

Each image shows a few large, non-overlapping shapes (circle, square, triangle) in distinct colours on a
light, slightly noisy background. For every image the generator writes captions that name colours, shapes,
sizes, counts and relative positions, VQA questions with their answers, and the ground-truth boxes.

Output layout of :func:`generate`::

    images/sample_000000.png ...
    captions.json           COCO captions: {"images": [...], "annotations": [{"image_id", "id", "caption"}]}
    vqa_questions.json      VQA v2 questions: {"questions": [{"image_id", "question", "question_id"}], ...}
    vqa_annotations.json    VQA v2 annotations: {"annotations": [{"question_id", "answers": [10 x ...], ...}]}
    boxes.json              {file name: {"image_id", "boxes": [[x1, y1, x2, y2], ...], "labels": [...]}}
    snli_ve_train.jsonl     SNLI-VE hypotheses (official jsonl: Flikr30kID, sentence2, gold_label, pairID)
    snli_ve_dev.jsonl       the same for the held-out images (``image_id % VE_EVAL_EVERY == 0``)

The SNLI-VE hypotheses (:func:`make_hypotheses`) come in equal numbers per label: an entailment names a
colour and shape that is in the picture, a contradiction names a colour that is in no shape of the picture
(every shape has its own colour, so the picture decides it), and a neutral one states a property the
picture cannot show (material, weight, ...) of a shape that is there. Telling entailment from
contradiction needs the image; the neutral templates are recognisable from the text alone, as many real
SNLI-VE neutrals are.

The same ``seed`` and ``num_images`` always give byte-identical files.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict, List, Tuple

import numpy as np

COLORS: Dict[str, Tuple[int, int, int]] = {
        "red": (220, 40, 40),
        "green": (40, 170, 60),
        "blue": (40, 80, 220),
        "yellow": (235, 205, 30),
        "purple": (140, 60, 180),
}
SHAPES = ("circle", "square", "triangle")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five")
FILE_PATTERN = "sample_{:06d}.png"
VQA_ANSWERS_PER_QUESTION = 10
#: Held-out SNLI-VE images: ``image_id % VE_EVAL_EVERY == 0`` (the split rule of the sample records).
VE_EVAL_EVERY = 5
#: Hypotheses per label and image.
VE_HYPOTHESES_PER_LABEL = 2
_VE_PRESENCE_TEMPLATES = ("There is a {} in the picture.", "The picture shows a {}.", "A {} can be seen.")
_VE_NEUTRAL_TEMPLATES = ("The {} is made of wood.", "The {} is heavy.", "The {} was painted by a child.",
                         "The {} is made of glass.", "The {} is very old.")


@dataclasses.dataclass(frozen=True)
class SceneObject:
    """One rendered shape: pixel box ``x1, y1, x2, y2`` (x right, y down)."""

    shape: str
    color: str
    box: Tuple[int, int, int, int]

    @property
    def label(self) -> str:
        return f"{self.color} {self.shape}"

    @property
    def center(self) -> Tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2.0, (self.box[1] + self.box[3]) / 2.0

    @property
    def size(self) -> int:
        return self.box[2] - self.box[0]


@dataclasses.dataclass(frozen=True)
class SampleDataConfig:
    """Generator settings.

    Attributes:
        num_images: images to render.
        seed: random seed (same seed, same files).
        image_size: ``(width, height)`` in pixels.
        min_objects: fewest shapes per image.
        max_objects: most shapes per image (each with a distinct colour/shape pair).
        min_object_size: smallest shape side in pixels (large enough for the detector's 19x19 map).
        max_object_size: largest shape side in pixels.
        presence_questions: also ask, per object, "Is there a <colour> <shape>?" about it (yes) and about
            the same shape in a colour no shape of that kind has (no). Answering needs colour and shape
            bound to one region, and the answers are balanced, so the question text alone scores 0.5. Off
            by default (the files of the other settings stay byte-identical); the demo turns it on
            (pipeline/configs.py, docs/pipeline.md "The demo's recipe").
    """

    num_images: int = 32
    seed: int = 0
    image_size: Tuple[int, int] = (320, 240)
    min_objects: int = 1
    max_objects: int = 4
    min_object_size: int = 48
    max_object_size: int = 110
    presence_questions: bool = False

    def __post_init__(self):
        if self.num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {self.num_images}")
        if not 1 <= self.min_objects <= self.max_objects <= len(COLORS):
            raise ValueError(f"need 1 <= min_objects <= max_objects <= {len(COLORS)}, "
                             f"got {self.min_objects}..{self.max_objects}")
        if not 8 <= self.min_object_size <= self.max_object_size <= min(self.image_size) // 2:
            raise ValueError(f"object sizes {self.min_object_size}..{self.max_object_size} do not fit "
                             f"a {self.image_size} image")


def _place_objects(rng: np.random.Generator, config: SampleDataConfig) -> List[SceneObject]:
    width, height = config.image_size
    count = int(rng.integers(config.min_objects, config.max_objects + 1))
    colors = rng.permutation(list(COLORS))[:count]
    objects: List[SceneObject] = []
    for color in colors:
        for _ in range(200):  # rejection sampling; a free spot exists for these sizes almost always
            size = int(rng.integers(config.min_object_size, config.max_object_size + 1))
            x1 = int(rng.integers(4, width - size - 4))
            y1 = int(rng.integers(4, height - size - 4))
            box = (x1, y1, x1 + size, y1 + size)
            if all(box[0] >= other.box[2] + 6 or other.box[0] >= box[2] + 6 or box[1] >= other.box[3] + 6
                   or other.box[1] >= box[3] + 6 for other in objects):
                objects.append(SceneObject(str(rng.choice(SHAPES)), str(color), box))
                break
    return objects


def render_scene(objects: List[SceneObject], image_size: Tuple[int, int], rng: np.random.Generator):
    """Draws the objects on a light noisy background; returns a PIL RGB image."""
    from PIL import Image, ImageDraw

    width, height = image_size
    base = np.array([235, 232, 225], np.float32) + rng.normal(0, 6, size=3)
    background = base + rng.normal(0, 4, size=(height, width, 3))
    image = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for obj in objects:
        x1, y1, x2, y2 = obj.box
        fill = COLORS[obj.color]
        outline = tuple(int(c * 0.6) for c in fill)
        if obj.shape == "circle":
            draw.ellipse([x1, y1, x2 - 1, y2 - 1], fill=fill, outline=outline, width=2)
        elif obj.shape == "square":
            draw.rectangle([x1, y1, x2 - 1, y2 - 1], fill=fill, outline=outline, width=2)
        else:
            draw.polygon([((x1 + x2) / 2, y1), (x2 - 1, y2 - 1), (x1, y2 - 1)], fill=fill, outline=outline)
    return image


def _size_word(obj: SceneObject, config: SampleDataConfig) -> str:
    middle = (config.min_object_size + config.max_object_size) / 2
    return "large" if obj.size >= middle else "small"


def _relation(first: SceneObject, second: SceneObject) -> str:
    dx = second.center[0] - first.center[0]
    dy = second.center[1] - first.center[1]
    if abs(dx) >= abs(dy):
        return "to the left of" if dx > 0 else "to the right of"
    return "above" if dy > 0 else "below"


def _with_article(phrase: str) -> str:
    return f"a {phrase}"


def make_captions(objects: List[SceneObject], config: SampleDataConfig, rng: np.random.Generator) -> List[str]:
    """Three captions of a scene: an inventory, a count + size description, and a spatial relation."""
    labels = [obj.label for obj in objects]
    if len(labels) == 1:
        inventory = f"{_with_article(labels[0])} on a plain background"
    else:
        inventory = ", ".join(_with_article(label) for label in labels[:-1]) + f" and {_with_article(labels[-1])}"
    noun = "shape" if len(objects) == 1 else "shapes"
    sizes = ", ".join(f"{_with_article(_size_word(obj, config) + ' ' + obj.label)}" for obj in objects)
    captions = [inventory.capitalize() + ".", f"There {'is' if len(objects) == 1 else 'are'} "
                f"{NUMBER_WORDS[len(objects)]} {noun}: {sizes}."]
    if len(objects) >= 2:
        first, second = (objects[i] for i in rng.permutation(len(objects))[:2])
        captions.append(f"The {first.label} is {_relation(first, second)} the {second.label}.")
    else:
        horizontal = "left" if objects[0].center[0] < config.image_size[0] / 2 else "right"
        vertical = "top" if objects[0].center[1] < config.image_size[1] / 2 else "bottom"
        captions.append(f"A {objects[0].label} in the {vertical} {horizontal} of the picture.")
    return captions


def make_questions(objects: List[SceneObject], rng: np.random.Generator) -> List[Dict[str, str]]:
    """VQA questions with one answer each: colour, shape, count and relative position."""
    questions = [{"question": "How many shapes are there?", "answer": str(len(objects)),
                  "question_type": "how many", "answer_type": "number"}]
    shape_counts = {shape: sum(obj.shape == shape for obj in objects) for shape in SHAPES}
    for obj in objects:
        if shape_counts[obj.shape] == 1:
            questions.append({"question": f"What color is the {obj.shape}?", "answer": obj.color,
                              "question_type": "what color is the", "answer_type": "other"})
        questions.append({"question": f"What shape is the {obj.color} object?", "answer": obj.shape,
                          "question_type": "what shape is the", "answer_type": "other"})
    asked_shape = str(rng.choice(SHAPES))
    questions.append({"question": f"How many {asked_shape}s are there?", "answer": str(shape_counts[asked_shape]),
                      "question_type": "how many", "answer_type": "number"})
    if len(objects) >= 2:
        first, second = (objects[i] for i in rng.permutation(len(objects))[:2])
        relation = _relation(first, second)
        asked = str(rng.choice(["to the left of", "to the right of", "above", "below"]))
        questions.append({"question": f"Is the {first.label} {asked} the {second.label}?",
                          "answer": "yes" if asked == relation else "no",
                          "question_type": "is the", "answer_type": "yes/no"})
    return questions


def make_presence_questions(objects: List[SceneObject], rng: np.random.Generator) -> List[Dict[str, str]]:
    """Yes/no questions binding a colour to a shape: per object one about it (yes) and one about its shape in
    a colour that no shape of that kind has in the scene (no)."""
    questions = []
    for obj in objects:
        questions.append({"question": f"Is there a {obj.color} {obj.shape}?", "answer": "yes",
                          "question_type": "is there a", "answer_type": "yes/no"})
        taken = {other.color for other in objects if other.shape == obj.shape}
        # Prefer a colour that is in the picture (on another shape), so colour presence alone does not answer.
        present = [other.color for other in objects if other.color not in taken]
        absent = [color for color in COLORS if color not in taken]
        color = str(rng.choice(present)) if present and rng.random() < 0.5 else str(rng.choice(absent))
        questions.append({"question": f"Is there a {color} {obj.shape}?", "answer": "no",
                          "question_type": "is there a", "answer_type": "yes/no"})
    order = rng.permutation(len(questions))
    return [questions[index] for index in order]


def make_hypotheses(objects: List[SceneObject], rng: np.random.Generator) -> List[Dict[str, str]]:
    """SNLI-VE hypotheses about a scene, :data:`VE_HYPOTHESES_PER_LABEL` per label.

    Returns:
        ``[{"hypothesis", "gold_label"}]`` with labels ``entailment`` (a colour + shape that is in the
        picture), ``contradiction`` (a colour no shape has, with any shape) and ``neutral`` (an
        unobservable property of a shape that is there).
    """
    present = {obj.color for obj in objects}
    absent = [color for color in COLORS if color not in present]
    if not absent:
        raise ValueError("a scene uses every colour: no contradiction can be stated about it")
    hypotheses = []
    for _ in range(VE_HYPOTHESES_PER_LABEL):
        obj = objects[int(rng.integers(len(objects)))]
        hypotheses.append({"hypothesis": str(rng.choice(_VE_PRESENCE_TEMPLATES)).format(obj.label),
                           "gold_label": "entailment"})
        wrong = f"{rng.choice(absent)} {rng.choice(SHAPES)}"
        hypotheses.append({"hypothesis": str(rng.choice(_VE_PRESENCE_TEMPLATES)).format(wrong),
                           "gold_label": "contradiction"})
        obj = objects[int(rng.integers(len(objects)))]
        hypotheses.append({"hypothesis": str(rng.choice(_VE_NEUTRAL_TEMPLATES)).format(obj.label),
                           "gold_label": "neutral"})
    return hypotheses


def generate(output_dir: str, config: SampleDataConfig = SampleDataConfig()) -> Dict[str, int]:
    """Renders the dataset into ``output_dir`` (see the module docstring for the layout).

    Returns:
        Counts: ``images``, ``captions``, ``questions``, ``boxes``.
    """
    rng = np.random.default_rng(config.seed)
    image_dir = os.path.join(output_dir, "images")
    os.makedirs(image_dir, exist_ok=True)
    width, height = config.image_size
    coco_images, coco_captions, vqa_questions, vqa_annotations, boxes = [], [], [], [], {}
    ve_lines = {"train": [], "dev": []}
    for image_id in range(config.num_images):
        objects = _place_objects(rng, config)
        file_name = FILE_PATTERN.format(image_id)
        render_scene(objects, config.image_size, rng).save(os.path.join(image_dir, file_name), format="PNG")
        coco_images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for caption in make_captions(objects, config, rng):
            coco_captions.append({"image_id": image_id, "id": len(coco_captions), "caption": caption})
        questions = make_questions(objects, rng)
        if config.presence_questions:
            # Their own generator per image, so the other files stay as they are without these questions.
            questions += make_presence_questions(objects, np.random.default_rng([config.seed, image_id, 11]))
        for question_index, question in enumerate(questions):
            question_id = image_id * 100 + question_index
            vqa_questions.append({"image_id": image_id, "question": question["question"], "question_id": question_id})
            vqa_annotations.append({
                    "question_id": question_id, "image_id": image_id, "question_type": question["question_type"],
                    "answer_type": question["answer_type"], "multiple_choice_answer": question["answer"],
                    "answers": [{"answer": question["answer"], "answer_confidence": "yes", "answer_id": index + 1}
                                for index in range(VQA_ANSWERS_PER_QUESTION)]})
        # A separate generator per image, so the hypotheses leave the other files' random stream as it was.
        ve_rng = np.random.default_rng([config.seed, image_id, 7])
        ve_split = "dev" if image_id % VE_EVAL_EVERY == 0 else "train"
        for index, hypothesis in enumerate(make_hypotheses(objects, ve_rng)):
            ve_lines[ve_split].append({"Flikr30kID": file_name, "sentence1": make_captions(objects, config, ve_rng)[0],
                                       "sentence2": hypothesis["hypothesis"], "gold_label": hypothesis["gold_label"],
                                       "pairID": f"{image_id}_{index}", "captionID": f"{image_id}_0"})
        boxes[file_name] = {"image_id": image_id, "boxes": [list(obj.box) for obj in objects],
                            "labels": [obj.label for obj in objects]}
    info = {"description": "uniter-tf rendered sample data", "version": "1.0", "seed": config.seed}
    if config.presence_questions:
        info["presence_questions"] = True  # only then, so the other files stay byte-identical
    _write_json(os.path.join(output_dir, "captions.json"),
                {"info": info, "licenses": [], "images": coco_images, "annotations": coco_captions})
    _write_json(os.path.join(output_dir, "vqa_questions.json"),
                {"info": info, "task_type": "Open-Ended", "data_type": "sample", "data_subtype": "sample",
                 "license": {}, "questions": vqa_questions})
    _write_json(os.path.join(output_dir, "vqa_annotations.json"),
                {"info": info, "data_type": "sample", "data_subtype": "sample", "license": {},
                 "annotations": vqa_annotations})
    _write_json(os.path.join(output_dir, "boxes.json"), boxes)
    for split, lines in ve_lines.items():
        with open(os.path.join(output_dir, f"snli_ve_{split}.jsonl"), "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(line, sort_keys=True) + "\n" for line in lines)
    return {"images": len(coco_images), "captions": len(coco_captions), "questions": len(vqa_questions),
            "boxes": sum(len(entry["boxes"]) for entry in boxes.values()),
            "hypotheses": sum(len(lines) for lines in ve_lines.values())}


def _write_json(path: str, content) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(content, handle, indent=1, sort_keys=True)
        handle.write("\n")


__all__ = ["COLORS", "SHAPES", "VE_EVAL_EVERY", "SceneObject", "SampleDataConfig", "render_scene", "make_captions",
           "make_questions", "make_presence_questions",
           "make_hypotheses", "generate"]
