"""The question-only VQA baseline: each question answered with its type's most credited training answer."""

from __future__ import annotations

from typing import Dict, Mapping, Sequence

from uniter_tf.evaluation.records import question_fields, soft_score

#: VQA v2 question types (the annotations' ``question_type``: a question's opening words) that the
#: question-only baseline groups by. The canonical record keeps the question text but not this field, so
#: the type is re-derived: the longest of these prefixes the question starts with, else its first two words.
QUESTION_TYPE_PREFIXES = (
        "what color is the", "what color are the", "what color", "what shape is the", "what shape",
        "what is the", "what is", "what are the", "what kind of", "what type of", "how many people are",
        "how many", "is the", "is there a", "is this a", "is this", "is there", "is it", "are there", "are the",
        "are these", "does the", "do you", "can you", "where is the", "where are the", "which", "who is",
        "why", "none of the above")


def question_type(question: str) -> str:
    """The VQA question type of ``question`` (see :data:`QUESTION_TYPE_PREFIXES`).

    >>> question_type("What color is the circle?"), question_type("How many squares are there?")
    ('what color is the', 'how many')
    """
    words = "".join(character if character.isalnum() or character.isspace() else " "
                    for character in question.lower()).split()
    text = " ".join(words)
    for prefix in sorted(QUESTION_TYPE_PREFIXES, key=len, reverse=True):
        if text == prefix or text.startswith(prefix + " "):
            return prefix
    return " ".join(words[:2])


def question_prior_answers(train_questions: Sequence) -> Dict[str, int]:
    """The question-only baseline: per question type, the answer label with the most soft credit in training.

    Args:
        train_questions: the training split's question records (``tf.train.Example``).

    Returns:
        ``{question type: answer label}``, plus the key ``""``: the best answer over all types (used for
        types that training never saw).

    Raises:
        ValueError: ``train_questions`` is empty.
    """
    if not train_questions:
        raise ValueError("the question-only baseline needs training questions; the train split holds none")
    credit: Dict[str, Dict[int, float]] = {}
    for example in train_questions:
        text, labels, scores = question_fields(example)
        for key in (question_type(text), ""):
            per_answer = credit.setdefault(key, {})
            for label, score in zip(labels.tolist(), scores.tolist()):
                per_answer[label] = per_answer.get(label, 0.0) + score
    # Ties go to the smaller label, so the baseline is deterministic.
    return {key: min(per_answer, key=lambda label: (-per_answer[label], label))
            for key, per_answer in credit.items() if per_answer}


def question_prior_score(prior_answers: Mapping[str, int], questions: Sequence) -> float:
    """VQA score of answering each question with its type's training prior (:func:`question_prior_answers`).

    Every question counts in the mean, including those whose answers are all out of vocabulary (score 0).
    """
    if not questions:
        raise ValueError("no questions to score the question-only baseline on")
    fallback = prior_answers.get("")
    total = 0.0
    for example in questions:
        answer = prior_answers.get(question_type(question_fields(example)[0]), fallback)
        total += soft_score(example, answer) if answer is not None else 0.0
    return total / len(questions)
