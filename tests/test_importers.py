"""Feature importers: official img_db (LMDB + msgpack / compressed npz), BUTD TSV, npz folders, canonical."""

import gzip

import lmdb
import msgpack
import msgpack_numpy
import numpy as np
import pytest

from helpers import ingest_test_data as data
from uniter_tf.data import boxes as boxes_lib
from uniter_tf.data import dead_letter
from uniter_tf.data import importers
from uniter_tf.data.importers import butd_tsv, feature_record, img_db, npz_dir


def _records(results):
    return [result for result in results if isinstance(result, feature_record.FeatureRecord)]


def _letters(results):
    return [result for result in results if isinstance(result, dead_letter.DeadLetter)]


@pytest.mark.parametrize("compress", [False, True])
def test_img_db_reads_official_lmdb_and_applies_nbb(tmp_path, compress):
    images = {f"coco_train2014_{index:012d}.npz": data.image_arrays(index, num_regions=14, confident=12)
              for index in (9, 25)}
    images["coco_train2014_000000000030.npz"] = data.image_arrays(30, num_regions=14, confident=3)
    selection = boxes_lib.BoxSelection()
    img_db.write_img_db(str(tmp_path), images, compress=compress, selection=selection)

    results = list(img_db.iter_img_db(str(tmp_path), selection))
    records = {record.image_id: record for record in _records(results)}
    assert not _letters(results)
    assert sorted(records) == ["coco_train2014_000000000009", "coco_train2014_000000000025",
                               "coco_train2014_000000000030"]
    # 12 confident -> 12 kept; 3 confident -> min_boxes 10 kept (first rows, not re-sorted).
    assert records["coco_train2014_000000000009"].num_regions == 12
    assert records["coco_train2014_000000000030"].num_regions == 10
    record = records["coco_train2014_000000000025"]
    source = images["coco_train2014_000000000025.npz"]
    np.testing.assert_array_equal(record.features, source["features"][:12].astype(np.float16))
    assert record.features.dtype == np.float16
    norm_bb = source["norm_bb"][:12].astype(np.float16).astype(np.float32)
    np.testing.assert_allclose(record.positions[:, :6], norm_bb)
    np.testing.assert_allclose(record.positions[:, 6], norm_bb[:, 4] * norm_bb[:, 5], rtol=1e-6)
    assert record.soft_labels.shape == (12, data.NUM_CLASSES)
    assert record.boxes is None and record.image_height == 0  # the img_db stores no image size


def test_img_db_without_nbb_file_uses_conf_and_flags_corrupt_values(tmp_path):
    lmdb_dir = tmp_path / "feat_custom"
    environment = lmdb.open(str(lmdb_dir), map_size=1 << 26)
    arrays = data.image_arrays(1, num_regions=120, confident=110)
    with environment.begin(write=True) as transaction:
        transaction.put(b"img_a.npz", msgpack.packb(arrays, default=msgpack_numpy.encode, use_bin_type=True))
        transaction.put(b"img_b.npz", b"\x93not msgpack of a dict")
        transaction.put(img_db.KEYS_ENTRY, b'["img_a.npz", "img_b.npz"]')
    environment.close()

    results = list(img_db.iter_img_db(str(lmdb_dir)))
    (record,) = _records(results)
    assert record.num_regions == 100  # max_boxes
    (letter,) = _letters(results)
    assert letter.record_id == "img_b" and letter.reason == dead_letter.UNREADABLE_INPUT
    assert len(list(img_db.iter_img_db(str(lmdb_dir), selection=None))) == 2
    assert _records(img_db.iter_img_db(str(lmdb_dir), selection=None))[0].num_regions == 120


def test_img_db_missing_directory_raises_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no LMDB"):
        list(img_db.iter_img_db(str(tmp_path)))


def test_butd_tsv_lines_and_bad_lines(tmp_path):
    rng = np.random.default_rng(0)
    boxes = np.array([[0, 0, 320, 240], [10, 20, 110, 220]] * 6, np.float32)
    features = rng.normal(size=(12, data.FEATURE_DIM)).astype(np.float32)
    path = tmp_path / "features.tsv.gz"
    with gzip.open(path, "wt") as handle:
        handle.write(butd_tsv.encode_line(9, 640, 480, boxes, features))
        handle.write("25\t640\t480\t2\tnot-base64!\tAAAA\n")
        handle.write("30\t640\t480\n")
    results = list(butd_tsv.iter_butd_tsv(str(path)))
    (record,) = _records(results)
    assert record.image_id == "9" and (record.image_height, record.image_width) == (480, 640)
    np.testing.assert_array_equal(record.features, features)
    np.testing.assert_allclose(record.positions[0], [0, 0, 0.5, 0.5, 0.5, 0.5, 0.25])
    np.testing.assert_array_equal(record.boxes, boxes)
    letters = _letters(results)
    assert [letter.record_id for letter in letters] == ["25", "30"]
    assert "base64" in letters[0].detail and "columns" in letters[1].detail


def test_npz_dir_with_pixel_boxes_and_corrupt_file(tmp_path):
    directory = tmp_path / "npz"
    arrays = data.image_arrays(3)
    pixel = {"features": arrays["features"], "boxes": np.array([[0, 0, 100, 50]] * 12, np.float32),
             "image_h": np.array(100), "image_w": np.array(200), "conf": arrays["conf"]}
    data.write_npz_dir(directory, {"img_pixel": pixel, "img_norm": arrays})
    (directory / "img_broken.npz").write_bytes(b"PK\x03\x04 truncated")
    results = list(npz_dir.iter_npz_files(npz_dir.list_npz_dir(str(directory))))
    records = {record.image_id: record for record in _records(results)}
    np.testing.assert_allclose(records["img_pixel"].positions[0], [0, 0, 0.5, 0.5, 0.5, 0.5, 0.25])
    assert (records["img_pixel"].image_height, records["img_pixel"].image_width) == (100, 200)
    assert records["img_norm"].num_regions == 11 and records["img_norm"].soft_labels.shape == (11, 5)
    (letter,) = _letters(results)
    assert letter.record_id == "img_broken" and letter.reason == dead_letter.UNREADABLE_INPUT


def test_canonical_records_round_trip(tmp_path):
    from uniter_tf.data import schema
    from uniter_tf.data import tfrecord_io

    arrays = data.image_arrays(4)
    boxes = arrays["norm_bb"][:, :4] * np.array([640, 480, 640, 480], np.float32)
    example = schema.make_example(image_id="img_4", region_features=arrays["features"], region_boxes=boxes,
                                  image_height=480, image_width=640)
    (path,) = tfrecord_io.write_sharded([example], str(tmp_path / "images"), num_shards=1)
    shards = importers.list_shards(str(tmp_path / "images-*.tfrecord.gz"))
    assert shards == [importers.FeatureShard("canonical", (path,))]
    (record,) = list(importers.iter_shard(shards[0]))
    assert record.image_id == "img_4" and record.num_regions == 12
    np.testing.assert_allclose(record.features, arrays["features"], atol=2e-3)
    np.testing.assert_allclose(record.boxes, boxes, rtol=1e-5)


def test_problem_flags_each_bad_feature_kind():
    arrays = data.image_arrays(5)
    good = feature_record.record_from_arrays("good", arrays, "test")
    assert good.problem(data.FEATURE_DIM) is None
    nan_features = arrays["features"].copy()
    nan_features[2, 1] = np.nan
    cases = {
            dead_letter.NON_FINITE_FEATURES: dict(arrays, features=nan_features),
            dead_letter.WRONG_FEATURE_DIM: dict(arrays, features=arrays["features"][:, :4]),
            dead_letter.NO_REGIONS: {"features": np.zeros((0, data.FEATURE_DIM), np.float32),
                                     "norm_bb": np.zeros((0, 6), np.float32)},
    }
    for reason, case in cases.items():
        letter = feature_record.record_from_arrays("bad", case, "test").problem(data.FEATURE_DIM)
        assert letter.reason == reason and letter.kind == "image" and letter.record_id == "bad"
    huge = dict(arrays, features=arrays["features"] * 1e6)
    assert feature_record.record_from_arrays("big", huge, "t").problem(None).reason == dead_letter.NON_FINITE_FEATURES


def test_list_shards_detects_formats(tmp_path):
    img_db.write_img_db(str(tmp_path / "imgdb"), {"a.npz": data.image_arrays(1)})
    data.write_npz_dir(tmp_path / "npz", {f"n{index}": data.image_arrays(index) for index in range(5)})
    (tmp_path / "f.tsv").write_text("")
    shards = importers.list_shards(",".join([str(tmp_path / "imgdb"), str(tmp_path / "npz"),
                                             str(tmp_path / "*.tsv")]), npz_files_per_shard=2)
    assert [shard.feature_format for shard in shards] == ["img_db", "butd_tsv", "npz", "npz", "npz"]
    assert sum(len(shard.paths) for shard in shards if shard.feature_format == "npz") == 5
    with pytest.raises(FileNotFoundError, match="no feature files"):
        importers.list_shards(str(tmp_path / "missing*"))


def test_import_features_command_writes_canonical_records(tmp_path, capsys):
    from uniter_tf import cli
    from uniter_tf.data import tfrecord_io

    data.write_npz_dir(tmp_path / "npz", {"img_a": data.image_arrays(1), "img_b": data.image_arrays(2),
                                         "img_c": data.image_arrays(3, feature_dim=4)})
    output = tmp_path / "out" / "region_features"
    assert cli.main(["import-features", "--features", str(tmp_path / "npz"), "--output", str(output),
                     "--feature-dim", str(data.FEATURE_DIM), "--num-shards", "2"]) == 0
    assert "images_written" in capsys.readouterr().out
    records = list(importers.iter_features(str(output) + "-*.tfrecord.gz"))
    assert sorted(record.image_id for record in records) == ["img_a", "img_b"]
    assert len(tfrecord_io.list_files(str(output) + "-*.tfrecord.gz")) == 2
    assert all(record.image_height == 1 and record.num_regions == 11 for record in records)
    letters = dead_letter.read_dead_letters([str(output) + "-dead_letters.jsonl"])
    assert [(letter.record_id, letter.reason) for letter in letters] == [("img_c", dead_letter.WRONG_FEATURE_DIM)]
