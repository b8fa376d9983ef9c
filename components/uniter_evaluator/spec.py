"""The ComponentSpec of :class:`components.uniter_evaluator.component.UniterEvaluator`."""

from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

EXAMPLES_KEY = "examples"
TASK_EXAMPLES_KEY = "task_examples"
MODEL_KEY = "model"
BASELINE_MODEL_KEY = "baseline_model"
BLESSING_KEY = "blessing"
EVALUATION_KEY = "evaluation"
EVAL_SPLIT_KEY = "eval_split"
LOWER_BOUNDS_KEY = "lower_bounds"
MAX_REGRESSION_KEY = "max_regression"
BATCH_SIZE_KEY = "batch_size"
MAX_GALLERY_TEXTS_KEY = "max_gallery_texts"
TASK_KEY = "task"


class UniterEvaluatorSpec(ComponentSpec):
    """Inputs: eval ``Examples`` (captions: ITM, retrieval), optional task ``Examples`` (VQA questions,
    when they come from another ExampleGen), the candidate ``Model`` and (optional) the last blessed ``Model``.

    Outputs: a standard ``ModelBlessing`` (custom property ``blessed`` 1/0, read by TFX's Pusher) and a
    ``ModelEvaluation`` holding ``metrics.json``.

    Parameters: the split to evaluate, value thresholds (``lower_bounds``, JSON ``{metric: minimum}``),
    change thresholds against the baseline (``max_regression``, JSON ``{metric: largest allowed drop}``),
    the scoring batch size and a cap on the retrieval gallery size. ``task`` (optional): a fine-tuning task
    whose own metric is computed on ``task_examples`` (``ve``, ``nlvr2``, ``refcoco``:
    :data:`uniter_tf.evaluation.TASK_METRICS`); unset for VQA, whose score the general routine computes.
    """

    PARAMETERS = {
            EVAL_SPLIT_KEY: ExecutionParameter(type=str),
            LOWER_BOUNDS_KEY: ExecutionParameter(type=str),
            MAX_REGRESSION_KEY: ExecutionParameter(type=str),
            BATCH_SIZE_KEY: ExecutionParameter(type=int),
            MAX_GALLERY_TEXTS_KEY: ExecutionParameter(type=int),
            TASK_KEY: ExecutionParameter(type=str, optional=True),
    }
    INPUTS = {
            EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples),
            TASK_EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples, optional=True),
            MODEL_KEY: ChannelParameter(type=standard_artifacts.Model),
            BASELINE_MODEL_KEY: ChannelParameter(type=standard_artifacts.Model, optional=True),
    }
    OUTPUTS = {
            BLESSING_KEY: ChannelParameter(type=standard_artifacts.ModelBlessing),
            EVALUATION_KEY: ChannelParameter(type=standard_artifacts.ModelEvaluation),
    }
