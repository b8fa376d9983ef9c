"""A randomly initialised ``tiny``-preset UNITER with a small VQA head, exported once per process.

For tests and benchmarks of the export and serving paths (numbers are meaningless, shapes and code
paths are real). :func:`tiny_export` caches its result, so several test modules of one pytest run
share one export.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import List, Optional

import numpy as np

from uniter_tf.export.signatures import ExportOptions

TINY_ANSWERS = ["yes", "no", "2", "red", "a dog", "cat"]
TINY_OPTIONS = ExportOptions(max_text_length=20, text_buckets=(8, 20), region_buckets=(4, 8, 12, 36), top_k=3)


@dataclasses.dataclass
class TinyModel:
    """The Keras pieces of the tiny model and, once exported, where it went.

    Attributes:
        config: the :class:`~uniter_tf.config.UniterConfig` (``tiny`` preset).
        backbone: the backbone.
        itm_head: the ITM head.
        vqa_head: the VQA head (``len(answers)`` classes).
        answers: the answer strings.
        base_path: the export's base path (``None`` before exporting).
        version_path: the exported version directory.
    """

    config: object
    backbone: object
    itm_head: object
    vqa_head: object
    answers: List[str]
    base_path: Optional[str] = None
    version_path: Optional[str] = None

    def task_hook(self):
        """The :class:`~uniter_tf.export.task_heads.TaskHeadExport` of this model's VQA head, as the task
        declares it (:meth:`~uniter_tf.models.vqa.VqaTask.export_outputs`)."""
        from uniter_tf.export.task_heads import TaskHeadExport
        from uniter_tf.models.vqa import VqaTask

        task = VqaTask(num_answers=len(self.answers), answer_vocabulary=self.answers)
        return TaskHeadExport.from_task(task, self.vqa_head)


def build_tiny_model(seed: int = 7, answers: Optional[List[str]] = None) -> TinyModel:
    """Builds the model with seeded random weights (heads get a larger scale so scores differ)."""
    import keras

    from uniter_tf.config import UniterConfig
    from uniter_tf.models.backbone import UniterBackbone
    from uniter_tf.models.pretraining_heads import ItmHead
    from uniter_tf.models.vqa import VqaHead

    answers = list(answers or TINY_ANSWERS)
    keras.utils.set_random_seed(seed)
    config = UniterConfig.from_preset("tiny")
    backbone = UniterBackbone(config)
    itm_head = ItmHead(config.hidden_size, name="itm_head")
    itm_head.build()
    vqa_head = VqaHead(config.hidden_size, num_answers=len(answers), name="vqa_output")
    vqa_head.build()
    rng = np.random.default_rng(seed)
    for variable in itm_head.weights + vqa_head.weights:
        variable.assign(rng.normal(0, 0.5, variable.shape).astype(np.float32))
    return TinyModel(config, backbone, itm_head, vqa_head, answers)


@functools.lru_cache(maxsize=None)
def tiny_export(directory: str, version: int = 1) -> TinyModel:
    """Builds and exports the tiny model to ``directory/uniter/<version>`` once per process."""
    from uniter_tf.export.exporter import export_uniter

    model = build_tiny_model()
    model.base_path = os.path.join(directory, "uniter")
    model.version_path = export_uniter(model.base_path, model.backbone, model.itm_head, task=model.task_hook(),
                                       options=TINY_OPTIONS, version=version)
    return model
