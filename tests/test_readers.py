"""Annotation readers, each on a small file in the exact public format."""

import json

import pytest

from helpers import ingest_test_data as data
from uniter_tf.data import dead_letter
from uniter_tf.data import readers
from uniter_tf.data.readers import TextItem, _io, vqa_answers


def _split(results):
    results = list(results)
    items = [result for result in results if isinstance(result, TextItem)]
    letters = [result for result in results if isinstance(result, dead_letter.DeadLetter)]
    return items, letters


def test_coco_captions(tmp_path):
    coco = data.coco_captions([9, 25], captions_per_image=2)
    coco["annotations"].append({"id": 7, "caption": "no image id"})
    path = data.write_json(tmp_path / "captions_train2014.json", coco)
    items, letters = _split(readers.read_annotations("coco", [path]))
    assert [item.example_id for item in items] == ["coco_900", "coco_901", "coco_2500", "coco_2501"]
    assert items[0].image_ids == ("COCO_train2014_000000000009",)
    assert items[0].image_size == (480, 640) and items[0].text == "A photo number 0 of image 9."
    assert [(letter.record_id, letter.reason) for letter in letters] == [("7", dead_letter.MISSING_FIELD)]


def test_flickr30k_karpathy(tmp_path):
    karpathy = {"dataset": "flickr30k", "images": [
            {"filename": "1000092795.jpg", "imgid": 0, "split": "train", "sentids": [0, 1],
             "sentences": [{"raw": "Two young guys.", "sentid": 0, "tokens": ["two"]},
                           {"raw": "Two men outside.", "sentid": 1, "tokens": ["two"]}]},
            {"filename": "10002456.jpg", "imgid": 1, "split": "test", "sentids": [2],
             "sentences": [{"sentid": 2, "tokens": []}]}]}
    path = data.write_json(tmp_path / "dataset_flickr30k.json", karpathy)
    items, letters = _split(readers.read_annotations("flickr30k", [path]))
    assert [(item.example_id, item.image_ids, item.split) for item in items] == [
            ("flickr30k_0", ("1000092795",), "train"), ("flickr30k_1", ("1000092795",), "train")]
    assert letters[0].record_id == "flickr30k_2" and letters[0].reason == dead_letter.MISSING_FIELD


def test_conceptual_captions_ids_are_documented_row_index(tmp_path):
    path = tmp_path / "Train_GCC-training.tsv"
    path.write_bytes(b"a dog on a beach\thttp://x.com/a.jpg\nonly one column\n"
                     b"bad \xff byte\thttp://x.com/c.jpg\n")
    items, letters = _split(readers.read_annotations("cc", [str(path)]))
    assert [(item.example_id, item.image_ids) for item in items] == [
            ("cc_0", ("000000000",)), ("cc_2", ("000000002",))]
    assert not _io.is_valid_utf8(items[1].text)  # kept for the ingest's non_utf8_text dead letter
    assert letters[0].record_id == "cc_1"
    options = readers.ReaderOptions(cc_image_id_scheme="url_sha1")
    hashed, _ = _split(readers.read_annotations("cc", [str(path)], options=options))
    assert hashed[0].image_ids[0].startswith("cc_") and len(hashed[0].image_ids[0]) == 19


def test_sbu_pairs_caption_and_url_lines(tmp_path):
    captions = tmp_path / "SBU_captioned_photo_dataset_captions.txt"
    urls = tmp_path / "SBU_captioned_photo_dataset_urls.txt"
    captions.write_text("Man sits on a bench\nA red car\nextra caption\n")
    urls.write_text("http://static.flickr.com/2723/4385058960_b0f291553e.jpg\n"
                    "http://static.flickr.com/3119/2818817596_c1d5b1a9f4.jpg\n")
    items, letters = _split(readers.read_annotations("sbu", [str(captions)], [str(urls)]))
    assert [(item.example_id, item.image_ids, item.text) for item in items] == [
            ("sbu_1", ("4385058960",), "Man sits on a bench"), ("sbu_2", ("2818817596",), "A red car")]
    assert letters[0].record_id == "sbu_3"
    with pytest.raises(ValueError, match="needs --annotations2"):
        readers.annotation_tasks("sbu", [str(captions)])


def test_visual_genome_regions_streamed(tmp_path):
    regions = [{"id": 1, "regions": [
            {"region_id": 1382, "width": 82, "height": 139, "image_id": 1, "phrase": "the clock is green",
             "y": 57, "x": 421},
            {"region_id": 1383, "width": 10, "height": 10, "image_id": 1, "y": 0, "x": 0}]},
            {"id": 2, "regions": [{"region_id": 9, "width": 5, "height": 6, "image_id": 2, "phrase": "a tree",
                                   "y": 1, "x": 2}]}]
    path = data.write_json(tmp_path / "region_descriptions.json", regions)
    items, letters = _split(readers.read_annotations("vg", [path]))
    assert [(item.example_id, item.image_ids, item.target_box) for item in items] == [
            ("vg_1382", ("1",), (421.0, 57.0, 503.0, 196.0)), ("vg_9", ("2",), (2.0, 1.0, 7.0, 7.0))]
    assert letters[0].record_id == "vg_1383"
    # The streaming parser gives the same elements with tiny chunks (multi-byte characters across chunks).
    unicode_path = data.write_json(tmp_path / "u.json", [{"phrase": "café ☕"}, 12345, [1, 2]])
    assert list(_io.iter_json_array(unicode_path, chunk_size=3)) == [{"phrase": "café ☕"}, 12345, [1, 2]]
    (tmp_path / "truncated.json").write_text('[{"id": 1}, {"id": 2')
    with pytest.raises(_io.UnreadableFileError, match="truncated"):
        list(_io.iter_json_array(str(tmp_path / "truncated.json"), chunk_size=4))


def test_vqa_answer_normalisation_and_official_soft_scores():
    assert vqa_answers.normalize_answer("Two!") == "2"
    assert vqa_answers.normalize_answer("  The Red Car. ") == "red car"
    assert vqa_answers.normalize_answer("yes, sir") == "yes sir"
    assert vqa_answers.normalize_answer("dont know") == "don't know"
    assert vqa_answers.normalize_answer("3.5") == "3.5"
    for matches, expected in ((0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)):
        humans = ["yes"] * matches + ["no"] * (10 - matches)
        assert vqa_answers.vqa_accuracy("yes", humans) == pytest.approx(expected)
    vocabulary = vqa_answers.build_answer_vocabulary(["yes", "Yes", "no", "two", "2", "2", "cat"], top_k=3)
    assert vocabulary == {"2": 0, "yes": 1, "cat": 2}  # ties broken alphabetically


def test_vqa_questions_with_annotations(tmp_path):
    questions = {"data_subtype": "val2014", "data_type": "mscoco", "questions": [
            {"image_id": 9, "question": "What color is the car?", "question_id": 90},
            {"image_id": 9, "question": "How many dogs?", "question_id": 91},
            {"image_id": 25, "question": "Unanswered?", "question_id": 250}]}
    human = ["red"] * 3 + ["Red."] + ["maroon"] * 2 + ["blue"] * 4
    annotations = {"annotations": [
            {"question_id": 90, "image_id": 9, "multiple_choice_answer": "red", "answer_type": "other",
             "answers": [{"answer": answer, "answer_confidence": "yes", "answer_id": index + 1}
                         for index, answer in enumerate(human)]},
            {"question_id": 91, "image_id": 9, "multiple_choice_answer": "2",
             "answers": [{"answer": "two", "answer_id": index + 1} for index in range(10)]}]}
    questions_path = data.write_json(tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json", questions)
    annotations_path = data.write_json(tmp_path / "v2_mscoco_val2014_annotations.json", annotations)
    options = readers.ReaderOptions(answer_to_label={"blue": 0, "red": 1, "2": 2})
    items, letters = _split(readers.read_annotations("vqa", [questions_path], [annotations_path], options))
    first, second = items
    assert first.example_id == "vqa_90" and first.image_ids == ("COCO_val2014_000000000009",)
    assert first.split == "val" and first.answers[3] == "red"
    assert first.answer_labels == (0, 1)  # "maroon" is out of the vocabulary
    assert first.answer_scores == pytest.approx((1.0, 1.0))
    assert second.answer_labels == (2,) and second.answer_scores == pytest.approx((1.0,))
    assert letters[0].record_id == "vqa_250" and letters[0].reason == dead_letter.MISSING_FIELD


def test_nlvr2_pairs_and_labels(tmp_path):
    path = data.write_jsonl(tmp_path / "dev.json", [
            {"identifier": "dev-850-0-0", "sentence": "One image shows a dog.", "label": "True",
             "left_url": "http://a", "right_url": "http://b", "synset": "dog", "query": "dog 1"},
            {"identifier": "dev-850-0-1", "sentence": "No dogs.", "label": "False"},
            {"identifier": "dev-850-0-2", "sentence": "Maybe.", "label": "Maybe"}])
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("{not json\n")
    items, letters = _split(readers.read_annotations("nlvr2", [path]))
    assert [(item.example_id, item.image_ids, item.label, item.split) for item in items] == [
            ("dev-850-0-0", ("dev-850-0-img0", "dev-850-0-img1"), 1, "val"),
            ("dev-850-0-1", ("dev-850-0-img0", "dev-850-0-img1"), 0, "val")]
    assert [letter.reason for letter in letters] == [dead_letter.BAD_LABEL, dead_letter.UNREADABLE_INPUT]


def test_snli_ve_labels(tmp_path):
    records = [{"Flikr30kID": "2248275918.jpg", "gold_label": label, "sentence2": f"hypothesis {label}",
                "pairID": f"p{index}", "captionID": "c"} for index, label in
               enumerate(["contradiction", "entailment", "neutral", "-"])]
    path = data.write_jsonl(tmp_path / "snli_ve_train.jsonl", records)
    items, letters = _split(readers.read_annotations("snli_ve", [path]))
    assert [(item.label, item.image_ids, item.split) for item in items] == [
            (0, ("2248275918",), "train"), (1, ("2248275918",), "train"), (2, ("2248275918",), "train")]
    assert letters[0].record_id == "snli_ve_p3" and letters[0].reason == dead_letter.BAD_LABEL


def test_refcoco_json_refs_with_instances(tmp_path):
    refs = [{"sent_ids": [0, 1], "file_name": "COCO_train2014_000000581857_16.jpg", "ann_id": 1719310,
             "ref_id": 0, "image_id": 581857, "split": "testB", "category_id": 1,
             "sentences": [{"tokens": ["the", "lady"], "raw": "THE LADY", "sent_id": 0, "sent": "the lady"},
                           {"tokens": ["woman"], "raw": "woman", "sent_id": 1, "sent": "woman"}]},
            {"ann_id": 999, "image_id": 581857, "split": "train", "sentences": [{"sent_id": 5, "sent": "x"}]}]
    instances = {"images": [{"id": 581857, "file_name": "COCO_train2014_000000581857.jpg", "height": 640,
                             "width": 427}],
                 "annotations": [{"id": 1719310, "image_id": 581857, "bbox": [103.93, 299.99, 134.22, 177.42],
                                  "category_id": 1}]}
    refs_path = data.write_json(tmp_path / "refs_unc.json", refs)
    instances_path = data.write_json(tmp_path / "instances.json", instances)
    items, letters = _split(readers.read_annotations("refcoco", [refs_path], [instances_path]))
    assert [(item.example_id, item.text, item.split) for item in items] == [
            ("ref_0", "the lady", "testB"), ("ref_1", "woman", "testB")]
    assert items[0].image_ids == ("COCO_train2014_000000581857",) and items[0].image_size == (640, 427)
    assert items[0].target_box == pytest.approx((103.93, 299.99, 238.15, 477.41))
    assert letters[0].record_id == "ref_5" and letters[0].reason == dead_letter.MISSING_FIELD
    pickle_path = tmp_path / "refs(unc).p"
    pickle_path.write_bytes(b"\x80\x04 never unpickled")
    _, pickle_letters = _split(readers.read_annotations("refcoco", [str(pickle_path)], [instances_path]))
    assert pickle_letters[0].reason == dead_letter.UNREADABLE_INPUT and "pickle" in pickle_letters[0].detail


def test_unreadable_annotation_file_is_a_dead_letter(tmp_path):
    broken = tmp_path / "captions.json"
    broken.write_text('{"annotations": [')
    items, letters = _split(readers.read_annotations("coco", [str(broken)]))
    assert not items and letters[0].kind == "input" and letters[0].reason == dead_letter.UNREADABLE_INPUT
    with pytest.raises(ValueError, match="annotation format"):
        readers.annotation_tasks("flickr8k", [str(broken)])
    json.loads(json.dumps(letters[0].to_dict()))
