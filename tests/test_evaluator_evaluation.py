"""The evaluation gate's metrics on canonical records, with an oracle scorer (no model, fast)."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from components.uniter_evaluator import evaluation  # noqa: E402
from uniter_tf.config import UniterConfig  # noqa: E402
from uniter_tf.data import schema  # noqa: E402
from uniter_tf.training import synthetic_vqa  # noqa: E402

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
