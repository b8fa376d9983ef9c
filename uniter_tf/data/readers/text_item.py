"""The text item every annotation reader yields."""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple


@dataclasses.dataclass
class TextItem:
    """One caption, question, hypothesis or referring expression, before tokenisation.

    Attributes:
        example_id: unique id of the text item (e.g. the COCO caption id, the VQA question id).
        image_ids: the image(s) it refers to, as the annotations name them (two for NLVR2).
        text: the raw text.
        split: the annotation's split name (``train``, ``val``, ``test``, ``restval``, ...) or None.
        answers: VQA answer strings (the ten human answers, normalised).
        answer_labels: VQA answer-vocabulary indices.
        answer_scores: VQA soft scores, parallel to ``answer_labels``.
        label: class label (NLVR2, SNLI-VE).
        target_box: pixel ``[x1, y1, x2, y2]`` (RefCOCO, Visual Genome regions).
        image_size: ``(height, width)`` of the (first) image when the annotations give it.
        token_ids: WordPiece ids without [CLS]/[SEP], filled by the ingest pipeline.
        source: where the item came from (``path:line`` or ``path``), for dead letters.
        task: the task family, one of :data:`uniter_tf.data.schema.TASKS` (written to the record's
            ``task`` field); :func:`uniter_tf.data.readers.read_task` fills it from the annotation format
            (:data:`uniter_tf.data.readers.FORMAT_TASKS`) when a reader leaves it ``None``.
    """

    example_id: str
    image_ids: Tuple[str, ...]
    text: str
    split: Optional[str] = None
    answers: Optional[Tuple[str, ...]] = None
    answer_labels: Optional[Tuple[int, ...]] = None
    answer_scores: Optional[Tuple[float, ...]] = None
    label: Optional[int] = None
    target_box: Optional[Tuple[float, float, float, float]] = None
    image_size: Optional[Tuple[int, int]] = None
    token_ids: Optional[Tuple[int, ...]] = None
    source: str = ""
    task: Optional[str] = None
