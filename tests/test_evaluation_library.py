"""uniter_tf.evaluation: the VQA population (spec §5.1), task-based record split, streamed retrieval.

Oracle / hash scorers stand in for a model (fast); the Keras scorer runs the real tiny backbone.
"""

import hashlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from uniter_tf import evaluation
from uniter_tf.config import UniterConfig
from uniter_tf.data import schema
from uniter_tf.testing import synthetic_vqa

NUM_ANSWERS = 4


def _synthetic(tmp_path, num_images=6, captions_per_image=2):
    config = UniterConfig.from_preset("tiny")
    paths = synthetic_vqa.write_synthetic_vqa_records(str(tmp_path / "eval"), config, num_images=num_images,
                                                      num_answers=NUM_ANSWERS, captions_per_image=captions_per_image,
                                                      questions_per_image=1)
    return [record.numpy() for record in tf.data.TFRecordDataset(paths, compression_type="GZIP")]


def _image_fields(serialized_records, image_id):
    for serialized in serialized_records:
        example = tf.train.Example.FromString(serialized)
        if evaluation.image_id(example) == image_id:
            return {key: example.features.feature[key] for key in schema.IMAGE_FEATURE_KEYS
                    if key in example.features.feature}
    raise AssertionError(image_id)


def _record_on_image(serialized_records, image_id, **text_fields):
    example = tf.train.Example()
    for key, feature in _image_fields(serialized_records, image_id).items():
        example.features.feature[key].CopyFrom(feature)
    text = schema.make_example(image_id=image_id, region_features=np.zeros((1, 1)), region_boxes=[[0, 0, 1, 1]],
                               image_height=1, image_width=1, **text_fields)
    for key in schema.TEXT_FEATURE_KEYS:
        if key in text.features.feature:
            example.features.feature[key].CopyFrom(text.features.feature[key])
    return example.SerializeToString()


def _text_image(example):
    """(image the text was written for, image it is paired with) from the synthetic ids."""
    return (int(example[schema.EXAMPLE_ID].decode().split("_")[1]),
            int(example[schema.IMAGE_ID].decode().split("_")[1]))


def _oracle_scorer(calls=None):
    """ITM: match iff the text was written for the image; VQA: the image's concept (synthetic label)."""

    def scorer(serialized_batch):
        if calls is not None:
            calls.append(len(serialized_batch))
        itm_logits, task_logits = [], []
        for serialized in serialized_batch:
            text_image, image = _text_image(schema.decode_example(serialized))
            itm_logits.append([0.0, 1.0] if text_image == image else [1.0, 0.0])
            logits = np.zeros(NUM_ANSWERS)
            logits[image % NUM_ANSWERS] = 5.0
            task_logits.append(logits)
        return {evaluation.ITM_LOGITS: np.asarray(itm_logits), evaluation.VQA_LOGITS: np.asarray(task_logits)}

    return scorer


# --- VQA population -----------------------------------------------------------------------------------

def test_out_of_vocabulary_question_stays_in_the_vqa_denominator(tmp_path):
    records = _synthetic(tmp_path)
    # Every human answer outside the vocabulary: answers present, no label. The oracle answers every
    # in-vocabulary question right (1.0 each), this one can only score 0.
    oov = _record_on_image(records, b"img_0001", example_id="vqa_0001_9", text="what is the unseen thing?",
                           token_ids=[1000, 1001, 1002], answers=["zebra crossing"] * 10, answer_labels=[],
                           answer_scores=[])
    eval_records = evaluation.EvalRecords(records + [oov])
    assert len(eval_records.questions) == 7 and len(eval_records.captions) == 12
    metrics = evaluation.evaluate(_oracle_scorer(), eval_records)
    assert metrics["num_questions"] == 7.0 and metrics["num_questions_without_vocabulary_answer"] == 1.0
    assert metrics["vqa_score"] == pytest.approx(6 / 7)
    # The question-only baseline has the same denominator.
    prior = evaluation.question_prior_answers(eval_records.questions)
    expected = sum(evaluation.soft_score(q, prior.get(evaluation.question_type(evaluation.question_fields(q)[0]),
                                                      prior[""])) for q in eval_records.questions) / 7
    assert evaluation.question_prior_score(prior, eval_records.questions) == pytest.approx(expected)


def test_records_are_split_by_task_not_by_missing_labels(tmp_path):
    records = _synthetic(tmp_path, num_images=3, captions_per_image=1)
    unannotated = _record_on_image(records, b"img_0000", example_id="vqa_777", text="is it a test question?",
                                   token_ids=[1000, 1001])
    oov = _record_on_image(records, b"img_0002", example_id="vqa_778", text="what?", token_ids=[1000],
                           answers=["nothing known"], answer_labels=[], answer_scores=[])
    nlvr2 = _record_on_image(records, b"img_0001", example_id="nlvr2_1#img0", text="two dogs", token_ids=[1000],
                             label=1)
    tasks = {evaluation.record_task(tf.train.Example.FromString(record)) for record in (unannotated, oov)}
    assert tasks == {evaluation.VQA}
    assert evaluation.record_task(tf.train.Example.FromString(nlvr2)) == evaluation.OTHER
    eval_records = evaluation.EvalRecords(records + [unannotated, oov, nlvr2])
    assert len(eval_records.captions) == 3  # none of the three joined the retrieval gallery's captions
    assert len(eval_records.questions) == 4  # 3 synthetic + the out-of-vocabulary one
    assert eval_records.num_unannotated_questions == 1 and eval_records.num_other_records == 1
    assert all(caption_id.startswith(b"img_") for caption_id in eval_records.caption_image_ids)


# --- retrieval: streamed == brute force in memory ------------------------------------------------------

def _hash_scorer(calls):
    """A deterministic score per (text, image) with ties impossible; matched pairs get a bonus."""

    def scorer(serialized_batch):
        calls.append(len(serialized_batch))
        logits = []
        for serialized in serialized_batch:
            example = schema.decode_example(serialized)
            digest = hashlib.sha256(example[schema.EXAMPLE_ID] + b"|" + example[schema.IMAGE_ID]).digest()
            noise = int.from_bytes(digest[:8], "little") / 2 ** 64
            text_image, image = _text_image(example)
            logits.append([0.0, noise + (0.6 if text_image == image else 0.0)])
        return {evaluation.ITM_LOGITS: np.asarray(logits)}

    return scorer


def _brute_force_recalls(scores, text_to_image, k):
    num_texts, num_images = scores.shape
    image_hits = sum(text_to_image[t] in sorted(range(num_images), key=lambda i: -scores[t, i])[:k]
                     for t in range(num_texts))
    text_hits = sum(any(text_to_image[t] == i for t in sorted(range(num_texts), key=lambda t: -scores[t, i])[:k])
                    for i in range(num_images))
    return image_hits / num_texts, text_hits / num_images


def test_streamed_retrieval_equals_brute_force_in_memory(tmp_path):
    serialized = _synthetic(tmp_path, num_images=12, captions_per_image=2)
    records = evaluation.EvalRecords(serialized)
    calls = []
    metrics = evaluation.evaluate(_hash_scorer(calls), records, batch_size=7)
    assert max(calls) <= 7  # never more than one batch of pairs at a time

    # Brute force: every caption x image pair built in memory as full records, each scored on its own.
    examples = [tf.train.Example.FromString(record) for record in serialized]
    captions = [example for example in examples if evaluation.record_task(example) == evaluation.CAPTION]
    images = {}
    for example in examples:
        images.setdefault(evaluation.image_id(example), example)
    gallery = sorted(images)
    reference = _hash_scorer([])
    scores = np.array([[reference([evaluation.with_image(caption, images[image]).SerializeToString()])[
                                evaluation.ITM_LOGITS][0, 1] for image in gallery] for caption in captions])
    text_to_image = [gallery.index(evaluation.image_id(caption)) for caption in captions]
    assert metrics["num_gallery_images"] == 12.0 and scores.shape == (24, 12)
    for k in (1, 5, 10):
        image_recall, text_recall = _brute_force_recalls(scores, text_to_image, k)
        assert metrics[f"img_r{k}"] == pytest.approx(image_recall)
        assert metrics[f"txt_r{k}"] == pytest.approx(text_recall)
    assert 0.0 < metrics["img_r1"] < 1.0  # the hash noise makes it a real ranking, not a trivial one
    streamed = evaluation.retrieval_score_matrix(_hash_scorer([]), records, records.captions, gallery, batch_size=5)
    np.testing.assert_allclose(streamed, scores, rtol=0, atol=1e-6)


def test_streamed_pairs_are_the_merged_records(tmp_path):
    serialized = _synthetic(tmp_path, num_images=3, captions_per_image=1)
    records = evaluation.EvalRecords(serialized)
    caption = tf.train.Example.FromString(serialized[1])
    assert evaluation.record_task(caption) == evaluation.CAPTION
    other_image = tf.train.Example.FromString(serialized[-1])
    pair = records.serialized_pair(records.captions[0], evaluation.image_id(other_image))
    assert tf.train.Example.FromString(pair) == evaluation.with_image(caption, other_image)


def test_the_library_imports_no_tfx():
    probe = ("import sys; import uniter_tf.evaluation, uniter_tf.evaluation.scorers; "
             "print(sorted(name for name in sys.modules if name == 'tfx' or name.startswith('tfx.')))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# --- the trainer's hook: in-memory Keras layers ---------------------------------------------------------

def test_keras_scorer_matches_the_task_model_on_fine_tuning_batches(tmp_path):
    import keras

    from uniter_tf.data.finetune_inputs import build_finetune_dataset
    from uniter_tf.models.backbone import UniterBackbone
    from uniter_tf.models.pretraining_heads import ItmHead
    from uniter_tf.models.vqa import VqaTask

    keras.utils.set_random_seed(3)
    config = UniterConfig.from_preset("tiny")
    paths = synthetic_vqa.write_synthetic_vqa_records(str(tmp_path / "eval"), config, num_images=4,
                                                      num_answers=NUM_ANSWERS, captions_per_image=1,
                                                      questions_per_image=1)
    backbone = UniterBackbone(config)
    task = VqaTask(num_answers=NUM_ANSWERS)
    task_model = task.build_model(backbone, config.hidden_size)
    task_model.head.build()
    itm_head = ItmHead(config.hidden_size)
    itm_head.build()
    metrics = evaluation.evaluate_keras_model(backbone, itm_head, config, paths, task_head=task_model.head,
                                              batch_size=3)
    assert metrics["num_questions"] == 4.0 and metrics["num_captions"] == 4.0
    for key in ("itm_accuracy", "img_r1", "txt_r10", "vqa_score"):
        assert 0.0 <= metrics[key] <= 1.0

    # The scorer packs records as fine-tuning does: same logits as the task model on its eval batches.
    (inputs, _), = build_finetune_dataset(paths, task, config, batch_size=8, training=False).take(1)
    expected = task_model({key: value for key, value in inputs.items() if key != schema.EXAMPLE_ID},
                          training=False).numpy()
    questions = [record.numpy() for record in tf.data.TFRecordDataset(paths, compression_type="GZIP")
                 if evaluation.record_task(tf.train.Example.FromString(record.numpy())) == evaluation.VQA]
    scorer = evaluation.keras_scorer(backbone, itm_head, config, task_head=task_model.head)
    np.testing.assert_allclose(scorer(questions)[evaluation.VQA_LOGITS], expected, atol=1e-5)
