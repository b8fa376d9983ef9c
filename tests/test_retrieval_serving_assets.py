"""The retrieval assets of an exported version (issue 13): index + gallery regions under assets.extra/retrieval.

No model here: a version directory is faked by its uniter_export.json (the first stage's model_version), the
gallery is real canonical per-image records; the served retrieve endpoint is tests/test_retrieval_serving.py.
"""

import json

import numpy as np
import pytest

from helpers.retrieval_records import write_region_records
from uniter_tf.retrieval import serving_assets
from uniter_tf.retrieval.index import EmbeddingIndex, IndexVersionError


def fake_version(tmp_path, model_version):
    version = tmp_path / "export" / "1"
    (version / "assets.extra").mkdir(parents=True)
    (version / "assets.extra" / "uniter_export.json").write_text(
            json.dumps({"first_stage": {"model_version": model_version}}))
    return str(version)


def test_assets_round_trip_keep_the_index_and_each_images_regions_in_index_order(tmp_path):
    from uniter_tf.retrieval.first_stage import read_gallery

    image_ids = [f"img{i}" for i in range(6)]
    write_region_records(tmp_path / "regions.tfrecord", image_ids)
    embeddings = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    indexed = ["img4", "img0", "img2", "img5", "img1"]  # not the records' order, one image left out
    EmbeddingIndex(indexed, embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True), "v1", "image",
                   {"features": [str(tmp_path / "regions.tfrecord")]}).save(str(tmp_path / "index"))
    version = fake_version(tmp_path, "v1")
    assert not serving_assets.has_retrieval_assets(version)

    written = serving_assets.write_retrieval_assets(version, str(tmp_path / "index"))  # features from the index
    assert written["images"] == 5 and written["model_version"] == "v1"
    assert serving_assets.has_retrieval_assets(version)
    assets = serving_assets.read_retrieval_assets(version)
    assert assets.index.ids == indexed == assets.gallery.ids
    np.testing.assert_array_equal(assets.index.embeddings, EmbeddingIndex.load(str(tmp_path / "index")).embeddings)
    source = read_gallery(str(tmp_path / "regions.tfrecord"), require_captions=False)
    for row, image_id in enumerate(indexed):
        features, positions = assets.gallery.regions(row)
        np.testing.assert_array_equal(features, source.region_features[source.image_ids.index(image_id)])
        np.testing.assert_array_equal(positions, source.region_positions[source.image_ids.index(image_id)])
    assert assets.gallery.region_counts().sum() == written["regions"]
    with pytest.raises(FileExistsError, match="already carries"):
        serving_assets.write_retrieval_assets(version, str(tmp_path / "index"))


def test_an_index_of_another_first_stage_or_an_image_without_regions_is_refused(tmp_path):
    write_region_records(tmp_path / "regions.tfrecord", ["a", "b"])
    EmbeddingIndex(["a", "b"], np.eye(2, dtype=np.float32), "other-stage").save(str(tmp_path / "index"))
    version = fake_version(tmp_path, "v1")
    with pytest.raises(IndexVersionError, match="other-stage.*v1"):
        serving_assets.write_retrieval_assets(version, str(tmp_path / "index"), [str(tmp_path / "regions.tfrecord")])
    assert not serving_assets.has_retrieval_assets(version)  # nothing half-written

    EmbeddingIndex(["a", "c"], np.eye(2, dtype=np.float32), "v1").save(str(tmp_path / "index_c"))
    with pytest.raises(ValueError, match=r"no regions.*'c'"):
        serving_assets.write_retrieval_assets(version, str(tmp_path / "index_c"), str(tmp_path / "regions.tfrecord"))
    with pytest.raises(ValueError, match="records no feature files"):
        serving_assets.write_retrieval_assets(version, str(tmp_path / "index_c"))

    # A version without a first stage cannot be checked against the index.
    bare = tmp_path / "bare" / "1" / "assets.extra"
    bare.mkdir(parents=True)
    (bare / "uniter_export.json").write_text("{}")
    with pytest.raises(ValueError, match="no first stage"):
        serving_assets.write_retrieval_assets(str(bare.parent), str(tmp_path / "index"))


def test_tampered_gallery_files_are_named(tmp_path):
    write_region_records(tmp_path / "regions.tfrecord", ["a", "b", "c"])
    EmbeddingIndex(["a", "b", "c"], np.eye(3, dtype=np.float32), "v1").save(str(tmp_path / "index"))
    version = fake_version(tmp_path, "v1")
    serving_assets.write_retrieval_assets(version, str(tmp_path / "index"), [str(tmp_path / "regions.tfrecord")])
    gallery_dir = tmp_path / "export" / "1" / "assets.extra" / "retrieval" / "gallery"
    np.save(gallery_dir / "offsets.npy", np.asarray([0, 1, 2], np.int64))  # one offset short
    with pytest.raises(ValueError, match="offsets.npy"):
        serving_assets.read_retrieval_assets(version)
    # An object array (what a pickle would need) is refused, not unpickled.
    np.save(gallery_dir / "offsets.npy", np.asarray([{"x": 1}], object), allow_pickle=True)
    with pytest.raises(ValueError, match="not a numeric .npy"):
        serving_assets.read_retrieval_assets(version)
    # The version's first stage is not the index's.
    (tmp_path / "export" / "1" / "assets.extra" / "uniter_export.json").write_text(
            json.dumps({"first_stage": {"model_version": "v2"}}))
    with pytest.raises(IndexVersionError):
        serving_assets.read_retrieval_assets(version)


def test_export_with_an_index_of_another_first_stage_is_refused_before_any_model_is_loaded(tmp_path):
    from uniter_tf.export.model_dir import export_model_dir
    from uniter_tf.retrieval import first_stage

    run = tmp_path / "run"  # only the first stage's description: the refusal must come before the model loads
    (run / first_stage.FIRST_STAGE_SUBDIR).mkdir(parents=True)
    (run / first_stage.FIRST_STAGE_SUBDIR / first_stage.CONFIG_FILE).write_text(
            json.dumps({"format": first_stage.FORMAT, "model_version": "stage-a"}))
    EmbeddingIndex(["a", "b"], np.eye(2, dtype=np.float32), "stage-b").save(str(tmp_path / "index"))
    with pytest.raises(IndexVersionError, match="stage-b.*stage-a"):
        export_model_dir(str(run), str(tmp_path / "export"), index=str(tmp_path / "index"))
    with pytest.raises(ValueError, match="needs the first stage"):
        export_model_dir(str(run), str(tmp_path / "export"), index=str(tmp_path / "index"), first_stage=False)
    with pytest.raises(ValueError, match="no trained first stage"):
        export_model_dir(str(tmp_path / "index"), str(tmp_path / "export"), index=str(tmp_path / "index"))
    assert not (tmp_path / "export").exists()
