"""Tests of the rendered sample dataset (uniter_tf/data/sample_data.py, `uniter sample-data`)."""

import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image

from uniter_tf import cli
from uniter_tf.data import sample_data


def _digest(directory):
    digest = hashlib.sha256()
    for root, _, files in sorted(os.walk(directory)):
        for name in sorted(files):
            digest.update(name.encode())
            with open(os.path.join(root, name), "rb") as handle:
                digest.update(handle.read())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    counts = sample_data.generate(str(root), sample_data.SampleDataConfig(num_images=12, seed=7))
    return root, counts


def test_layout_and_formats(dataset):
    root, counts = dataset
    assert counts["images"] == 12
    assert sorted(os.listdir(root / "images")) == [f"sample_{i:06d}.png" for i in range(12)]
    captions = json.loads((root / "captions.json").read_text())
    assert [image["file_name"] for image in captions["images"]] == [f"sample_{i:06d}.png" for i in range(12)]
    assert {"image_id", "id", "caption"} <= set(captions["annotations"][0])
    assert len({annotation["id"] for annotation in captions["annotations"]}) == len(captions["annotations"])
    questions = json.loads((root / "vqa_questions.json").read_text())["questions"]
    annotations = json.loads((root / "vqa_annotations.json").read_text())["annotations"]
    assert [q["question_id"] for q in questions] == [a["question_id"] for a in annotations]
    assert len({q["question_id"] for q in questions}) == len(questions) == counts["questions"]
    for annotation in annotations:
        assert len(annotation["answers"]) == 10
        assert annotation["answer_type"] in ("yes/no", "number", "other")
        assert annotation["answers"][0]["answer"] == annotation["multiple_choice_answer"]


def test_annotations_describe_what_is_drawn(dataset):
    root, _ = dataset
    boxes = json.loads((root / "boxes.json").read_text())
    captions = json.loads((root / "captions.json").read_text())["annotations"]
    annotations = {a["question_id"]: a for a in json.loads((root / "vqa_annotations.json").read_text())["annotations"]}
    questions = json.loads((root / "vqa_questions.json").read_text())["questions"]
    for file_name, entry in boxes.items():
        image = np.asarray(Image.open(root / "images" / file_name))
        assert image.shape == (240, 320, 3)
        for box, label in zip(entry["boxes"], entry["labels"]):
            color, shape = label.split()
            x1, y1, x2, y2 = box
            assert 48 <= x2 - x1 <= 110
            center_pixel = image[(y1 + y2) // 2 + (y2 - y1) // 6, (x1 + x2) // 2]
            np.testing.assert_allclose(center_pixel, sample_data.COLORS[color], atol=1)
            assert shape in sample_data.SHAPES
        image_captions = [c["caption"] for c in captions if c["image_id"] == entry["image_id"]]
        for label in entry["labels"]:
            assert label in image_captions[0].lower()
        for question in questions:
            if question["image_id"] == entry["image_id"] and question["question"] == "How many shapes are there?":
                assert annotations[question["question_id"]]["multiple_choice_answer"] == str(len(entry["boxes"]))


def test_same_seed_same_bytes_and_different_seed_differs(tmp_path):
    config = sample_data.SampleDataConfig(num_images=3, seed=11)
    sample_data.generate(str(tmp_path / "a"), config)
    sample_data.generate(str(tmp_path / "b"), config)
    sample_data.generate(str(tmp_path / "c"), sample_data.SampleDataConfig(num_images=3, seed=12))
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_question_mix_covers_every_type(dataset):
    root, _ = dataset
    questions = [q["question"] for q in json.loads((root / "vqa_questions.json").read_text())["questions"]]
    assert any(q.startswith("What color is the") for q in questions)
    assert any(q.startswith("What shape is the") for q in questions)
    assert any(q.startswith("How many") for q in questions)
    assert any(q.startswith("Is the") for q in questions)


def test_cli_and_config_validation(tmp_path, capsys):
    assert cli.main(["sample-data", "--output", str(tmp_path / "d"), "--num-images", "2", "--seed", "5"]) == 0
    assert "wrote 2 images" in capsys.readouterr().out
    assert len(os.listdir(tmp_path / "d" / "images")) == 2
    assert cli.main(["sample-data", "--output", str(tmp_path / "e"), "--num-images", "0"]) == 2
    assert "num_images" in capsys.readouterr().err
    with pytest.raises(ValueError, match="max_objects"):
        sample_data.SampleDataConfig(max_objects=9)


def test_presence_questions_bind_colour_to_shape_and_leave_the_rest_unchanged(tmp_path):
    plain = sample_data.SampleDataConfig(num_images=6, seed=5)
    sample_data.generate(str(tmp_path / "plain"), plain)
    sample_data.generate(str(tmp_path / "presence"), sample_data.SampleDataConfig(num_images=6, seed=5,
                                                                                   presence_questions=True))
    assert _digest(tmp_path / "plain" / "images") == _digest(tmp_path / "presence" / "images")
    assert (tmp_path / "plain" / "boxes.json").read_bytes() == (tmp_path / "presence" / "boxes.json").read_bytes()
    boxes = {entry["image_id"]: set(entry["labels"])
             for entry in json.loads((tmp_path / "presence" / "boxes.json").read_text()).values()}
    questions = json.loads((tmp_path / "presence" / "vqa_questions.json").read_text())["questions"]
    answers = {a["question_id"]: a for a in json.loads((tmp_path / "presence" / "vqa_annotations.json").read_text())[
            "annotations"]}
    plain_questions = json.loads((tmp_path / "plain" / "vqa_questions.json").read_text())["questions"]
    # The plain questions come first, unchanged; the presence questions follow per image.
    assert [q for q in questions if q["question"].startswith("Is there a")] != []
    assert [q for q in questions if not q["question"].startswith("Is there a")] == plain_questions
    counts = {"yes": 0, "no": 0}
    for question in questions:
        if not question["question"].startswith("Is there a "):
            continue
        label = question["question"][len("Is there a "):-1]
        answer = answers[question["question_id"]]
        assert answer["multiple_choice_answer"] == ("yes" if label in boxes[question["image_id"]] else "no")
        assert answer["question_type"] == "is there a" and answer["answer_type"] == "yes/no"
        counts[answer["multiple_choice_answer"]] += 1
    assert counts["yes"] == counts["no"] == sum(len(labels) for labels in boxes.values())
