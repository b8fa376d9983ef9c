"""The evaluation gate's routine: it lives in the library :mod:`uniter_tf.evaluation` (no TFX there).

Kept so that ``components.uniter_evaluator.evaluation`` imports (the demo, bench/finetune_bench.py) keep
working; new code imports :mod:`uniter_tf.evaluation`.
"""

from uniter_tf.evaluation import (ITM_LOGITS, QUESTION_TYPE_PREFIXES, VQA_LOGITS, EvalRecords, Scorer, evaluate,
                                  image_id, question_prior_answers, question_prior_score, question_type,
                                  soft_score, with_image)

__all__ = ["ITM_LOGITS", "QUESTION_TYPE_PREFIXES", "VQA_LOGITS", "EvalRecords", "Scorer", "evaluate", "image_id",
           "question_prior_answers", "question_prior_score", "question_type", "soft_score", "with_image"]
