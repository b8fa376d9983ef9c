"""Training: optimizer and learning-rate schedule, strategy selection, the pretraining loop, checkpoints.

* :mod:`uniter_tf.training.pretrainer`: the multi-task pretraining loop (``uniter pretrain``).
* :mod:`uniter_tf.training.optimizer`, :mod:`~uniter_tf.training.schedule`: AdamW and the LR schedule.
* :mod:`uniter_tf.training.strategy`: ``tf.distribute`` strategy selection.
* :mod:`uniter_tf.training.checkpointing`: checkpoints, ``restore_backbone`` and initialisation.
* :mod:`uniter_tf.training.task_sampler`: deterministic task mixing.
* :mod:`uniter_tf.training.finetune`: fine-tuning (the downstream tasks).

Submodules import TensorFlow themselves; importing this package is cheap.
"""
