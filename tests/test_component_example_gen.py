"""UniterExampleGen: the schema contract, and a real LocalDagRunner pipeline with SQLite ML Metadata."""

import glob
import json
import os

import pytest

from helpers import ingest_test_data as data
from components.uniter_example_gen import schema as schema_lib


def test_checked_in_schema_matches_builder():
    with open(schema_lib.DEFAULT_SCHEMA_PATH, encoding="utf-8") as handle:
        assert handle.read() == schema_lib.schema_text(schema_lib.build_schema())
    built = schema_lib.build_schema(feature_dim=8, min_regions=2, max_regions=5, max_text_tokens=7)
    features = {feature.name: feature for feature in built.feature}
    assert (features["num_regions"].int_domain.min, features["num_regions"].int_domain.max) == (2, 5)
    assert features["feature_dim"].int_domain.min == features["feature_dim"].int_domain.max == 8
    assert (features["token_ids"].value_count.min, features["token_ids"].value_count.max) == (1, 7)
    assert features["text"].presence.min_fraction == 1.0
    with pytest.raises(ValueError, match="min_regions"):
        schema_lib.build_schema(min_regions=5, max_regions=2)


def test_component_rejects_unknown_options_and_missing_features():
    from components.uniter_example_gen.component import UniterExampleGen

    with pytest.raises(ValueError, match="unknown ingest_options"):
        UniterExampleGen("coco", ["a.json"], features_path="f", ingest_options={"feature_dims": 8})
    with pytest.raises(ValueError, match="features_path"):
        UniterExampleGen("coco", ["a.json"])


@pytest.mark.slow
@pytest.mark.e2e
def test_local_dag_runner_example_gen_statistics_schema_validator(tmp_path):
    import tensorflow_data_validation as tfdv
    from tensorflow_metadata.proto.v0 import anomalies_pb2
    from tfx import v1 as tfx

    from components.uniter_example_gen.component import UniterExampleGen
    from uniter_tf.data import dead_letter

    image_ids = list(range(1, 9))
    features = {f"coco_train2014_{image_id:012d}": data.image_arrays(image_id) for image_id in image_ids}
    feature_dir = data.write_npz_dir(tmp_path / "features", features)
    coco = data.coco_captions(image_ids + [77], captions_per_image=2)
    annotations = data.write_json(tmp_path / "captions_train2014.json", coco)
    schema_path = schema_lib.write_schema(str(tmp_path / "schema.pbtxt"), feature_dim=data.FEATURE_DIM)

    example_gen = UniterExampleGen(
            "coco", [annotations], features_path=feature_dir,
            ingest_options={"feature_dim": data.FEATURE_DIM, "eval_fraction": 0.4})
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    schema_gen = tfx.components.SchemaGen(statistics=statistics_gen.outputs["statistics"])
    validator = tfx.components.ExampleValidator(statistics=statistics_gen.outputs["statistics"],
                                                schema=schema_gen.outputs["schema"])
    import_schema = tfx.components.ImportSchemaGen(schema_file=schema_path).with_id("ContractSchema")
    contract_validator = tfx.components.ExampleValidator(
            statistics=statistics_gen.outputs["statistics"],
            schema=import_schema.outputs["schema"]).with_id("ContractValidator")
    pipeline_root = str(tmp_path / "root")
    pipeline = tfx.dsl.Pipeline(
            pipeline_name="uniter_example_gen_test", pipeline_root=pipeline_root,
            components=[example_gen, statistics_gen, schema_gen, validator, import_schema, contract_validator],
            metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
                    str(tmp_path / "metadata.sqlite")),
            beam_pipeline_args=["--direct_num_workers=1"])
    tfx.orchestration.LocalDagRunner().run(pipeline)

    (examples_uri,) = glob.glob(os.path.join(pipeline_root, "UniterExampleGen", "examples", "*"))
    train = data.read_tfrecords(os.path.join(examples_uri, "Split-train"))
    evaluation = data.read_tfrecords(os.path.join(examples_uri, "Split-eval"))
    assert len(train) + len(evaluation) == 16 and train and evaluation
    letters = data.read_dead_letter_dir(os.path.join(examples_uri, "dead_letters"))
    assert sorted((letter.record_id, letter.reason) for letter in letters) == [
            ("coco_7700", dead_letter.UNKNOWN_IMAGE), ("coco_7701", dead_letter.UNKNOWN_IMAGE)]

    # ML Metadata knows the artifact with its splits and the ingest counters.
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = str(tmp_path / "metadata.sqlite")
    store = metadata_store.MetadataStore(config)
    (artifact,) = store.get_artifacts_by_type("Examples")
    assert json.loads(artifact.properties["split_names"].string_value) == ["train", "eval"]
    assert artifact.custom_properties["dead_letters"].int_value == 2
    assert artifact.custom_properties["unknown_image"].int_value == 2

    def anomalies(component_id):
        (uri,) = glob.glob(os.path.join(pipeline_root, component_id, "anomalies", "*"))
        result = {}
        for split in ("train", "eval"):
            proto = anomalies_pb2.Anomalies()
            with open(os.path.join(uri, f"Split-{split}", "SchemaDiff.pb"), "rb") as handle:
                proto.ParseFromString(handle.read())
            result[split] = proto
        return result

    for component_id in ("ExampleValidator", "ContractValidator"):
        for split, proto in anomalies(component_id).items():
            assert not proto.anomaly_info, (component_id, split, dict(proto.anomaly_info))

    # The contract catches a wrong feature dim from the same statistics.
    (statistics_uri,) = glob.glob(os.path.join(pipeline_root, "StatisticsGen", "statistics", "*"))
    statistics = tfdv.load_stats_binary(os.path.join(statistics_uri, "Split-train", "FeatureStats.pb"))
    wrong = tfdv.validate_statistics(statistics, schema_lib.build_schema(feature_dim=2048))
    assert "feature_dim" in wrong.anomaly_info


def test_executor_reads_region_features_artifact(tmp_path):
    import numpy as np

    from components.artifacts import RegionFeatures
    from components.uniter_example_gen import executor
    from uniter_tf.data import importers, schema, tfrecord_io

    arrays = data.image_arrays(1)
    example = schema.make_example(image_id="img_1", region_features=arrays["features"],
                                  region_boxes=np.tile([[0, 0, 10, 10]], (12, 1)), image_height=20, image_width=20)
    tfrecord_io.write_sharded([example], str(tmp_path / "features" / "region_features"), num_shards=1)
    (tmp_path / "features" / "dead_letters-00000-of-00001.jsonl").write_text("")
    artifact = RegionFeatures()
    artifact.uri = str(tmp_path / "features")
    config = executor.ingest_config(
            {"features": [artifact]},
            {"annotation_format": "coco", "annotations": json.dumps(["captions.json"]),
             "ingest_options": json.dumps({"feature_dim": data.FEATURE_DIM})})
    assert config.feature_format == "canonical" and config.feature_dim == data.FEATURE_DIM
    (shard,) = importers.list_shards(config.features, config.feature_format)
    (record,) = list(importers.iter_shard(shard))
    assert record.image_id == "img_1" and record.num_regions == 12
    with pytest.raises(ValueError, match="features_path"):
        executor.features_location([], "")
