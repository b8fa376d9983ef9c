"""VQA v2: questions (``v2_OpenEnded_mscoco_*_questions.json``) + annotations (``v2_mscoco_*_annotations.json``)."""

from __future__ import annotations

from typing import Dict, Iterator, List, Optional

from uniter_tf.data import dead_letter
from uniter_tf.data.readers import _io
from uniter_tf.data.readers import vqa_answers
from uniter_tf.data.readers.text_item import TextItem


def vqa_split(data_subtype: Optional[str]) -> Optional[str]:
    """``train2014`` -> ``train``, ``val2014`` -> ``val``, ``test2015``/``test-dev2015`` -> ``test``."""
    if not data_subtype:
        return None
    for prefix, split in (("train", "train"), ("val", "val"), ("test", "test")):
        if data_subtype.startswith(prefix):
            return split
    return None


def vqa_image_name(image_id, data_subtype: Optional[str]) -> str:
    """The COCO file stem of a VQA image (``COCO_train2014_000000000009``), or the bare id."""
    if data_subtype and str(image_id).isdigit():
        subtype = "test2015" if data_subtype.startswith("test") else data_subtype
        return f"COCO_{subtype}_{int(image_id):012d}"
    return str(image_id)


def load_answer_vocabulary(path: str) -> Dict[str, int]:
    """Reads an ``ans2label.json`` (answer -> index), e.g. the official UNITER ``utils/ans2label.json``."""
    mapping = _io.load_json(path)  # UnreadableFileError (a ValueError) for a missing, broken or too deep file
    if not isinstance(mapping, dict) or not all(isinstance(value, int) and not isinstance(value, bool)
                                                for value in mapping.values()):
        raise ValueError(f"{path!r} must be a JSON object answer -> integer label")
    return {str(answer): int(label) for answer, label in mapping.items()}


def answer_vocabulary_from_annotations(annotation_paths: List[str], top_k: int = 3129) -> Dict[str, int]:
    """The top-``top_k`` vocabulary of the ``multiple_choice_answer``s in VQA annotation files."""
    def answers():
        for path in annotation_paths:
            for annotation in _io.load_json_with_list(path, "annotations", "a VQA annotations file")["annotations"]:
                # Only string answers count: a number or object must not become a vocabulary entry.
                if isinstance(annotation, dict) and isinstance(annotation.get("multiple_choice_answer"), str):
                    yield annotation["multiple_choice_answer"]

    return vqa_answers.build_answer_vocabulary(answers(), top_k)


def read_vqa(questions_path: str, annotations_path: Optional[str], answer_to_label: Dict[str, int]) -> Iterator:
    """Streams VQA questions with their answers, labels and soft scores.

    ``example_id`` = ``vqa_{question_id}``; image id = the COCO file stem; ``answers`` = the normalised
    human answers; ``answer_labels``/``answer_scores`` = the in-vocabulary answers and their VQA
    accuracies. Without an annotations file (test splits) the items have no answers.

    Yields:
        :class:`TextItem`; :class:`DeadLetter` for questions with missing (``missing_field``) or mistyped
        (``bad_type``: a non-string question or human answer, a list id) fields, or without an annotation.
    """
    try:
        questions = _io.load_json_with_list(questions_path, "questions")
        annotations = None
        if annotations_path:
            loaded = _io.load_json_with_list(annotations_path, "annotations")
            # An annotation with a list or object question_id can match no question: leave it out (its
            # question, if any, becomes a missing_field letter) rather than fail on an unhashable key.
            annotations = {annotation.get("question_id"): annotation for annotation in loaded["annotations"]
                           if isinstance(annotation, dict)
                           and _io.id_problem(annotation.get("question_id"), "question_id") is None}
    except _io.UnreadableFileError as error:
        yield dead_letter.DeadLetter(questions_path, dead_letter.UNREADABLE_INPUT, str(error), questions_path,
                                     kind="input")
        return
    data_subtype = questions.get("data_subtype")
    data_subtype = data_subtype if isinstance(data_subtype, str) else None
    split = vqa_split(data_subtype)
    for index, question in enumerate(questions["questions"]):
        source = f"{questions_path}#questions[{index}]"
        if not isinstance(question, dict):
            yield _io.letter(source, (dead_letter.BAD_TYPE, "VQA question must be an object, got "
                                                            f"{dead_letter.describe_value(question)}"), source)
            continue
        problem = _io.id_problem(question.get("question_id"), "question_id")
        record_id = source if problem else f"vqa_{question['question_id']}"
        problem = (problem or _io.id_problem(question.get("image_id"), "image_id")
                   or _io.text_problem(question.get("question"), "question"))
        if problem is not None:
            yield _io.letter(record_id, problem, source)
            continue
        example_id = record_id
        item = TextItem(example_id=example_id,
                        image_ids=(vqa_image_name(question["image_id"], data_subtype),),
                        text=question["question"], split=split, source=source)
        if annotations is not None:
            annotation = annotations.get(question["question_id"])
            if annotation is None or not isinstance(annotation.get("answers"), list):
                yield dead_letter.DeadLetter(example_id, dead_letter.MISSING_FIELD,
                                             "no annotation with answers for this question", source)
                continue
            raw_answers = [answer.get("answer") if isinstance(answer, dict) else answer
                           for answer in annotation["answers"]]
            problem = next(filter(None, (_io.text_problem(answer, "answers[].answer") for answer in raw_answers)),
                           None)
            if problem is not None:
                yield _io.letter(example_id, problem, source)
                continue
            human_answers = tuple(vqa_answers.normalize_answer(answer) for answer in raw_answers)
            labels, scores = vqa_answers.soft_targets(human_answers, answer_to_label)
            item.answers = human_answers
            item.answer_labels = tuple(labels)
            item.answer_scores = tuple(scores)
        yield item
