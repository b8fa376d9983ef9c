"""The canonical record's ``task`` field: written by the readers and ingest, read by the evaluator.

The evaluator tells questions from captions by the record's task (issue 10, official data semantics),
not by which optional fields a record happens to carry; records written before the field existed keep
the old field-based classification.
"""

import json

import numpy as np
import pytest
import tensorflow as tf

from uniter_tf import evaluation
from uniter_tf.data import ingest, readers, schema
from uniter_tf.data.importers import feature_record


def _record(**text_fields):
    return schema.make_example(image_id="img_1", region_features=np.ones((2, 3)),
                               region_boxes=[[0, 0, 4, 4], [1, 1, 3, 3]], image_height=8, image_width=8,
                               text="some text", token_ids=[5, 6], **text_fields)


def test_the_task_field_round_trips_and_bad_values_name_the_record():
    example = _record(example_id="cap_7", task="caption")
    assert example.features.feature[schema.TASK].bytes_list.value == [b"caption"]
    assert schema.decode_example(example.SerializeToString())[schema.TASK] == b"caption"
    parsed = schema.parse_and_decode(tf.constant(example.SerializeToString()))
    assert parsed[schema.TASK].numpy() == b"caption"
    # An old record (no field) parses with an empty task and decodes without one.
    old = _record(example_id="old_1")
    assert schema.parse_and_decode(tf.constant(old.SerializeToString()))[schema.TASK].numpy() == b""
    assert schema.TASK not in schema.decode_example(old)
    with pytest.raises(ValueError, match=r"task of record 'cap_8' must be one of .*'retrieval'"):
        _record(example_id="cap_8", task="retrieval")
    planted = _record(example_id="cap_9")
    planted.features.feature[schema.TASK].bytes_list.value.append(b"captions")
    with pytest.raises(ValueError, match=r"task of record 'cap_9'"):
        schema.decode_example(planted)
    with pytest.raises(ValueError, match=r"record 'cap_9'.*'captions'"):
        evaluation.record_task(planted)


def test_the_task_field_decides_what_a_record_is_evaluated_as():
    # A caption that happens to carry a label (e.g. an ITM target) is a caption: the old inference
    # would call it another task's record.
    labelled_caption = _record(example_id="coco_1", label=1, task="caption")
    assert evaluation.record_task(labelled_caption) == evaluation.CAPTION
    assert evaluation.record_task(_record(example_id="coco_1", label=1)) == evaluation.OTHER  # without task
    # A VQA question whose answers are all out of the vocabulary: empty label lists, still a question,
    # whatever its id looks like.
    empty_question = _record(example_id="q_42", answers=[], answer_labels=[], answer_scores=[], task="vqa")
    assert evaluation.record_task(empty_question) == evaluation.VQA
    # An unannotated question (no answer fields) with a non-VQA-looking id: the task field still says so.
    assert evaluation.record_task(_record(example_id="q_43", task="vqa")) == evaluation.VQA
    assert evaluation.record_task(_record(example_id="q_43")) == evaluation.CAPTION  # without task
    # Tasks not evaluated here are counted as other, even without their fields.
    for task in ("snli_ve", "nlvr2", "refcoco", "vcr"):
        assert evaluation.record_task(_record(example_id="x_1", task=task)) == evaluation.OTHER, task
    # A Visual Genome region phrase carries a target box and is a caption.
    assert evaluation.record_task(_record(example_id="vg_1", target_box=[0, 0, 2, 2], task="caption")) == \
        evaluation.CAPTION

    records = evaluation.EvalRecords(example.SerializeToString() for example in (
            labelled_caption, empty_question, _record(example_id="q_43", task="vqa"),
            _record(example_id="ve_1", label=0, task="snli_ve")))
    assert len(records.captions) == 1 and len(records.questions) == 1
    assert records.num_unannotated_questions == 1 and records.num_other_records == 1


def test_old_records_without_the_field_classify_as_before():
    old = {
            "coco_1": evaluation.CAPTION,
            "vqa_2": evaluation.VQA,  # unannotated question: the VQA reader's id prefix
            "anything_3": evaluation.VQA,  # annotated question with empty labels: its answer fields
            "nlvr2_4": evaluation.OTHER,
            "refcoco_5": evaluation.OTHER,
    }
    fields = {"anything_3": dict(answers=[], answer_labels=[], answer_scores=[]), "nlvr2_4": dict(label=1),
              "refcoco_5": dict(target_box=[0, 0, 1, 1])}
    for example_id, expected in old.items():
        example = _record(example_id=example_id, **fields.get(example_id, {}))
        assert schema.TASK not in example.features.feature
        assert evaluation.record_task(example) == expected, example_id


def test_every_reader_format_has_a_task_and_ingest_writes_it(tmp_path):
    assert set(readers.FORMAT_TASKS) == set(readers.FORMATS)
    assert set(readers.FORMAT_TASKS.values()) <= set(schema.TASKS)
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps({"images": [{"id": 1, "file_name": "img_1.jpg", "height": 8, "width": 8}],
                                    "annotations": [{"id": 10, "image_id": 1, "caption": "a dog"}]}))
    items = list(readers.read_task("coco", (str(captions), None)))
    assert [item.task for item in items] == ["caption"]
    statements = tmp_path / "nlvr2.jsonl"
    statements.write_text(json.dumps({"identifier": "dev-1-0-0", "sentence": "two dogs", "label": "True"}) + "\n")
    assert [item.task for item in readers.read_task("nlvr2", (str(statements), None))] == ["nlvr2"]
    item = items[0]
    features = feature_record.FeatureRecord(image_id="img_1", features=np.ones((2, 3), np.float32),
                                            positions=np.full((2, 7), 0.5, np.float32),
                                            boxes=np.array([[0, 0, 4, 4], [1, 1, 3, 3]], np.float32),
                                            image_height=8, image_width=8)
    example, _ = ingest.build_example(features, item, 0)
    assert example.features.feature[schema.TASK].bytes_list.value == [b"caption"]
    assert evaluation.record_task(example) == evaluation.CAPTION


def test_the_synthetic_writers_name_their_tasks():
    import uuid

    from uniter_tf.config import UniterConfig
    from uniter_tf.testing import synthetic_data, synthetic_vqa

    config = UniterConfig.from_preset("tiny")
    root = f"ram://record-task-{uuid.uuid4().hex}"
    vqa_files = synthetic_vqa.write_synthetic_vqa_records(f"{root}/vqa", config, num_images=2, num_answers=3)
    caption_files = synthetic_data.write_synthetic_records(f"{root}/captions", config, num_images=2)
    tasks = {}
    for path in vqa_files + list(caption_files):
        for record in evaluation.iter_serialized_records(path):
            example = tf.train.Example.FromString(record)
            example_id = example.features.feature[schema.EXAMPLE_ID].bytes_list.value[0].decode()
            tasks[example_id] = example.features.feature[schema.TASK].bytes_list.value[0]
    assert {task for example_id, task in tasks.items() if example_id.startswith("vqa_")} == {b"vqa"}
    assert {task for example_id, task in tasks.items() if not example_id.startswith("vqa_")} == {b"caption"}
