"""Fingerprinted pipeline inputs: changed annotation files or images re-run their nodes, unchanged ones are cached."""

import json
import os

import pytest

from components import input_fingerprint


def _write(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def test_content_fingerprint_sees_a_same_size_edit_and_names_a_missing_file(tmp_path):
    first = _write(tmp_path / "captions.json", b'{"caption": "a red circle"}')
    before = input_fingerprint.content_fingerprint([first])
    assert before == input_fingerprint.content_fingerprint([first])
    _write(tmp_path / "captions.json", b'{"caption": "a red square"}'[:len(b'{"caption": "a red circle"}')])
    assert input_fingerprint.content_fingerprint([first]) != before
    with pytest.raises(FileNotFoundError, match="missing.json"):
        input_fingerprint.content_fingerprint([str(tmp_path / "missing.json")])


def test_listing_fingerprint_uses_names_sizes_and_mtimes(tmp_path):
    folder = tmp_path / "images"
    image = _write(folder / "a.png", b"12345")
    _write(folder / "notes.txt", b"ignored by the pattern")
    before = input_fingerprint.listing_fingerprint([str(folder)], "*.png")
    assert before.startswith("files:1,")
    # A file outside the pattern does not count.
    _write(folder / "notes.txt", b"changed")
    assert input_fingerprint.listing_fingerprint([str(folder)], "*.png") == before
    # Same size, new mtime: a change (the bytes are not read).
    _write(folder / "a.png", b"54321")
    os.utime(image, ns=(1, 1_000_000_000))
    touched = input_fingerprint.listing_fingerprint([str(folder)], "*.png")
    assert touched != before
    _write(folder / "sub" / "b.png", b"x")
    assert input_fingerprint.listing_fingerprint([str(folder)], "*.png").startswith("files:2,")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        input_fingerprint.listing_fingerprint([str(tmp_path / "nowhere")])


def test_drivers_put_the_fingerprint_in_the_exec_properties_and_on_the_artifacts(tmp_path):
    from tfx.orchestration.portable import data_types

    from components.artifacts import Images
    from components.image_folder import ImageFolderDriver
    from components.uniter_example_gen import executor as example_gen_executor
    from tfx.types import standard_artifacts

    _write(tmp_path / "images" / "1.png", b"png")
    info = data_types.ExecutionInfo(
            exec_properties={"source_uri": str(tmp_path / "images"), "pattern": "*.png"},
            output_dict={"images": [Images()]})
    output = ImageFolderDriver(None).run(info)
    fingerprint = output.exec_properties[input_fingerprint.FINGERPRINT_KEY].string_value
    assert fingerprint == input_fingerprint.listing_fingerprint([str(tmp_path / "images")], "*.png")
    (artifact,) = output.output_artifacts["images"].artifacts
    assert artifact.custom_properties[input_fingerprint.FINGERPRINT_KEY].string_value == fingerprint
    # The ground-truth boxes describing the images join the fingerprint by content.
    boxes = _write(tmp_path / "boxes.json", b'{"1": [[0, 0, 4, 4]]}')
    with_boxes = dict(info.exec_properties, boxes_json=boxes)
    boxed = ImageFolderDriver(None).fingerprint(with_boxes)
    assert boxed == fingerprint + ";boxes:" + input_fingerprint.content_fingerprint([boxes])
    _write(tmp_path / "boxes.json", b'{"1": [[0, 0, 4, 5]]}')
    assert ImageFolderDriver(None).fingerprint(with_boxes) != boxed
    with pytest.raises(FileNotFoundError, match="no files match"):
        ImageFolderDriver(None).run(data_types.ExecutionInfo(
                exec_properties={"source_uri": str(tmp_path / "images"), "pattern": "*.jpg"},
                output_dict={"images": [Images()]}))

    # The ExampleGen's annotation paths are relative to input_base; their content is the fingerprint.
    captions = _write(tmp_path / "data" / "captions.json", b"{}")
    properties = {"annotation_format": "coco", "annotations": json.dumps(["captions.json"]),
                  "input_base": str(tmp_path / "data"), "features_path": str(tmp_path / "images")}
    output = example_gen_executor.Driver(None).run(data_types.ExecutionInfo(
            exec_properties=properties, output_dict={"examples": [standard_artifacts.Examples()]}))
    assert output.exec_properties[input_fingerprint.FINGERPRINT_KEY].string_value == ";".join([
            input_fingerprint.content_fingerprint([captions]),
            input_fingerprint.listing_fingerprint([str(tmp_path / "images")])])
    with pytest.raises(ValueError, match="'annotations' must be a JSON list"):
        example_gen_executor.annotation_paths({"annotations": "captions.json"})


def toy_data_config(tmp_path, data_root, detector, **changes):
    """The data settings of the toy detector (3-5 regions of its width) with curated schemas to match."""
    from components.uniter_example_gen import schema as schema_lib
    from pipeline import configs
    from uniter_tf.extraction import toy_detector

    settings = dict(feature_dim=toy_detector.FEATURE_DIM, num_soft_labels=toy_detector.NUM_CLASSES, min_regions=1,
                    max_regions=5)
    (tmp_path / "schema").mkdir(exist_ok=True)
    return configs.DataConfig(
            data_root=data_root, detector_path=detector, num_detector_classes=toy_detector.NUM_CLASSES,
            min_boxes=3, max_boxes=5,
            caption_schema_file=schema_lib.write_schema(str(tmp_path / "schema" / "captions.pbtxt"), kind="captions",
                                                        **settings),
            vqa_schema_file=schema_lib.write_schema(str(tmp_path / "schema" / "vqa.pbtxt"), kind="vqa", **settings),
            **changes)


def _caption_edit(data_root):
    path = os.path.join(data_root, "captions.json")
    with open(path, encoding="utf-8") as handle:
        captions = json.load(handle)
    captions["annotations"][0]["caption"] = "an edited caption about a purple star"
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(captions, handle)


@pytest.mark.slow
@pytest.mark.e2e
def test_changed_caption_or_image_reruns_downstream_and_unchanged_inputs_are_cached(tmp_path):
    """The data part of the real pipeline (images → features → caption / VQA examples → statistics → schema
    → validator; ``include_training=False``) with LocalDagRunner and SQLite MLMD (the toy detector keeps
    extraction short), run four times: fresh, a caption edited, unchanged, an image changed."""
    from tfx import v1 as tfx

    from pipeline import configs
    from pipeline import local_runner
    from pipeline import definition as pipeline_lib
    from uniter_tf.data import sample_data
    from uniter_tf.extraction import toy_detector

    data_root = str(tmp_path / "data")
    sample_data.generate(data_root, sample_data.SampleDataConfig(num_images=4, seed=0))
    detector = toy_detector.write_toy_detector(str(tmp_path / "detector"))
    metadata_path = str(tmp_path / "metadata.sqlite")
    nodes = (pipeline_lib.IMAGE_IMPORTER, pipeline_lib.FEATURE_EXTRACTOR, pipeline_lib.CAPTION_EXAMPLE_GEN,
             pipeline_lib.VQA_EXAMPLE_GEN, pipeline_lib.STATISTICS_GEN, pipeline_lib.SCHEMA_GEN,
             pipeline_lib.EXAMPLE_VALIDATOR, pipeline_lib.VQA_STATISTICS_GEN, pipeline_lib.VQA_SCHEMA_GEN,
             pipeline_lib.VQA_EXAMPLE_VALIDATOR, pipeline_lib.DATA_GATE)
    # The imported schemas depend on no data: they stay cached when the data changes.
    caption_downstream = (pipeline_lib.CAPTION_EXAMPLE_GEN, pipeline_lib.STATISTICS_GEN,
                          pipeline_lib.EXAMPLE_VALIDATOR, pipeline_lib.DATA_GATE)
    schema_nodes = (pipeline_lib.SCHEMA_GEN, pipeline_lib.VQA_SCHEMA_GEN)

    data = toy_data_config(tmp_path, data_root, detector)

    def run():
        pipeline = pipeline_lib.create_pipeline(
                pipeline_name="uniter-fingerprint", pipeline_root=str(tmp_path / "root"), data=data,
                training=configs.TrainingConfig(
                        enabled=False, model_overrides={"region_feature_dim": toy_detector.FEATURE_DIM,
                                                        "num_soft_labels": toy_detector.NUM_CLASSES}),
                serving_model_dir=str(tmp_path / "serving"),
                beam_pipeline_args=["--direct_running_mode=in_memory", "--direct_num_workers=1"],
                metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
                        metadata_path))
        assert {component.id for component in pipeline.components} == set(nodes)
        tfx.orchestration.LocalDagRunner().run(pipeline)
        states = local_runner.node_states(metadata_path, "uniter-fingerprint")
        return {node: states[node][-1] for node in nodes}, {node: len(states[node]) for node in nodes}

    first, _ = run()
    assert first == dict.fromkeys(nodes, "COMPLETE")

    _caption_edit(data_root)
    second, counts = run()
    assert counts == dict.fromkeys(nodes, 2)
    assert second == {node: "COMPLETE" if node in caption_downstream else "CACHED" for node in nodes}

    third, _ = run()
    assert third == dict.fromkeys(nodes, "CACHED")

    # An image rewritten in place (same name, other bytes and size): the folder's artifact is new.
    image = os.path.join(data_root, "images", sorted(os.listdir(os.path.join(data_root, "images")))[0])
    other = os.path.join(data_root, "images", sorted(os.listdir(os.path.join(data_root, "images")))[1])
    with open(other, "rb") as source, open(image, "wb") as target:
        target.write(source.read())
    fourth, _ = run()
    assert fourth == {node: "CACHED" if node in schema_nodes else "COMPLETE" for node in nodes}

    from ml_metadata import metadata_store

    store = metadata_store.MetadataStore(
            tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path))
    fingerprints = {}
    for artifact in sorted(store.get_artifacts_by_type("Examples"), key=lambda artifact: artifact.id):
        producer = "caption" if "CaptionExampleGen" in artifact.uri else "vqa"
        fingerprints.setdefault(producer, []).append(
                artifact.custom_properties[input_fingerprint.FINGERPRINT_KEY].string_value)
    # Caption examples of runs 1, 2 and 4 (the 4th from the edited captions of the 2nd); VQA of runs 1, 4.
    caption, vqa = fingerprints["caption"], fingerprints["vqa"]
    assert len(caption) == 3 and caption[0] != caption[1] == caption[2]
    assert len(vqa) == 2 and vqa[0] == vqa[1] and vqa[0] not in caption


@pytest.mark.slow
@pytest.mark.e2e
def test_whole_pipeline_caption_edit_reruns_trainers_gate_and_pusher(tmp_path):
    """The whole pipeline (toy detector, 2 updates per trainer, a gate nothing passes) three times: fresh,
    a caption edited (CaptionExampleGen and everything downstream of it run again), unchanged (all cached)."""
    from tfx import v1 as tfx

    from pipeline import configs
    from pipeline import local_runner
    from pipeline import definition as pipeline_lib
    from uniter_tf.data import sample_data
    from uniter_tf.extraction import toy_detector

    data_root = str(tmp_path / "data")
    sample_data.generate(data_root, sample_data.SampleDataConfig(num_images=8, seed=0))
    detector = toy_detector.write_toy_detector(str(tmp_path / "detector"))
    metadata_path = str(tmp_path / "metadata.sqlite")

    data = toy_data_config(tmp_path, data_root, detector)

    def run():
        pipeline = pipeline_lib.create_pipeline(
                pipeline_name="uniter-fingerprint-all", pipeline_root=str(tmp_path / "root"), data=data,
                training=configs.TrainingConfig(
                        model_overrides={**configs.MODEL_OVERRIDES, "region_feature_dim": toy_detector.FEATURE_DIM,
                                         "num_soft_labels": toy_detector.NUM_CLASSES},
                        pretrain_config={**configs.PRETRAIN_CONFIG, "warmup_steps": 1},
                        finetune_config={**configs.FINETUNE_CONFIG, "valid_steps": 2},
                        pretrain_steps=2, finetune_steps=2, eval_steps=1, batch_size=4),
                serving_model_dir=str(tmp_path / "serving"),
                # Nothing is blessed, so the resolver's baseline stays empty and a rerun is fully cached.
                gate=configs.GateConfig(lower_bounds={"itm_accuracy": 1.01}, max_regression={}),
                beam_pipeline_args=["--direct_running_mode=in_memory", "--direct_num_workers=1"],
                metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
                        metadata_path))
        tfx.orchestration.LocalDagRunner().run(pipeline)
        states = local_runner.node_states(metadata_path, "uniter-fingerprint-all")
        return {node: node_states[-1] for node, node_states in states.items()}

    executed = ("CaptionExampleGen", "StatisticsGen", "ExampleValidator", "DataGate", "PretrainTrainer",
                "FinetuneTrainer", "UniterEvaluator", "Pusher")
    unchanged = ("ImageImporter", "RegionFeatureExtractor", "VqaExampleGen", "VqaStatisticsGen", "VqaExampleValidator",
                 "SchemaGen", "VqaSchemaGen")
    first = run()
    assert {node: first[node] for node in executed + unchanged} == dict.fromkeys(executed + unchanged, "COMPLETE")
    _caption_edit(data_root)
    second = run()
    assert {node: second[node] for node in executed + unchanged} == {
            **dict.fromkeys(executed, "COMPLETE"), **dict.fromkeys(unchanged, "CACHED")}
    third = run()
    assert {node: third[node] for node in executed + unchanged} == dict.fromkeys(executed + unchanged, "CACHED")
    assert not os.path.exists(str(tmp_path / "serving")) or not os.listdir(str(tmp_path / "serving"))
