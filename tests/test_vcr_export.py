"""VCR's multiple-choice serving graph on a tiny random model, called in-process (no SavedModel: fast).

The choice signatures (uniter_tf/export/choice_signatures.py) must give the in-process VCR task model's
class-1 logit for every (question, choice) row built as in training/evaluation (encode_segments: question
type 0, answer 2, rationale 3, references [i] -> one word id), choose the best one, build the QA→R rows
with the chosen answer, and refuse an empty choice or a reference to a region the example does not have
with an error naming the input. The served path (SavedModel, gRPC, REST, `uniter query`) is
tests/test_vcr_serving.py.
"""

import numpy as np
import pytest
import tensorflow as tf

from uniter_tf.config import UniterConfig
from uniter_tf.export.choice_signatures import (ANSWER_QUESTION, SCORE_RATIONALES, ChoiceServingGraph,
                                                choice_example_inputs, is_multiple_choice)
from uniter_tf.export.signatures import SERVING_DEFAULT, ExportOptions
from uniter_tf.export.task_heads import TaskHeadExport
from uniter_tf.models.vcr_task import MultipleChoiceOutputs, VcrTask
from uniter_tf.tokenization import UniterPreprocessor, UniterTokenizer, encode_segments

OPTIONS = ExportOptions(max_text_length=40, text_buckets=(16, 40), region_buckets=(4, 8), warmup=False)
QUESTIONS = ["Why is [0] next to [1] ?", "What colour is [2] ?"]
ANSWERS = [["because [0] likes [1]", "it is raining", "no reason", "[1] asked"],
           ["red", "green", "blue", "the colour of [0]"]]
RATIONALES = [["[0] smiles", "[1] waves", "they talk", "nothing"], ["it is bright", "[2] is dark", "a", "b"]]


@pytest.fixture(scope="module")
def graph():
    import keras

    keras.utils.set_random_seed(5)
    task = VcrTask()
    config = UniterConfig.from_preset("tiny").replace(vocab_size=28996 + 81, type_vocab_size=4)
    model = task.build_model(config)
    rng = np.random.default_rng(5)
    for variable in model.head.weights:  # visible differences between rows
        variable.assign(rng.normal(0, 0.3, variable.shape).astype(np.float32))
    hook = TaskHeadExport.from_task(task, model.head)
    preprocessor = UniterPreprocessor(sequence_length=OPTIONS.max_text_length,
                                      bucket_boundaries=list(OPTIONS.text_buckets))
    graph = ChoiceServingGraph(model.backbone, None, preprocessor, OPTIONS, task=hook,
                               vocab_table=_vocab_table(preprocessor.tokenizer))
    return model, graph


def _vocab_table(tokenizer):
    return tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            tf.range(tokenizer.vocab_size, dtype=tf.int64), tf.constant(tokenizer.vocabulary)), default_value="")


def _request(dim, counts=(3, 5), seed=0):
    rng = np.random.default_rng(seed)
    width = max(counts) + 1  # one padded slot more than any example needs
    corners = np.sort(rng.uniform(0, 1, (len(counts), width, 2, 2)), axis=2)
    boxes = np.stack([corners[..., 0, 0] * 640, corners[..., 0, 1] * 480, corners[..., 1, 0] * 640,
                      corners[..., 1, 1] * 480], axis=-1).astype(np.float32)
    return {"question": np.array([text.encode() for text in QUESTIONS], dtype=object),
            "answers": np.array([[text.encode() for text in row] for row in ANSWERS], dtype=object),
            "rationales": np.array([[text.encode() for text in row] for row in RATIONALES], dtype=object),
            "region_features": rng.standard_normal((len(counts), width, dim)).astype(np.float32),
            "region_boxes": boxes, "image_size": np.tile(np.array([[480, 640]], np.float32), (len(counts), 1)),
            "num_regions": np.array(counts, np.int32)}


def _positions(boxes):
    scaled = boxes / np.array([640, 480, 640, 480], np.float32)
    box_width, box_height = scaled[..., 2] - scaled[..., 0], scaled[..., 3] - scaled[..., 1]
    return np.concatenate([scaled, box_width[..., None], box_height[..., None], (box_width * box_height)[..., None]],
                          axis=-1).astype(np.float32)


def _in_process_scores(model, request, index, segments, types):
    """The Keras task model on one example's 4 rows (encode_segments, unpadded regions): class-1 logits."""
    tokenizer = UniterTokenizer()
    encoded = encode_segments(tokenizer, [tf.constant(texts) for texts in segments], types,
                              max_text_length=OPTIONS.max_text_length - 2)
    count = int(request["num_regions"][index])
    rows = len(segments[0])
    inputs = dict(encoded)
    inputs["region_features"] = tf.constant(np.repeat(request["region_features"][index:index + 1, :count], rows, 0))
    inputs["region_positions"] = tf.constant(np.repeat(_positions(request["region_boxes"][index:index + 1, :count]),
                                                       rows, 0))
    inputs["region_mask"] = tf.ones([rows, count], tf.int32)
    return model(inputs, training=False).numpy()[:, 1]


def test_scores_equal_the_in_process_rows_and_the_choice_is_their_argmax(graph):
    model, serving = graph
    request = _request(model.backbone.config.region_feature_dim)
    outputs = {name: value.numpy() for name, value in serving.serving_default(
            **{name: tf.constant(value) for name, value in request.items()}).items()}
    only_answers = serving.answer_question(**{name: tf.constant(value) for name, value in request.items()
                                              if name != "rationales"})
    for index, question in enumerate(QUESTIONS):
        expected = _in_process_scores(model, request, index, [[question] * 4, ANSWERS[index]], (0, 2))
        np.testing.assert_allclose(outputs["answer_scores"][index], expected, atol=2e-5)
        np.testing.assert_allclose(only_answers["answer_scores"].numpy()[index], expected, atol=2e-5)
        chosen = int(np.argmax(expected))
        assert outputs["chosen_answer"][index] == chosen
        expected_r = _in_process_scores(model, request, index,
                                        [[question] * 4, [ANSWERS[index][chosen]] * 4, RATIONALES[index]], (0, 2, 3))
        np.testing.assert_allclose(outputs["rationale_scores"][index], expected_r, atol=2e-5)
        assert outputs["chosen_rationale"][index] == int(np.argmax(expected_r))
    assert len(set(np.round(outputs["answer_scores"].ravel(), 4))) > 4  # the rows really differ
    # QA→R with a given answer (the official QA→R evaluation): the answer is an input.
    given = serving.score_rationales(**{name: tf.constant(value) for name, value in request.items()
                                        if name != "answers"}, answer=tf.constant(request["answers"][:, 3]))
    for index, question in enumerate(QUESTIONS):
        expected = _in_process_scores(model, request, index,
                                      [[question] * 4, [ANSWERS[index][3]] * 4, RATIONALES[index]], (0, 2, 3))
        np.testing.assert_allclose(given["rationale_scores"].numpy()[index], expected, atol=2e-5)


def test_references_become_reference_ids_in_tokenize(graph):
    _, serving = graph
    result = serving.tokenize(tf.constant(["Why is [0] next to [1] ?"]))
    tokens = [token.decode() for token in result["tokens"].numpy()[0] if token]
    assert tokens == ["[CLS]", "Why", "is", "[0]", "next", "to", "[1]", "?", "[SEP]"]
    assert result["token_ids"].numpy()[0][3] == 28996 and result["token_ids"].numpy()[0][6] == 28997


@pytest.mark.parametrize("change, field, message", [
        (lambda request: request["rationales"].__setitem__((1, 2), b"[5] waves"), "rationales", "region"),
        (lambda request: request["question"].__setitem__(0, b"Why is [3] here ?"), "question", "region"),
        (lambda request: request["answers"].__setitem__((0, 1), b"   "), "answers", "no tokens"),
])
def test_bad_choices_are_refused_naming_the_input(graph, change, field, message):
    model, serving = graph
    request = _request(model.backbone.config.region_feature_dim)
    change(request)
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        serving.serving_default(**{name: tf.constant(value) for name, value in request.items()})
    assert field in str(error.value) and message in str(error.value)


def test_declaration_and_signature_specs(graph):
    _, serving = graph
    assert is_multiple_choice(serving.task) and isinstance(serving.task.outputs, MultipleChoiceOutputs)
    specs = serving.input_signatures()
    assert [spec.name for spec in specs[SERVING_DEFAULT]] == [
            "question", "answers", "rationales", "region_features", "region_boxes", "image_size", "num_regions"]
    assert specs[SERVING_DEFAULT][1].shape.as_list() == [None, 4]  # the server refuses another choice count
    assert [spec.name for spec in specs[ANSWER_QUESTION]][:2] == ["question", "answers"]
    assert [spec.name for spec in specs[SCORE_RATIONALES]][:3] == ["question", "answer", "rationales"]
    warmup = choice_example_inputs(serving.feature_dim)
    outputs = serving.serving_default(**{name: tf.constant(value) for name, value in warmup[SERVING_DEFAULT].items()})
    assert outputs["answer_scores"].shape == (1, 4) and outputs["rationale_scores"].shape == (1, 4)
