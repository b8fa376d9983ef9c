"""Training: optimizer and learning-rate schedule, strategy selection, the pretraining loop, checkpoints.

* :mod:`uniter_tf.training.trainer`: the one training loop of every :class:`uniter_tf.tasks.Task`
  (:mod:`~uniter_tf.training.trainer_config`: its ``TrainerConfig`` / ``RuntimeConfig`` sections).
* :mod:`uniter_tf.training.pretrainer`: ``Pretrainer``, the Trainer of a ``PretrainConfig`` (``uniter pretrain``).
* :mod:`uniter_tf.training.optimizer`, :mod:`~uniter_tf.training.schedule`: AdamW and the LR schedule.
* :mod:`uniter_tf.training.strategy`: ``tf.distribute`` strategy selection.
* :mod:`uniter_tf.training.checkpointing`: checkpoints, ``restore_backbone`` and initialisation.
* :mod:`uniter_tf.training.task_sampler`: deterministic task mixing.
* :mod:`uniter_tf.training.finetune`: ``FinetuneRun``, the Trainer of a ``FinetuneConfig`` (downstream tasks).
* :mod:`uniter_tf.training.experiment`: ``ExperimentConfig`` (task / trainer / runtime) and ``run_experiment``,
  what ``uniter train`` and both TFX ``run_fn``\ s run.

Record writers live elsewhere: synthetic test data in :mod:`uniter_tf.testing`, the sample-data converter
in :mod:`uniter_tf.data.sample_records`.

Submodules import TensorFlow themselves; importing this package is cheap.
"""
