"""VCR end to end (issue 14): rendered scenes -> VCR-format annotations -> reader -> records -> fine-tuning.

One slow module: configs/finetune_vcr_tiny.json (tiny model from scratch, as `uniter train --config` runs
it, shortened) fine-tunes on the sample items; the held-out Q→A accuracy must be clearly above chance
(0.25: each colour is as often right as wrong, so text alone gives 0.25), and it must come from the
image: the same questions with another image's regions fall back towards chance.
"""

import pathlib

import pytest
import tensorflow as tf

from helpers.sample_experiments import sample_experiment

pytestmark = pytest.mark.slow

NUM_IMAGES = 160
NUM_UPDATES = 700
CHANCE = 0.25
#: Required margin of held-out Q→A accuracy over chance.
MARGIN = 0.15


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from uniter_tf.data import sample_data, sample_vcr_records
    from uniter_tf.training.finetune import FinetuneRun

    root = tmp_path_factory.mktemp("vcr")
    sample_data.generate(str(root / "sample"), sample_vcr_records.sample_scene_config(NUM_IMAGES))
    questions = sample_vcr_records.write_sample_vcr_annotations(str(root / "sample"), str(root / "vcr"))
    experiment = sample_experiment(root, "finetune_vcr_tiny.json", trainer__num_train_steps=NUM_UPDATES,
                                   trainer__eval_every=NUM_UPDATES, trainer__checkpoint_every=NUM_UPDATES)
    task = experiment.build_task()
    written = sample_vcr_records.write_sample_vcr_records(str(root / "vcr"), str(root / "records"),
                                                          task.model_config())
    assert not written["dead_letters"]
    assert written["counts"] == {"train": questions["train"], "eval": questions["val"]}
    run = FinetuneRun(experiment.to_finetune_config())
    result = run.train()
    return {"root": root, "run": run, "result": result, "counts": written["counts"]}


def test_held_out_q_to_a_accuracy_clearly_above_chance(trained):
    evaluation = trained["result"]["eval"]
    assert evaluation["num_examples"] == trained["counts"]["eval"]
    assert evaluation["acc_qa"] >= CHANCE + MARGIN, evaluation
    assert evaluation["acc"] <= min(evaluation["acc_qa"], evaluation["acc_qar"])
    step = trained["result"]["step"]
    results = pathlib.Path(trained["run"].config.output_dir) / "results_val" / f"results_{step}_all.json"
    assert results.exists()


def _swapped_regions(records_dir, output_path):
    """The eval records with every question's regions taken from the next question with another image."""
    from uniter_tf.data import schema

    records = [tf.train.Example.FromString(raw.numpy()) for raw in
               tf.data.TFRecordDataset(sorted(map(str, pathlib.Path(records_dir).glob("eval-*.tfrecord.gz"))),
                                       compression_type="GZIP")]
    images = [record.features.feature[schema.IMAGE_ID].bytes_list.value[0] for record in records]
    with tf.io.TFRecordWriter(output_path) as writer:
        for index, record in enumerate(records):
            other = next(records[(index + shift) % len(records)] for shift in range(1, len(records))
                         if images[(index + shift) % len(records)] != images[index])
            swapped = tf.train.Example()
            swapped.CopyFrom(record)
            for key in schema.IMAGE_FEATURE_KEYS:
                swapped.features.feature[key].CopyFrom(other.features.feature[key])
            writer.write(swapped.SerializeToString())
    return len(records)


def test_answers_depend_on_the_image(trained):
    swapped_path = str(trained["root"] / "swapped.tfrecord")
    count = _swapped_regions(trained["root"] / "records", swapped_path)
    run = trained["run"]
    swapped = run.task.evaluate(run.model, [swapped_path])
    assert swapped["num_examples"] == count
    real = trained["result"]["eval"]["acc_qa"]
    # With another picture the right colour is usually absent: the accuracy falls towards chance.
    assert swapped["acc_qa"] <= real - 0.1, (swapped, real)
