"""The one exporter of a trained run directory, and rebuilding its model.

``uniter export``, both TFX Trainer ``run_fn``s (hence the demo) and ``uniter finetune --export`` call
:func:`export_model_dir`; ``uniter visualize`` calls :func:`load_exportable_model`. Three layouts are
recognised:

* a task run (``uniter finetune``, the fine-tuning ``run_fn``): ``finetune_config.json`` and
  ``checkpoints/`` (:mod:`uniter_tf.runs`); the task's own :meth:`export_outputs` declaration decides
  what its head adds to the signatures (:meth:`TaskHeadExport.from_task`);
* a converted official checkpoint (``uniter convert``): ``config.json`` and ``backbone.weights.h5``
  (plus ``pretraining.weights.h5`` with the ITM head);
* a pretraining run (``uniter pretrain``, the pretraining ``run_fn``): ``checkpoints/`` (or a checkpoint
  prefix) holding the pretraining model; its :class:`~uniter_tf.config.UniterConfig` comes from the
  run's ``model_config.json`` or must be named (``--config``).

Nothing here imports :mod:`uniter_tf.training` (the exporter reads what training wrote) nor names a task.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Optional, Sequence

from uniter_tf import runs
from uniter_tf.export.task_heads import TaskHeadExport

_LOG = logging.getLogger(__name__)

FINETUNE_CONFIG_FILE = runs.TASK_RUN_CONFIG_FILE
CONVERTED_CONFIG_FILE = "config.json"
CONVERTED_BACKBONE_FILE = "backbone.weights.h5"
#: The text limit ([CLS]/[SEP] included) when neither the caller nor the run gives one.
DEFAULT_MAX_TEXT_LENGTH = 60
DEFAULT_REGION_BUCKETS = (16, 36, 64, 100)


@dataclasses.dataclass
class ExportableModel:
    """What the exporter needs.

    Attributes:
        backbone: the built backbone with its weights.
        itm_head: the built ITM head.
        task: the task head hook, or ``None``.
        kind: ``finetune``, ``converted`` or ``pretrain``.
        source: the checkpoint or file the weights came from.
        max_text_length: the text limit ([CLS]/[SEP] included) the model was trained with, when the
            directory records it.
    """

    backbone: object
    itm_head: object
    task: Optional[TaskHeadExport]
    kind: str
    source: str
    max_text_length: Optional[int] = None


@dataclasses.dataclass
class ExportResult:
    """What :func:`export_model_dir` wrote.

    Attributes:
        path: the SavedModel directory.
        kind: the layout of the model directory (``finetune``, ``converted``, ``pretrain``).
        source: the checkpoint or file the weights came from.
        metadata: the export's ``assets.extra/uniter_export.json``.
    """

    path: str
    kind: str
    source: str
    metadata: dict


def load_exportable_model(model_dir: str, config=None, top_k: int = 5) -> ExportableModel:
    """Loads the model stored in ``model_dir`` (see the module docstring for the layouts).

    Args:
        model_dir: the directory (or, for a pretraining run, a checkpoint prefix).
        config: a preset name, JSON path or :class:`~uniter_tf.config.UniterConfig` of a pretraining
            run; overrides its ``model_config.json``; ignored for the other layouts.
        top_k: labels per example for a task head with labels.

    Raises:
        FileNotFoundError: when nothing loadable is there; the message lists what was looked for.
        ValueError: when a pretraining run has no ``model_config.json`` and no ``config`` is given.
    """
    if runs.is_task_run(model_dir):
        return _load_task_run(model_dir, top_k)
    if _is_file(os.path.join(model_dir, CONVERTED_CONFIG_FILE)) and \
            _is_file(os.path.join(model_dir, CONVERTED_BACKBONE_FILE)):
        return _load_converted(model_dir)
    return _load_pretraining_run(model_dir, config)


def _is_file(path: str) -> bool:
    """``os.path.isfile`` on any ``tf.io.gfile`` filesystem (run directories may be on ``gs://``)."""
    import tensorflow as tf

    return tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path)


def _load_task_run(model_dir: str, top_k: int) -> ExportableModel:
    run = runs.load_task_run(model_dir)
    hook = TaskHeadExport.from_task(run.task, run.head, top_k=top_k)
    max_text_length = None if run.max_text_length is None else run.max_text_length + 2  # [CLS], [SEP]
    return ExportableModel(run.backbone, run.itm_head, hook, "finetune", run.checkpoint,
                           max_text_length=max_text_length)


def _load_converted(model_dir: str) -> ExportableModel:
    from uniter_tf.checkpoints import official

    model = official.load_pretrained(model_dir, pretraining=True)
    if not _is_file(os.path.join(model_dir, official.PRETRAINING_WEIGHTS_FILE)):
        _LOG.warning("%s has no %s: the ITM head is freshly initialised, so itm_score is meaningless",
                     model_dir, official.PRETRAINING_WEIGHTS_FILE)
    return ExportableModel(model.backbone, model.itm_head, None, "converted", model_dir)


def _load_pretraining_run(model_dir: str, config) -> ExportableModel:
    import tensorflow as tf

    from uniter_tf.config import UniterConfig
    from uniter_tf.models.backbone import UniterBackbone
    from uniter_tf.models.pretraining_model import UniterPretrainingModel

    try:
        prefix = runs.resolve_checkpoint_path(model_dir)
    except FileNotFoundError:
        raise FileNotFoundError(
                f"{model_dir!r} holds no exportable model: expected {FINETUNE_CONFIG_FILE} (a fine-tuning run), "
                f"{CONVERTED_CONFIG_FILE} + {CONVERTED_BACKBONE_FILE} (a converted checkpoint) or a "
                f"checkpoints/ directory (a pretraining run)") from None
    model_config = UniterConfig.resolve(config) if config else \
        (runs.read_model_config(model_dir) if tf.io.gfile.isdir(model_dir) else None)
    if model_config is None:
        raise ValueError(f"{model_dir!r} is a pretraining run without {runs.MODEL_CONFIG_FILE}: name its model "
                         f"configuration with --config (a preset such as 'tiny' or the JSON file)")
    backbone = UniterBackbone(model_config)
    model = UniterPretrainingModel(backbone)
    runs.restore_pretraining_model(model, prefix)
    return ExportableModel(backbone, model.itm_head, None, "pretrain", prefix)


def default_text_buckets(max_text_length: int) -> tuple:
    """Token-row widths to pad to: 16 and 32 below the limit, then the limit itself."""
    return tuple(width for width in (16, 32) if width < max_text_length) + (max_text_length,)


def export_model_dir(model_dir: str, output: str, *, version: Optional[int] = None, flat: bool = False,
                     config=None, top_k: int = 5, max_text_length: Optional[int] = None,
                     text_buckets: Optional[Sequence[int]] = None,
                     region_buckets: Sequence[int] = DEFAULT_REGION_BUCKETS, warmup: bool = True,
                     jit_compile: bool = False, record_ops: bool = True, first_stage: Optional[bool] = None,
                     index: Optional[str] = None, index_features: Optional[Sequence[str]] = None) -> ExportResult:
    """Exports the model of a trained run (or converted) directory: the one export entry point.

    Args:
        model_dir: a task run, a pretraining run or a converted checkpoint (module docstring).
        output: the model's base path (the export goes to ``output/<version>``), or with ``flat`` the
            SavedModel directory itself (a TFX Trainer's ``serving_model_dir``; it must not exist or be
            empty).
        version: the version number (not with ``flat``); default one more than the newest.
        flat: write the SavedModel at ``output`` itself.
        config: the model configuration of a pretraining run without ``model_config.json``.
        top_k: labels per example for task heads with labels.
        max_text_length: the longest token row incl. ``[CLS]``/``[SEP]``; default the run's, else 60
            (capped at the model's position embeddings).
        text_buckets: token-row widths to pad to; default :func:`default_text_buckets`.
        region_buckets: region counts to pad to; the last is the most accepted.
        warmup: write TF Serving warm-up requests.
        jit_compile: XLA-compile the model part of the scoring signatures.
        record_ops: record the ops outside core TensorFlow in the metadata (``non_core_ops``).
        first_stage: add the retrieval first stage's ``embed_text`` / ``embed_image`` signatures
            (:mod:`uniter_tf.export.embedding_signatures`): ``None`` (default) when the task run has
            ``first_stage/``, ``True`` to require it, ``False`` never.
        index: an image index of that first stage (``uniter index``): it and its images' regions go into the
            version's ``assets.extra/retrieval/`` before the version is published, so a server loads the
            model and its index together (:func:`uniter_tf.retrieval.serving_assets.write_retrieval_assets`).
        index_features: the gallery's region records (default: those the index was built from).

    Returns:
        Where it went and what it holds.

    Raises:
        FileNotFoundError / ValueError: as :func:`load_exportable_model`, or a first stage / index asked
        for and missing; IndexVersionError: the index is not of the run's first stage; FileExistsError: the
        version (or the flat target) exists.
    """
    from uniter_tf.export.exporter import export_uniter, read_metadata, write_saved_model
    from uniter_tf.export.signatures import ExportOptions

    if flat and version is not None:
        raise ValueError("export_model_dir: a flat export has no version")
    before_publish = None
    if index is not None:
        from uniter_tf.retrieval.first_stage import read_first_stage_description
        from uniter_tf.retrieval.index import EmbeddingIndex
        from uniter_tf.retrieval.serving_assets import write_retrieval_assets

        if first_stage is False:
            raise ValueError("export_model_dir: an index needs the first stage's embed_text (first_stage=False given)")
        # Refused before any model is loaded: the index must come from the run's recorded first stage.
        EmbeddingIndex.load(index, expected_model_version=read_first_stage_description(model_dir)["model_version"])
    model = load_exportable_model(model_dir, config=config, top_k=top_k)
    stage = _first_stage_of(model_dir, model.kind, first_stage or index is not None, first_stage is not False)
    if index is not None:

        def before_publish(staged_dir: str) -> None:
            write_retrieval_assets(staged_dir, index, index_features, expected_model_version=stage.model_version())
    limit = max_text_length or model.max_text_length or DEFAULT_MAX_TEXT_LENGTH
    limit = min(limit, int(model.backbone.config.max_position_embeddings))
    options = ExportOptions(max_text_length=limit,
                            text_buckets=tuple(text_buckets) if text_buckets else default_text_buckets(limit),
                            region_buckets=tuple(region_buckets), top_k=top_k, warmup=warmup,
                            jit_compile=jit_compile)
    if flat:
        path = write_saved_model(output, model.backbone, model.itm_head, task=model.task, options=options,
                                 record_ops=record_ops, first_stage=stage, before_publish=before_publish)
    else:
        path = export_uniter(output, model.backbone, model.itm_head, task=model.task, options=options,
                             version=version, record_ops=record_ops, first_stage=stage,
                             before_publish=before_publish)
    _LOG.info("exported the %s model from %s to %s", model.kind, model.source, path)
    return ExportResult(path=path, kind=model.kind, source=model.source, metadata=read_metadata(path))


def _first_stage_of(model_dir: str, kind: str, required: bool, allowed: bool):
    """The retrieval first stage of a task run (``RUN/first_stage``), or ``None``.

    Raises:
        ValueError: ``required`` and the directory has none.
    """
    import tensorflow as tf

    from uniter_tf.retrieval import first_stage as first_stage_lib

    if not allowed:
        return None
    present = kind == "finetune" and tf.io.gfile.exists(
            os.path.join(first_stage_lib.first_stage_dir(model_dir), first_stage_lib.CONFIG_FILE))
    if not present:
        if required:
            raise ValueError(f"{model_dir!r} has no retrieval first stage ({first_stage_lib.FIRST_STAGE_SUBDIR}/"
                             f"{first_stage_lib.CONFIG_FILE}); train one with `uniter index --train-files ...`")
        return None
    return first_stage_lib.load_first_stage(model_dir)
