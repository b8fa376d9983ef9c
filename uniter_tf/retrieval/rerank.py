"""Retrieve, then rerank (issue 13): the first stage's top-K rescored by the cross-encoder.

For a text query: its first-stage embedding is searched in the image index (:mod:`.index`), the top
``K`` images are scored with the caption by the cross-encoder (the retrieval run's rank logit,
``task_logits[:, 0]``, or the ITM match logit for a run without a rank head) and put in cross-encoder order;
images below K keep the first stage's order behind them. Cost per query: 1 text-encoder pass and ``K``
cross-encoder passes instead of one per gallery image.

For an image query (image → captions, :func:`retrieve_captions`): the image's first-stage embedding is
searched in a caption index (kind ``text``) and the top ``K`` captions are rescored against the image the
same way.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from uniter_tf.retrieval.index import EmbeddingIndex, check_k


def rerank_order(cross_scores: Sequence[float]) -> np.ndarray:
    """Positions of the K candidates (in first-stage order) sorted by cross-encoder score, best first.

    Ties keep the first-stage order (a stable sort), so the result is deterministic.
    """
    scores = np.asarray(cross_scores, np.float64)
    if scores.ndim != 1:
        raise ValueError(f"cross_scores must be 1-d, got shape {scores.shape}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("a cross-encoder score is NaN or infinite")
    return np.argsort(-scores, kind="stable")


def reranked_ranking(first_stage_scores: np.ndarray, k: int, cross_scores_of: Callable[[np.ndarray], np.ndarray]
                     ) -> np.ndarray:
    """The whole gallery's ranking of one query after reranking its first-stage top ``k``.

    Args:
        first_stage_scores: ``[n_image]`` first-stage scores of the query.
        k: candidates reranked (1 ≤ k ≤ n_image).
        cross_scores_of: candidate columns ``[k]`` → their cross-encoder scores ``[k]``.

    Returns:
        ``[n_image]`` columns, best first: the k candidates in cross-encoder order, then the others in
        first-stage order.
    """
    first_stage_scores = np.asarray(first_stage_scores, np.float64)
    k = check_k(k, first_stage_scores.shape[0], "K")
    first_order = np.lexsort((np.arange(first_stage_scores.shape[0]), -first_stage_scores))
    candidates = first_order[:k]
    cross = np.asarray(cross_scores_of(candidates), np.float64).reshape(-1)
    if cross.shape[0] != k:
        raise ValueError(f"the cross-encoder returned {cross.shape[0]} scores for {k} candidates")
    return np.concatenate([candidates[rerank_order(cross)], first_order[k:]])


def ranks_of_truth(rankings: np.ndarray, truth: Sequence[int]) -> np.ndarray:
    """``[n_query]`` 0-based rank of each query's ground-truth column in its ranking ``[n_query, n]``."""
    rankings = np.asarray(rankings)
    truth = np.asarray(truth)
    return np.argmax(rankings == truth[:, None], axis=1)


def recall_at(ranks: np.ndarray, ks=(1, 5, 10)) -> Dict[str, float]:
    """``{"r1": ..., "r5": ..., "r10": ...}``: fraction of queries whose truth ranks below K."""
    ranks = np.asarray(ranks)
    return {f"r{k}": float(np.mean(ranks < k)) for k in ks}


# --------------------------------------------------------------------------------------------- cross-encoder
def caption_part(text: str, tokenizer=None, query_id: str = "query"):
    """The text part of a canonical caption record for a free-text query (what the scorers pair with an image).

    Raises:
        ValueError: the text is empty or has no WordPiece.
    """
    import tensorflow as tf

    from uniter_tf.data import schema

    if not isinstance(text, str) or not text.strip():
        raise ValueError("the query text is empty")
    if tokenizer is None:
        from uniter_tf.tokenization import UniterTokenizer

        tokenizer = UniterTokenizer()
    word_ids = tokenizer.encode(text)
    if not word_ids:
        raise ValueError(f"the query text {text!r} has no WordPiece")
    example = tf.train.Example()
    feature = example.features.feature
    feature[schema.EXAMPLE_ID].bytes_list.value.append(query_id.encode())
    feature[schema.TEXT].bytes_list.value.append(text.encode("utf-8"))
    feature[schema.TOKEN_IDS].int64_list.value.extend(int(value) for value in word_ids)
    feature[schema.TASK].bytes_list.value.append(schema.TASK_CAPTION.encode())
    return example


@dataclasses.dataclass
class CrossEncoder:
    """A pair scorer over serialized records and the output column it ranks by.

    Attributes:
        scorer: serialized records → model outputs (:mod:`uniter_tf.evaluation.scorers`).
        output_key, column: the ranking score (``task_logits`` column 0: a rank head; ``itm_logits`` 1).
        batch_size: pairs per scorer call.
        passes: pairs scored so far (the cost counter of the bench).
    """

    scorer: Callable
    output_key: str
    column: int
    batch_size: int = 64
    passes: int = 0

    @classmethod
    def from_run(cls, run_dir: str, batch_size: int = 64) -> "CrossEncoder":
        """The cross-encoder of a task run directory (its latest checkpoint, in memory)."""
        from uniter_tf.evaluation import ITM_LOGITS, VQA_LOGITS, keras_scorer
        from uniter_tf.runs import load_task_run

        run = load_task_run(run_dir)
        rank_head = getattr(run.task, "name", "") == "retrieval"
        scorer = keras_scorer(run.backbone, run.itm_head, run.model_config, task_head=run.head if rank_head else None,
                              max_text_length=run.max_text_length or 60)
        return cls(scorer, VQA_LOGITS if rank_head else ITM_LOGITS, 0 if rank_head else 1, batch_size)

    def score_parts(self, text_part_serialized: bytes, image_parts: Sequence[bytes]) -> np.ndarray:
        """``[len(image_parts)]`` scores of one caption against each image part."""
        return self._score_pairs(len(image_parts), lambda start, stop: [
                text_part_serialized + part for part in image_parts[start:stop]])

    def score_texts(self, text_parts: Sequence[bytes], image_part_serialized: bytes) -> np.ndarray:
        """``[len(text_parts)]`` scores of each caption's text part against one image part."""
        return self._score_pairs(len(text_parts), lambda start, stop: [
                part + image_part_serialized for part in text_parts[start:stop]])

    def _score_pairs(self, count: int, pairs_between: Callable[[int, int], List[bytes]]) -> np.ndarray:
        # The pairs are built one batch at a time: a gallery's worth of image parts is not copied at once.
        scores = []
        for start in range(0, count, self.batch_size):
            batch = pairs_between(start, min(count, start + self.batch_size))
            outputs = self.scorer(batch)
            if self.output_key not in outputs:
                raise KeyError(f"the cross-encoder has no output {self.output_key!r} (it has {sorted(outputs)})")
            scores.append(np.asarray(outputs[self.output_key]).reshape(len(batch), -1)[:, self.column])
            self.passes += len(batch)
        return np.concatenate(scores) if scores else np.zeros([0], np.float32)


@dataclasses.dataclass
class RetrievedItem:
    """One answer of :func:`retrieve`: the image id, its rank score and the first stage's."""

    image_id: str
    score: float
    first_stage_score: float
    reranked: bool


def _check_request(first_stage, index: EmbeddingIndex, kind: str, k: int, rerank: int, cross_encoder,
                   rerank_inputs) -> tuple:
    """``(k, rerank)`` validated against the index (kind, model version, sizes); the model-free checks."""
    from uniter_tf.retrieval.index import IndexVersionError

    if index.kind != kind:
        query = "text → image" if kind == "image" else "image → caption"
        raise ValueError(f"{query} retrieval needs an index of kind {kind!r}, this one holds {index.kind} embeddings")
    if first_stage.model_version() != index.model_version:
        raise IndexVersionError(f"the index was built with first-stage model version {index.model_version}, the "
                                f"first stage in use is version {first_stage.model_version()}: rebuild the index")
    k = check_k(k, len(index), "--k")
    if rerank:
        rerank = check_k(rerank, len(index), "--rerank")
        if rerank < k:
            raise ValueError(f"--rerank ({rerank}) must be at least --k ({k}): the answers come from the reranked")
        if cross_encoder is None or rerank_inputs is None:
            raise ValueError("reranking needs the cross-encoder and the gallery's records")
    return k, rerank


def _search_then_rerank(query_embedding: np.ndarray, index: EmbeddingIndex, k: int, rerank: int,
                        cross_scores_of: Callable[[np.ndarray], np.ndarray]) -> List[tuple]:
    """``[(row, score, first_stage_score, reranked)]`` of the top ``k``: the index's, or its top ``rerank``
    put in cross-encoder order (``cross_scores_of(rows)``)."""
    scores, rows = index.search(query_embedding, max(k, rerank or 0))
    scores, rows = scores[0], rows[0]
    if not rerank:
        return [(row, float(score), float(score), False) for row, score in zip(rows, scores)]
    cross = cross_scores_of(rows)
    return [(rows[position], float(cross[position]), float(scores[position]), True)
            for position in rerank_order(cross)[:k]]


def retrieve(text: str, first_stage, index: EmbeddingIndex, *, k: int = 10, rerank: int = 0,
             cross_encoder: Optional[CrossEncoder] = None, image_parts: Optional[Dict[str, bytes]] = None,
             tokenizer=None) -> List[RetrievedItem]:
    """Text → top ``k`` image ids of the index, optionally after reranking the first stage's top ``rerank``.

    Args:
        text: the query.
        first_stage: a :class:`~uniter_tf.retrieval.first_stage.FirstStage` of the index's model version.
        index: an image index.
        k: answers (1 ≤ k ≤ gallery).
        rerank: 0 (first stage only) or K ≥ k candidates rescored by ``cross_encoder``.
        cross_encoder, image_parts: needed when ``rerank`` > 0 (image id → serialized image part).

    Raises:
        ValueError: empty text, k / rerank out of range, a candidate without image features, or an index
            of another model version (:class:`~uniter_tf.retrieval.index.IndexVersionError`).
    """
    k, rerank = _check_request(first_stage, index, "image", k, rerank, cross_encoder, image_parts)
    part = caption_part(text, tokenizer)  # validates the text before any model call
    query = first_stage.embed_texts([text], tokenizer)[0]

    def cross_scores_of(rows):
        missing = [index.ids[row] for row in rows if index.ids[row] not in image_parts]
        if missing:
            raise ValueError(f"no region features for the indexed image(s) {missing[:5]} in the index's feature files")
        return cross_encoder.score_parts(part.SerializeToString(), [image_parts[index.ids[row]] for row in rows])

    return [RetrievedItem(index.ids[row], score, first_score, reranked)
            for row, score, first_score, reranked in _search_then_rerank(query, index, k, rerank, cross_scores_of)]


@dataclasses.dataclass
class RetrievedCaption:
    """One answer of :func:`retrieve_captions`: the caption's id and text, its rank score and the first stage's."""

    text_id: str
    text: str
    score: float
    first_stage_score: float
    reranked: bool


def retrieve_captions(image_id: str, first_stage, index: EmbeddingIndex, images, captions, *, k: int = 10,
                      rerank: int = 0, cross_encoder: Optional[CrossEncoder] = None) -> List[RetrievedCaption]:
    """Image → top ``k`` captions of a caption index, optionally after reranking the first stage's top ``rerank``.

    Args:
        image_id: the query image.
        first_stage: a :class:`~uniter_tf.retrieval.first_stage.FirstStage` of the index's model version.
        index: a caption index (kind ``text``, ids = the captions' ``example_id``).
        images: a :class:`~uniter_tf.retrieval.first_stage.Gallery` holding the query image's regions.
        captions: a ``Gallery`` holding the indexed captions (their text and text parts).
        k: answers (1 ≤ k ≤ number of captions).
        rerank: 0 (first stage only) or K ≥ k candidates rescored by ``cross_encoder`` against the image.

    Raises:
        ValueError: an image id not in ``images``, k / rerank out of range, an indexed caption missing from
            ``captions``, or an index of another model version
            (:class:`~uniter_tf.retrieval.index.IndexVersionError`).
    """
    k, rerank = _check_request(first_stage, index, "text", k, rerank, cross_encoder, captions)
    if image_id not in images.image_parts:
        raise ValueError(f"--image-id {image_id!r}: no such image in the records ({images.num_images} images, e.g. "
                         f"{images.image_ids[:3]})")
    column = images.image_ids.index(image_id)
    query = first_stage.embed_images([images.region_features[column]], [images.region_positions[column]])[0]
    row_of_text = {text_id: row for row, text_id in enumerate(captions.text_ids)}

    def caption_rows(rows):
        missing = [index.ids[row] for row in rows if index.ids[row] not in row_of_text]
        if missing:
            raise ValueError(f"the indexed caption(s) {missing[:5]} are not in the caption records")
        return [row_of_text[index.ids[row]] for row in rows]

    def cross_scores_of(rows):
        return cross_encoder.score_texts([captions.text_parts[row] for row in caption_rows(rows)],
                                         images.image_parts[image_id])

    answers = _search_then_rerank(query, index, k, rerank, cross_scores_of)
    texts = [captions.texts[row] for row in caption_rows([row for row, *_ in answers])]
    return [RetrievedCaption(index.ids[row], text, score, first_score, reranked)
            for (row, score, first_score, reranked), text in zip(answers, texts)]


__all__ = ["rerank_order", "reranked_ranking", "ranks_of_truth", "recall_at", "caption_part", "CrossEncoder",
           "RetrievedItem", "retrieve", "RetrievedCaption", "retrieve_captions"]
