"""Annotation readers: each streams :class:`TextItem` objects (and :class:`DeadLetter` objects for bad records).

=================  ======================================  ==========================================
format             ``annotations``                         ``annotations2``
=================  ======================================  ==========================================
``coco``           COCO captions JSON                      -
``flickr30k``      Karpathy-split JSON (any dataset)       -
``cc``             Conceptual Captions TSV                 -
``sbu``            SBU captions .txt                       SBU urls .txt (line-aligned)
``vg``             VG ``region_descriptions.json``         -
``vqa``            VQA v2 questions JSON                   VQA v2 annotations JSON (absent for test)
``nlvr2``          NLVR2 jsonl                             -
``snli_ve``        SNLI-VE jsonl                           -
``refcoco``        refs ``.p`` (plain data only) or JSON   COCO ``instances.json``
``vcr``            VCR ``train/val/test.jsonl``            - (``ReaderOptions.images_dir``: metadata)
=================  ======================================  ==========================================

Several files may be given per side; ``annotations2`` files pair with ``annotations`` files by position
(a single ``annotations2`` file is used for all).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from uniter_tf.data.readers.text_item import TextItem

#: Annotation formats.
FORMATS = ("coco", "flickr30k", "cc", "sbu", "vg", "vqa", "nlvr2", "snli_ve", "refcoco", "vcr")
#: The record ``task`` (:data:`uniter_tf.data.schema.TASKS`) of each format's text items. Visual Genome
#: region phrases are captions, as in the official pretraining (its ``vg`` text database).
FORMAT_TASKS = {"coco": "caption", "flickr30k": "caption", "cc": "caption", "sbu": "caption", "vg": "caption",
                "vqa": "vqa", "nlvr2": "nlvr2", "snli_ve": "snli_ve", "refcoco": "refcoco",
                "vcr": "vcr"}
_NEEDS_SECOND = {"sbu": True, "refcoco": True, "vqa": False}


@dataclasses.dataclass(frozen=True)
class ReaderOptions:
    """Format-specific reader options.

    Attributes:
        answer_to_label: VQA answer vocabulary (answer -> label); required for ``vqa`` with annotations.
        cc_image_id_scheme: ``row_index`` or ``url_sha1`` (see :mod:`.conceptual_captions`).
        images_dir: VCR ``vcr1images`` (``img_fn`` and ``metadata_fn`` are relative to it); required for ``vcr``.
    """

    answer_to_label: Optional[Dict[str, int]] = None
    cc_image_id_scheme: str = "row_index"
    images_dir: Optional[str] = None


def annotation_tasks(annotation_format: str, annotations: Sequence[str],
                     annotations2: Sequence[str] = ()) -> List[Tuple[str, Optional[str]]]:
    """Pairs the annotation files into independent read tasks ``(path, second_path or None)``.

    Raises:
        ValueError: unknown format, no files, or a required second file is missing.
    """
    if annotation_format not in FORMATS:
        raise ValueError(f"annotation format must be one of {FORMATS}, got {annotation_format!r}")
    if not annotations:
        raise ValueError("no annotation files given")
    annotations2 = list(annotations2 or [])
    if annotations2 and annotation_format not in _NEEDS_SECOND:
        raise ValueError(f"format {annotation_format!r} takes no --annotations2 file")
    if _NEEDS_SECOND.get(annotation_format) and not annotations2:
        raise ValueError(f"format {annotation_format!r} needs --annotations2 "
                         f"({'the urls file' if annotation_format == 'sbu' else 'instances.json'})")
    if annotations2 and len(annotations2) not in (1, len(annotations)):
        raise ValueError(f"{len(annotations2)} --annotations2 files for {len(annotations)} --annotations files; "
                         "give one, or one per annotations file")
    tasks = []
    for index, path in enumerate(annotations):
        second = None
        if annotations2:
            second = annotations2[0] if len(annotations2) == 1 else annotations2[index]
        tasks.append((path, second))
    return tasks


def read_task(annotation_format: str, task: Tuple[str, Optional[str]], options: ReaderOptions = ReaderOptions()
              ) -> Iterator:
    """Streams the items (and dead letters) of one read task; every item's ``task`` is set.

    A reader may set an item's ``task`` itself; otherwise it is the format's :data:`FORMAT_TASKS` entry.
    """
    items = _read_format(annotation_format, task, options)  # bad formats and options fail here, not lazily
    return _with_task(items, FORMAT_TASKS[annotation_format])


def _with_task(items: Iterator, record_task: str) -> Iterator:
    for item in items:
        if isinstance(item, TextItem) and item.task is None:
            item.task = record_task
        yield item


def _read_format(annotation_format: str, task: Tuple[str, Optional[str]], options: ReaderOptions) -> Iterator:
    from uniter_tf.data.readers import (coco, conceptual_captions, karpathy, nlvr2, refcoco, sbu, snli_ve,
                                        visual_genome, vqa)

    path, second = task
    if annotation_format == "coco":
        return coco.read_coco_captions(path)
    if annotation_format == "flickr30k":
        return karpathy.read_karpathy(path)
    if annotation_format == "cc":
        return conceptual_captions.read_conceptual_captions(path, options.cc_image_id_scheme)
    if annotation_format == "sbu":
        return sbu.read_sbu(path, second)
    if annotation_format == "vg":
        return visual_genome.read_vg_regions(path)
    if annotation_format == "vqa":
        if second and options.answer_to_label is None:
            raise ValueError("vqa with annotations needs an answer vocabulary (ReaderOptions.answer_to_label)")
        return vqa.read_vqa(path, second, options.answer_to_label or {})
    if annotation_format == "nlvr2":
        return nlvr2.read_nlvr2(path)
    if annotation_format == "snli_ve":
        return snli_ve.read_snli_ve(path)
    if annotation_format == "refcoco":
        return refcoco.read_refcoco(path, second)
    if annotation_format == "vcr":  # VcrItem objects (several texts per question), not TextItem
        from uniter_tf.data.readers import vcr

        if not options.images_dir:
            raise ValueError("format 'vcr' needs ReaderOptions.images_dir (the vcr1images folder)")
        return vcr.read_vcr(path, options.images_dir)
    raise ValueError(f"unknown annotation format {annotation_format!r}")


def read_annotations(annotation_format: str, annotations: Sequence[str], annotations2: Sequence[str] = (),
                     options: ReaderOptions = ReaderOptions()) -> Iterator:
    """Streams every item (and dead letter) of the given annotation files."""
    for task in annotation_tasks(annotation_format, annotations, annotations2):
        yield from read_task(annotation_format, task, options)


__all__ = ["FORMATS", "FORMAT_TASKS", "TextItem", "ReaderOptions", "annotation_tasks", "read_task",
           "read_annotations"]
