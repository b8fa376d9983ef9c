"""VQA answer normalisation, soft scores and the answer vocabulary.

Normalisation follows the steps of the official VQA evaluation (``vqaEval.py``): newlines/tabs to
spaces, punctuation handling (removed next to spaces or in ``1,000``-style numbers, else replaced by a
space; periods removed unless part of a number), lower-casing, number words to digits, articles removed,
common apostrophe-less contractions restored.

The soft score of an answer is the official VQA accuracy of predicting it: the mean over the leave-one-
out subsets of the human answers of ``min(1, matches / 3)`` (0.3 / 0.6 / 0.9 / 1.0 for 1 / 2 / 3 / 4+ of
10 humans).
"""

from __future__ import annotations

import collections
import re
from typing import Dict, Iterable, List, Sequence, Tuple

_PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
                ",", "?", "!"]
_COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")
_PERIOD_NOT_IN_NUMBER = re.compile(r"(?!<=\d)(\.)(?!\d)")
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_CONTRACTIONS = {
        "aint": "ain't", "arent": "aren't", "cant": "can't", "couldnt": "couldn't", "didnt": "didn't",
        "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't", "havent": "haven't",
        "hes": "he's", "im": "i'm", "ive": "i've", "isnt": "isn't", "itll": "it'll", "lets": "let's",
        "oclock": "o'clock", "shouldnt": "shouldn't", "shes": "she's", "thats": "that's", "theres": "there's",
        "theyre": "they're", "theyve": "they've", "wasnt": "wasn't", "werent": "weren't", "whats": "what's",
        "wheres": "where's", "whos": "who's", "wont": "won't", "wouldnt": "wouldn't", "youre": "you're",
        "youve": "you've",
}


def _process_punctuation(text: str) -> str:
    output = text
    for mark in _PUNCTUATION:
        if (mark + " " in text or " " + mark in text) or _COMMA_IN_NUMBER.search(text) is not None:
            output = output.replace(mark, "")
        else:
            output = output.replace(mark, " ")
    return _PERIOD_NOT_IN_NUMBER.sub("", output)


def _process_digits_articles(text: str) -> str:
    words = []
    for word in text.lower().split():
        word = _NUMBER_WORDS.get(word, word)
        if word not in _ARTICLES:
            words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def normalize_answer(answer: str) -> str:
    """Normalises a VQA answer as the official evaluation does (see the module docstring)."""
    text = str(answer).replace("\n", " ").replace("\t", " ").strip()
    return _process_digits_articles(_process_punctuation(text))


def vqa_accuracy(answer: str, human_answers: Sequence[str]) -> float:
    """The official VQA accuracy of predicting ``answer`` (both sides already normalised).

    Mean over the ``len(human_answers)`` leave-one-out subsets of ``min(1, matches_in_subset / 3)``.
    """
    if not human_answers:
        return 0.0
    matches = sum(1 for human in human_answers if human == answer)
    total = 0.0
    for human in human_answers:
        remaining_matches = matches - (1 if human == answer else 0)
        total += min(1.0, remaining_matches / 3.0)
    return total / len(human_answers)


def soft_targets(human_answers: Sequence[str], answer_to_label: Dict[str, int]) -> Tuple[List[int], List[float]]:
    """``(labels, scores)`` of the in-vocabulary answers with a positive score, labels ascending."""
    labels, scores = [], []
    for answer in sorted(set(human_answers), key=lambda candidate: answer_to_label.get(candidate, -1)):
        if answer not in answer_to_label:
            continue
        score = vqa_accuracy(answer, human_answers)
        if score > 0:
            labels.append(answer_to_label[answer])
            scores.append(score)
    return labels, scores


def build_answer_vocabulary(answers: Iterable[str], top_k: int = 3129) -> Dict[str, int]:
    """``answer -> label`` for the ``top_k`` most frequent (normalised) answers.

    Ties are broken alphabetically so the vocabulary is deterministic. UNITER's released vocabulary has
    3129 answers (spec §5.1), built the same way from the ``multiple_choice_answer`` of the training
    questions; pass the official ``ans2label.json`` instead to reproduce its indices exactly.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    counts = collections.Counter(normalize_answer(answer) for answer in answers)
    counts.pop("", None)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:top_k]
    return {answer: index for index, (answer, _) in enumerate(ranked)}
