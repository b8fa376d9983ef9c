"""The evaluation gate's metrics and blessing rule: they live in :mod:`uniter_tf.evaluation.metrics`.

Kept so that ``components.uniter_evaluator.metrics`` imports keep working.
"""

from uniter_tf.evaluation.metrics import RECALL_KS, bless, itm_accuracy, retrieval_recalls, vqa_soft_score

__all__ = ["RECALL_KS", "bless", "itm_accuracy", "retrieval_recalls", "vqa_soft_score"]
