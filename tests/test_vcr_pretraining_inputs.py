"""VCR second-stage input streams and task parameters (fast: a few hand-made VCR records, no training).

Each labelled question gives a qa and a qar example (both formats, unlike the official loader bug),
packed with the official token types; MLM masks every segment (>= 1 masked token in each); MRFR masks
>= 1 region and zeroes its features; over-long examples are dropped per format; test questions skipped.
"""

import numpy as np
import pytest
import tensorflow as tf

from uniter_tf.config import UniterConfig
from uniter_tf.data import masking
from uniter_tf.data.pretraining_inputs import PretrainingInputConfig
from uniter_tf.data.vcr_pretraining_inputs import build_vcr_pretraining_dataset
from uniter_tf.models.vcr_task import make_vcr_example
from uniter_tf.tasks.vcr_pretraining import VcrPretrainingTask

CONFIG = UniterConfig.from_preset("tiny").replace(vocab_size=28996 + 81, type_vocab_size=4)
OPTIONS = PretrainingInputConfig(batch_size=8, max_text_length=220, text_bucket_boundaries=(224,),
                                 region_bucket_boundaries=(8,), shuffle_buffer=0)
#: question, answers, rationales as ids (lengths differ so the segments can be told apart).
QUESTION = [2000, 2001, 28996, 2002]
ANSWERS = [[3000 + i] * (i + 2) for i in range(4)]
RATIONALES = [[4000 + i] * (i + 5) for i in range(4)]


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    path = tmp_path_factory.mktemp("vcr_pre") / "train.tfrecord.gz"
    rng = np.random.default_rng(0)
    with tf.io.TFRecordWriter(str(path), tf.io.TFRecordOptions(compression_type="GZIP")) as writer:
        for index, (answer, rationale) in enumerate([(1, 2), (3, 0), (-1, -1)]):  # the last is a test question
            regions = 3 + index
            soft = rng.uniform(size=(regions, CONFIG.num_soft_labels)).astype(np.float32)
            example = make_vcr_example(
                    example_id=f"train-{index}", image_id=f"img{index}", question="q", question_ids=QUESTION,
                    answers=["a"] * 4, answer_ids=ANSWERS, rationales=["r"] * 4, rationale_ids=RATIONALES,
                    answer_label=answer, rationale_label=rationale,
                    region_features=rng.normal(size=(regions, CONFIG.region_feature_dim)).astype(np.float32),
                    region_boxes=np.tile([[0, 0, 10, 10]], (regions, 1)).astype(np.float32), image_height=20,
                    image_width=20, num_gt_regions=2, soft_labels=soft / soft.sum(1, keepdims=True))
            writer.write(example.SerializeToString())
    return str(path)


def _rows(batch):
    mask = batch["text_mask"].numpy()
    return [{key: batch[key].numpy()[row][:mask[row].sum()] for key in batch if batch[key].shape.rank >= 2
             and batch[key].shape[1] == mask.shape[1]} for row in range(mask.shape[0])]


def test_mlm_examples_have_both_formats_official_types_and_a_mask_in_every_segment(records):
    (batch,) = list(build_vcr_pretraining_dataset("mlm", records, CONFIG, OPTIONS, num_epochs=1))
    rows = _rows(batch)
    assert len(rows) == 4  # 2 labelled questions x (qa, qar); the test question is skipped
    gold = [(ANSWERS[1], RATIONALES[2]), (ANSWERS[3], RATIONALES[0])]
    for row_index, row in enumerate(rows):
        answer, rationale = gold[row_index // 2]
        segments = [QUESTION, answer] + ([rationale] if row_index % 2 else [])
        types = [0] + [0] * len(QUESTION) + [2] * (len(answer) + 1)
        if row_index % 2:
            types += [3] * (len(rationale) + 2)  # [SEP] r [SEP]
        else:
            types += [2]
        np.testing.assert_array_equal(row["token_type_ids"], types)
        labels, ids = row["mlm_labels"], row["token_ids"]
        start = 1
        for segment in segments:  # every segment: >= 1 masked position whose label is the original id
            span = slice(start, start + len(segment))
            masked = labels[span] != masking.IGNORE_LABEL
            assert masked.any(), (row_index, segment)
            np.testing.assert_array_equal(labels[span][masked], np.asarray(segment)[masked])
            unmasked_ids = ids[span][~masked]
            np.testing.assert_array_equal(unmasked_ids, np.asarray(segment)[~masked])
            start += len(segment) + 1
        assert ids[0] == CONFIG.cls_token_id and labels[0] == masking.IGNORE_LABEL


def test_region_tasks_mask_regions_and_formats_and_lengths_are_honoured(records):
    (batch,) = list(build_vcr_pretraining_dataset("mrfr", records, CONFIG, OPTIONS, num_epochs=1))
    masked = batch["masked_regions"].numpy()
    features = batch["region_features"].numpy()
    targets = batch["region_feature_targets"].numpy()
    assert masked.shape[0] == 4 and masked.any(axis=1).all()
    np.testing.assert_array_equal(features[masked], 0.0)
    assert np.abs(targets[masked]).sum() > 0
    (batch,) = list(build_vcr_pretraining_dataset("mrckl", records, CONFIG, OPTIONS, num_epochs=1, formats=["qar"]))
    assert batch["soft_labels"].shape[0] == 2 and batch["soft_labels"].shape[2] == CONFIG.num_soft_labels
    # Segment tokens: qa 4 + 3 = 7 and 4 + 5 = 9 fit 10; qar 4 + 3 + 7 = 14 and 4 + 5 + 5 = 14 do not (dropped).
    short = PretrainingInputConfig(**dict(OPTIONS.__dict__, max_text_length=10))
    (batch,) = list(build_vcr_pretraining_dataset("mlm", records, CONFIG, short, num_epochs=1))
    assert sorted(np.sum(batch["text_mask"].numpy(), axis=1).tolist()) == [10, 12]  # + [CLS] [SEP] [SEP]


def test_task_parameters_are_checked():
    with pytest.raises(ValueError, match="no ITM"):
        VcrPretrainingTask(task_ratios={"itm": 1, "mlm": 1})
    with pytest.raises(ValueError, match="formats"):
        VcrPretrainingTask(formats=["qarr"])
    with pytest.raises(ValueError, match="unknown parameters"):
        VcrPretrainingTask.from_config({"model": "tiny", "format": "qa"})
    task = VcrPretrainingTask.from_config({"model": "tiny", "formats": ["qar"], "_comment": "x"})
    assert task.formats == ["qar"] and task.stream_ratios() == {"mlm": 2.0, "mrfr": 1.0, "mrckl": 1.0}
    assert task.model_config().vocab_size == 28996 + 81 and task.model_config().type_vocab_size == 4
    assert VcrPretrainingTask.from_config(task.get_config()).get_config() == task.get_config()
