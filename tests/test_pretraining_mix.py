"""The official pretraining data semantics: ITM negatives over distinct images, the (task, dataset) mix.

Spec §3.6 (``ItmDataset``: a negative's image is uniform over the distinct images of the txt_db's shard,
never the caption's own) and §3.9 (mix ratios per task *and* dataset, e.g. coco [6, 8, 4, 4], vg
[9, 12, 6, 6]).
"""

import numpy as np
import pytest
from scipy import stats

from uniter_tf.config import UniterConfig
from uniter_tf.data import pretraining_inputs as inputs
from uniter_tf.data import schema, tfrecord_io
from uniter_tf.training.pretrain_config import PretrainConfig, mix_task
from uniter_tf.training.task_sampler import TaskSampler

CONFIG = UniterConfig.from_preset("tiny")
# Every caption carries its image index in its words and every image in its first feature, so a batch says
# which image each example shows and which image its caption belongs to.
FIRST_WORD = CONFIG.first_word_id + 10


def _write_grouped(path_prefix, captions_per_image, dataset_tag=0.0):
    """Writes records grouped by image (all captions of image 0, then of image 1, ...), as a naive
    export of a caption file sorted by image would."""
    records = []
    for image, count in enumerate(captions_per_image):
        features = np.zeros([3, CONFIG.region_feature_dim], np.float32)
        features[:, 0] = image
        features[:, 1] = dataset_tag
        for caption in range(count):
            records.append(schema.make_example(
                    image_id=f"img{image:03d}", region_features=features,
                    region_boxes=[[0, 0, 5, 5], [1, 1, 4, 4], [2, 2, 6, 6]], image_height=10, image_width=10,
                    example_id=f"img{image:03d}_cap{caption}", text="words",
                    token_ids=[FIRST_WORD + image, FIRST_WORD + image]))
    tfrecord_io.write_sharded(records, path_prefix)
    return path_prefix + "*"


OPTIONS = inputs.PretrainingInputConfig(batch_size=50, shuffle_buffer=8, itm_negative_pool_size=8, max_text_length=2,
                                        text_bucket_boundaries=(4,), region_bucket_boundaries=(3,))


def _itm_draws(pattern, num_examples, seed=11):
    shown, own, labels = [], [], []
    dataset = inputs.build_task_dataset("itm", pattern, CONFIG, OPTIONS, seed=seed)
    for batch in dataset.take(num_examples // OPTIONS.batch_size).as_numpy_iterator():
        shown.append(batch["region_features"][:, 0, 0].round().astype(int))
        own.append(batch["token_ids"][:, 1] - FIRST_WORD)
        labels.append(batch["itm_labels"])
    return np.concatenate(shown), np.concatenate(own), np.concatenate(labels)


def test_itm_negatives_with_captions_grouped_by_image(tmp_path):
    num_images = 40
    pattern = _write_grouped(str(tmp_path / "grouped"), [5] * num_images)
    shown, own, labels = _itm_draws(pattern, 4000)
    assert len(labels) == 4000
    assert abs(1.0 - labels.mean() - 0.5) <= 0.02, f"negative rate {1.0 - labels.mean():.3f}"
    # Positives show their own image, negatives never do.
    np.testing.assert_array_equal(shown[labels == 1], own[labels == 1])
    assert not np.any(shown[labels == 0] == own[labels == 0])
    frequencies = np.bincount(shown[labels == 0], minlength=num_images)
    assert stats.chisquare(frequencies).pvalue > 0.01, frequencies


def test_itm_negative_images_are_uniform_whatever_their_caption_count(tmp_path):
    # Images with 1..9 captions: a draw over captions (the first version's window) would pick image i in
    # proportion to its caption count; the official draw is uniform over distinct images.
    counts = [1 + (image % 9) for image in range(36)]
    pattern = _write_grouped(str(tmp_path / "uneven"), counts)
    shown, own, labels = _itm_draws(pattern, 5000, seed=12)
    negatives = shown[labels == 0]
    frequencies = np.bincount(negatives, minlength=len(counts))
    assert stats.chisquare(frequencies).pvalue > 0.01, frequencies
    # And clearly not caption-weighted: the weighted expectation is rejected.
    weighted = np.asarray(counts, np.float64) / sum(counts) * len(negatives)
    assert stats.chisquare(frequencies, weighted).pvalue < 1e-6
    assert not np.any(negatives == own[labels == 0])


def test_a_single_image_shard_keeps_positives(tmp_path):
    pattern = _write_grouped(str(tmp_path / "one"), [6])
    options = inputs.PretrainingInputConfig(**{**OPTIONS.__dict__, "batch_size": 6})
    batch = next(iter(inputs.build_task_dataset("itm", pattern, CONFIG, options, seed=1).as_numpy_iterator()))
    np.testing.assert_array_equal(batch["itm_labels"], 1)


# ------------------------------------------------------------------------------------ (task, dataset) mix
ALLDATA = [  # spec §3.9, order itm, mlm, mrfr, mrckl
        ("coco", (6, 8, 4, 4)), ("vg", (9, 12, 6, 6)), ("cc", (9, 12, 6, 6)), ("sbu", (6, 8, 4, 4))]


def _alldata_config(**overrides):
    datasets = [{"name": name, "files": [f"data/{name}/train-*.tfrecord.gz"],
                 "task_ratios": dict(zip(("itm", "mlm", "mrfr", "mrckl"), ratios))} for name, ratios in ALLDATA]
    return PretrainConfig(train_datasets=datasets, **overrides)


def test_mix_draws_follow_the_per_dataset_ratios():
    config = _alldata_config()
    ratios = config.mix_ratios()
    assert len(ratios) == 16 and sum(ratios.values()) == 110
    sampler = TaskSampler(ratios, seed=42)
    draws = [sampler.task_for_step(step) for step in range(1, 10_001)]
    keys = sorted(ratios)
    observed = np.asarray([draws.count(key) for key in keys], np.float64)
    expected = np.asarray([ratios[key] for key in keys]) / 110 * len(draws)
    assert stats.chisquare(observed, expected).pvalue > 0.01
    # The marginals are the official ones: datasets 20/30/30/20 %, tasks 3:4:2:2.
    for name, share in (("coco", 0.2), ("vg", 0.3), ("cc", 0.3), ("sbu", 0.2)):
        assert abs(sum(key.endswith("/" + name) for key in draws) / len(draws) - share) < 0.015
    assert abs(sum(mix_task(key) == "mlm" for key in draws) / len(draws) - 4 / 11) < 0.015
    assert config.active_tasks() == ["itm", "mlm", "mrfr", "mrckl"]
    assert config.files_for("itm/vg") == ["data/vg/train-*.tfrecord.gz"]


def test_mix_config_errors_name_the_entry():
    with pytest.raises(ValueError, match="not both"):
        _alldata_config(train_files=["x-*.tfrecord.gz"])
    with pytest.raises(ValueError, match=r"train_datasets\[0\]\.task_ratios: unknown tasks \['itn'\]"):
        PretrainConfig(train_datasets=[{"name": "a", "files": ["x"], "task_ratios": {"itn": 1}}])
    with pytest.raises(ValueError, match=r"train_datasets\[1\]: unknown keys \['file'\]"):
        PretrainConfig(train_datasets=[{"name": "a", "files": ["x"], "task_ratios": {"itm": 1}},
                                       {"name": "b", "file": ["x"], "task_ratios": {"itm": 1}}])
    with pytest.raises(ValueError, match="unique"):
        PretrainConfig(train_datasets=[{"name": "a", "files": ["x"], "task_ratios": {"itm": 1}}] * 2)


@pytest.mark.slow
def test_pretrainer_streams_read_their_own_dataset(tmp_path):
    from uniter_tf.training.pretrainer import Pretrainer

    first = _write_grouped(str(tmp_path / "first"), [2] * 6, dataset_tag=1.0)
    second = _write_grouped(str(tmp_path / "second"), [3] * 5, dataset_tag=2.0)
    config = PretrainConfig(
            model="tiny", output_dir=str(tmp_path / "run"), num_train_steps=10, warmup_steps=1,
            inputs={key: value for key, value in OPTIONS.__dict__.items() if key != "batch_size"} | {"batch_size": 4},
            train_datasets=[{"name": "first", "files": [first], "task_ratios": {"itm": 1, "mlm": 1}},
                            {"name": "second", "files": [second], "task_ratios": {"itm": 2}}])
    trainer = Pretrainer(config, log=lambda message: None)
    assert sorted(trainer.mix_keys) == ["itm/first", "itm/second", "mlm/first"]
    assert trainer.tasks == ["itm", "mlm"]
    for key, tag in (("itm/first", 1.0), ("itm/second", 2.0), ("mlm/first", 1.0)):
        for _ in range(3):
            batch = next(trainer._iterator(key))
            tags = batch["region_features"].numpy()[:, :, 1]
            valid = batch["region_mask"].numpy() == 1
            np.testing.assert_array_equal(tags[valid], tag)  # negatives too come from the same dataset
    values = trainer.train_update("itm/second")
    assert np.isfinite(values["loss"])
