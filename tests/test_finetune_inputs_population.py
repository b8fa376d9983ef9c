"""The fine-tuning input pipeline keeps the official VQA population (spec §5.1, §7.14).

* A question whose human answers are all outside the answer vocabulary stays in training with an
  all-zero target (official ``data/vqa.py:14-20``).
* Training drops texts longer than ``max_text_length`` (official ``TxtTokLmdb``); evaluation truncates
  them instead and never loses a question.
"""

import numpy as np
import tensorflow as tf

from uniter_tf.config import UniterConfig
from uniter_tf.data import schema
from uniter_tf.data.finetune_inputs import build_finetune_dataset
from uniter_tf.models.vqa import VqaTask

NUM_ANSWERS = 4


def _write_questions(path, config):
    """Three VQA questions on one image: in-vocabulary, all answers out of vocabulary, over-long; a caption."""
    rng = np.random.default_rng(0)
    image = dict(image_id="img_0", region_features=rng.normal(size=(3, config.region_feature_dim)),
                 region_boxes=[[0, 0, 10, 10], [5, 5, 20, 20], [1, 2, 3, 4]], image_height=30, image_width=30)
    records = [
            schema.make_example(**image, example_id="vqa_1", text="what color?", token_ids=[1000, 1001],
                                answers=["red"] * 10, answer_labels=[2], answer_scores=[1.0]),
            schema.make_example(**image, example_id="vqa_2", text="what is it?", token_ids=[1002, 1003, 1004],
                                answers=["zebra crossing"] * 10, answer_labels=[], answer_scores=[]),
            schema.make_example(**image, example_id="vqa_3", text="a long question", token_ids=list(range(1000, 1009)),
                                answers=["blue"] * 10, answer_labels=[1, 3], answer_scores=[1.0, 0.3]),
            schema.make_example(**image, example_id="cap_1", text="a caption", token_ids=[1005, 1006]),
    ]
    with tf.io.TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record.SerializeToString())
    return path


def _examples(dataset, max_batches):
    """example_id -> (token_ids without padding, dense VQA target) over the first batches."""
    task = VqaTask(num_answers=NUM_ANSWERS)
    seen = {}
    for inputs, labels in dataset.take(max_batches):
        targets = task.targets_from_features(labels)["vqa_target"].numpy()
        for row, example_id in enumerate(inputs[schema.EXAMPLE_ID].numpy()):
            length = int(inputs["text_mask"][row].numpy().sum())
            seen[example_id.decode()] = (inputs["token_ids"][row, :length].numpy().tolist(), targets[row])
    return seen


def test_out_of_vocabulary_question_trains_with_an_all_zero_target(tmp_path):
    config = UniterConfig.from_preset("tiny")
    path = _write_questions(str(tmp_path / "train.tfrecord"), config)
    dataset = build_finetune_dataset(path, VqaTask(num_answers=NUM_ANSWERS), config, batch_size=2,
                                     max_text_length=5, training=True, seed=1)
    seen = _examples(dataset, max_batches=6)
    # The caption is not a question; the over-long question is dropped from training (spec §7.14).
    assert set(seen) == {"vqa_1", "vqa_2"}
    np.testing.assert_array_equal(seen["vqa_2"][1], np.zeros(NUM_ANSWERS, np.float32))
    np.testing.assert_array_equal(seen["vqa_1"][1], [0.0, 0.0, 1.0, 0.0])


def test_evaluation_truncates_long_questions_and_keeps_every_question(tmp_path):
    config = UniterConfig.from_preset("tiny")
    path = _write_questions(str(tmp_path / "eval.tfrecord"), config)
    dataset = build_finetune_dataset(path, VqaTask(num_answers=NUM_ANSWERS), config, batch_size=8,
                                     max_text_length=5, training=False)
    seen = _examples(dataset, max_batches=2)
    assert sorted(seen) == ["vqa_1", "vqa_2", "vqa_3"]
    # [CLS] + the first 5 WordPieces + [SEP].
    assert seen["vqa_3"][0] == [config.cls_token_id, 1000, 1001, 1002, 1003, 1004, config.sep_token_id]
    assert seen["vqa_1"][0] == [config.cls_token_id, 1000, 1001, config.sep_token_id]
    np.testing.assert_allclose(seen["vqa_3"][1], [0.0, 1.0, 0.0, 0.3], rtol=1e-6)
    np.testing.assert_array_equal(seen["vqa_2"][1], np.zeros(NUM_ANSWERS, np.float32))
