"""Full-gallery retrieval evaluation: every caption of a split against every image of it (spec §5.4).

The pairs are streamed through a scorer (:mod:`uniter_tf.evaluation.scorers`: an exported SavedModel or
in-memory Keras layers) in batches, as the evaluation library's ``score_pairs`` does (a pair is the
caption's serialized text part + the image's serialized image part), and one number per pair is kept: memory is the split's text parts, one copy of each image and the ``[n_text, n_image]``
matrix (bench/retrieval_memory.py ``--full-gallery``). The score is a model output column: the rank logit
of a retrieval-fine-tuned model (``task_logits[:, 0]``) or, zero-shot, the ITM match logit
(``itm_logits[:, 1]``, what the official ``inf_itm.py`` ranks after ``init_output()``).

Recall (:func:`uniter_tf.evaluation.metrics.retrieval_recalls`) counts each caption once in image
retrieval; the official ``utils/itm_eval.py`` over-counts it (spec §7.20), reproduced for reference by
:func:`official_itm_eval` and never used for a reported figure.
"""

from __future__ import annotations

import json
import os
from typing import Dict, Optional, Sequence

import numpy as np

from uniter_tf.evaluation import metrics as metrics_lib
from uniter_tf.evaluation.evaluator import ITM_LOGITS, VQA_LOGITS, Scorer
from uniter_tf.evaluation.records import EvalRecords, _record_name

#: Files written next to each other by :func:`evaluate_gallery` (``{prefix}.json`` holds the metrics).
SCORES_SUFFIX = "_scores.npy"
IDS_SUFFIX = "_ids.json"


def gallery_score_matrix(scorer: Scorer, records: EvalRecords, *, output_key: str, column: int, batch_size: int,
                         max_texts: Optional[int] = None):
    """Scores every caption (the first ``max_texts``) against every image of those captions.

    Returns:
        ``(scores [n_text, n_image] float32, text ids, image ids, text_to_image column indices)``.

    Raises:
        ValueError: fewer than 2 gallery images, or the scorer lacks ``output_key``.
    """
    captions = records.captions[:max_texts] if max_texts else records.captions
    caption_images = records.caption_image_ids[:len(captions)]
    gallery = sorted(set(caption_images))
    if len(gallery) < 2:
        raise ValueError(f"retrieval needs captions of at least 2 images; the split has {len(gallery)} "
                         f"({len(captions)} captions)")
    flat = _score_all_pairs(scorer, records, captions, gallery, output_key, column, batch_size)
    column_of = {image: position for position, image in enumerate(gallery)}
    text_ids = [_record_name(caption) for caption in captions]
    image_ids = [image.decode("utf-8", "replace") for image in gallery]
    return (flat.reshape(len(captions), len(gallery)), text_ids, image_ids,
            np.asarray([column_of[image] for image in caption_images], np.int64))


def _pair_batches(records: EvalRecords, captions, gallery, batch_size: int):
    """Serialized ``caption × image`` records, caption-major, at most ``batch_size`` at a time.

    Each caption's text part is serialized once (not once per image): with 1,000 images that is 1,000 times
    fewer protobuf serializations than pairing through ``EvalRecords.serialized_pair``.
    """
    batch = []
    for caption in captions:
        text = caption.SerializeToString()
        for image in gallery:
            batch.append(text + records.serialized_image(image))
            if len(batch) == batch_size:
                yield batch
                batch = []
    if batch:
        yield batch


def _score_all_pairs(scorer: Scorer, records: EvalRecords, captions, gallery, output_key: str, column: int,
                     batch_size: int) -> np.ndarray:
    """``[len(captions) * len(gallery)]`` float32 scores; one number per pair is kept, nothing else."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    flat = np.empty(len(captions) * len(gallery), np.float32)
    row = 0
    for batch in _pair_batches(records, captions, gallery, batch_size):
        outputs = scorer(batch)
        if output_key not in outputs:
            raise KeyError(f"the model's scoring signature has no output {output_key!r} (it has {sorted(outputs)})")
        values = np.asarray(outputs[output_key])
        if values.shape[0] != len(batch):
            raise ValueError(f"the scorer returned {values.shape[0]} rows of {output_key!r} for {len(batch)} records")
        flat[row:row + len(batch)] = values.reshape(len(batch), -1)[:, column]
        row += len(batch)
    return flat


def evaluate_gallery(scorer: Scorer, records: EvalRecords, *, output_key: str = VQA_LOGITS, column: int = 0,
                     batch_size: int = 64, max_texts: Optional[int] = None,
                     output_prefix: Optional[str] = None) -> Dict[str, float]:
    """Full-gallery ``txt_r1/5/10``, ``img_r1/5/10``, ``txt_r_mean``, ``img_r_mean``, ``r_mean`` (fractions).

    Args:
        scorer: serialized records → model outputs.
        records: the eval split.
        output_key, column: the score (default: the rank logit, ``task_logits[:, 0]``; zero-shot
            ``itm_logits`` column 1).
        batch_size: pairs per scorer call.
        max_texts: only the first this-many captions (None: all).
        output_prefix: if given (any ``tf.io.gfile`` path without extension), writes
            ``{prefix}_scores.npy`` (float16 ``[n_text, n_image]``, as the official ``results.bin``),
            ``{prefix}_ids.json`` (``text_ids``, ``image_ids``, ``text_to_image``) and ``{prefix}.json``
            (the metrics).

    Returns:
        The recalls plus ``num_texts`` and ``num_images``.
    """
    scores, text_ids, image_ids, text_to_image = gallery_score_matrix(
            scorer, records, output_key=output_key, column=column, batch_size=batch_size, max_texts=max_texts)
    result = metrics_lib.retrieval_recalls(scores, text_to_image)
    result["num_texts"] = float(len(text_ids))
    result["num_images"] = float(len(image_ids))
    if output_prefix is not None:
        write_gallery_outputs(output_prefix, scores, text_ids, image_ids, text_to_image, result)
    return result


def evaluate_saved_model(run: str, files, *, batch_size: int = 64, max_texts: Optional[int] = None,
                         output_prefix: Optional[str] = None) -> Dict[str, float]:
    """Full-gallery recall of an exported model (what ``uniter evaluate --task retrieval`` runs).

    The score is the rank logit when the export's task head is a one-column retrieval head
    (``task_logits [B, 1]``), else the ITM match logit (``itm_logits[:, 1]``: zero-shot, as the official
    ``inf_itm.py`` on a pretrained checkpoint). ``score_is_rank_logit`` in the result says which (1 / 0).

    Raises:
        ValueError: no model at ``run``, no file matches, a malformed record or fewer than 2 images.
    """
    from uniter_tf.evaluation.scorers import resolve_saved_model, saved_model_scorer

    model_dir = resolve_saved_model(run)  # a wrong --run fails before any record is read
    records = EvalRecords.from_files(files)
    if not records.captions:
        raise ValueError(f"the eval files {files} hold no caption record to retrieve with")
    return evaluate_scorer_gallery(saved_model_scorer(model_dir), records, batch_size=batch_size,
                                   max_texts=max_texts, output_prefix=output_prefix)


def evaluate_scorer_gallery(scorer: Scorer, records: EvalRecords, *, batch_size: int = 64,
                            max_texts: Optional[int] = None, output_prefix: Optional[str] = None) -> Dict[str, float]:
    """Full-gallery recall of a model reached through ``scorer``, scored by its rank logit when it has one.

    The score is the rank logit when the model's task head is a one-column retrieval head
    (``task_logits [B, 1]``), else the ITM match logit (``itm_logits[:, 1]``: zero-shot). Used by
    :func:`evaluate_saved_model` and by the TFX gate (``components/uniter_evaluator``, task ``retrieval``).

    Returns:
        The recalls of :func:`evaluate_gallery` plus ``score_is_rank_logit`` (1 / 0).

    Raises:
        ValueError: no caption record, or fewer than 2 images.
    """
    if not records.captions:
        raise ValueError("the eval split holds no caption record to retrieve with")
    probe = scorer([records.serialized_pair(records.captions[0], records.caption_image_ids[0])])
    rank_head = VQA_LOGITS in probe and np.asarray(probe[VQA_LOGITS]).shape[-1] == 1
    output_key, column = (VQA_LOGITS, 0) if rank_head else (ITM_LOGITS, 1)
    result = evaluate_gallery(scorer, records, output_key=output_key, column=column, batch_size=batch_size,
                              max_texts=max_texts, output_prefix=output_prefix)
    result["score_is_rank_logit"] = 1.0 if rank_head else 0.0
    return result


def write_gallery_outputs(prefix: str, scores: np.ndarray, text_ids: Sequence[str], image_ids: Sequence[str],
                          text_to_image: np.ndarray, result: Dict[str, float]) -> None:
    """Writes the score matrix (float16 .npy), the ids and the metrics beside each other."""
    import io

    import tensorflow as tf

    directory = os.path.dirname(prefix)
    if directory:
        tf.io.gfile.makedirs(directory)
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(scores, np.float16))
    # Through a buffer: np.save writes local files only, a run directory may be gs://.
    with tf.io.gfile.GFile(prefix + SCORES_SUFFIX, "wb") as handle:
        handle.write(buffer.getvalue())
    with tf.io.gfile.GFile(prefix + IDS_SUFFIX, "w") as handle:
        handle.write(json.dumps({"text_ids": list(text_ids), "image_ids": list(image_ids),
                                 "text_to_image": [int(value) for value in text_to_image]}))
    with tf.io.gfile.GFile(prefix + ".json", "w") as handle:
        handle.write(json.dumps(result, indent=1, sort_keys=True))


def official_itm_eval(score_matrix: np.ndarray, text_to_image: Sequence[int]) -> Dict[str, float]:
    """The official ``utils/itm_eval.py`` recalls, **with** its image-retrieval over-count (spec §7.20).

    For reference and tests only. Image retrieval takes each caption's top-10 images and counts
    ``(rank < K)`` over ``(topk == gt).nonzero()``, which has two columns (caption row, position): a hit
    of a caption whose row number is below K is counted twice, so IR R@K can exceed 1. Text retrieval is
    correct there (the image's best ground-truth caption among the top 10 captions).
    """
    scores = np.asarray(score_matrix, np.float64)
    text_to_image = np.asarray(text_to_image, np.int64)
    num_texts, num_images = scores.shape
    top_images = np.argsort(-scores, axis=1, kind="stable")[:, :min(10, num_images)]
    hits = np.argwhere(top_images == text_to_image[:, None])  # the rows of torch's .nonzero(): (row, position)
    result = {}
    for k in (1, 5, 10):
        result[f"img_r{k}"] = float(np.sum(hits < k)) / num_texts
    top_texts = np.argsort(-scores, axis=0, kind="stable")[:min(10, num_texts)]
    text_ranks = []
    for image in range(num_images):
        positions = [int(np.nonzero(top_texts[:, image] == text)[0][0])
                     for text in np.nonzero(text_to_image == image)[0] if np.any(top_texts[:, image] == text)]
        text_ranks.append(min([10] + positions))
    text_ranks = np.asarray(text_ranks)
    for k in (1, 5, 10):
        result[f"txt_r{k}"] = float(np.mean(text_ranks < k))
    result["img_r_mean"] = float(np.mean([result[f"img_r{k}"] for k in (1, 5, 10)]))
    result["txt_r_mean"] = float(np.mean([result[f"txt_r{k}"] for k in (1, 5, 10)]))
    result["r_mean"] = (result["img_r_mean"] + result["txt_r_mean"]) / 2
    return result


__all__ = ["evaluate_gallery", "evaluate_saved_model", "evaluate_scorer_gallery", "gallery_score_matrix", "official_itm_eval", "write_gallery_outputs",
           "ITM_LOGITS", "VQA_LOGITS", "SCORES_SUFFIX", "IDS_SUFFIX"]
