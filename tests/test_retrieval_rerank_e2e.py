"""Retrieve-then-rerank end to end (issue 13) through the real commands on rendered sample records.

A retrieval run trains a few updates from scratch (`uniter train`), `uniter index --train-files` trains its
first stage briefly (InfoNCE) and indexes the held-out images (also with `--beam`: the same embeddings),
`uniter retrieve` answers a caption with and
without `--rerank`, and an image with captions from a caption index (`uniter index --kind text`). Checked: the reranked answers are the first stage's top K put in the cross-encoder's
order (scores recomputed independently), the index refuses another first stage, and over every held-out
caption the rerank's R@10 equals the cross-encoder's R@10 restricted to the first-stage candidates. The
learning figures are the bench's (bench/retrieval_rerank.py, docs/performance.md), not this test's.
"""

import json

import numpy as np
import pytest

from helpers.retrieval_runs import sample_caption_records, train_retrieval_run

pytestmark = pytest.mark.slow


def lines_of(capsys):
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def test_index_retrieve_and_rerank_through_the_cli(tmp_path, capsys):
    from uniter_tf import cli
    from uniter_tf.retrieval import first_stage, rerank
    from uniter_tf.retrieval.index import EmbeddingIndex, IndexVersionError

    written = sample_caption_records(tmp_path, num_images=48, eval_every=3)
    run = tmp_path / "run"
    train_retrieval_run(run, written["train"])
    capsys.readouterr()

    index_dir = tmp_path / "index"
    assert cli.main(["index", "--features", *written["eval"], "--run", str(run), "--output", str(index_dir),
                     "--train-files", *written["train"], "--first-stage-steps", "40",
                     "--first-stage-batch-size", "16"]) == 0
    built = lines_of(capsys)[-1]
    index = EmbeddingIndex.load(str(index_dir))
    assert built["images"] == len(index) == 16 and index.model_version == built["model_version"]
    norms = np.linalg.norm(index.embeddings, axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    assert np.ptp((index.embeddings @ index.embeddings[0])[1:]) > 1e-5  # the other images are told apart

    # The Beam embedding pass (DirectRunner) gives the same index, ids sorted.
    assert cli.main(["index", "--features", *written["eval"], "--run", str(run), "--output", str(tmp_path / "beam"),
                     "--beam", "--batch-size", "5"]) == 0
    capsys.readouterr()
    beam_index = EmbeddingIndex.load(str(tmp_path / "beam"), expected_model_version=index.model_version)
    assert beam_index.ids == sorted(index.ids)
    np.testing.assert_allclose(beam_index.embeddings, index.embeddings[[index.ids.index(i) for i in beam_index.ids]],
                               atol=1e-5)

    gallery = first_stage.read_gallery(written["eval"])
    query = gallery.texts[0]
    assert cli.main(["retrieve", "--index", str(index_dir), "--text", query, "--k", "8"]) == 0
    first = lines_of(capsys)
    assert [item["rank"] for item in first] == list(range(1, 9)) and not first[0]["reranked"]
    assert all(a["score"] >= b["score"] for a, b in zip(first, first[1:]))
    assert cli.main(["retrieve", "--index", str(index_dir), "--text", query, "--k", "5", "--rerank", "8"]) == 0
    reranked = lines_of(capsys)
    assert len(reranked) == 5 and all(item["reranked"] for item in reranked)
    candidates = [item["image_id"] for item in first]
    assert {item["image_id"] for item in reranked} <= set(candidates)
    # The cross-encoder's own scores of the 8 candidates, computed apart from `uniter retrieve`.
    cross_encoder = rerank.CrossEncoder.from_run(str(run))
    part = rerank.caption_part(query).SerializeToString()
    scores = cross_encoder.score_parts(part, [gallery.image_parts[image] for image in candidates])
    expected = [candidates[position] for position in np.argsort(-scores, kind="stable")[:5]]
    assert [item["image_id"] for item in reranked] == expected
    np.testing.assert_allclose([item["score"] for item in reranked], np.sort(scores)[::-1][:5], atol=1e-4)

    # Over every held-out caption: rerank R@10 = cross-encoder R@10 among the first stage's top K.
    stage = first_stage.load_first_stage(str(run))
    first_scores = stage.embed_word_ids(gallery.word_ids) @ index.embeddings.T
    image_parts = [gallery.image_parts[image] for image in index.ids]
    column_of = {image: column for column, image in enumerate(index.ids)}
    truth = np.asarray([column_of[gallery.image_ids[image]] for image in gallery.text_to_image])
    k = 12
    rankings, restricted_hits = [], []
    for row, text_part in enumerate(gallery.text_parts):
        full = cross_encoder.score_parts(text_part, image_parts)
        rankings.append(rerank.reranked_ranking(first_scores[row], k, lambda columns, full=full: full[columns]))
        top = np.argsort(-first_scores[row], kind="stable")[:k]
        restricted = top[np.argsort(-full[top], kind="stable")]
        restricted_hits.append(truth[row] in restricted[:10])
    recall = rerank.recall_at(rerank.ranks_of_truth(np.stack(rankings), truth))["r10"]
    assert recall == pytest.approx(np.mean(restricted_hits))

    # Image -> captions: a caption index of the held-out captions, reranked by the same cross-encoder.
    assert cli.main(["index", "--kind", "text", "--features", *written["eval"], "--run", str(run), "--output",
                     str(tmp_path / "captions")]) == 0
    assert lines_of(capsys)[-1]["captions"] == len(gallery.text_ids)
    image = gallery.image_ids[0]
    assert cli.main(["retrieve", "--index", str(tmp_path / "captions"), "--image-id", image, "--k", "3",
                     "--rerank", "6"]) == 0
    captions = lines_of(capsys)
    caption_first = stage.embed_word_ids(gallery.word_ids) @ stage.embed_images(
            gallery.region_features[:1], gallery.region_positions[:1])[0]
    candidates = np.argsort(-caption_first, kind="stable")[:6]
    caption_scores = cross_encoder.score_texts([gallery.text_parts[row] for row in candidates],
                                               gallery.image_parts[image])
    best = candidates[np.argsort(-caption_scores, kind="stable")[:3]]
    assert [item["text_id"] for item in captions] == [gallery.text_ids[row] for row in best]
    assert [item["text"] for item in captions] == [gallery.texts[row] for row in best]
    assert all(item["reranked"] for item in captions)

    # An index of another first stage is refused.
    other = tmp_path / "other"
    EmbeddingIndex(index.ids, index.embeddings, "another-version", "image", index.metadata).save(str(other))
    with pytest.raises(IndexVersionError):
        rerank.retrieve(query, stage, EmbeddingIndex.load(str(other)), k=3)
    assert cli.main(["retrieve", "--index", str(other), "--text", query]) == 2
    assert "another-version" in capsys.readouterr().err
