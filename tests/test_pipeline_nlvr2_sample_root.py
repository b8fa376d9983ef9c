"""NLVR2 in the whole pipeline: its sample pairs share the sample root with the captioned scenes
(``local_runner.ensure_task_annotations``), and no caption becomes a dead letter because of the pair
naming (the caption join is by file name for ``nlvr2``; by number, ``...-img0`` / ``...-img1`` take the
keys of ``sample_000000`` / ``sample_000001``). docs/pipeline.md, "Downstream tasks"."""

import json
import os

import pytest

import tfx  # noqa: F401  (a broken install must fail, not skip)

from helpers import ingest_test_data as data


@pytest.fixture(name="nlvr2_root")
def fixture_nlvr2_root(tmp_path, monkeypatch):
    """A 4-scene sample root with 2 + 1 NLVR2 sentence sets added the way the local runner adds them."""
    from pipeline import local_runner
    from uniter_tf.data import sample_data

    root = str(tmp_path / "data")
    sample_data.generate(root, sample_data.SampleDataConfig(num_images=4, seed=0))
    monkeypatch.setattr(local_runner, "SAMPLE_NLVR2_SETS", (2, 1))
    local_runner.ensure_task_annotations(root, "nlvr2")
    return root


def _feature_dir(root, directory):
    """One fake feature record per image of the root, named by file stem as the extractor names them."""
    stems = sorted(os.path.splitext(name)[0] for name in os.listdir(os.path.join(root, "images")))
    return data.write_npz_dir(directory, {stem: data.image_arrays(index) for index, stem in enumerate(stems)})


def _caption_ingest_options(tmp_path, root):
    """The caption ExampleGen's ingest options of the pipeline built for ``nlvr2`` on ``root``."""
    from pipeline import configs
    from pipeline import definition as pipeline_lib

    pipeline = pipeline_lib.create_pipeline(
            pipeline_name="uniter-test", pipeline_root=str(tmp_path / "pipeline"),
            data=configs.DataConfig(data_root=root), training=configs.TrainingConfig(finetune_task="nlvr2"),
            serving_model_dir=str(tmp_path / "serving"))
    components = {component.id: component for component in pipeline.components}
    nlvr2_gen = components["Nlvr2ExampleGen"].exec_properties
    assert json.loads(nlvr2_gen["annotations"]) == ["train.json", "dev.json"]
    assert nlvr2_gen["input_base"] == root
    caption_gen = components["CaptionExampleGen"].exec_properties
    assert json.loads(caption_gen["annotations"]) == ["captions.json"] and caption_gen["input_base"] == root
    assert components["DataGate"].exec_properties["task_example_set"] == "nlvr2"
    return json.loads(caption_gen["ingest_options"])


def test_the_pairs_join_the_sample_root_with_their_boxes_and_annotations(nlvr2_root, monkeypatch):
    from pipeline import local_runner
    from uniter_tf.data.readers.nlvr2 import read_nlvr2

    with open(os.path.join(nlvr2_root, "boxes.json"), encoding="utf-8") as handle:
        boxes = json.load(handle)
    images = sorted(os.listdir(os.path.join(nlvr2_root, "images")))
    # 4 scenes + (2 + 1) sets x 2 pairs x 2 images, every one with its boxes for the extraction.
    assert len(images) == 4 + 3 * 2 * 2 and sorted(boxes) == images
    assert all(boxes[name]["boxes"] for name in images)
    items = [item for split in ("train", "dev") for item in read_nlvr2(os.path.join(nlvr2_root, f"{split}.json"))]
    assert len(items) == 3 * 2 * 2  # sets x sentences x pairs
    assert {f"{image_id}.png" for item in items for image_id in item.image_ids} == {
            name for name in images if not name.startswith("sample_")}
    # Present: nothing is rewritten; lost from boxes.json (sample data regenerated): written again.
    before = os.path.getmtime(os.path.join(nlvr2_root, "train.json"))
    local_runner.ensure_task_annotations(nlvr2_root, "nlvr2")
    assert os.path.getmtime(os.path.join(nlvr2_root, "train.json")) == before
    with open(os.path.join(nlvr2_root, "boxes.json"), "w", encoding="utf-8") as handle:
        json.dump({name: entry for name, entry in boxes.items() if name.startswith("sample_")}, handle)
    local_runner.ensure_task_annotations(nlvr2_root, "nlvr2")
    with open(os.path.join(nlvr2_root, "boxes.json"), encoding="utf-8") as handle:
        assert json.load(handle) == boxes


def test_a_root_without_boxes_is_named():
    from uniter_tf.data import sample_nlvr2

    with pytest.raises(FileNotFoundError, match="boxes.json is missing"):
        sample_nlvr2.add_to_sample_root("/nonexistent/root", sample_nlvr2.SampleNlvr2Config(train_sets=1, eval_sets=1))


def test_every_caption_of_the_shared_root_arrives_with_the_nlvr2_pipelines_caption_join(nlvr2_root, tmp_path):
    from uniter_tf.data import dead_letter, ingest

    options = _caption_ingest_options(tmp_path, nlvr2_root)
    assert options["image_key_mode"] == "name"
    features = _feature_dir(nlvr2_root, tmp_path / "features")
    with open(os.path.join(nlvr2_root, "captions.json"), encoding="utf-8") as handle:
        num_captions = len(json.load(handle)["annotations"])

    def run(key_mode, name):
        config = ingest.IngestConfig(annotation_format="coco", annotations=(os.path.join(nlvr2_root, "captions.json"),),
                                     features=features, feature_dim=data.FEATURE_DIM, eval_fraction=0.0,
                                     image_key_mode=key_mode)
        result = ingest.run_ingest(config, str(tmp_path / name))
        records = [record for split in ingest.SPLITS for record in data.read_tfrecords(result.split_dirs[split])]
        letters = [letter for letter in data.read_dead_letter_dir(result.dead_letter_dir) if letter.kind == "text"]
        # good + bad = input, whatever the join.
        assert result.counts[dead_letter.TEXT_ITEMS_READ] == num_captions == len(records) + len(letters)
        return records, letters

    records, letters = run(options["image_key_mode"], "by_name")
    assert not letters
    assert {record["image_id"].decode() for record in records} == {f"sample_{index:06d}" for index in range(4)}
    # The numeric join the other tasks use would lose the captions of scenes 0 and 1 to the pairs' keys.
    _, numeric_letters = run("numeric", "by_number")
    assert numeric_letters and {letter.reason for letter in numeric_letters} == {dead_letter.IMAGE_REJECTED}
    assert all("duplicate_image_id" in letter.detail for letter in numeric_letters)


def test_a_root_with_the_pairs_still_gets_refcoco_annotations_for_its_scenes_only(nlvr2_root):
    from pipeline import local_runner

    local_runner.ensure_task_annotations(nlvr2_root, "refcoco")
    with open(os.path.join(nlvr2_root, "instances.json"), encoding="utf-8") as handle:
        instances = json.load(handle)
    assert sorted(image["file_name"] for image in instances["images"]) == [
            f"sample_{index:06d}.png" for index in range(4)]
