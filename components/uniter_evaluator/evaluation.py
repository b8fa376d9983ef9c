"""Evaluation of one model on canonical records: ITM accuracy, retrieval recall@K, VQA score.

The model is reached through a *scorer*: a callable that takes a list of serialized canonical records
(``tf.train.Example`` bytes, names from :mod:`uniter_tf.data.schema`) and returns a dict of numpy arrays
with ``itm_logits [B, 2]`` and, for a VQA-fine-tuned model, ``task_logits [B, #answers]`` (the
names of the export's ``serve_examples`` signature). Building the
ITM negatives and the retrieval pairs by re-combining records (the text of one record with the image of
another) keeps this module independent of how the model batches its inputs.
"""

from __future__ import annotations

import logging
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from components.uniter_evaluator import metrics as metrics_lib

_LOG = logging.getLogger(__name__)

ITM_LOGITS = "itm_logits"
#: The export's task-head output (uniter_tf.export); for a VQA-fine-tuned model, the answer logits.
VQA_LOGITS = "task_logits"

Scorer = Callable[[Sequence[bytes]], Mapping[str, np.ndarray]]


class EvalRecords:
    """The eval split, split into caption records (ITM, retrieval) and question records (VQA).

    Args:
        serialized_records: the split's serialized canonical records.

    Raises:
        ValueError: a record is malformed (named by its id) or the split is empty.
    """

    def __init__(self, serialized_records: Sequence[bytes]):
        import tensorflow as tf

        from uniter_tf.data import schema

        self.captions: List[tf.train.Example] = []
        self.questions: List[tf.train.Example] = []
        self.image_records: Dict[bytes, tf.train.Example] = {}
        for index, serialized in enumerate(serialized_records):
            try:
                example = tf.train.Example.FromString(serialized)
                decoded = schema.decode_example(example)
            except Exception as error:  # the decoder names the field; add the position in the split
                raise ValueError(f"eval record #{index} cannot be decoded: {error}") from error
            if schema.TOKEN_IDS not in decoded or not len(decoded[schema.TOKEN_IDS]):
                continue  # a per-image record without text
            self.image_records.setdefault(decoded[schema.IMAGE_ID], example)
            if len(decoded.get(schema.ANSWER_LABELS, ())):
                self.questions.append(example)
            else:
                self.captions.append(example)
        if not self.captions and not self.questions:
            raise ValueError("the eval split holds no text records")


def _with_image(text_example, image_example):
    """The text of ``text_example`` on the image of ``image_example`` (the image id changes too)."""
    from uniter_tf.data import schema

    combined = type(text_example)()
    combined.CopyFrom(text_example)
    del combined.features.feature[schema.IMAGE_ID]
    return schema.merge_image_features(combined, image_example)


def _score_in_batches(scorer: Scorer, examples: Sequence, output_key: str, batch_size: int) -> np.ndarray:
    outputs = []
    for start in range(0, len(examples), batch_size):
        batch = [example.SerializeToString() for example in examples[start:start + batch_size]]
        result = scorer(batch)
        if output_key not in result:
            raise KeyError(f"the model's scoring signature has no output {output_key!r} (it has {sorted(result)})")
        outputs.append(np.asarray(result[output_key]))
    return np.concatenate(outputs, axis=0)


def _image_id(example) -> bytes:
    from uniter_tf.data import schema

    return example.features.feature[schema.IMAGE_ID].bytes_list.value[0]


def evaluate(scorer: Scorer, records: EvalRecords, batch_size: int = 32, max_gallery_texts: int = 1000,
             has_vqa_head: Optional[bool] = None) -> Dict[str, float]:
    """Computes every metric the model supports on ``records``.

    Args:
        scorer: see the module docstring.
        records: the eval split.
        batch_size: records per scorer call.
        max_gallery_texts: the first this-many captions form the retrieval queries; their images the
            gallery.
        has_vqa_head: whether to compute the VQA score; None: when the scorer returns ``task_logits``.

    Returns:
        ``itm_accuracy``, ``img_r1/5/10``, ``txt_r1/5/10``, ``img_r_mean``, ``txt_r_mean``, ``r_mean``
        (when the split has captions of at least 2 images), ``vqa_score`` (when the split has questions
        and the model a VQA head), and the counts ``num_captions``, ``num_gallery_images``,
        ``num_questions``.
    """
    metrics: Dict[str, float] = {"num_captions": float(len(records.captions)),
                                 "num_questions": float(len(records.questions))}
    image_ids = sorted({_image_id(example) for example in records.captions})
    if len(image_ids) >= 2:
        # ITM: every caption with its own image (label 1) and with the next image in id order (label 0).
        next_image = {image_id: image_ids[(position + 1) % len(image_ids)]
                      for position, image_id in enumerate(image_ids)}
        negatives = [_with_image(example, records.image_records[next_image[_image_id(example)]])
                     for example in records.captions]
        positive_logits = _score_in_batches(scorer, records.captions, ITM_LOGITS, batch_size)
        negative_logits = _score_in_batches(scorer, negatives, ITM_LOGITS, batch_size)
        metrics["itm_accuracy"] = metrics_lib.itm_accuracy(positive_logits, negative_logits)

        # Retrieval: every query caption against every gallery image; the score is the match logit.
        queries = records.captions[:max_gallery_texts]
        gallery = sorted({_image_id(example) for example in queries})
        if len(gallery) >= 2:
            column = {image_id: position for position, image_id in enumerate(gallery)}
            pairs = [_with_image(query, records.image_records[image_id]) for query in queries for image_id in gallery]
            pair_logits = _score_in_batches(scorer, pairs, ITM_LOGITS, batch_size)
            score_matrix = pair_logits[:, 1].reshape(len(queries), len(gallery))
            metrics.update(metrics_lib.retrieval_recalls(
                    score_matrix, [column[_image_id(query)] for query in queries]))
            metrics["num_gallery_images"] = float(len(gallery))
    else:
        _LOG.warning("ITM and retrieval skipped: the eval split has captions of %d image(s), 2 are needed",
                     len(image_ids))

    if records.questions:
        if has_vqa_head is None:
            has_vqa_head = VQA_LOGITS in scorer([records.questions[0].SerializeToString()])
        if has_vqa_head:
            from uniter_tf.data import schema

            logits = _score_in_batches(scorer, records.questions, VQA_LOGITS, batch_size)
            predicted = np.argmax(logits, axis=-1)
            scores = []
            for example, answer in zip(records.questions, predicted):
                feature_map = example.features.feature
                labels = np.asarray(feature_map[schema.ANSWER_LABELS].int64_list.value)
                soft_scores = np.asarray(feature_map[schema.ANSWER_SCORES].float_list.value)
                scores.append(float(np.sum(soft_scores[labels == answer])))
            metrics["vqa_score"] = float(np.mean(scores))
    return metrics
