"""Full-gallery retrieval evaluation (issue 13): recall counted correctly, the score matrix from real records.

The official ``utils/itm_eval.py`` over-counts image-retrieval recall (spec §7.20): a case where it gives
more than 1.0 and ours the right value. The streamed full gallery is checked on real TFRecords with a
scorer whose scores are known in advance.
"""

import json

import numpy as np
import pytest

from uniter_tf.data import schema, tfrecord_io
from uniter_tf.evaluation import EvalRecords, metrics
from uniter_tf.retrieval import gallery

WORD_BASE = 2000


def test_official_formula_over_counts_image_recall_and_ours_does_not():
    # Three captions, each with its own image ranked first: every recall is exactly 1.
    perfect = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 0.0, 5.0]])
    official = gallery.official_itm_eval(perfect, [0, 1, 2])
    ours = metrics.retrieval_recalls(perfect, [0, 1, 2])
    # torch's nonzero() rows are (caption row, position): caption 0's hit also counts for "row 0 < 1".
    assert official["img_r1"] == pytest.approx(4 / 3) and official["img_r1"] > 1.0
    assert official["img_r10"] == pytest.approx(2.0)
    assert ours["img_r1"] == ours["img_r5"] == ours["img_r10"] == 1.0
    assert official["txt_r1"] == ours["txt_r1"] == 1.0  # text retrieval is right in both


def test_on_a_random_gallery_only_image_retrieval_differs_by_the_rows_below_k():
    rng = np.random.default_rng(4)
    text_to_image = np.repeat(np.arange(12), 5)
    scores = rng.normal(size=(60, 12))
    scores[np.arange(60), text_to_image] += 1.0
    ours = metrics.retrieval_recalls(scores, text_to_image)
    official = gallery.official_itm_eval(scores, text_to_image)
    for k in (1, 5, 10):
        ranks = np.sum(scores >= scores[np.arange(60), text_to_image][:, None], axis=1) - 1  # brute force
        assert ours[f"img_r{k}"] == pytest.approx(np.mean(ranks < k))
        # The over-count: captions among the first k rows whose image is in their top 10 count twice.
        extra = np.sum(ranks[:k] < 10) / 60
        assert official[f"img_r{k}"] == pytest.approx(ours[f"img_r{k}"] + extra)
        assert official[f"txt_r{k}"] == pytest.approx(ours[f"txt_r{k}"])


def write_records(path, num_images=7, captions_per_image=3):
    rng = np.random.default_rng(0)
    with tfrecord_io.ShardedTFRecordWriter(str(path / "eval"), num_shards=2) as writer:
        for image in range(num_images):
            features = rng.uniform(0, 0.1, size=(3, 16)).astype(np.float32)
            features[:, 0] = image
            for caption in range(captions_per_image):
                writer.write(schema.make_example(
                        image_id=f"img{image}", region_features=features,
                        region_boxes=np.tile(np.float32([[0, 0, 5, 5]]), (3, 1)), image_height=10, image_width=10,
                        example_id=f"cap{image}_{caption}", text="w", token_ids=[WORD_BASE + image, 3000 + caption],
                        task=schema.TASK_CAPTION))
    return str(path / "eval-*")


def known_score(text_image, caption, image):
    """Captions 0 of images 0-2 prefer the next image; everything else prefers its own."""
    target = (text_image + 1) % 7 if (caption == 0 and text_image < 3) else text_image
    return -abs(target - image) - 0.01 * image


def test_full_gallery_streams_every_pair_and_writes_the_float16_matrix(tmp_path):
    records = EvalRecords.from_files(write_records(tmp_path))
    calls = []

    def scorer(serialized):
        calls.append(len(serialized))
        scores = []
        for record in serialized:
            decoded = schema.decode_example(record)
            text_image = int(decoded[schema.TOKEN_IDS][0]) - WORD_BASE
            scores.append(known_score(text_image, int(decoded[schema.TOKEN_IDS][1]) - 3000,
                                      int(round(float(decoded[schema.REGION_FEATURES][0, 0])))))
        return {"task_logits": np.asarray(scores, np.float32)[:, None]}

    prefix = str(tmp_path / "out" / "retrieval_7")
    result = gallery.evaluate_gallery(scorer, records, batch_size=10, output_prefix=prefix)
    assert max(calls) == 10 and sum(calls) == 21 * 7  # streamed in batches, every caption x every image
    ids = json.loads((tmp_path / "out" / "retrieval_7_ids.json").read_text())
    matrix = np.load(prefix + gallery.SCORES_SUFFIX)
    assert matrix.dtype == np.float16 and matrix.shape == (21, 7)
    expected = np.array([[known_score(int(t[3]), int(t[5]), i) for i in range(7)] for t in ids["text_ids"]])
    np.testing.assert_allclose(matrix, expected.astype(np.float16))
    assert ids["image_ids"] == [f"img{i}" for i in range(7)]
    assert result == pytest.approx({**metrics.retrieval_recalls(expected, ids["text_to_image"]),
                                    "num_texts": 21.0, "num_images": 7.0})
    assert result["img_r1"] == pytest.approx(18 / 21)  # three captions rank the wrong image first
    # Images 1-3 tie their own best caption with a wrong one: ties count against, so 4 of 7 at rank 1.
    assert result["txt_r1"] == pytest.approx(4 / 7) and result["txt_r5"] == 1.0
    assert json.loads((tmp_path / "out" / "retrieval_7.json").read_text()) == pytest.approx(result)
    # max_texts keeps the first captions and their images only.
    cut = gallery.evaluate_gallery(scorer, records, batch_size=10, max_texts=6)
    assert (cut["num_texts"], cut["num_images"]) == (6.0, len(set(records.caption_image_ids[:6])))


def test_a_single_image_gallery_is_refused(tmp_path):
    records = EvalRecords.from_files(write_records(tmp_path, num_images=1))
    with pytest.raises(ValueError, match="at least 2 images"):
        gallery.evaluate_gallery(lambda serialized: {"task_logits": np.zeros((len(serialized), 1))}, records)
