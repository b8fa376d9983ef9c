"""The retrieval task (issue 13): groups of negatives, the official hinge loss, hard-negative mining, init.

Records are real GZIP TFRecords of caption records whose ids are readable from the tensors: image i's
first region feature is ``i + 1`` and its captions start with word id ``2000 + i``, so every pair of a
group says which caption and which image it holds. The learning check is tests/test_retrieval_learning.py.
"""

import numpy as np
import pytest
import tensorflow as tf

from uniter_tf.config import UniterConfig
from uniter_tf.data import schema, tfrecord_io
from uniter_tf.models import retrieval_task
from uniter_tf.models.task import get_task
from uniter_tf.retrieval import inputs

NUM_IMAGES = 6
CAPTIONS_PER_IMAGE = 2
WORD_BASE = 2000


def write_caption_records(directory, num_images=NUM_IMAGES, captions_per_image=CAPTIONS_PER_IMAGE, long_text=False):
    """Caption records of ``num_images`` images (2-4 regions each); returns the file pattern."""
    rng = np.random.default_rng(0)
    with tfrecord_io.ShardedTFRecordWriter(str(directory / "train"), num_shards=2) as writer:
        for image in range(num_images):
            num_regions = 2 + image % 3
            features = rng.uniform(0, 0.1, size=(num_regions, 64)).astype(np.float32)
            features[:, 0] = image + 1
            boxes = np.tile(np.array([[0, 0, 10, 10]], np.float32), (num_regions, 1))
            for caption in range(captions_per_image):
                words = [WORD_BASE + image, 3000 + caption] + ([3100] * 80 if long_text and caption == 1 else [])
                writer.write(schema.make_example(
                        image_id=f"img{image}", region_features=features, region_boxes=boxes, image_height=20,
                        image_width=20, example_id=f"cap{image}_{caption}", text="words", token_ids=words,
                        task=schema.TASK_CAPTION))
    return str(directory / "train-*")


def pair_ids(pairs, batch_size):
    """``(caption image [B, S], image [B, S], regions [B, S])`` of gathered pairs."""
    text_image = pairs["token_ids"][:, 1].numpy() - WORD_BASE
    image = np.rint(pairs["region_features"][:, 0, 0].numpy()).astype(int) - 1
    regions = pairs["region_mask"].numpy().sum(axis=1)
    return (text_image.reshape(batch_size, -1), image.reshape(batch_size, -1), regions.reshape(batch_size, -1))


def test_registered_config_round_trip_and_bad_arguments_named():
    task = get_task("retrieval", mode="hard_negative", negative_size=9, hard_negative_size=3)
    assert isinstance(task, retrieval_task.RetrievalTask) and task.primary_metric == "r_mean"
    assert get_task("retrieval", **task.get_config()).get_config() == task.get_config()
    with pytest.raises(ValueError, match="mode"):
        get_task("retrieval", mode="contrastive")
    with pytest.raises(ValueError, match="hard_negative_size"):
        get_task("retrieval", mode="hard_negative", negative_size=3, hard_negative_size=4)
    with pytest.raises(ValueError, match="negative_size"):
        get_task("retrieval", negative_size=0)
    with pytest.raises(ValueError, match="sample_size"):
        get_task("retrieval", sample_size=3)


def test_hinge_is_official_on_sigmoid_scores_and_hard_negatives_are_the_top_logits():
    logits = np.array([[2.0, 1.0, -1.0], [0.1, 0.3, 0.0]], np.float32)
    scores = 1 / (1 + np.exp(-logits.astype(np.float64)))
    expected = np.maximum(0.2 + scores[:, 1:] - scores[:, :1], 0.0)
    terms = retrieval_task.hinge_terms(tf.constant(logits.reshape(-1, 1)), 3, 0.2).numpy()
    np.testing.assert_allclose(terms, expected, rtol=1e-6)
    np.testing.assert_array_equal(retrieval_task.positive_ranked_first(tf.constant(logits), 3).numpy(), [1.0, 0.0])
    mined = np.array([[0.0, -3.0, 5.0, 1.0, 4.0], [9.0, 1.0, 2.0, 3.0, 0.5]], np.float32)
    kept = retrieval_task.select_hard_negatives(tf.constant(mined), 2).numpy()
    np.testing.assert_array_equal(kept, [[0, 2, 4], [0, 3, 2]])  # the positive first, then the hardest


def test_standard_groups_pair_each_caption_with_other_images_and_other_captions(tmp_path):
    pattern = write_caption_records(tmp_path, long_text=True)
    config = UniterConfig.resolve("tiny")
    dataset = inputs.build_group_dataset("standard", [pattern], config, negative_size=2, batch_size=4,
                                         max_text_length=20, seed=3)
    seen_images = set()
    for batch in dataset.take(6):
        text_image, image, regions = pair_ids(inputs.gather_pairs(batch), 4)
        own = text_image[:, 0]
        np.testing.assert_array_equal(image[:, 0], own)  # the positive
        assert np.all(text_image[:, 1:3] == own[:, None]) and np.all(image[:, 1:3] != own[:, None])
        assert np.all(image[:, 3:] == own[:, None]) and np.all(text_image[:, 3:] != own[:, None])
        np.testing.assert_array_equal(regions, 2 + image % 3)  # padding regions are masked out
        # Over-long captions (> max_text_length) are dropped from training, as queries and negatives.
        assert np.all(batch["token_ids"].numpy()[:, :, 2] == 3000)
        seen_images.update(image[:, 1:3].ravel().tolist())
    assert seen_images == set(range(NUM_IMAGES))  # every image serves as a negative


def test_hard_negative_query_groups(tmp_path):
    pattern = write_caption_records(tmp_path)
    config = UniterConfig.resolve("tiny")
    options = dict(negative_size=4, batch_size=3, max_text_length=20, seed=5)
    text_batch = next(iter(inputs.build_group_dataset("text_query", [pattern], config, **options)))
    text_image, image, _ = pair_ids(inputs.gather_pairs(text_batch), 3)
    assert np.all(text_image == text_image[:, :1]) and np.all(image[:, 0] == text_image[:, 0])
    assert all(len(set(row[1:])) == 4 and row[0] not in row[1:] for row in image)  # 4 distinct other images
    image_batch = next(iter(inputs.build_group_dataset("image_query", [pattern], config, **options)))
    assert image_batch["region_features"].shape[1] == 1  # one copy of the query image per group
    text_image, image, _ = pair_ids(inputs.gather_pairs(image_batch), 3)
    assert np.all(image == image[:, :1]) and np.all(text_image[:, 0] == image[:, 0])
    assert np.all(text_image[:, 1:] != image[:, :1])
    with pytest.raises(ValueError, match="at least 9 images"):
        inputs.build_group_dataset("text_query", [pattern], config, negative_size=7, batch_size=2,
                                   max_text_length=20)


class ScoringStub:
    """Stands in for the model: score = −|caption's image − image| + 0.1·image; records each call's mode."""

    def __init__(self):
        self.modes, self.trained_inputs = [], None

    def __call__(self, pairs, training=False):
        self.modes.append(bool(training))
        if training:
            self.trained_inputs = pairs
        text_image = tf.cast(pairs["token_ids"][:, 1] - WORD_BASE, tf.float32)
        image = tf.round(pairs["region_features"][:, 0, 0]) - 1
        return (-tf.abs(text_image - image) + 0.1 * image)[:, None]


def test_hard_negative_loss_mines_in_eval_mode_and_trains_on_the_hardest(tmp_path):
    pattern = write_caption_records(tmp_path)
    task = get_task("retrieval", mode="hard_negative", negative_size=4, hard_negative_size=2, model="tiny",
                    train_files=[pattern], train_batch_size=3)
    batch = next(iter(task.build_inputs("retrieval")))
    stub = ScoringStub()
    loss, metrics = task.compute_batch_loss(stub, "retrieval", batch, training=True)
    # Per query kind: one eval-mode scoring per query (3), then one training forward on the hard batch.
    assert stub.modes == [False] * 3 + [True] + [False] * 3 + [True]
    expected_losses = []
    for groups in batch:
        text_image, image, _ = pair_ids(inputs.gather_pairs(groups), 3)
        scores = -np.abs(text_image - image) + 0.1 * image
        hardest = np.argsort(-scores[:, 1:], axis=1, kind="stable")[:, :2] + 1
        hard = np.take_along_axis(scores, np.concatenate([np.zeros((3, 1), int), hardest], axis=1), axis=1)
        sigmoid = 1 / (1 + np.exp(-hard))
        expected_losses.append(np.mean(np.maximum(0.2 + sigmoid[:, 1:] - sigmoid[:, :1], 0)))
    assert float(metrics["text_queries_loss"]) == pytest.approx(expected_losses[0], rel=1e-5)
    assert float(metrics["image_queries_loss"]) == pytest.approx(expected_losses[1], rel=1e-5)
    assert float(loss) == pytest.approx(sum(expected_losses), rel=1e-5)
    assert stub.trained_inputs["token_ids"].shape[0] == 3 * 3  # 3 image queries x (positive + 2 hard)


def test_standard_loss_is_the_hinge_over_each_captions_group(tmp_path):
    pattern = write_caption_records(tmp_path)
    task = get_task("retrieval", negative_size=2, model="tiny", train_files=[pattern], train_batch_size=4)
    batch = next(iter(task.build_inputs("retrieval")))
    stub = ScoringStub()
    loss, metrics = task.compute_batch_loss(stub, "retrieval", batch, training=True)
    text_image, image, _ = pair_ids(inputs.gather_pairs(batch), 4)
    scores = 1 / (1 + np.exp(-(-np.abs(text_image - image) + 0.1 * image)))
    assert stub.modes == [True]
    assert float(loss) == pytest.approx(np.mean(np.maximum(0.2 + scores[:, 1:] - scores[:, :1], 0)), rel=1e-5)
    assert 0.0 <= float(metrics["positive_first"]) <= 1.0


def test_initialize_from_pretraining_copies_the_itm_head_and_its_match_row(monkeypatch):
    from uniter_tf.models.task import DownstreamTask

    task = get_task("retrieval", model="tiny")
    model = task.build_model(task.model_config())
    classifier = task.pretraining_model(model).itm_head.classifier
    rng = np.random.default_rng(1)
    classifier.kernel.assign(rng.normal(size=classifier.kernel.shape).astype(np.float32))
    classifier.bias.assign(np.array([0.3, -0.7], np.float32))
    # The backbone restore is DownstreamTask's (tested with the other tasks); here only the head init matters.
    monkeypatch.setattr(DownstreamTask, "initialize", lambda self, model, init=None, init_path=None, log=print: None)
    task.initialize(model, init="pretrained", init_path="unused", log=lambda message: None)
    np.testing.assert_array_equal(model.head.rank_output.kernel.numpy(), classifier.kernel.numpy()[:, 1:])
    np.testing.assert_array_equal(model.head.rank_output.bias.numpy(), np.float32([-0.7]))
    np.testing.assert_array_equal(model.head.itm_output.kernel.numpy(), classifier.kernel.numpy())
    before = model.head.rank_output.kernel.numpy().copy()
    task.initialize(model, init="scratch", log=lambda message: None)  # no pretrained ITM head: untouched
    np.testing.assert_array_equal(model.head.rank_output.kernel.numpy(), before)


def test_official_retrieval_recipes_carry_the_spec_numbers():
    from uniter_tf.training.experiment import ExperimentConfig

    root = __import__("pathlib").Path(__file__).resolve().parent.parent / "configs"
    standard = ExperimentConfig.from_file(str(root / "finetune_itm_flickr_base.json"))
    # spec §5.7 train-itm-flickr-base-8gpu: 40 captions, accum 4, lr 5e-5, 20000 / 2000, clip 2.0, N = 1.
    assert (standard.task["mode"], standard.task["negative_size"], standard.task["margin"]) == ("standard", 1, 0.2)
    assert standard.task["train_batch_size"] == 40 and standard.trainer.gradient_accumulation_steps == 4
    assert (standard.trainer.learning_rate, standard.trainer.num_train_steps, standard.trainer.warmup_steps) == (
            5e-5, 20000, 2000)
    assert (standard.trainer.grad_norm, standard.trainer.eval_every, standard.trainer.seed) == (2.0, 2000, 42)
    hard = ExperimentConfig.from_file(str(root / "finetune_itm_flickr_base_hn.json"))
    # train-itm-flickr-base-16gpu-hn: 399 -> 31, 8 queries, 5000 / 500, lr 5e-5.
    assert (hard.task["mode"], hard.task["negative_size"], hard.task["hard_negative_size"]) == (
            "hard_negative", 399, 31)
    assert hard.task["train_batch_size"] == 8 and hard.trainer.gradient_accumulation_steps == 1
    assert (hard.trainer.learning_rate, hard.trainer.num_train_steps, hard.trainer.warmup_steps) == (5e-5, 5000, 500)
    for config in (standard, hard):
        assert config.trainer.precision == "mixed_float16" and config.task["dropout"] == 0.1
        assert (config.trainer.beta_1, config.trainer.beta_2, config.trainer.weight_decay) == (0.9, 0.98, 0.01)
        assert config.build_task().get_config()["margin"] == 0.2
