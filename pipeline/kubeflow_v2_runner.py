"""Compiles the uniter-tf pipeline for Kubeflow Pipelines v2 / Vertex AI Pipelines (pipeline JSON).

    docker build -t IMAGE . && docker push IMAGE
    UNITER_PIPELINE_IMAGE=IMAGE UNITER_PIPELINE_ROOT=gs://bucket/root UNITER_SAMPLE_DATA_DIR=gs://bucket/data \\
        python pipeline/kubeflow_v2_runner.py
    tfx pipeline create --engine=vertex --pipeline_path=pipeline/kubeflow_v2_runner.py --build_image

Every component runs in the image built from the top-level Dockerfile. Beam arguments
(``UNITER_BEAM_PIPELINE_ARGS``, a JSON list) pass through to Dataflow, Flink or Spark. The orchestrator
brings its own ML Metadata, so no connection config is set. The data must already be at
``UNITER_SAMPLE_DATA_DIR`` (``uniter sample-data --output ...`` writes the sample set).
"""

import os
import sys

_REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.realpath(globals().get("__file__") or sys.argv[0])))
if sys.path[:1] != [_REPOSITORY_ROOT]:
    sys.path.insert(0, _REPOSITORY_ROOT)

from absl import logging  # noqa: E402
from tfx import v1 as tfx  # noqa: E402

from pipeline import configs  # noqa: E402
from pipeline import pipeline as pipeline_lib  # noqa: E402


def build_kubeflow_pipeline() -> tfx.dsl.Pipeline:
    """The pipeline with the settings of a cluster run (no local MLMD; paths from the environment)."""
    return pipeline_lib.create_pipeline(
            pipeline_name=configs.PIPELINE_NAME,
            pipeline_root=configs.PIPELINE_ROOT,
            data_root=configs.SAMPLE_DATA_DIR,
            serving_model_dir=configs.SERVING_MODEL_DIR,
            beam_pipeline_args=configs.BEAM_PIPELINE_ARGS,
            model_preset=configs.MODEL_PRESET,
            pretrain_steps=configs.PRETRAIN_TRAIN_STEPS,
            finetune_steps=configs.FINETUNE_TRAIN_STEPS,
            eval_steps=configs.EVAL_STEPS,
            batch_size=configs.BATCH_SIZE,
            eval_lower_bounds=configs.EVAL_LOWER_BOUNDS,
            eval_max_regression=configs.EVAL_MAX_REGRESSION,
            # The image installs the project, so the trainers import their run_fn from it.
            pretrain_run_fn="pipeline.pretrain_module.run_fn",
            finetune_run_fn="pipeline.finetune_module.run_fn",
    )


def compile_pipeline(output_filename: str = configs.KUBEFLOW_OUTPUT_FILE) -> str:
    """Writes the pipeline JSON with KubeflowV2DagRunner and returns its path."""
    output_path = os.path.abspath(output_filename)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
            config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=configs.PIPELINE_IMAGE),
            output_dir=os.path.dirname(output_path), output_filename=os.path.basename(output_path))
    runner.run(build_kubeflow_pipeline())
    return output_path


if __name__ == "__main__":
    logging.set_verbosity(logging.INFO)
    print(compile_pipeline())
