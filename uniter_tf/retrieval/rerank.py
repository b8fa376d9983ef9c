"""Retrieve, then rerank (issue 13): the first stage's top-K rescored by the cross-encoder.

For a text query: its first-stage embedding is searched in the image index (:mod:`.index`), the top
``K`` images are scored with the caption by the cross-encoder (the retrieval run's rank logit,
``task_logits[:, 0]``, or the ITM match logit for a run without a rank head) and put in cross-encoder order;
images below K keep the first stage's order behind them. Cost per query: 1 text-encoder pass and ``K``
cross-encoder passes instead of one per gallery image.
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
        scores = []
        for start in range(0, len(image_parts), self.batch_size):
            batch = [text_part_serialized + part for part in image_parts[start:start + self.batch_size]]
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
    from uniter_tf.retrieval.index import IndexVersionError

    if index.kind != "image":
        raise ValueError(f"text → image retrieval needs an image index, this one holds {index.kind} embeddings")
    if first_stage.model_version() != index.model_version:
        raise IndexVersionError(f"the index was built with first-stage model version {index.model_version}, the "
                                f"first stage in use is version {first_stage.model_version()}: rebuild the index")
    k = check_k(k, len(index), "--k")
    if rerank:
        rerank = check_k(rerank, len(index), "--rerank")
        if rerank < k:
            raise ValueError(f"--rerank ({rerank}) must be at least --k ({k}): the answers come from the reranked")
        if cross_encoder is None or image_parts is None:
            raise ValueError("reranking needs the cross-encoder and the gallery's image records")
    part = caption_part(text, tokenizer)  # validates the text before any model call
    query = first_stage.embed_texts([text], tokenizer)[0]
    scores, rows = index.search(query, max(k, rerank or 0))
    scores, rows = scores[0], rows[0]
    if not rerank:
        return [RetrievedItem(index.ids[row], float(score), float(score), False) for row, score in zip(rows, scores)]
    missing = [index.ids[row] for row in rows if index.ids[row] not in image_parts]
    if missing:
        raise ValueError(f"no region features for the indexed image(s) {missing[:5]} in the index's feature files")
    cross = cross_encoder.score_parts(part.SerializeToString(), [image_parts[index.ids[row]] for row in rows])
    order = rerank_order(cross)[:k]
    return [RetrievedItem(index.ids[rows[position]], float(cross[position]), float(scores[position]), True)
            for position in order]


__all__ = ["rerank_order", "reranked_ranking", "ranks_of_truth", "recall_at", "caption_part", "CrossEncoder",
           "RetrievedItem", "retrieve"]
