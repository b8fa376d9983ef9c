"""The evaluation gate's metrics on canonical records, with an oracle scorer (no model, fast)."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from components.uniter_evaluator import evaluation  # noqa: E402
from uniter_tf.config import UniterConfig  # noqa: E402
from uniter_tf.data import schema  # noqa: E402
from uniter_tf.testing import synthetic_vqa  # noqa: E402

NUM_ANSWERS = 4


def _records(tmp_path, num_images=6):
    config = UniterConfig.from_preset("tiny")
    paths = synthetic_vqa.write_synthetic_vqa_records(str(tmp_path / "eval"), config, num_images=num_images,
                                                      num_answers=NUM_ANSWERS, captions_per_image=2,
                                                      questions_per_image=1)
    return [record.numpy() for record in tf.data.TFRecordDataset(paths, compression_type="GZIP")]


def _image_index(example):
    return int(example[schema.IMAGE_ID].decode().split("_")[1])


def _oracle_scorer(vqa_answer_offset=0):
    """Matches a text with an image iff the text was written for that image; answers by the image's concept."""

    def scorer(serialized_batch):
        itm_logits, task_logits = [], []
        for serialized in serialized_batch:
            example = schema.decode_example(serialized)
            text_image = int(example[schema.EXAMPLE_ID].decode().split("_")[1])
            image = _image_index(example)
            itm_logits.append([0.0, 1.0] if text_image == image else [1.0, 0.0])
            logits = np.zeros(NUM_ANSWERS)
            logits[(image + vqa_answer_offset) % NUM_ANSWERS] = 5.0
            task_logits.append(logits)
        return {evaluation.ITM_LOGITS: np.asarray(itm_logits), evaluation.VQA_LOGITS: np.asarray(task_logits)}

    return scorer


def test_oracle_gets_perfect_metrics(tmp_path):
    records = evaluation.EvalRecords(_records(tmp_path))
    assert len(records.captions) == 12 and len(records.questions) == 6
    metrics = evaluation.evaluate(_oracle_scorer(), records, batch_size=5)
    assert metrics["itm_accuracy"] == 1.0
    for key in ("img_r1", "txt_r1", "img_r5", "txt_r10", "r_mean"):
        assert metrics[key] == 1.0
    assert metrics["vqa_score"] == 1.0
    assert metrics["num_gallery_images"] == 6.0


def test_soft_scores_and_wrong_answers(tmp_path):
    records = evaluation.EvalRecords(_records(tmp_path))
    # The synthetic records give the next concept a soft score of 0.3.
    assert evaluation.evaluate(_oracle_scorer(1), records)["vqa_score"] == pytest.approx(0.3)
    assert evaluation.evaluate(_oracle_scorer(2), records)["vqa_score"] == 0.0


def test_model_without_task_head_gets_no_vqa_score(tmp_path):
    records = evaluation.EvalRecords(_records(tmp_path))
    oracle = _oracle_scorer()

    def itm_only(batch):
        return {evaluation.ITM_LOGITS: oracle(batch)[evaluation.ITM_LOGITS]}

    metrics = evaluation.evaluate(itm_only, records)
    assert "vqa_score" not in metrics and metrics["itm_accuracy"] == 1.0


def test_gallery_cap_limits_retrieval_queries(tmp_path):
    records = evaluation.EvalRecords(_records(tmp_path))
    metrics = evaluation.evaluate(_oracle_scorer(), records, max_gallery_texts=4)
    assert metrics["num_gallery_images"] == 2.0


def test_malformed_record_is_named(tmp_path):
    good = _records(tmp_path)
    with pytest.raises(ValueError, match="eval record #1"):
        evaluation.EvalRecords([good[0], b"not a tf.Example"])


def _question(text, labels, scores):
    example = tf.train.Example()
    feature_map = example.features.feature
    feature_map[schema.TEXT].bytes_list.value.append(text.encode("utf-8"))
    feature_map[schema.ANSWER_LABELS].int64_list.value.extend(labels)
    feature_map[schema.ANSWER_SCORES].float_list.value.extend(scores)
    return example


def test_question_types_follow_the_vqa_prefixes():
    assert evaluation.question_type("What color is the circle?") == "what color is the"
    assert evaluation.question_type("How many squares are there?") == "how many"
    assert evaluation.question_type("Is the red circle above the blue square?") == "is the"
    assert evaluation.question_type("What shape is the green object?") == "what shape is the"
    # Not a known prefix: the first two words.
    assert evaluation.question_type("Describe the, scene!") == "describe the"


def test_question_only_baseline_answers_each_type_with_its_training_prior():
    train = [_question("How many shapes are there?", [2], [1.0]), _question("How many circles?", [2], [1.0]),
             _question("How many squares?", [1], [1.0]), _question("What color is the circle?", [5], [1.0]),
             _question("What color is the square?", [6], [1.0]), _question("What color is the star?", [6], [0.6])]
    prior = evaluation.question_prior_answers(train)
    # Per type, the answer with the most soft credit; ties go to the smaller label; "" is the overall best.
    assert prior == {"how many": 2, "what color is the": 6, "": 2}
    eval_questions = [_question("How many shapes are there?", [2, 3], [1.0, 0.3]),   # prior 2: 1.0
                      _question("How many triangles?", [3], [1.0]),                   # prior 2: 0.0
                      _question("What color is the square?", [6], [0.3]),             # prior 6: 0.3
                      _question("Why is it here?", [6, 2], [1.0, 0.6])]               # unseen type, 2: 0.6
    assert evaluation.question_prior_score(prior, eval_questions) == pytest.approx((1.0 + 0.0 + 0.3 + 0.6) / 4)
    with pytest.raises(ValueError, match="train split holds none"):
        evaluation.question_prior_answers([])


def test_baseline_figures_come_with_the_vqa_score(tmp_path):
    records = evaluation.EvalRecords(_records(tmp_path))
    train_questions = list(records.questions)
    metrics = evaluation.evaluate(_oracle_scorer(), records, train_questions=train_questions)
    assert metrics["vqa_score"] == 1.0
    expected = evaluation.question_prior_score(evaluation.question_prior_answers(train_questions), records.questions)
    assert metrics["vqa_baseline_score"] == pytest.approx(expected) and expected < 1.0
    assert metrics["vqa_score_over_baseline"] == pytest.approx(1.0 - expected)
    assert "vqa_baseline_score" not in evaluation.evaluate(_oracle_scorer(), records)
