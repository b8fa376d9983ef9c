"""Fingerprinted pipeline inputs: changed annotation files or images re-run their nodes, unchanged ones are cached."""

import glob
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


def _tfx_cli(tmp_path, env, *arguments, timeout=900):
    """Runs ``tfx <arguments>`` (the venv's TFX CLI) from ``tmp_path``; its output goes to a log file there,
    the tail of which comes back for assertion messages."""
    import subprocess
    import sys

    log = tmp_path / f"tfx-{len(list(tmp_path.glob('tfx-*.log')))}.log"
    with open(log, "w", encoding="utf-8") as handle:
        completed = subprocess.run([os.path.join(os.path.dirname(sys.executable), "tfx"), *arguments],
                                   cwd=str(tmp_path), env=env, stdout=handle, stderr=subprocess.STDOUT,
                                   timeout=timeout, check=False)
    return completed.returncode, log.read_text(encoding="utf-8", errors="replace")


def _pushed_versions(serving_dir):
    if not os.path.isdir(serving_dir):
        return []
    return sorted(entry for entry in os.listdir(serving_dir)
                  if os.path.exists(os.path.join(serving_dir, entry, "saved_model.pb")))


@pytest.mark.slow
@pytest.mark.e2e
def test_tfx_cli_runs_whole_pipeline_to_a_pushed_model_and_caption_edit_reruns_downstream(tmp_path):
    """The whole pipeline through the TFX CLI, as a platform engineer runs it: ``tfx pipeline create
    --engine=local --pipeline_path=pipeline/local_runner.py`` once, then ``tfx run create --engine=local``
    three times (fresh; a caption edited: CaptionExampleGen and everything downstream run again; unchanged:
    all cached). Every setting reaches the runner through ``UNITER_*`` environment variables
    (pipeline/configs.py), every root under tmp_path: toy detector, 8 sample images, 2 updates per trainer.

    Test-specific gate: the demo's thresholds (``configs.EVAL_LOWER_BOUNDS``) refuse a 2-update model,
    so the first run's gate only requires ``itm_accuracy`` and ``vqa_score`` to be computed (>= 0.0: a
    missing or NaN figure fails) and the model is pushed; the next runs set a bound nothing reaches
    (``itm_accuracy`` >= 1.01), so the edited run's model is refused and not pushed, and the third run sees
    the same baseline (the one blessed model) and is served from the cache. The real thresholds are tested
    in tests/test_evaluator_gate.py and tests/test_pipeline_local_e2e.py."""
    import json as json_lib

    from pipeline import configs
    from pipeline import local_runner
    from uniter_tf.data import sample_data
    from uniter_tf.extraction import toy_detector

    name = "uniter-cli-all"
    data_root = str(tmp_path / "data")
    sample_data.generate(data_root, sample_data.SampleDataConfig(num_images=8, seed=0))
    detector = toy_detector.write_toy_detector(str(tmp_path / "detector"))
    data = toy_data_config(tmp_path, data_root, detector)
    metadata_path = str(tmp_path / "metadata.sqlite")
    serving_dir = str(tmp_path / "serving")
    env = dict(os.environ, LOCAL_HOME=str(tmp_path / "tfx_home"), **{f"UNITER_{key}": str(value) for key, value in {
            "PIPELINE_NAME": name, "PIPELINE_ROOT": tmp_path / "root", "METADATA_PATH": metadata_path,
            "SERVING_MODEL_DIR": serving_dir, "SAMPLE_DATA_DIR": data_root, "SAMPLE_NUM_IMAGES": 8,
            "SAMPLE_PRESENCE_QUESTIONS": 0, "GROUND_TRUTH_BOXES": 0, "FINETUNE_TASK": "vqa",
            "DETECTOR_PATH": detector, "NUM_DETECTOR_CLASSES": data.num_detector_classes,
            "MIN_BOXES": data.min_boxes, "MAX_BOXES": data.max_boxes,
            "CAPTION_SCHEMA_FILE": data.caption_schema_file, "VQA_SCHEMA_FILE": data.vqa_schema_file,
            "MODEL_OVERRIDES": json_lib.dumps({**configs.MODEL_OVERRIDES,
                                               "region_feature_dim": toy_detector.FEATURE_DIM,
                                               "num_soft_labels": toy_detector.NUM_CLASSES}),
            "PRETRAIN_CONFIG": json_lib.dumps({**configs.PRETRAIN_CONFIG, "warmup_steps": 1}),
            "FINETUNE_CONFIG": json_lib.dumps({**configs.FINETUNE_CONFIG, "valid_steps": 2, "log_every": 1}),
            "PRETRAIN_TRAIN_STEPS": 2, "FINETUNE_TRAIN_STEPS": 2, "EVAL_STEPS": 1, "BATCH_SIZE": 4,
            "EVAL_LOWER_BOUNDS": json_lib.dumps({"itm_accuracy": 0.0, "vqa_score": 0.0}),
            "EVAL_MAX_REGRESSION": "{}"}.items()})
    runner_path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pipeline",
                               "local_runner.py")

    status, output = _tfx_cli(tmp_path, env, "pipeline", "create", "--engine=local", f"--pipeline_path={runner_path}")
    assert status == 0 and f'Pipeline "{name}" created successfully.' in output, output[-3000:]

    def run():
        status, output = _tfx_cli(tmp_path, env, "run", "create", "--engine=local", f"--pipeline_name={name}")
        assert status == 0, output[-5000:]
        states = local_runner.node_states(metadata_path, name)
        return {node: node_states[-1] for node, node_states in states.items()}, {
                node: len(node_states) for node, node_states in states.items()}

    executed = ("CaptionExampleGen", "StatisticsGen", "ExampleValidator", "DataGate", "PretrainTrainer",
                "FinetuneTrainer", "UniterEvaluator", "Pusher")
    unchanged = ("ImageImporter", "RegionFeatureExtractor", "VqaExampleGen", "VqaStatisticsGen", "VqaExampleValidator",
                 "SchemaGen", "VqaSchemaGen")
    nodes = executed + unchanged
    # `tfx run create` reports a failed run only by its exit status (1; docs/pipeline.md "Running with the TFX
    # CLI"), which run() checks; the node states in ML Metadata say what ran.
    first, counts = run()
    assert {node: (first[node], counts[node]) for node in nodes} == dict.fromkeys(nodes, ("COMPLETE", 1))
    # Pushed in TF Serving's layout: <base>/<version>/saved_model.pb, the fine-tuning Trainer's SavedModel.
    (version,) = _pushed_versions(serving_dir)
    trained = glob.glob(str(tmp_path / "root" / "FinetuneTrainer" / "model" / "*" / "Format-Serving"
                            / "saved_model.pb"))
    assert len(trained) == 1
    with open(trained[0], "rb") as source, open(os.path.join(serving_dir, version, "saved_model.pb"), "rb") as pushed:
        assert source.read() == pushed.read()
    assert os.path.isdir(os.path.join(serving_dir, version, "variables"))

    env["UNITER_EVAL_LOWER_BOUNDS"] = json_lib.dumps({"itm_accuracy": 1.01})
    _caption_edit(data_root)
    second, _ = run()
    assert {node: second[node] for node in nodes} == {**dict.fromkeys(executed, "COMPLETE"),
                                                      **dict.fromkeys(unchanged, "CACHED")}
    reports = sorted(glob.glob(str(tmp_path / "root" / "UniterEvaluator" / "evaluation" / "*" / "metrics.json")),
                     key=lambda path: int(path.split(os.sep)[-2]))
    assert len(reports) == 2
    with open(reports[0], encoding="utf-8") as handle:
        blessed = json_lib.load(handle)
    with open(reports[1], encoding="utf-8") as handle:
        refused = json_lib.load(handle)
    assert blessed["blessed"] is True and not refused["blessed"], (blessed, refused)
    assert refused["failed_checks"] == [f"itm_accuracy = {refused['metrics']['itm_accuracy']:.4f} < threshold 1.0100"]
    # The edited run was judged against the pushed model (the resolver's last blessed one).
    assert refused["baseline_model_id"] is not None and refused["baseline_model_id"] != blessed["baseline_model_id"]
    assert _pushed_versions(serving_dir) == [version]

    third, counts = run()
    assert {node: (third[node], counts[node]) for node in nodes} == dict.fromkeys(nodes, ("CACHED", 3))
    assert _pushed_versions(serving_dir) == [version]
