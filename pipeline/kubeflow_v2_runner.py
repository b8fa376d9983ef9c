"""Compiles the uniter-tf pipeline for Kubeflow Pipelines v2 / Vertex AI Pipelines (pipeline JSON).

    docker build -t IMAGE . && docker push IMAGE
    python pipeline/kubeflow_v2_runner.py --image IMAGE --pipeline-root gs://bucket/root \\
        [--data-root gs://bucket/data] [--output uniter-tf_pipeline.json]
    # or the same through the environment (what `tfx pipeline create --engine=vertex` passes on):
    UNITER_PIPELINE_IMAGE=IMAGE UNITER_PIPELINE_ROOT=gs://bucket/root python pipeline/kubeflow_v2_runner.py

The image and the pipeline root are required (flag or environment variable); there is no placeholder
default. The data roots, the curated schema files, the serving directory, the trainers' steps and the gate's
thresholds are runtime parameters of the compiled pipeline (``pipeline.definition.RUNTIME_PARAMETERS``;
defaults: the data under ``<pipeline root>/data``, its schemas under ``<data root>/schema/`` (copy
``pipeline/captions_schema.pbtxt`` and ``pipeline/vqa_schema.pbtxt`` there), the model pushed to ``<pipeline root>/serving_model/uniter``, the step counts
and thresholds of pipeline/configs.py), so one JSON serves many runs and no path of the compiling machine
is baked in.

Every component runs in the image built from the top-level Dockerfile. Beam arguments
(``UNITER_KUBEFLOW_BEAM_PIPELINE_ARGS``, a JSON list, e.g. ``["--runner=DataflowRunner", ...]``) go to the
Beam components only; the local DirectRunner flags of pipeline/configs.py are not used here. The Trainers
request ``UNITER_TRAINER_CPU`` vCPUs and ``UNITER_TRAINER_MEMORY_GB`` GB, and ``UNITER_TRAINER_ACCELERATOR``
(a Vertex accelerator type, e.g. ``NVIDIA_TESLA_T4``) x ``UNITER_TRAINER_ACCELERATOR_COUNT`` when set. The
orchestrator brings its own ML Metadata, so no connection config is set.
"""

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional

from absl import logging
from tfx import v1 as tfx
from tfx.orchestration import data_types

from pipeline import configs
from pipeline import definition as pipeline_lib

IMAGE_ENV = "UNITER_PIPELINE_IMAGE"
PIPELINE_ROOT_ENV = "UNITER_PIPELINE_ROOT"
DATA_ROOT_ENV = "UNITER_SAMPLE_DATA_DIR"
SERVING_MODEL_DIR_ENV = "UNITER_SERVING_MODEL_DIR"
BEAM_ARGS_ENV = "UNITER_KUBEFLOW_BEAM_PIPELINE_ARGS"
#: Default Trainer container resources (the 2-layer demo model trains on CPU in minutes; raise for real runs).
DEFAULT_TRAINER_CPU = 8.0
DEFAULT_TRAINER_MEMORY_GB = 32.0


class CompileError(ValueError):
    """A setting the compile needs is missing or malformed (the message names the flag / variable)."""


def _required(value: Optional[str], flag: str, env: str, what: str) -> str:
    value = value or os.environ.get(env, "")
    if not value:
        raise CompileError(f"the Kubeflow compile needs {what}: pass {flag} or set {env}")
    return value


def _float_env(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        return float(raw) if raw else default
    except ValueError:
        raise CompileError(f"environment variable {name} must be a number, got {raw!r}") from None


def trainer_resources():
    """The Trainers' ``ResourceSpec`` (CPU, memory, optional accelerator) from the environment.

    Raises:
        CompileError: a malformed number, or an accelerator count without a type.
    """
    from kfp.pipeline_spec import pipeline_spec_pb2  # pylint: disable=import-outside-toplevel

    resources = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec(
            cpu_limit=_float_env("UNITER_TRAINER_CPU", DEFAULT_TRAINER_CPU),
            memory_limit=_float_env("UNITER_TRAINER_MEMORY_GB", DEFAULT_TRAINER_MEMORY_GB))
    accelerator = os.environ.get("UNITER_TRAINER_ACCELERATOR", "")
    count = int(_float_env("UNITER_TRAINER_ACCELERATOR_COUNT", 1 if accelerator else 0))
    if count and not accelerator:
        raise CompileError("UNITER_TRAINER_ACCELERATOR_COUNT is set without UNITER_TRAINER_ACCELERATOR")
    if accelerator:
        resources.accelerator.type = accelerator
        resources.accelerator.count = count
    return resources


def beam_pipeline_args() -> List[str]:
    """Beam options of the cluster run (``UNITER_KUBEFLOW_BEAM_PIPELINE_ARGS``, a JSON list; default none)."""
    raw = os.environ.get(BEAM_ARGS_ENV, "")
    if not raw:
        return []
    try:
        args = json.loads(raw)
    except json.JSONDecodeError:
        args = None
    if not isinstance(args, list) or not all(isinstance(arg, str) for arg in args):
        raise CompileError(f"{BEAM_ARGS_ENV} must be a JSON list of strings, got {raw!r}")
    return args


def build_kubeflow_pipeline(pipeline_root: str, data_root: Optional[str] = None,
                            serving_model_dir: Optional[str] = None) -> tfx.dsl.Pipeline:
    """The pipeline with the settings of a cluster run: runtime parameters, Trainer resources, no local MLMD.

    Args:
        pipeline_root: artifact root (``gs://...``).
        data_root: default of the ``data_root`` parameter (``$UNITER_SAMPLE_DATA_DIR``, else
            ``<pipeline_root>/data``).
        serving_model_dir: default push directory (``$UNITER_SERVING_MODEL_DIR``, else
            ``<pipeline_root>/serving_model/uniter``).
    """
    root = pipeline_root.rstrip("/")
    data_root = data_root or os.environ.get(DATA_ROOT_ENV) or f"{root}/data"
    serving_model_dir = serving_model_dir or os.environ.get(SERVING_MODEL_DIR_ENV) or f"{root}/serving_model/uniter"
    remote_data = data_root.rstrip("/")
    return pipeline_lib.create_pipeline(
            pipeline_name=configs.PIPELINE_NAME,
            pipeline_root=pipeline_root,
            # The remote layout is fixed relative to data_root; not os.path.join (a gs:// URL). The curated
            # schemas travel with the data (upload pipeline/*_schema.pbtxt to <data root>/schema/); no path
            # of the compiling machine goes into the spec.
            data=configs.data_config_from_env(
                    data_root, images_root=f"{remote_data}/images", boxes_json=f"{remote_data}/boxes.json",
                    caption_schema_file=f"{remote_data}/schema/{os.path.basename(configs.CAPTION_SCHEMA_FILE)}",
                    vqa_schema_file=f"{remote_data}/schema/{os.path.basename(configs.VQA_SCHEMA_FILE)}",
                    # The fine-tuning task's schema when it is not VQA (UNITER_FINETUNE_TASK).
                    task_schema_file=f"{remote_data}/schema/"
                                     f"{os.path.basename(configs.finetune_task_data(configs.FINETUNE_TASK).schema_file)}"),
            training=configs.training_config_from_env(resources=trainer_resources()),
            serving_model_dir=serving_model_dir,
            gate=configs.gate_config_from_env(),
            # No custom drivers on Kubeflow V2, and its importer takes the URI as a runtime parameter.
            runner=configs.RunnerConfig(runtime_parameters=True, fingerprint_images=False),
            beam_pipeline_args=beam_pipeline_args(),
    )


def compile_pipeline(output_filename: Optional[str] = None, image: Optional[str] = None,
                     pipeline_root: Optional[str] = None, data_root: Optional[str] = None) -> str:
    """Writes the pipeline JSON with KubeflowV2DagRunner and returns its path.

    Args:
        output_filename: the JSON file (default ``$UNITER_KUBEFLOW_OUTPUT_FILE`` or
            ``runs/<pipeline>_pipeline.json``).
        image: the container image of every step (else ``$UNITER_PIPELINE_IMAGE``); required.
        pipeline_root: the artifact root (else ``$UNITER_PIPELINE_ROOT``); required.
        data_root: default of the ``data_root`` runtime parameter.

    Raises:
        CompileError: the image or pipeline root is missing, or a setting is malformed.
    """
    image = _required(image, "--image", IMAGE_ENV, "the container image of the steps")
    pipeline_root = _required(pipeline_root, "--pipeline-root", PIPELINE_ROOT_ENV, "the pipeline root (gs://...)")
    output_path = os.path.abspath(output_filename or configs.KUBEFLOW_OUTPUT_FILE)
    pipeline = build_kubeflow_pipeline(pipeline_root, data_root=data_root)
    defaults = runtime_parameter_defaults(pipeline)
    # Pipeline spec 2.1: typed parameters with defaults (Vertex templates); 2.0 has no parameter defaults.
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
            config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
                    default_image=image, use_pipeline_spec_2_1=True),
            output_dir=os.path.dirname(output_path), output_filename=os.path.basename(output_path))
    compiled = runner.run(pipeline, parameter_values=defaults, write_out=False)
    # TFX records a RuntimeParameter's default only in the run config; the spec gets it too, so a run
    # submitted with other run settings still has every parameter's default.
    parameters = compiled["pipelineSpec"]["root"]["inputDefinitions"]["parameters"]
    for name, value in defaults.items():
        parameters[name]["defaultValue"] = value
        parameters[name]["description"] = {**pipeline_lib.RUNTIME_PARAMETERS,
                                            **pipeline_lib.TASK_SCHEMA_PARAMETERS}[name]
    os.makedirs(os.path.dirname(output_path), exist_ok=True)
    with open(output_path, "w", encoding="utf-8") as handle:
        json.dump(compiled, handle, indent=2, sort_keys=True)
    return output_path


def runtime_parameter_defaults(pipeline: tfx.dsl.Pipeline) -> Dict[str, Any]:
    """Name → default of every ``RuntimeParameter`` among the components' execution properties."""
    defaults: Dict[str, Any] = {}
    for component in pipeline.components:
        for value in component.exec_properties.values():
            if isinstance(value, data_types.RuntimeParameter):
                defaults[value.name] = value.default
    return defaults


def main(argv: Optional[List[str]] = None) -> int:
    """Command line: compile, print the JSON path; a missing setting is one line on stderr, exit 2."""
    parser = argparse.ArgumentParser(description="Compile the uniter-tf pipeline for Kubeflow V2 / Vertex.")
    parser.add_argument("--image", help=f"container image of every step (or ${IMAGE_ENV})")
    parser.add_argument("--pipeline-root", help=f"artifact root, gs://... (or ${PIPELINE_ROOT_ENV})")
    parser.add_argument("--data-root", help=f"default of the data_root parameter (or ${DATA_ROOT_ENV})")
    parser.add_argument("--output", help="the pipeline JSON to write")
    args = parser.parse_args(argv)
    try:
        print(compile_pipeline(args.output, image=args.image, pipeline_root=args.pipeline_root,
                               data_root=args.data_root))
    except CompileError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    logging.set_verbosity(logging.INFO)
    sys.exit(main())
