"""Issue 18, data side: hostile or careless input to the importers, readers, ingest and extraction.

Each test builds the bad input in its real format (an LMDB img_db, COCO / JSON-lines files, PNGs), runs
the real components (``uniter import-features``, ``uniter ingest`` on Beam's DirectRunner, the image
decoder) and checks that the bad record, and only it, becomes a dead letter with the documented reason,
that nothing from a data file is ever executed, and that good + bad = input holds exactly.
"""

import io
import json
import os

import lmdb
import msgpack
import msgpack_numpy
import numpy as np
import pytest

from helpers import ingest_test_data as data
from uniter_tf import cli
from uniter_tf.data import dead_letter, ingest, readers
from uniter_tf.data.importers import feature_record, img_db
from uniter_tf.data.readers import TextItem, _io


class _CreatesFileWhenUnpickled:
    """Pickles to ``open(path, "w")``: unpickling it creates ``path`` (the detectable 'exploit')."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def _object_array(marker):
    array = np.empty(1, dtype=object)
    array[0] = _CreatesFileWhenUnpickled(str(marker))
    return array


def _write_lmdb(lmdb_dir, values):
    os.makedirs(lmdb_dir, exist_ok=True)
    environment = lmdb.open(str(lmdb_dir), map_size=1 << 26)
    with environment.begin(write=True) as transaction:
        for key, value in values.items():
            transaction.put(key.encode(), value)
        transaction.put(img_db.KEYS_ENTRY, json.dumps(list(values)).encode())
    environment.close()


def _packed(arrays):
    return msgpack.packb(arrays, default=msgpack_numpy.encode, use_bin_type=True)


def _coco_name(image_id):
    return f"COCO_train2014_{image_id:012d}"


def _records_by_id(result):
    records = {}
    for split in ingest.SPLITS:
        for record in data.read_tfrecords(result.split_dirs[split]):
            example_id = record["example_id"].decode()
            assert example_id not in records, f"{example_id} written twice"
            records[example_id] = record
    return records


def _letters_by_reason(letters):
    by_reason = {}
    for letter in letters:
        by_reason.setdefault(letter.reason, []).append(letter)
    return by_reason


# ------------------------------------------------------------------------------- 1: no code from img_db


@pytest.fixture()
def malicious_img_db(tmp_path):
    """An img_db with two good images and values that msgpack_numpy / np.load would have to unpickle."""
    marker = tmp_path / "pwned"
    good = {f"{_coco_name(index).lower()}.npz": data.image_arrays(index) for index in (1, 2)}
    evil = dict(data.image_arrays(3))
    evil["features"] = _object_array(marker)
    # Same payload, declared as a plain (kind b'') array whose dtype string is object.
    disguised = msgpack_numpy.encode(_object_array(marker))
    disguised[b"kind"], disguised[b"type"] = b"", "|O"
    strings = dict(data.image_arrays(5))
    strings["features"] = np.array([["1.0"] * data.FEATURE_DIM] * 12)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **dict(data.image_arrays(6), conf=_object_array(marker)))
    values = {name: _packed(arrays) for name, arrays in good.items()}
    values.update({
            f"{_coco_name(3).lower()}.npz": _packed(evil),
            f"{_coco_name(4).lower()}.npz": _packed(dict(data.image_arrays(4), features=disguised)),
            f"{_coco_name(5).lower()}.npz": _packed(strings),
            f"{_coco_name(6).lower()}.npz": buffer.getvalue(),
    })
    lmdb_dir = tmp_path / "img_db" / "all"
    _write_lmdb(lmdb_dir, values)

    # The payload is live: the decoder the importer used to call runs it.
    msgpack.unpackb(values[f"{_coco_name(3).lower()}.npz"], object_hook=msgpack_numpy.decode, raw=False)
    assert marker.exists()
    marker.unlink()
    return tmp_path / "img_db", marker


def test_import_features_refuses_pickled_img_db_values_without_running_them(malicious_img_db, tmp_path, capsys):
    img_dir, marker = malicious_img_db
    output = tmp_path / "out" / "region_features"
    assert cli.main(["import-features", "--features", str(img_dir), "--output", str(output),
                     "--feature-dim", str(data.FEATURE_DIM), "--keep-all-boxes"]) == 0
    capsys.readouterr()
    assert not marker.exists(), "an img_db value was unpickled"
    summary = json.loads(open(f"{output}-summary.json", encoding="utf-8").read())
    letters = {letter.record_id: letter
               for letter in dead_letter.read_dead_letters([f"{output}-dead_letters.jsonl"])}
    assert {image_id: letter.reason for image_id, letter in letters.items()} == {
            _coco_name(3).lower(): dead_letter.UNSAFE_INPUT, _coco_name(4).lower(): dead_letter.UNSAFE_INPUT,
            _coco_name(5).lower(): dead_letter.BAD_TYPE, _coco_name(6).lower(): dead_letter.UNSAFE_INPUT}
    assert "never unpickled" in letters[_coco_name(3).lower()].detail
    assert summary == {"images_written": 2, "unknown_image_size": 2, dead_letter.UNSAFE_INPUT: 3,
                       dead_letter.BAD_TYPE: 1}


def test_ingest_with_auto_format_refuses_pickled_img_db_values(malicious_img_db, tmp_path, capsys):
    img_dir, marker = malicious_img_db
    annotations = data.write_json(tmp_path / "captions.json", data.coco_captions([1, 2, 3, 4, 5, 6], 1))
    output = tmp_path / "ingested"
    assert cli.main(["ingest", "--format", "coco", "--annotations", annotations, "--features", str(img_dir),
                     "--feature-dim", str(data.FEATURE_DIM), "--output", str(output), "--keep-all-boxes",
                     "--eval-fraction", "0"]) == 0
    capsys.readouterr()
    assert not marker.exists(), "an img_db value was unpickled"
    counts = json.loads((output / ingest.SUMMARY_FILE).read_text())["counts"]
    assert counts[dead_letter.UNSAFE_INPUT] == 3 and counts[dead_letter.BAD_TYPE] == 1
    assert counts[dead_letter.IMAGE_REJECTED] == 4
    assert counts[dead_letter.EXAMPLES_WRITTEN_PREFIX + ingest.TRAIN] == 2
    records = data.read_tfrecords(str(output / "train"))
    assert sorted(record["example_id"] for record in records) == [b"coco_100", b"coco_200"]


def test_img_db_decoder_reads_every_numeric_dtype_and_refuses_the_rest():
    arrays = {"f16": np.arange(6, dtype=np.float16).reshape(2, 3), "f32": np.ones((1, 2), np.float32),
              "i64": np.array([-3, 4], np.int64), "u8": np.array([[7]], np.uint8), "b": np.array([True]),
              "scalar": np.float32(2.5)}
    decoded = img_db.decode_value(_packed(arrays))
    for name, array in arrays.items():
        np.testing.assert_array_equal(decoded[name], array)
        assert decoded[name].dtype == np.asarray(array).dtype
    structured = np.zeros(2, dtype=[("a", "<f4"), ("b", "O")])
    for value, reason in ((np.array(["a", "b"]), dead_letter.BAD_TYPE),
                          (np.array([1 + 2j]), dead_letter.BAD_TYPE),
                          (structured, dead_letter.BAD_TYPE),
                          (np.array([None, 1], dtype=object), dead_letter.UNSAFE_INPUT)):
        with pytest.raises(feature_record.RefusedValueError) as raised:
            img_db.decode_value(_packed({"features": value}))
        assert raised.value.reason == reason, value
    truncated = msgpack_numpy.encode(np.ones((4, 4), np.float32))
    truncated[b"data"] = bytes(truncated[b"data"])[:10]
    with pytest.raises(ValueError, match="needs 64 bytes"):
        img_db.decode_value(msgpack.packb({"features": truncated}, use_bin_type=True))


def test_npz_folder_object_array_is_refused_from_its_header(tmp_path):
    from uniter_tf.data.importers import npz_dir

    marker = tmp_path / "pwned"
    np.savez(tmp_path / "evil.npz", **dict(data.image_arrays(1), soft_labels=_object_array(marker)))
    letter = npz_dir.read_npz(str(tmp_path / "evil.npz"))
    assert isinstance(letter, dead_letter.DeadLetter) and letter.reason == dead_letter.UNSAFE_INPUT
    assert "soft_labels" in letter.detail and not marker.exists()


# ---------------------------------------------------------------- 5, 6, 7, 9: COCO records of every bad kind


def test_one_bad_coco_record_never_costs_the_run(tmp_path):
    features = {_coco_name(index).lower(): data.image_arrays(index) for index in (1, 2, 3, 4)}
    feature_dir = data.write_npz_dir(tmp_path / "features", features)
    coco = data.coco_captions([1, 2, 3], captions_per_image=2)
    good = {f"coco_{image_id * 100 + index}" for image_id in (1, 2, 3) for index in range(2)}
    # 7: a bad images[] entry that no caption uses costs only itself; one that a caption uses rejects it.
    coco["images"] += [{"id": 50, "file_name": "x.jpg", "height": "tall", "width": 640},
                       {"id": [4], "file_name": _coco_name(4) + ".jpg"},
                       {"id": 4, "file_name": _coco_name(4) + ".jpg", "height": 480, "width": {"w": 1}}]
    bad = {  # 5, 6, 9
            "coco_401": ({"image_id": 4, "id": 401, "caption": "A caption of a rejected image entry."},
                         dead_letter.IMAGE_REJECTED),
            "500": ({"image_id": [1], "id": 500, "caption": "A list image id."}, dead_letter.BAD_TYPE),
            "501": ({"image_id": 1, "id": 501, "caption": None}, dead_letter.MISSING_FIELD),
            "502": ({"image_id": 1, "id": 502, "caption": 12345}, dead_letter.BAD_TYPE),
            "503": ({"image_id": 1, "id": 503, "caption": {"text": "dict caption"}}, dead_letter.BAD_TYPE),
            "504": ({"image_id": True, "id": 504, "caption": "A boolean image id."}, dead_letter.BAD_TYPE),
            "coco_101": ({"image_id": 2, "id": 101, "caption": "Second caption with id 101."},
                         dead_letter.DUPLICATE_ID),
    }
    coco["annotations"] += [annotation for annotation, _ in bad.values()]
    coco["annotations"].append({"image_id": 1, "id": {"n": 1}, "caption": "A dict id."})
    annotations = data.write_json(tmp_path / "captions_train2014.json", coco)
    depth = 100_000
    deep = tmp_path / "captions_deep.json"
    deep.write_text('{"annotations": [{"image_id": 1, "id": 1, "caption": ' + "[" * depth + "]" * depth + "}]}")

    config = ingest.IngestConfig(annotation_format="coco", annotations=(annotations, str(deep)),
                                 features=feature_dir, feature_dim=data.FEATURE_DIM, eval_fraction=0.5)
    result = ingest.run_ingest(config, str(tmp_path / "out"))
    records = _records_by_id(result)
    letters = data.read_dead_letter_dir(result.dead_letter_dir)
    by_reason = _letters_by_reason(letters)

    assert set(records) == good
    assert records["coco_101"]["text"] == b"A photo number 1 of image 1."  # the first id 101 in file order
    texts = {record["text"] for record in records.values()}
    assert not texts & {b"None", b"12345", b"{'text': 'dict caption'}"}
    for record_id, (_, reason) in bad.items():
        assert record_id in {letter.record_id for letter in by_reason[reason]}, (record_id, reason)
    duplicate, = by_reason[dead_letter.DUPLICATE_ID]
    assert duplicate.detail.endswith("#annotations[1]") and duplicate.source.endswith("#annotations[12]")
    input_letters = sorted((letter.reason, letter.source.rsplit("#", 1)[-1]) for letter in letters
                           if letter.kind == "input")
    assert input_letters == [(dead_letter.BAD_TYPE, "images[3]"), (dead_letter.BAD_TYPE, "images[4]"),
                             (dead_letter.BAD_TYPE, "images[5]"), (dead_letter.UNREADABLE_INPUT, str(deep))]
    deep_letter, = [letter for letter in letters if letter.source == str(deep)]
    assert "nested too deeply" in deep_letter.detail

    counts = result.counts
    text_letters = [letter for letter in letters if letter.kind == "text"]
    assert counts[dead_letter.TEXT_ITEMS_READ] == len(coco["annotations"])
    assert len(records) + len(text_letters) == len(coco["annotations"])
    assert counts[dead_letter.DUPLICATE_ID] == 1
    assert counts[dead_letter.IMAGES_WITHOUT_TEXT] == 1  # image 4: its only caption's entry was rejected
    for reason, reason_letters in by_reason.items():
        assert counts[reason] == len(reason_letters), reason


def test_deep_json_in_every_reader_is_one_letter(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    lines = tmp_path / "dev.json"
    lines.write_text(json.dumps({"identifier": "dev-1-0-0", "sentence": "Good.", "label": "True"}) + "\n"
                     + '{"identifier": "dev-1-0-1", "sentence": ' + deep + "}\n")
    items, letters = _split(readers.read_annotations("nlvr2", [str(lines)]))
    assert [item.example_id for item in items] == ["dev-1-0-0"]
    assert [(letter.reason, letter.record_id) for letter in letters] == [
            (dead_letter.UNREADABLE_INPUT, f"{lines}:2")]
    vg = tmp_path / "region_descriptions.json"
    vg.write_text('[{"id": 1, "regions": []}, ' + deep + "]")
    with pytest.raises(_io.UnreadableFileError, match="nested too deeply"):
        list(_io.iter_json_array(str(vg)))
    for name in ("karpathy.json", "questions.json"):
        (tmp_path / name).write_text('{"images": ' + deep + "}")
        with pytest.raises(_io.UnreadableFileError, match="nested too deeply"):
            _io.load_json(str(tmp_path / name))


# ----------------------------------------------------------------------- 6: non-string text in every reader


def _split(results):
    results = list(results)
    return ([result for result in results if isinstance(result, TextItem)],
            [result for result in results if isinstance(result, dead_letter.DeadLetter)])


_BAD_TEXTS = [(None, dead_letter.MISSING_FIELD), (12345, dead_letter.BAD_TYPE),
              ({"text": "dict caption"}, dead_letter.BAD_TYPE), (["a"], dead_letter.BAD_TYPE),
              (True, dead_letter.BAD_TYPE)]


def _reader_files(tmp_path, fmt, texts):
    """Annotation files of ``fmt`` with one good text ("Good text.") then one record per entry of ``texts``."""
    all_texts = ["Good text."] + list(texts)
    if fmt == "coco":
        coco = {"images": [{"id": 1, "file_name": "a.jpg"}],
                "annotations": [{"id": index, "image_id": 1, "caption": text} for index, text in enumerate(all_texts)]}
        return [data.write_json(tmp_path / "coco.json", coco)], []
    if fmt == "flickr30k":
        karpathy = {"dataset": "f", "images": [{"filename": "a.jpg", "split": "train", "sentences": [
                {"sentid": index, "raw": text} for index, text in enumerate(all_texts)]}]}
        return [data.write_json(tmp_path / "karpathy.json", karpathy)], []
    if fmt == "vg":
        regions = [{"region_id": index, "image_id": 1, "phrase": text, "x": 1, "y": 2, "width": 3, "height": 4}
                   for index, text in enumerate(all_texts)]
        return [data.write_json(tmp_path / "vg.json", [{"id": 1, "regions": regions}])], []
    if fmt == "vqa":
        questions = {"data_subtype": "train2014", "questions": [
                {"question_id": index, "image_id": 9, "question": text} for index, text in enumerate(all_texts)]}
        return [data.write_json(tmp_path / "questions.json", questions)], []
    if fmt == "nlvr2":
        return [data.write_jsonl(tmp_path / "dev.json", [
                {"identifier": f"dev-{index}-0-0", "sentence": text, "label": "True"}
                for index, text in enumerate(all_texts)])], []
    if fmt == "snli_ve":
        return [data.write_jsonl(tmp_path / "snli_ve_train.jsonl", [
                {"Flikr30kID": "1.jpg", "pairID": index, "sentence2": text, "gold_label": "neutral"}
                for index, text in enumerate(all_texts)])], []
    assert fmt == "refcoco"
    refs = [{"ann_id": 7, "image_id": 1, "split": "train",
             "sentences": [{"sent_id": index, "sent": text} for index, text in enumerate(all_texts)]}]
    instances = {"images": [{"id": 1, "file_name": "a.jpg"}],
                 "annotations": [{"id": 7, "image_id": 1, "bbox": [1, 2, 3, 4]}]}
    return [data.write_json(tmp_path / "refs.json", refs)], [data.write_json(tmp_path / "instances.json", instances)]


@pytest.mark.parametrize("fmt", ["coco", "flickr30k", "vg", "vqa", "nlvr2", "snli_ve", "refcoco"])
def test_non_string_text_is_a_dead_letter_in_every_json_reader(tmp_path, fmt):
    annotations, annotations2 = _reader_files(tmp_path, fmt, [text for text, _ in _BAD_TEXTS])
    items, letters = _split(readers.read_annotations(fmt, annotations, annotations2))
    assert [item.text for item in items] == ["Good text."]
    assert [letter.reason for letter in letters] == [reason for _, reason in _BAD_TEXTS]
    assert all(letter.kind == "text" for letter in letters)
    assert "int" in letters[1].detail and "dict" in letters[2].detail


def test_ingest_guards_text_types_and_id_encodings():
    # Readers check types; the ingest's own check stops what a future reader might let through.
    bad_text = TextItem("x", ("img",), 12345)
    assert ingest.text_problem(bad_text).reason == dead_letter.BAD_TYPE
    bad_image_id = TextItem("x", ("caf\udce9",), "fine text")
    letter = ingest.text_problem(bad_image_id)
    assert letter.reason == dead_letter.NON_UTF8_TEXT and letter.record_id == "x" and "image id" in letter.detail


def test_other_readers_keep_good_records_next_to_mistyped_ones(tmp_path):
    # VQA human answers and RefCOCO boxes / image entries are type-checked per record too.
    questions = data.write_json(tmp_path / "q.json", {"data_subtype": "val2014", "questions": [
            {"question_id": 1, "image_id": 9, "question": "What?"},
            {"question_id": 2, "image_id": 9, "question": "Which?"},
            {"question_id": [3], "image_id": 9, "question": "List id?"}]})
    annotations = data.write_json(tmp_path / "a.json", {"annotations": [
            {"question_id": 1, "answers": [{"answer": "red"}] * 10},
            {"question_id": 2, "answers": [{"answer": 2}] * 10},
            {"question_id": [3], "answers": []}]})
    items, letters = _split(readers.read_annotations("vqa", [questions], [annotations],
                                                     readers.ReaderOptions(answer_to_label={"red": 0})))
    assert [item.example_id for item in items] == ["vqa_1"] and items[0].answer_labels == (0,)
    assert [(letter.record_id, letter.reason) for letter in letters] == [
            ("vqa_2", dead_letter.BAD_TYPE), (f"{questions}#questions[2]", dead_letter.BAD_TYPE)]

    refs = data.write_json(tmp_path / "refs.json", [
            {"ann_id": 7, "image_id": 1, "sentences": [{"sent_id": 1, "sent": "left one"}]},
            {"ann_id": 8, "image_id": 1, "sentences": [{"sent_id": 2, "sent": "box with a string"}]},
            {"ann_id": 7, "image_id": 2, "sentences": [{"sent_id": 3, "sent": "rejected image"}]}])
    instances = data.write_json(tmp_path / "instances.json", {
            "images": [{"id": 1, "file_name": "a.jpg", "height": 10, "width": 20},
                       {"id": 2, "file_name": "b.jpg", "height": "tall", "width": 20}],
            "annotations": [{"id": 7, "bbox": [1, 2, 3, 4]}, {"id": 8, "bbox": [1, "2", 3, 4]},
                            {"id": [9], "bbox": [1, 2, 3, 4]}]})
    items, letters = _split(readers.read_annotations("refcoco", [refs], [instances]))
    assert [(item.example_id, item.image_size) for item in items] == [("ref_1", (10, 20))]
    assert [(letter.record_id, letter.reason, letter.kind) for letter in letters] == [
            ("2", dead_letter.BAD_TYPE, "input"), ("ref_2", dead_letter.BAD_TYPE, "text"),
            ("ref_3", dead_letter.IMAGE_REJECTED, "text")]


# ------------------------------------------------------------------------- 8: colliding feature image ids


def test_feature_records_sharing_a_join_key_are_rejected_and_counts_add_up(tmp_path):
    # photo.png and photo.jpg are different images whose ids both map to the join key "photo".
    feature_dir = data.write_npz_dir(tmp_path / "features", {
            "photo.png": data.image_arrays(1), "photo.jpg": data.image_arrays(2),
            "other.png": data.image_arrays(3), "lonely.png": data.image_arrays(4)})
    coco = {"images": [{"id": index, "file_name": name} for index, name in
                       enumerate(["photo.png", "photo.jpg", "other.png"], start=1)],
            "annotations": [{"id": 10 * image_id + index, "image_id": image_id, "caption": f"Caption {index}."}
                            for image_id in (1, 2, 3) for index in range(3)]}
    annotations = data.write_json(tmp_path / "captions.json", coco)
    config = ingest.IngestConfig(annotation_format="coco", annotations=(annotations,), features=feature_dir,
                                 feature_dim=data.FEATURE_DIM, eval_fraction=0.0)
    result = ingest.run_ingest(config, str(tmp_path / "out"))
    records = _records_by_id(result)
    letters = data.read_dead_letter_dir(result.dead_letter_dir)
    counts = result.counts

    assert set(records) == {"coco_30", "coco_31", "coco_32"}
    assert {record["image_id"] for record in records.values()} == {b"other"}
    image_letters = sorted((letter.record_id, letter.reason) for letter in letters if letter.kind == "image")
    assert image_letters == [("photo.jpg", dead_letter.DUPLICATE_IMAGE_ID), ("photo.png", dead_letter.DUPLICATE_IMAGE_ID)]
    text_letters = [letter for letter in letters if letter.kind == "text"]
    assert sorted(letter.record_id for letter in text_letters) == [f"coco_{n}" for n in (10, 11, 12, 20, 21, 22)]
    assert {letter.reason for letter in text_letters} == {dead_letter.IMAGE_REJECTED}
    assert "duplicate_image_id" in text_letters[0].detail
    # good + bad = input, exactly, on both sides.
    assert counts[dead_letter.TEXT_ITEMS_READ] == 9 == len(records) + len(text_letters)
    assert counts[dead_letter.IMAGE_RECORDS_READ] == 4
    assert 1 + counts[dead_letter.IMAGES_WITHOUT_TEXT] + len(image_letters) == 4
    assert counts[dead_letter.DUPLICATE_IMAGE_IDS] == 1 and counts[dead_letter.DUPLICATE_IMAGE_ID] == 2


# ------------------------------------------------------ 8 and 10 through the real extraction, then ingest


def _png(path, pixels):
    from PIL import Image

    Image.fromarray(pixels).save(path, format="PNG")
    return path


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """``uniter extract`` (toy detector) over 8- and 16-bit scenes and two files named photo.*."""
    from PIL import Image

    from uniter_tf.extraction import beam_pipeline, toy_detector

    root = tmp_path_factory.mktemp("hardening_extract")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    scene8 = np.clip(rng.normal(128, 60, (48, 64)), 0, 255).astype(np.uint8)
    scene8[10:30, 20:50] = 20  # a dark block: the features depend on the intensities
    _png(images / "scene8.png", scene8)
    _png(images / "scene16.png", scene8.astype(np.uint16) * 257)  # the same picture in 16 bits
    colour = np.zeros((40, 40, 3), np.uint8)
    colour[:20, :20] = (250, 10, 10)
    _png(images / "photo.png", colour)
    Image.fromarray(colour[::-1, ::-1].copy()).save(images / "photo.jpg", format="JPEG", quality=95)
    detector = toy_detector.write_toy_detector(str(root / "detector"))
    config = beam_pipeline.ExtractionConfig(detector_path=detector, num_classes=toy_detector.NUM_CLASSES,
                                            min_boxes=3, max_boxes=3)
    counters = beam_pipeline.run_extraction(str(images / "*"), str(root / "features"), config,
                                            beam_args=["--runner=DirectRunner"], num_shards=1)
    return root, counters


def test_sixteen_bit_png_is_scaled_to_eight_bits_not_clipped(tmp_path):
    from uniter_tf.extraction.images import decode_image

    full_range = np.linspace(0, 65535, 256 * 256).round().astype(np.uint16).reshape(256, 256)
    path = _png(tmp_path / "full.png", full_range)
    decoded = decode_image(path.read_bytes(), str(path))
    assert decoded.shape == (256, 256, 3) and decoded.dtype == np.uint8
    expected = np.round(full_range.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(decoded[..., 0], expected)
    assert (decoded == 255).mean() < 0.01  # PIL's own convert("RGB") makes 99.6 % of them 255
    assert abs(float(decoded.mean()) - 127.5) < 1.0
    from PIL import Image

    Image.fromarray(full_range.astype(np.int32)).save(tmp_path / "wide.tif")
    with pytest.raises(ValueError, match="no defined range"):
        decode_image((tmp_path / "wide.tif").read_bytes(), "wide.tif")


def test_extraction_of_a_sixteen_bit_png_matches_its_eight_bit_twin(extracted):
    from uniter_tf.extraction import beam_pipeline
    from uniter_tf.data import schema

    root, counters = extracted
    assert counters[beam_pipeline.IMAGES_IN] == 4 and counters[beam_pipeline.IMAGES_OK] == 4
    records = {}
    for record in data.read_tfrecords(str(root / "features"), "region_features-*"):
        records.setdefault(record[schema.IMAGE_ID].decode(), []).append(record)
    np.testing.assert_array_equal(records["scene16"][0][schema.REGION_FEATURES],
                                  records["scene8"][0][schema.REGION_FEATURES])
    assert len(records["photo"]) == 2  # extraction names both photo.png and photo.jpg "photo"


def test_extracted_photo_png_and_photo_jpg_are_rejected_at_the_join(extracted, tmp_path):
    from uniter_tf.extraction import toy_detector

    root, _ = extracted
    coco = {"images": [{"id": 1, "file_name": "photo.jpg"}, {"id": 2, "file_name": "photo.png"},
                       {"id": 3, "file_name": "scene8.png"}],
            "annotations": [{"id": 10 * image_id + index, "image_id": image_id, "caption": f"Caption {index}."}
                            for image_id in (1, 2, 3) for index in range(2)]}
    annotations = data.write_json(tmp_path / "captions.json", coco)
    config = ingest.IngestConfig(annotation_format="coco", annotations=(annotations,),
                                 features=str(root / "features" / "region_features-*"),
                                 feature_dim=toy_detector.FEATURE_DIM, eval_fraction=0.0, conf_threshold=None)
    result = ingest.run_ingest(config, str(tmp_path / "out"))
    records = _records_by_id(result)
    letters = data.read_dead_letter_dir(result.dead_letter_dir)
    counts = result.counts
    assert set(records) == {"coco_30", "coco_31"}
    assert sorted((letter.record_id, letter.reason) for letter in letters) == [
            ("coco_10", dead_letter.IMAGE_REJECTED), ("coco_11", dead_letter.IMAGE_REJECTED),
            ("coco_20", dead_letter.IMAGE_REJECTED), ("coco_21", dead_letter.IMAGE_REJECTED),
            ("photo", dead_letter.DUPLICATE_IMAGE_ID), ("photo", dead_letter.DUPLICATE_IMAGE_ID)]
    # good + bad = input, exactly: 6 texts, 4 feature records (scene16 has no caption).
    text_letters = [letter for letter in letters if letter.kind == "text"]
    assert counts[dead_letter.TEXT_ITEMS_READ] == 6 == len(records) + len(text_letters)
    assert counts[dead_letter.IMAGE_RECORDS_READ] == 4 == 1 + counts[dead_letter.IMAGES_WITHOUT_TEXT] + 2
