"""Tasks: what the :class:`uniter_tf.training.trainer.Trainer` learns (Model Garden's ``Task`` shape).

* :class:`Task` (:mod:`uniter_tf.tasks.base_task`): the interface, the registry (:func:`register_task`,
  :func:`get_task`, :data:`TASK_REGISTRY`).
* ``"pretraining"``: :class:`uniter_tf.tasks.pretraining.PretrainingTask`, the four-task mix.
* Downstream tasks (``"vqa"``, ...): :class:`uniter_tf.models.task.DownstreamTask` subclasses, which are
  Tasks.
"""

from uniter_tf.tasks.base_task import TASK_REGISTRY, Task, get_task, register_task

__all__ = ["Task", "get_task", "register_task", "TASK_REGISTRY"]
