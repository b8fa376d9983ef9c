"""Image-text retrieval (issue #13): training inputs with negatives, full-gallery evaluation.

* :mod:`uniter_tf.retrieval.inputs`: the ``tf.data`` groups of the retrieval task (a positive pair and its
  sampled negatives, spec §5.4) for standard and hard-negative fine-tuning;
* :mod:`uniter_tf.retrieval.gallery`: every caption of a split scored against every image of it, the
  ``[n_text, n_image]`` score matrix and R@K counted correctly (spec §7.20);
* retrieve-then-rerank: :mod:`uniter_tf.retrieval.first_stage` (the InfoNCE dual encoder),
  :mod:`uniter_tf.retrieval.index` (exact / faiss IVF embedding index with the model version) and
  :mod:`uniter_tf.retrieval.rerank` (the cross-encoder on the first stage's top K); ``uniter index`` and
  ``uniter retrieve``.

The task itself is :class:`uniter_tf.models.retrieval_task.RetrievalTask` (``uniter train`` task
``retrieval``).
"""
