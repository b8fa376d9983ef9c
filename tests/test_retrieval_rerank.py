"""Retrieve-then-rerank (issue 13): the index round trip, the model-version check, the rerank order and the
`uniter retrieve` user errors (no model is trained here; the end to end run is test_retrieval_rerank_e2e)."""

import json
import os

import numpy as np
import pytest

from uniter_tf import cli
from uniter_tf.retrieval import rerank
from uniter_tf.retrieval.index import EmbeddingIndex, IndexVersionError, check_k


def unit_rows(count, dim, seed):
    values = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    return values / np.linalg.norm(values, axis=1, keepdims=True)


def test_index_round_trip_keeps_ids_embeddings_version_and_search_results(tmp_path):
    embeddings = unit_rows(50, 16, 0)
    index = EmbeddingIndex([f"img{i}" for i in range(50)], embeddings, "v1", "image", {"run": "/r"})
    index.save(str(tmp_path / "index"))
    loaded = EmbeddingIndex.load(str(tmp_path / "index"), expected_model_version="v1")
    assert loaded.ids == index.ids and loaded.model_version == "v1" and loaded.kind == "image"
    assert loaded.metadata == {"run": "/r"}
    np.testing.assert_array_equal(loaded.embeddings, embeddings)
    queries = unit_rows(7, 16, 1)
    scores, rows = loaded.search(queries, 5)
    brute = queries @ embeddings.T
    for query in range(7):
        expected = np.argsort(-brute[query], kind="stable")[:5]
        np.testing.assert_array_equal(rows[query], expected)
        np.testing.assert_allclose(scores[query], brute[query][expected], rtol=1e-6)
    full_scores, full_rows = loaded.search(queries[0], 50)  # k = the gallery: every row, sorted
    assert sorted(full_rows[0].tolist()) == list(range(50)) and np.all(np.diff(full_scores[0]) <= 0)


def test_ivf_backend_round_trip_rebuilds_the_same_lists_and_finds_the_exact_neighbours(tmp_path):
    rng = np.random.default_rng(3)
    centres = unit_rows(8, 32, 4)
    embeddings = centres[rng.integers(0, 8, 3000)] + 0.2 * rng.standard_normal((3000, 32)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    ids = [f"img{i}" for i in range(3000)]
    index = EmbeddingIndex(ids, embeddings, "v1", backend="ivf", nlist=16, nprobe=4)
    assert index.backend == "ivf" and index.centroids.shape == (16, 32)
    assert EmbeddingIndex(ids[:10], embeddings[:10], "v1").backend == "exact"  # auto: small galleries stay exact
    queries = embeddings[:20] + 0.05 * rng.standard_normal((20, 32)).astype(np.float32)
    _, rows = index.search(queries, 10)
    _, exact_rows = EmbeddingIndex(ids, embeddings, "v1", backend="exact").search(queries, 10)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows.tolist(), exact_rows.tolist())])
    assert overlap >= 0.9, overlap
    index.save(str(tmp_path / "ivf"))
    assert (tmp_path / "ivf" / "ivf_centroids.npy").exists()
    loaded = EmbeddingIndex.load(str(tmp_path / "ivf"), expected_model_version="v1")
    assert loaded.backend == "ivf" and loaded.nprobe == 4
    np.testing.assert_array_equal(loaded.search(queries, 10)[1], rows)
    # k larger than the probed lists hold: every list is probed, no -1 row comes back.
    _, all_rows = loaded.search(queries[:1], 3000)
    assert sorted(all_rows[0].tolist()) == list(range(3000))


def test_loading_an_index_of_another_model_version_is_refused(tmp_path):
    EmbeddingIndex(["a", "b"], unit_rows(2, 4, 0), "version-a").save(str(tmp_path / "index"))
    with pytest.raises(IndexVersionError, match="version-a.*version-b"):
        EmbeddingIndex.load(str(tmp_path / "index"), expected_model_version="version-b")
    # The files must agree with index.json.
    (tmp_path / "index" / "ids.json").write_text(json.dumps(["a"]))
    with pytest.raises(ValueError, match="ids"):
        EmbeddingIndex.load(str(tmp_path / "index"))


def test_search_ties_and_k_bounds():
    index = EmbeddingIndex(["a", "b", "c"], np.asarray([[1, 0], [1, 0], [0, 1]], np.float32), "v")
    _, rows = index.search(np.asarray([1, 0], np.float32), 2)
    assert rows[0].tolist() == [0, 1]  # equal scores: the lower row first
    for bad in (0, -1, 4, 1.5, True):
        with pytest.raises(ValueError):
            index.search(np.asarray([1, 0], np.float32), bad)
    with pytest.raises(ValueError, match="dimension"):
        index.search(np.ones(3, np.float32), 1)
    with pytest.raises(ValueError, match="unique"):
        EmbeddingIndex(["a", "a"], np.ones((2, 2), np.float32), "v")
    with pytest.raises(ValueError, match="NaN"):
        EmbeddingIndex(["a"], np.full((1, 2), np.nan, np.float32), "v")
    assert check_k(3, 3) == 3


def test_rerank_reorders_only_the_candidates_by_cross_encoder_score():
    first_stage = np.asarray([0.9, 0.1, 0.8, 0.7, 0.2, 0.3])  # first-stage order: 0, 2, 3, 5, 4, 1
    cross = {0: 1.0, 2: 5.0, 3: 3.0, 5: 9.0, 4: 100.0, 1: 50.0}
    asked = []

    def cross_scores_of(columns):
        asked.append(columns.tolist())
        return np.asarray([cross[int(column)] for column in columns])

    ranking = rerank.reranked_ranking(first_stage, 3, cross_scores_of)
    assert asked == [[0, 2, 3]]  # only the top 3 reach the cross-encoder
    assert ranking.tolist() == [2, 3, 0, 5, 4, 1]  # candidates by cross score, then the rest by first stage
    # K = the gallery is the full cross-encoder ranking.
    assert rerank.reranked_ranking(first_stage, 6, cross_scores_of).tolist() == [4, 1, 5, 2, 3, 0]
    assert rerank.rerank_order([2.0, 3.0, 2.0]).tolist() == [1, 0, 2]  # ties keep first-stage order
    with pytest.raises(ValueError, match="NaN"):
        rerank.rerank_order([1.0, float("nan")])
    with pytest.raises(ValueError, match="K"):
        rerank.reranked_ranking(first_stage, 7, cross_scores_of)


def test_recall_of_rankings():
    rankings = np.asarray([[2, 0, 1], [1, 2, 0], [0, 1, 2]])
    ranks = rerank.ranks_of_truth(rankings, [0, 0, 0])
    assert ranks.tolist() == [1, 2, 0]
    assert rerank.recall_at(ranks, (1, 2, 3)) == {"r1": pytest.approx(1 / 3), "r2": pytest.approx(2 / 3), "r3": 1.0}


def test_caption_part_refuses_empty_text():
    with pytest.raises(ValueError, match="empty"):
        rerank.caption_part("   ")


@pytest.fixture
def fake_run(tmp_path):
    """An index of version v1 and a run whose first stage says v2 (no weights: the check comes first)."""
    from uniter_tf.retrieval import first_stage

    run = tmp_path / "run"
    (run / "first_stage").mkdir(parents=True)
    (run / "first_stage" / "first_stage.json").write_text(json.dumps({"format": first_stage.FORMAT,
                                                                      "model_version": "v2"}))
    EmbeddingIndex([f"i{n}" for n in range(5)], unit_rows(5, 4, 0), "v1", "image", {"run": str(run)}).save(
            str(tmp_path / "index"))
    return tmp_path


@pytest.mark.parametrize("extra, needle", [
    (["--text", " "], "--text is empty"),
    (["--text", "a red circle", "--k", "0"], "--k must be >= 1"),
    (["--text", "a red circle", "--k", "6"], "--k=6 is larger than the gallery (5"),
    (["--text", "a red circle", "--k", "3", "--rerank", "2"], "--rerank (2) must be at least --k"),
    (["--text", "a red circle", "--k", "3"], "first-stage model version v1"),
])
def test_retrieve_user_errors_are_one_line_exit_2(fake_run, capsys, extra, needle):
    status = cli.main(["retrieve", "--index", str(fake_run / "index"), *extra])
    error = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(error) == 1 and needle in error[0], error


def test_index_without_first_stage_or_train_files_is_a_user_error(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    status = cli.main(["index", "--features", str(tmp_path / "*.gz"), "--run", str(tmp_path / "run"),
                       "--output", str(tmp_path / "index")])
    error = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(error) == 1 and "--train-files" in error[0], error
    assert not os.path.exists(tmp_path / "index")


def _write_records(path, examples):
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
        for example in examples:
            writer.write(example if isinstance(example, bytes) else example.SerializeToString())


def _image_record(image_id, seed, feature_dim=8, **text):
    from uniter_tf.data import schema

    rng = np.random.default_rng(seed)
    return schema.make_example(image_id=image_id, region_features=rng.random((3, feature_dim)).astype(np.float32),
                               region_boxes=[[0, 0, 10, 10], [5, 5, 20, 20], [1, 2, 3, 4]], image_height=32,
                               image_width=32, **text)


def test_read_gallery_keeps_one_image_part_per_image_and_names_a_bad_record(tmp_path):
    from uniter_tf.retrieval.first_stage import read_gallery

    good = tmp_path / "good.tfrecord.gz"
    _write_records(good, [_image_record("a", 0, example_id="a-0", text="a red circle", token_ids=[2, 3], task="caption"),
                          _image_record("a", 0, example_id="a-1", text="a circle", token_ids=[3], task="caption"),
                          _image_record("b", 1)])  # a per-image record (uniter extract), no caption
    gallery = read_gallery(str(good), feature_dim=8, require_captions=False)
    assert gallery.image_ids == ["a", "b"] and gallery.text_ids == ["a-0", "a-1"]
    assert gallery.text_to_image.tolist() == [0, 0] and gallery.texts == ["a red circle", "a circle"]
    assert [ids.tolist() for ids in gallery.word_ids] == [[2, 3], [3]]
    assert gallery.region_features[1].shape == (3, 8) and gallery.region_positions[0].shape == (3, 7)
    with pytest.raises(ValueError, match="feature_dim is 8, the model expects 16"):
        read_gallery(str(good), feature_dim=16)

    broken = _image_record("c", 2)
    broken.features.feature["region_features"].bytes_list.value[0] = b"\x00" * 8  # 4 float16 values, not 3 x 8
    bad = tmp_path / "bad.tfrecord.gz"
    _write_records(bad, [_image_record("b", 1), broken])
    with pytest.raises(ValueError, match=r"record #1 \(image 'c'\).*region_features"):
        read_gallery(str(bad), require_captions=False)
    with pytest.raises(ValueError, match="no record files? match"):
        read_gallery(str(tmp_path / "missing-*.gz"))


@pytest.fixture
def caption_gallery(tmp_path):
    """Caption records of 4 images (2 captions each) and a run holding an untrained, saved first stage."""
    from uniter_tf.config import UniterConfig
    from uniter_tf.models.backbone import UniterBackbone
    from uniter_tf.retrieval import first_stage
    from uniter_tf.tokenization import UniterTokenizer

    records = tmp_path / "captions.tfrecord.gz"
    config = UniterConfig.resolve("tiny")
    tokenizer = UniterTokenizer()
    examples = []
    for image, (first, second) in enumerate([("a red circle", "one circle"), ("a blue square", "two squares"),
                                             ("a green triangle", "one triangle"), ("a red square", "a square")]):
        for number, text in enumerate((first, second)):
            examples.append(_image_record(f"img{image}", image, config.region_feature_dim,
                                          example_id=f"img{image}-{number}", text=text,
                                          token_ids=tokenizer.encode(text), task="caption"))
    _write_records(records, examples)
    stage = first_stage.FirstStage(UniterBackbone(config), config, embedding_dim=16)
    first_stage.save_first_stage(stage, str(tmp_path / "run" / "first_stage"))
    return tmp_path, str(records), first_stage.load_first_stage(str(tmp_path / "run"))


def test_caption_index_answers_an_image_with_its_nearest_captions(caption_gallery, capsys):
    from uniter_tf.retrieval.first_stage import read_gallery

    root, records, stage = caption_gallery
    assert cli.main(["index", "--kind", "text", "--features", records, "--run", str(root / "run"),
                     "--output", str(root / "captions")]) == 0
    built = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert built["kind"] == "text" and built["captions"] == 8
    index = EmbeddingIndex.load(str(root / "captions"), expected_model_version=stage.model_version())
    assert index.kind == "text" and index.ids == [f"img{i}-{n}" for i in range(4) for n in range(2)]

    assert cli.main(["retrieve", "--index", str(root / "captions"), "--image-id", "img2", "--k", "3"]) == 0
    answers = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    # The first stage's own cosines, computed apart from the command: image img2 against every caption.
    gallery = read_gallery(records)
    image = gallery.image_ids.index("img2")
    cosines = stage.embed_word_ids(gallery.word_ids) @ stage.embed_images(
            [gallery.region_features[image]], [gallery.region_positions[image]])[0]
    best = np.argsort(-cosines, kind="stable")[:3]
    assert [item["text_id"] for item in answers] == [gallery.text_ids[row] for row in best]
    assert [item["text"] for item in answers] == [gallery.texts[row] for row in best]
    np.testing.assert_allclose([item["score"] for item in answers], cosines[best], atol=1e-5)
    assert [item["rank"] for item in answers] == [1, 2, 3] and not any(item["reranked"] for item in answers)

    for extra, needle in [(["--image-id", "img9", "--k", "2"], "--image-id 'img9': no such image"),
                          (["--image-id", "img2", "--k", "9"], "--k=9 is larger than the gallery (8"),
                          (["--text", "a red circle"], "--text queries need an image index")]:
        status = cli.main(["retrieve", "--index", str(root / "captions"), *extra])
        error = capsys.readouterr().err.strip().splitlines()
        assert status == 2 and len(error) == 1 and needle in error[0], (extra, error)


def test_image_query_on_an_image_index_and_a_beam_caption_index_are_user_errors(fake_run, capsys):
    status = cli.main(["retrieve", "--index", str(fake_run / "index"), "--image-id", "i1"])
    error = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(error) == 1 and "--image-id queries need a caption index" in error[0], error
    status = cli.main(["index", "--kind", "text", "--beam", "--features", str(fake_run / "*.gz"), "--run",
                       str(fake_run / "run"), "--output", str(fake_run / "captions")])
    error = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(error) == 1 and "--beam embeds images only" in error[0], error
