"""RegionFeatureExtractor in a real TFX LocalDagRunner pipeline with SQLite ML Metadata (toy detector, tiny data)."""

import os

import pytest

from uniter_tf.data import sample_data, schema, tfrecord_io
from uniter_tf.extraction import toy_detector


def test_component_validates_its_arguments():
    from components.region_feature_extractor.component import RegionFeatureExtractor

    with pytest.raises(ValueError, match="absolute `image_pattern`"):
        RegionFeatureExtractor(image_pattern="*.png")
    with pytest.raises(ValueError, match="min_boxes <= max_boxes"):
        RegionFeatureExtractor(image_pattern="/data/*.png", min_boxes=5, max_boxes=2)


@pytest.mark.slow
@pytest.mark.e2e
def test_local_dag_runner_pipeline_with_sqlite_metadata(tmp_path):
    from tfx import v1 as tfx
    from tfx.orchestration import metadata

    from components.artifacts import Images, RegionFeatures
    from components.region_feature_extractor.component import RegionFeatureExtractor

    sample_data.generate(str(tmp_path / "data"), sample_data.SampleDataConfig(num_images=3, seed=2))
    images_dir = tmp_path / "data" / "images"
    (images_dir / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    detector = toy_detector.write_toy_detector(str(tmp_path / "detector"))

    importer = tfx.dsl.Importer(source_uri=str(images_dir), artifact_type=Images).with_id("image_importer")
    extractor = RegionFeatureExtractor(images=importer.outputs["result"], image_pattern="*.png",
                                       detector_path=detector, num_classes=toy_detector.NUM_CLASSES,
                                       min_boxes=3, max_boxes=5, num_shards=1)
    metadata_path = str(tmp_path / "metadata.sqlite")
    pipeline = tfx.dsl.Pipeline(
            pipeline_name="region_features_test", pipeline_root=str(tmp_path / "root"),
            components=[importer, extractor],
            metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path),
            beam_pipeline_args=["--runner=DirectRunner", "--direct_num_workers=1"])
    tfx.orchestration.LocalDagRunner().run(pipeline)

    with metadata.Metadata(metadata.sqlite_metadata_connection_config(metadata_path)) as store:
        artifacts = store.store.get_artifacts_by_type(RegionFeatures.TYPE_NAME)
    assert len(artifacts) == 1
    properties = artifacts[0].custom_properties
    assert properties["images_in"].int_value == 4
    assert properties["images_ok"].int_value == 3
    assert properties["dead_letters"].int_value == 1
    assert properties["feature_dim"].int_value == toy_detector.FEATURE_DIM
    assert properties["num_soft_labels"].int_value == toy_detector.NUM_CLASSES
    uri = artifacts[0].uri
    records = [schema.decode_example(r.numpy()) for r in tfrecord_io.read_examples(os.path.join(uri, "*.tfrecord.gz"))]
    assert sorted(record[schema.IMAGE_ID] for record in records) == [b"sample_000000", b"sample_000001",
                                                                       b"sample_000002"]
    dead_letters = [name for name in os.listdir(uri) if name.startswith("dead_letters")]
    with open(os.path.join(uri, dead_letters[0]), encoding="utf-8") as handle:
        assert "corrupt" in handle.read()
