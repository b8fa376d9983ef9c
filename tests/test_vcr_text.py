"""VCR multi-segment text (issue 14): in-graph packing against the official construction, references, truncation."""

import numpy as np
import pytest
import tensorflow as tf

from uniter_tf import tokenization
from uniter_tf.tokenization import (ANSWER_TYPE_ID, QUESTION_TYPE_ID, RATIONALE_TYPE_ID, encode_segments,
                                    pack_segments, tokenize_with_references, trim_segments)

CLS, SEP = 101, 102


@pytest.fixture(scope="module")
def tokenizer():
    return tokenization.UniterTokenizer()


def official_rows(q, answers, rationales=None, gt_answer=None):
    """data/vcr.py:102-159 (VcrDataset._get_input_ids / __getitem__) transcribed on Python lists."""
    type_ids_q = [0] * len(q)
    input_ids_q = list(q)
    if rationales is not None:  # task "qar": the question is followed by [SEP] + the gt answer, type 2
        input_ids_q += [SEP] + list(answers[gt_answer])
        type_ids_q += [2] * (len(answers[gt_answer]) + 1)
        choices = rationales
    else:
        choices = answers
    rows = []
    for choice in choices:
        input_ids = [CLS] + input_ids_q + [SEP] + list(choice) + [SEP]
        type_for_choice = 3 if type_ids_q[-1] == 2 else 2
        rows.append((input_ids, [0] + type_ids_q + [type_for_choice] * (len(choice) + 2)))
    return rows


def ragged(rows):
    return tf.ragged.constant(rows, dtype=tf.int32, ragged_rank=1) if any(rows) else tf.RaggedTensor.from_row_lengths(
            tf.zeros([0], tf.int32), [0] * len(rows))


def test_packing_matches_the_official_qa_and_qar_construction():
    rng = np.random.default_rng(0)
    for _ in range(20):
        q = rng.integers(1000, 2000, rng.integers(1, 9)).tolist()
        answers = [rng.integers(1000, 2000, rng.integers(1, 7)).tolist() for _ in range(4)]
        rationales = [rng.integers(1000, 2000, rng.integers(1, 12)).tolist() for _ in range(4)]
        gt = int(rng.integers(0, 4))
        ids, types = pack_segments([ragged([q] * 4), ragged(answers)], (QUESTION_TYPE_ID, ANSWER_TYPE_ID), CLS, SEP)
        assert list(zip(ids.to_list(), types.to_list())) == official_rows(q, answers)
        ids, types = pack_segments([ragged([q] * 4), ragged([answers[gt]] * 4), ragged(rationales)],
                                   (QUESTION_TYPE_ID, ANSWER_TYPE_ID, RATIONALE_TYPE_ID), CLS, SEP)
        assert list(zip(ids.to_list(), types.to_list())) == official_rows(q, answers, rationales, gt)


def python_trim(lengths, budget):
    """The stated rule: the longest segment loses its last token, the earliest among equals first."""
    lengths = list(lengths)
    while sum(lengths) > budget:
        lengths[int(np.argmax(lengths))] -= 1
    return lengths


def test_truncation_is_longest_first_and_keeps_short_segments():
    rng = np.random.default_rng(1)
    for _ in range(30):
        lengths = rng.integers(1, 30, 3).tolist()
        budget = int(rng.integers(3, 70))
        segments = [ragged([list(range(100 * k, 100 * k + n))]) for k, n in enumerate(lengths)]
        trimmed = trim_segments(segments, budget)
        expected = python_trim(lengths, budget)
        assert [segment.to_list()[0] for segment in trimmed] == [
                list(range(100 * k, 100 * k + n)) for k, n in enumerate(expected)], (lengths, budget)
    # A short question survives a long rationale untouched.
    q, a, r = ragged([[1, 2, 3]]), ragged([[4, 5]]), ragged([list(range(10, 60))])
    ids, types = pack_segments([q, a, r], (0, 2, 3), CLS, SEP, max_text_length=20)
    assert ids.to_list()[0] == [CLS, 1, 2, 3, SEP, 4, 5, SEP] + list(range(10, 25)) + [SEP]
    assert len(types.to_list()[0]) == 20 + 4
    with pytest.raises(ValueError, match="cannot hold"):
        trim_segments([q, a, r], 2)


def test_references_become_one_id_each_and_other_words_tokenize_as_before(tokenizer):
    texts = ["Why is [0] above [1]?", "[ 12 ]-[2] and [80] x", "A plain text, no references."]
    got = tokenize_with_references(tokenizer, texts).to_list()
    base = tokenizer.vocab_size
    assert base == 28996
    plain = tokenizer.encode(["Why is", "above", "?", "-", "and", "x", texts[2]])
    assert got[0] == plain[0] + [base + 0] + plain[1] + [base + 1] + plain[2]
    assert got[1] == [base + 12] + plain[3] + [base + 2] + plain[4] + [base + 80] + plain[5]
    assert got[2] == plain[6] == tokenizer.encode(texts[2])
    with pytest.raises(tf.errors.InvalidArgumentError, match="81 reference ids"):
        tokenize_with_references(tokenizer, ["Look at [81]."])
    with pytest.raises(tf.errors.InvalidArgumentError, match="81 reference ids"):
        tokenize_with_references(tokenizer, ["Look at [123456789012345678901234]."])


def test_encode_segments_in_a_tf_function_over_string_tensors(tokenizer):
    spec = tf.TensorSpec([None], tf.string)

    @tf.function(input_signature=[spec, spec, spec])
    def encode(question, answer, rationale):
        return encode_segments(tokenizer, [question, answer, rationale], (0, 2, 3), max_text_length=12)

    out = encode(tf.constant(["Why is [0] red?", "What?"]), tf.constant(["It is [0] .", "Nothing."]),
                 tf.constant(["Because [0] is a red circle and circles are red here.", "No."]))
    q = tokenize_with_references(tokenizer, ["Why is [0] red?"]).to_list()[0]
    a = tokenize_with_references(tokenizer, ["It is [0] ."]).to_list()[0]
    r = tokenize_with_references(tokenizer, ["Because [0] is a red circle and circles are red here."]).to_list()[0]
    lengths = python_trim([len(q), len(a), len(r)], 12)
    (ids, types), = official_rows(q[:lengths[0]], [a[:lengths[1]]] * 4, [r[:lengths[2]]], 0)[:1]
    width = out["token_ids"].shape[1]
    assert width == len(ids) == 12 + 4
    assert out["token_ids"].numpy()[0].tolist() == ids
    assert out["token_type_ids"].numpy()[0].tolist() == types
    assert out["text_mask"].numpy()[0].tolist() == [1] * width
    # The short second row is padded with [PAD], type 0, mask 0.
    second = out["token_ids"].numpy()[1]
    length = int(out["text_mask"].numpy()[1].sum())
    assert second[length:].tolist() == [0] * (width - length)
    assert out["token_type_ids"].numpy()[1, length:].tolist() == [0] * (width - length)
