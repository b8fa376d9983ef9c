"""Rebuilds an exportable model (backbone, ITM head, optional task head) from a directory on disk.

Three layouts are recognised:

* a fine-tuning run (``uniter finetune``): ``finetune_config.json`` and ``checkpoints/``; the task
  head joins the export through :class:`~uniter_tf.export.task_heads.TaskHeadExport`;
* a converted official checkpoint (``uniter convert``): ``config.json`` and ``backbone.weights.h5``
  (plus ``pretraining.weights.h5`` with the ITM head);
* a pretraining run (``uniter pretrain``): ``checkpoints/`` (or a checkpoint prefix) holding the
  pretraining model; its :class:`~uniter_tf.config.UniterConfig` must be named (``--config``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Optional

from uniter_tf.export.task_heads import TaskHeadExport

_LOG = logging.getLogger(__name__)

FINETUNE_CONFIG_FILE = "finetune_config.json"
CONVERTED_CONFIG_FILE = "config.json"
CONVERTED_BACKBONE_FILE = "backbone.weights.h5"

# Heads trained with binary cross-entropy per class (spec §5.1, §5.2) report sigmoid scores.
_SIGMOID_TASKS = ("vqa", "ve", "snli_ve")


@dataclasses.dataclass
class ExportableModel:
    """What the exporter needs.

    Attributes:
        backbone: the built backbone with its weights.
        itm_head: the built ITM head.
        task: the task head hook, or ``None``.
        kind: ``finetune``, ``converted`` or ``pretrain``.
        source: the checkpoint or file the weights came from.
        max_text_length: the text limit the model was trained with, when the directory records it.
    """

    backbone: object
    itm_head: object
    task: Optional[TaskHeadExport]
    kind: str
    source: str
    max_text_length: Optional[int] = None


def load_exportable_model(model_dir: str, config: Optional[str] = None, top_k: int = 5) -> ExportableModel:
    """Loads the model stored in ``model_dir`` (see the module docstring for the layouts).

    Args:
        model_dir: the directory (or, for a pretraining run, a checkpoint prefix).
        config: a preset name or JSON path of the model configuration; required for pretraining runs,
            ignored otherwise.
        top_k: answers per example for a task head with labels.

    Raises:
        FileNotFoundError: when nothing loadable is there; the message lists what was looked for.
        ValueError: when a pretraining run is given without ``config``.
    """
    if os.path.isfile(os.path.join(model_dir, FINETUNE_CONFIG_FILE)):
        return _load_finetune_run(model_dir, top_k)
    if os.path.isfile(os.path.join(model_dir, CONVERTED_CONFIG_FILE)) and \
            os.path.isfile(os.path.join(model_dir, CONVERTED_BACKBONE_FILE)):
        return _load_converted(model_dir)
    return _load_pretraining_run(model_dir, config)


def _load_finetune_run(model_dir: str, top_k: int) -> ExportableModel:
    from uniter_tf.config import UniterConfig
    from uniter_tf.models.backbone import UniterBackbone
    from uniter_tf.models.pretraining_heads import ItmHead
    from uniter_tf.training import checkpointing
    from uniter_tf.training.finetune import FinetuneConfig, build_task, finetune_checkpoint

    path = os.path.join(model_dir, FINETUNE_CONFIG_FILE)
    with open(path, encoding="utf-8") as handle:
        stored = json.load(handle)
    if not isinstance(stored, dict) or "finetune" not in stored or "model" not in stored:
        raise ValueError(f"{path} must hold {{\"finetune\": ..., \"model\": ...}} as `uniter finetune` writes it")
    finetune_config = FinetuneConfig.from_dict(stored["finetune"])
    model_config = UniterConfig.from_dict(stored["model"], allow_unknown=True)
    task = build_task(finetune_config)
    backbone = UniterBackbone(model_config)
    task_model = task.build_model(backbone, model_config.hidden_size)
    itm_head = ItmHead(model_config.hidden_size, model_config.initializer_range, name="itm_head")
    itm_head.build()
    task_model.head.build()
    _build_backbone(backbone)
    prefix = checkpointing.resolve_checkpoint_path(model_dir)
    status = finetune_checkpoint(backbone, task_model.head, itm_head).restore(prefix)
    status.expect_partial()
    status.assert_existing_objects_matched()
    labels = getattr(task, "answer_vocabulary", None)
    hook = TaskHeadExport(name=task.name, head=task_model.head, labels=labels, top_k=top_k,
                          activation="sigmoid" if task.name in _SIGMOID_TASKS else "softmax")
    return ExportableModel(backbone, itm_head, hook, "finetune", prefix,
                           max_text_length=finetune_config.max_text_length + 2)


def _load_converted(model_dir: str) -> ExportableModel:
    from uniter_tf.checkpoints import official

    model = official.load_pretrained(model_dir, pretraining=True)
    _build_backbone(model.backbone)
    if not os.path.isfile(os.path.join(model_dir, official.PRETRAINING_WEIGHTS_FILE)):
        _LOG.warning("%s has no %s: the ITM head is freshly initialised, so itm_score is meaningless",
                     model_dir, official.PRETRAINING_WEIGHTS_FILE)
    return ExportableModel(model.backbone, model.itm_head, None, "converted", model_dir)


def _load_pretraining_run(model_dir: str, config: Optional[str]) -> ExportableModel:
    from uniter_tf.config import UniterConfig
    from uniter_tf.models.backbone import UniterBackbone
    from uniter_tf.models.pretraining_model import UniterPretrainingModel
    from uniter_tf.training import checkpointing

    try:
        prefix = checkpointing.resolve_checkpoint_path(model_dir)
    except FileNotFoundError:
        raise FileNotFoundError(
                f"{model_dir!r} holds no exportable model: expected {FINETUNE_CONFIG_FILE} (a fine-tuning run), "
                f"{CONVERTED_CONFIG_FILE} + {CONVERTED_BACKBONE_FILE} (a converted checkpoint) or a "
                f"checkpoints/ directory (a pretraining run)") from None
    if not config:
        raise ValueError(f"{model_dir!r} is a pretraining run: name its model configuration with --config "
                         f"(a preset such as 'tiny' or the JSON file)")
    backbone = UniterBackbone(UniterConfig.resolve(config))
    model = UniterPretrainingModel(backbone)
    _build_backbone(backbone)
    checkpointing.restore_pretraining_model(model, prefix)
    return ExportableModel(backbone, model.itm_head, None, "pretrain", prefix)


def _build_backbone(backbone) -> None:
    """Creates the backbone's variables (a restore needs them) with a one-example call."""
    import numpy as np

    if backbone.built and backbone.weights:
        return
    dim = backbone.config.region_feature_dim
    backbone({"token_ids": np.array([[101, 102]], np.int32), "text_mask": np.ones((1, 2), np.int32),
              "region_features": np.zeros((1, 1, dim), np.float32),
              "region_positions": np.zeros((1, 1, 7), np.float32), "region_mask": np.ones((1, 1), np.int32)})
