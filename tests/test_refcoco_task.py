"""RefCOCO as a task (issue 12): official IoU, targets, `cls` / `rank` losses, the reader's bad input, ingest."""

import numpy as np
import pytest
import tensorflow as tf

from helpers import ingest_test_data as data
from uniter_tf.data import dead_letter, readers, schema
from uniter_tf.models import refcoco_task
from uniter_tf.models.referring_expression import PADDED_REGION_SCORE


def _official_compute_iou(box1, box2):
    """``ReEvalDataset.computeIoU`` (data/re.py:226-238) as released, for [x, y, w, h] boxes."""
    inter_x1 = max(box1[0], box2[0])
    inter_y1 = max(box1[1], box2[1])
    inter_x2 = min(box1[0] + box1[2] - 1, box2[0] + box2[2] - 1)
    inter_y2 = min(box1[1] + box1[3] - 1, box2[1] + box2[3] - 1)
    if inter_x1 < inter_x2 and inter_y1 < inter_y2:
        inter = (inter_x2 - inter_x1 + 1) * (inter_y2 - inter_y1 + 1)
    else:
        inter = 0
    union = box1[2] * box1[3] + box2[2] * box2[3] - inter
    return float(inter) / union


def test_inclusive_iou_is_the_official_one():
    # Hand-computed: 5 x 5 inclusive pixels shared of two 10 x 10 boxes -> 25 / 175.
    assert refcoco_task.official_iou([0, 0, 10, 10], [5, 5, 10, 10]) == pytest.approx(25 / 175)
    # Boxes sharing one pixel column: the official test is strict (x1 < x2), so the overlap is 0.
    assert refcoco_task.official_iou([0, 0, 10, 10], [9, 0, 10, 10]) == 0.0
    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 200, size=(500, 2, 2))
    sizes = rng.uniform(1, 120, size=(500, 2, 2))
    boxes = np.concatenate([corners, corners + sizes], axis=-1).astype(np.float32)  # x1, y1, x2, y2
    got = refcoco_task.inclusive_iou(boxes[:, 0], boxes[:, 1]).numpy()
    want = [_official_compute_iou(refcoco_task.xywh(a), refcoco_task.xywh(b)) for a, b in boxes]
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert 0 < np.mean(np.asarray(want) > 0) < 1  # overlapping and disjoint pairs both occur


def _batch():
    """Two expressions: 3 regions (target = region 2) and 2 regions + 1 padding slot (target = region 0)."""
    region_boxes = np.array([[[0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 90, 80]],
                             [[5, 5, 30, 30], [40, 0, 60, 25], [0, 0, 0, 0]]], np.float32)
    target_box = np.array([[51, 50, 90, 81], [5, 5, 30, 30]], np.float32)
    return {schema.REGION_BOXES: tf.constant(region_boxes), schema.TARGET_BOX: tf.constant(target_box),
            schema.NUM_REGIONS: tf.constant([3, 2])}


def test_target_is_the_best_overlapping_real_region_and_cls_loss_is_summed():
    task = refcoco_task.RefcocoTask()
    targets = task.targets_from_features(_batch())
    np.testing.assert_array_equal(targets["target_index"].numpy(), [2, 0])
    np.testing.assert_array_equal(targets["region_valid"].numpy(), [[1, 1, 1], [1, 1, 0]])
    scores = np.array([[0.5, -1.0, 2.0], [1.5, 0.2, PADDED_REGION_SCORE]], np.float32)
    loss = float(task.compute_loss(targets, tf.constant(scores)))
    # Softmax CE over the real regions only (the padded slot's -1e4 contributes nothing), SUMMED.
    expected = [-(s[t] - np.log(np.sum(np.exp(s[:n])))) for s, t, n in zip(scores, [2, 0], [3, 2])]
    assert loss == pytest.approx(sum(expected), rel=1e-5)
    doubled = {key: tf.concat([value, value], 0) for key, value in _batch().items()}
    doubled_loss = float(task.compute_loss(task.targets_from_features(doubled), tf.constant(np.concatenate([scores] * 2))))
    assert doubled_loss == pytest.approx(2 * loss, rel=1e-5)  # a sum, not a mean
    accuracy = task.compute_metrics(targets, tf.constant(scores))["accuracy"].numpy()
    np.testing.assert_array_equal(accuracy, [1.0, 1.0])
    wrong = np.array([[3.0, -1.0, 2.0], [0.0, 0.2, PADDED_REGION_SCORE]], np.float32)
    np.testing.assert_array_equal(task.compute_metrics(targets, tf.constant(wrong))["accuracy"].numpy(), [0.0, 0.0])


def test_rank_loss_hard_and_random_negatives():
    scores = tf.constant([[0.0, 3.0, 1.0, PADDED_REGION_SCORE], [2.0, PADDED_REGION_SCORE, PADDED_REGION_SCORE,
                                                                  PADDED_REGION_SCORE]])
    valid = tf.constant([[True, True, True, False], [True, False, False, False]])
    target = tf.constant([0, 0])
    sigmoid = lambda value: 1 / (1 + np.exp(-value))  # noqa: E731
    hard = refcoco_task.rank_loss(scores, target, valid, margin=0.2, hard_ratio=1.0).numpy()
    # The hardest negative is region 1 (score 3); the second image has no negative at all: 0.
    np.testing.assert_allclose(hard, [0.2 + sigmoid(3.0) - sigmoid(0.0), 0.0], rtol=1e-5)
    drawn = {round(float(refcoco_task.rank_loss(scores, target, valid, hard_ratio=0.0, seed=seed)[0]), 5)
             for seed in range(40)}
    # Random negatives are regions 1 or 2, never the target (0.2 + 0 loss) nor the padded slot.
    assert drawn == {round(0.2 + sigmoid(3.0) - 0.5, 5), round(0.2 + sigmoid(1.0) - 0.5, 5)}
    task = refcoco_task.RefcocoTask(loss="rank")
    targets = task.targets_from_features(_batch())
    assert float(task.compute_loss(targets, tf.constant([[0.0, 0.0, 5.0], [5.0, 0.0, PADDED_REGION_SCORE]]))) == 0.0


def test_task_config_round_trip_and_errors():
    from uniter_tf.models.task import get_task

    task = get_task("refcoco", model="tiny", mlp=2, loss="rank", train_batch_size=4)
    assert isinstance(task, refcoco_task.RefcocoTask) and task.mlp == 2 and task.loss == "rank"
    assert refcoco_task.RefcocoTask.from_config(task.get_config()).get_config() == task.get_config()
    head = task.build_head(16)
    assert head.mlp == 2
    with pytest.raises(ValueError, match="mlp must be 1 or 2"):
        refcoco_task.RefcocoTask(mlp=3)
    with pytest.raises(ValueError, match="loss must be one of"):
        refcoco_task.RefcocoTask(loss="hinge")
    with pytest.raises(ValueError, match=r"no argument\(s\) \['mpl'\]"):
        refcoco_task.RefcocoTask.from_config({"mpl": 2})
    assert refcoco_task.sentence_id("ref_42") == 42 and refcoco_task.sentence_id("other") == "other"


def _refs_and_instances():
    images = [{"id": 1000, "file_name": "1000.jpg", "height": 100, "width": 120},
              {"id": 3000, "file_name": "3000.jpg", "height": 100, "width": 120}]
    annotations = [{"id": 1, "image_id": 1000, "bbox": [10, 10, 30, 40]},
                   {"id": 2, "image_id": 1000, "bbox": [60, 20, 50, 50]},
                   {"id": 3, "image_id": 1000, "bbox": [100, 50, 40, 40]},   # leaves the 120 px wide image
                   {"id": 4, "image_id": 1000, "bbox": [5, 5, 0, 10]},       # empty
                   {"id": 5, "image_id": 3000, "bbox": [1, 1, 20, 20]}]     # image without features
    refs = [{"ref_id": 0, "ann_id": 1, "image_id": 1000, "split": "train",
             "sentences": [{"sent_id": 0, "sent": "the left one"}, {"sent_id": 1, "sent": "small box"}]},
            {"ref_id": 1, "ann_id": 2, "image_id": 1000, "split": "train",
             "sentences": [{"sent_id": 2, "sent": "the right one"}, {"sent_id": 3, "sent": ""}]},
            {"ref_id": 2, "ann_id": 3, "image_id": 1000, "split": "train", "sentences": [{"sent_id": 4, "sent": "out"}]},
            {"ref_id": 3, "ann_id": 4, "image_id": 1000, "split": "train", "sentences": [{"sent_id": 5, "sent": "flat"}]},
            {"ref_id": 4, "ann_id": 5, "image_id": 3000, "split": "train", "sentences": [{"sent_id": 6, "sent": "gone"}]},
            {"ref_id": 5, "ann_id": 1, "image_id": 1000, "split": "train", "sentences": "not a list"},
            ["not", "a", "ref"]]
    return refs, {"images": images, "annotations": annotations}


def test_reader_sets_empty_and_outside_boxes_aside(tmp_path):
    refs, instances = _refs_and_instances()
    refs_path = data.write_json(tmp_path / "refs.json", refs)
    instances_path = data.write_json(tmp_path / "instances.json", instances)
    stream = list(readers.read_annotations("refcoco", [refs_path], [instances_path]))
    items = [entry for entry in stream if not isinstance(entry, dead_letter.DeadLetter)]
    letters = {entry.record_id: entry for entry in stream if isinstance(entry, dead_letter.DeadLetter)}
    assert [item.example_id for item in items] == ["ref_0", "ref_1", "ref_2", "ref_3", "ref_6"]
    assert letters["ref_4"].reason == dead_letter.BOX_OUTSIDE_IMAGE and "120x100" in letters["ref_4"].detail
    assert letters["ref_5"].reason == dead_letter.BOX_OUTSIDE_IMAGE and "empty" in letters["ref_5"].detail
    assert len(items) + len(letters) == 9  # every sentence (and each unreadable ref) is accounted for


@pytest.mark.slow  # a Beam ingest: ~10 s alone, up to a minute on the loaded 2-core machine
def test_ingest_refcoco_sets_bad_records_aside_and_keeps_every_good_one(tmp_path):
    """good + bad = input through `uniter ingest --format refcoco`: malformed refs, a missing image, a box
    outside the image, an empty box, an empty sentence."""
    from uniter_tf.data import ingest
    from uniter_tf.data.importers import img_db

    images = {"1000.npz": data.image_arrays(0)}
    img_db.write_img_db(str(tmp_path / "img_db"), images, selection=ingest.boxes_lib.BoxSelection())
    refs, instances = _refs_and_instances()
    config = ingest.IngestConfig(annotation_format="refcoco",
                                 annotations=(data.write_json(tmp_path / "refs.json", refs),),
                                 annotations2=(data.write_json(tmp_path / "instances.json", instances),),
                                 features=str(tmp_path / "img_db"), feature_dim=data.FEATURE_DIM,
                                 splits_from_annotations=True)
    result = ingest.run_ingest(config, str(tmp_path / "out"))
    records = data.read_tfrecords(result.split_dirs[ingest.TRAIN])
    boxes = {record["example_id"].decode(): list(record["target_box"]) for record in records}
    assert boxes == {"ref_0": [10, 10, 40, 50], "ref_1": [10, 10, 40, 50], "ref_2": [60, 20, 110, 70]}
    assert all(record["task"] == b"refcoco" for record in records)
    letters = sorted((letter.record_id, letter.reason) for letter in data.read_dead_letter_dir(result.dead_letter_dir)
                     if letter.kind != "image")
    by_record = dict(letters)
    assert by_record["ref_3"] == dead_letter.EMPTY_TEXT
    assert by_record["ref_4"] == by_record["ref_5"] == dead_letter.BOX_OUTSIDE_IMAGE
    assert by_record["ref_6"] == dead_letter.UNKNOWN_IMAGE
    assert len(records) + len(letters) == 9
