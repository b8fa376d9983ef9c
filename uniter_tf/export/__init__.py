"""SavedModel export of UNITER models with named serving signatures (see docs/serving.md).

Import the pieces from their modules: :mod:`uniter_tf.export.exporter` (:func:`export_uniter`),
:mod:`uniter_tf.export.signatures` (:class:`ExportOptions`, the signature names),
:mod:`uniter_tf.export.task_heads` (:class:`TaskHeadExport`, the task-head hook) and
:mod:`uniter_tf.export.model_dir` (rebuilding a model from a training or conversion directory).
"""
