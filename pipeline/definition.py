"""The uniter-tf TFX pipeline: images → region features → examples → pretrain → fine-tune → gate → push.

::

    ImageFolder(images) ─► RegionFeatureExtractor ─┬─► UniterExampleGen (captions) ─► StatisticsGen ──┐
                                                   │                ImportSchemaGen (curated) ─► ExampleValidator ─┐
                                                   └─► UniterExampleGen (VQA) ─► VqaStatisticsGen ───┐              │
                                                                    ImportSchemaGen (curated) ─► VqaExampleValidator ─► DataGate
    DataGate (stops the run on any anomaly; passes the schemas on) ─► Trainer (pretrain, captions)
                                                                  └► Trainer (fine-tune, VQA, base_model = pretrain)
    Resolver (LatestBlessedModelStrategy, reads MLMD) ─► baseline ─► UniterEvaluator ─► Pusher

The caption records train pretraining and feed the gate's ITM / retrieval metrics, the VQA records train
fine-tuning and the gate's VQA score. ``TrainingConfig.finetune_task`` (``UNITER_FINETUNE_TASK``) selects
another fine-tuning task instead of VQA (``ve``, ``nlvr2``, ``refcoco``; :data:`pipeline.configs.FINETUNE_TASKS`):
its ExampleGen reads the task's annotation format and files (nodes ``VeExampleGen`` ... , see
:func:`task_node_ids`), its examples are checked against the task's curated schema, the fine-tuning Trainer
runs that task, and the evaluator adds the task's metric (``ve_accuracy``, ``nlvr2_accuracy`` /
``nlvr2_consistency``, ``refcoco_accuracy``) for the gate's thresholds. ``retrieval`` trains on the caption
examples (no ExampleGen of its own), gates on the full-gallery ``r_mean`` of its rank score, and its Trainer
also trains the first stage and puts the eval gallery's image index into the exported model, so the Pusher
pushes model and index as one version. The data components run on Beam (``beam_pipeline_args`` select
DirectRunner, Dataflow, Flink or Spark); the same factory serves the local runner, the TFX CLI and the
Kubeflow V2 / Vertex compilation.

Caching: the raw inputs are part of the cache key. ``ImageFolder`` (node ``ImageImporter``) fingerprints
the image folder's listing (names, sizes, mtimes) and the ground-truth boxes file's content, the
ExampleGens fingerprint their annotation files' content (components/input_fingerprint.py); a changed input
re-runs its node and everything downstream.

The data contract: each example set is validated against its curated schema (``ImportSchemaGen`` of
:attr:`DataConfig.caption_schema_file` / ``vqa_schema_file``, never a schema inferred from the data it
checks); ``DataGate`` fails the run on any anomaly, before any Trainer, so nothing is trained, evaluated or
pushed; the Trainers get the schema from the gate and check their first records against it
(:mod:`pipeline.data_contract`). The Trainers import their ``run_fn`` from the installed package
(:data:`PRETRAIN_RUN_FN`), so no user module is packaged.

For the Kubeflow compile, ``RunnerConfig(runtime_parameters=True)`` turns the data roots, the schema files,
the serving directory, the trainers' step counts and the gate's thresholds into ``RuntimeParameter`` s (:data:`RUNTIME_PARAMETERS`)
whose defaults are the given values.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

from tfx import v1 as tfx
from tfx.dsl.components.base import base_beam_component

from components.anomalies_gate.component import DataGate
from components.artifacts import Images
from components.image_folder import ImageFolder
from components.region_feature_extractor.component import RegionFeatureExtractor
from components.uniter_evaluator.component import UniterEvaluator
from components.uniter_example_gen.component import UniterExampleGen
from pipeline.configs import DataConfig, GateConfig, RunnerConfig, TrainingConfig, finetune_task_data

#: The Trainers' entry points, imported from the installed package (``pip install -e .`` here, the image's
#: site-packages on Kubeflow).
PRETRAIN_RUN_FN = "pipeline.pretrain_module.run_fn"
FINETUNE_RUN_FN = "pipeline.finetune_module.run_fn"

#: Node ids (stable: MLMD contexts and caching key on them).
IMAGE_IMPORTER = "ImageImporter"
FEATURE_EXTRACTOR = "RegionFeatureExtractor"
CAPTION_EXAMPLE_GEN = "CaptionExampleGen"
VQA_EXAMPLE_GEN = "VqaExampleGen"
STATISTICS_GEN = "StatisticsGen"
SCHEMA_GEN = "SchemaGen"
EXAMPLE_VALIDATOR = "ExampleValidator"
VQA_STATISTICS_GEN = "VqaStatisticsGen"
VQA_SCHEMA_GEN = "VqaSchemaGen"
VQA_EXAMPLE_VALIDATOR = "VqaExampleValidator"
DATA_GATE = "DataGate"
PRETRAIN_TRAINER = "PretrainTrainer"
FINETUNE_TRAINER = "FinetuneTrainer"
BLESSED_MODEL_RESOLVER = "LatestBlessedModelResolver"
EVALUATOR = "UniterEvaluator"
PUSHER = "Pusher"

#: Runtime parameters of the Kubeflow compile (``runtime_parameters=True``): name → what it sets. The JSON
#: ones are the protos / objects TFX takes as one string (a Kubeflow V2 parameter replaces a whole
#: execution property, so a number inside a proto cannot be a parameter on its own).
RUNTIME_PARAMETERS = {
        "data_root": "folder of captions.json, vqa_questions.json, vqa_annotations.json",
        "images_root": "folder of the images (*.png)",
        "boxes_json": "ground-truth boxes file (only with ground_truth_boxes)",
        "caption_schema_file": "curated schema (text proto) of the caption examples",
        "vqa_schema_file": "curated schema (text proto) of the VQA examples",
        "push_destination": 'the Pusher\'s PushDestination JSON, {"filesystem": {"base_directory": DIR}}',
        "pretrain_train_args": 'pretraining TrainArgs JSON, {"num_steps": N}',
        "pretrain_eval_args": 'pretraining EvalArgs JSON, {"num_steps": N}',
        "finetune_train_args": 'fine-tuning TrainArgs JSON, {"num_steps": N}',
        "finetune_eval_args": 'fine-tuning EvalArgs JSON, {"num_steps": N}',
        "eval_lower_bounds": "the gate's value thresholds JSON, {metric: minimum}",
        "eval_max_regression": "the gate's change thresholds JSON, {metric: largest drop}",
}
#: The schema parameter of a non-VQA fine-tuning task, in place of ``vqa_schema_file`` (the compiled
#: parameters are those of the selected task).
TASK_SCHEMA_PARAMETERS = {
        "ve_schema_file": "curated schema (text proto) of the SNLI-VE examples (finetune_task ve)",
        "nlvr2_schema_file": "curated schema (text proto) of the NLVR2 examples (finetune_task nlvr2)",
        "refcoco_schema_file": "curated schema (text proto) of the RefCOCO examples (finetune_task refcoco)",
}


def task_node_ids(task: str) -> Dict[str, str]:
    """The ids of the fine-tuning task's data nodes: ``VqaExampleGen`` ... for VQA, ``VeExampleGen``,
    ``Nlvr2ExampleGen``, ``RefcocoExampleGen`` (and their statistics, schema and validator) for the others.

    Raises:
        ValueError: an unknown task (named).
    """
    prefix = finetune_task_data(task).node_prefix
    return {"example_gen": f"{prefix}ExampleGen", "statistics_gen": f"{prefix}StatisticsGen",
            "schema_gen": f"{prefix}SchemaGen", "example_validator": f"{prefix}ExampleValidator"}


def region_feature_dim(detector_path: Optional[str], num_classes: int) -> Dict[str, int]:
    """The record widths the detector produces: ``region_feature_dim`` and ``num_soft_labels``.

    The default detector (SSD-MobileNet-v2) pools two feature maps of 576 + 1280 channels over 91 COCO
    classes; another detector must be described by the caller (``model_overrides``).
    """
    if detector_path is not None:
        raise ValueError("with a custom detector, give TrainingConfig.model_overrides={'region_feature_dim': D, "
                         "'num_soft_labels': C} for its feature width and classes")
    from uniter_tf.extraction import ssd_mobilenet  # pylint: disable=import-outside-toplevel

    return {"region_feature_dim": int(sum(ssd_mobilenet.FEATURE_MAP_CHANNELS)), "num_soft_labels": int(num_classes)}


class _Parameters:
    """Hands out either the plain value or a ``RuntimeParameter`` with that value as default."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __call__(self, name: str, value: Any) -> Any:
        if name not in RUNTIME_PARAMETERS and name not in TASK_SCHEMA_PARAMETERS:
            raise KeyError(f"{name} is not one of RUNTIME_PARAMETERS or TASK_SCHEMA_PARAMETERS")
        if not self.enabled:
            return value
        return tfx.dsl.experimental.RuntimeParameter(name=name, ptype=type(value), default=value)

    def steps(self, name: str, num_steps: int, proto_class):
        """``TrainArgs`` / ``EvalArgs`` with ``num_steps``, or a JSON string parameter of it."""
        if not self.enabled:
            return proto_class(num_steps=num_steps)
        return self(name, json.dumps({"num_steps": int(num_steps)}))


def create_pipeline(
        pipeline_name: str,
        pipeline_root: str,
        data: DataConfig,
        training: TrainingConfig,
        serving_model_dir: str,
        *,
        gate: Optional[GateConfig] = None,
        runner: Optional[RunnerConfig] = None,
        beam_pipeline_args: Optional[List[str]] = None,
        metadata_connection_config=None,
        enable_cache: bool = True,
) -> tfx.dsl.Pipeline:
    """Builds the pipeline.

    Args:
        pipeline_name: the pipeline's name (MLMD context; the TFX CLI keys on it).
        pipeline_root: artifact root.
        data: the raw data, the extraction and the curated schemas (:class:`pipeline.configs.DataConfig`).
        training: both Trainers (:class:`pipeline.configs.TrainingConfig`).
        serving_model_dir: the Pusher's base directory (TF Serving layout ``<base>/<version>/``).
        gate: the evaluator's thresholds (default: the evaluator's own defaults).
        runner: orchestrator differences (runtime parameters, image fingerprinting); default: local.
        beam_pipeline_args: Beam options, given to each Beam component (not to the Trainers or the gates).
        metadata_connection_config: MLMD connection (the local runner's SQLite); None for orchestrators
            that bring their own (Kubeflow / Vertex).
        enable_cache: skip components whose inputs and properties are unchanged (per MLMD).

    Returns:
        The ``tfx.dsl.Pipeline``.

    Raises:
        TypeError: a config argument of the wrong type (e.g. the former keyword arguments).
        ValueError: a bad model override, or a custom detector without its feature width.
    """
    from uniter_tf.config import UniterConfig  # pylint: disable=import-outside-toplevel

    for name, value, expected in (("data", data, DataConfig), ("training", training, TrainingConfig),
                                  ("gate", gate, (GateConfig, type(None))),
                                  ("runner", runner, (RunnerConfig, type(None)))):
        if not isinstance(value, expected):
            raise TypeError(f"create_pipeline: {name} must be a pipeline.configs."
                            f"{expected.__name__ if isinstance(expected, type) else expected[0].__name__}, "
                            f"got {type(value).__name__}")
    gate = gate or GateConfig()
    runner = runner or RunnerConfig()
    overrides = dict(training.model_overrides or {})
    if "region_feature_dim" not in overrides or "num_soft_labels" not in overrides:
        derived = region_feature_dim(data.detector_path, data.num_detector_classes)
        for key, value in derived.items():
            overrides.setdefault(key, value)
    UniterConfig.from_preset(training.model_preset, **overrides)  # fail at definition time on a bad override
    # Both trainers get the same preset and overrides, so they build identical backbones.
    model_settings: Dict[str, Any] = {"model_config": training.model_preset, "model_overrides": overrides}

    parameter = _Parameters(runner.runtime_parameters)
    data_root = data.data_root
    images_root = data.images_root or os.path.join(data_root, "images")
    boxes_json = (data.boxes_json or os.path.join(data_root, "boxes.json")) if data.ground_truth_boxes else None
    if boxes_json is not None:
        boxes_json = parameter("boxes_json", boxes_json)
    if runner.fingerprint_images:
        # The images and their boxes are fingerprinted (an Importer reuses its artifact for the same URI).
        image_importer = ImageFolder(source_uri=parameter("images_root", images_root), pattern="*.png",
                                     boxes_json=boxes_json).with_id(IMAGE_IMPORTER)
        images = image_importer.outputs["images"]
    else:
        image_importer = tfx.dsl.Importer(
                source_uri=parameter("images_root", images_root), artifact_type=Images).with_id(IMAGE_IMPORTER)
        images = image_importer.outputs["result"]
    feature_extractor = RegionFeatureExtractor(
            images=images, image_pattern="*.png", detector_path=data.detector_path,
            num_classes=data.num_detector_classes, min_boxes=data.min_boxes, max_boxes=data.max_boxes,
            boxes_json=boxes_json,
    ).with_id(FEATURE_EXTRACTOR)
    ingest_options = {
            "feature_dim": overrides["region_feature_dim"],
            "eval_fraction": data.eval_fraction,
            # The extraction already applied the UNITER box rule; keep every stored region.
            "conf_threshold": None,
            "min_boxes": data.min_boxes,
            "max_boxes": data.max_boxes,
            # COCO / VQA annotations name images by number, the extracted records by file name.
            "image_key_mode": "numeric",
    }
    # Annotation names are relative to input_base, which a runtime parameter can replace as a whole.
    input_base = parameter("data_root", data_root)
    task_data = finetune_task_data(training.finetune_task)
    # The captions join by number, or by file name where the task's images would share those numbers (NLVR2).
    caption_example_gen = UniterExampleGen(
            annotation_format="coco", annotations=["captions.json"], input_base=input_base,
            features=feature_extractor.outputs["region_features"],
            ingest_options=dict(ingest_options, image_key_mode=task_data.caption_image_key_mode)
    ).with_id(CAPTION_EXAMPLE_GEN)
    # The fine-tuning task's examples (VQA questions by default): its reader, files and join key.
    is_vqa = task_data.name == "vqa"
    task_ids = task_node_ids(task_data.name)
    task_options = dict(ingest_options, image_key_mode=task_data.image_key_mode)
    if task_data.trains_on_captions:
        # Retrieval trains on the caption examples: no example set, contract or node of its own.
        vqa_example_gen = caption_example_gen
    else:
        vqa_example_gen = UniterExampleGen(
                annotation_format=task_data.annotation_format,
                annotations=list(task_data.annotations if is_vqa or data.task_annotations is None
                                 else data.task_annotations),
                annotations2=list(task_data.annotations2 if is_vqa or data.task_annotations2 is None
                                  else data.task_annotations2),
                input_base=input_base, features=feature_extractor.outputs["region_features"],
                ingest_options=task_options).with_id(task_ids["example_gen"])

    # The data contract: each example set's statistics are validated against its curated schema (imported,
    # never inferred from the data it checks), and the gate stops the run on any anomaly.
    contract = {}
    example_sets = [("caption", caption_example_gen, data.caption_schema_file,
                     (STATISTICS_GEN, SCHEMA_GEN, EXAMPLE_VALIDATOR))]
    if not task_data.trains_on_captions:
        example_sets.append((task_data.name, vqa_example_gen,
                             data.vqa_schema_file if is_vqa else (data.task_schema_file or task_data.schema_file),
                             (task_ids["statistics_gen"], task_ids["schema_gen"], task_ids["example_validator"])))
    for name, example_gen, schema_file, ids in example_sets:
        statistics_gen = tfx.components.StatisticsGen(
                examples=example_gen.outputs["examples"]).with_id(ids[0])
        schema_gen = tfx.components.ImportSchemaGen(
                schema_file=parameter(f"{name}_schema_file", schema_file)).with_id(ids[1])
        example_validator = tfx.components.ExampleValidator(
                statistics=statistics_gen.outputs["statistics"],
                schema=schema_gen.outputs["schema"]).with_id(ids[2])
        contract[name] = (statistics_gen, schema_gen, example_validator)
    # DataGate's second slot takes the fine-tuning task's example set (named "vqa" since VQA came first); a
    # task trained on the captions gives the caption set's report and schema in both slots.
    task_contract = contract["caption" if task_data.trains_on_captions else task_data.name]
    data_gate = DataGate(
            caption_anomalies=contract["caption"][2].outputs["anomalies"],
            vqa_anomalies=task_contract[2].outputs["anomalies"],
            caption_schema=contract["caption"][1].outputs["schema"],
            vqa_schema=task_contract[1].outputs["schema"],
            # The anomaly messages name the task's own example set; VQA's gate keeps its graph (no parameter).
            **({} if is_vqa else {"task_example_set": task_data.name})).with_id(DATA_GATE)

    data_components = [image_importer, feature_extractor, caption_example_gen,
                       *([] if task_data.trains_on_captions else [vqa_example_gen]),
                       *contract["caption"], *([] if task_data.trains_on_captions else task_contract), data_gate]
    if not training.enabled:
        # Nothing downstream is even constructed: a consumer registers itself on its producers.
        return _assemble(pipeline_name, pipeline_root, data_components, enable_cache, metadata_connection_config,
                         beam_pipeline_args)

    pretrain_trainer = None
    if training.include_pretraining:
        pretrain_custom_config = {**model_settings, "batch_size": training.batch_size}
        pretrain_custom_config.update(training.pretrain_config or {})
        pretrain_trainer = tfx.components.Trainer(
                # By import path from the installed package: no module file is packaged (no setuptools run,
                # and the cache key does not change when an unrelated file of pipeline/ does).
                run_fn=PRETRAIN_RUN_FN,
                examples=caption_example_gen.outputs["examples"],
                schema=data_gate.outputs["caption_schema_out"],
                train_args=parameter.steps("pretrain_train_args", training.pretrain_steps, tfx.proto.TrainArgs),
                eval_args=parameter.steps("pretrain_eval_args", training.eval_steps, tfx.proto.EvalArgs),
                custom_config=pretrain_custom_config).with_id(PRETRAIN_TRAINER)

    finetune_steps = training.finetune_steps
    finetune_custom_config = {
            "task": task_data.name,
            **model_settings,
            "train_batch_size": training.batch_size,
            "eval_batch_size": training.batch_size,
            "learning_rate": 5e-4,
            "warmup_steps": max(1, finetune_steps // 10),
            "valid_steps": finetune_steps,
            "log_every": max(1, finetune_steps // 4),
    }
    finetune_custom_config.update(training.finetune_config or {})
    if task_data.task_config:
        # The task's local arguments, under those the caller gives (retrieval: configs/finetune_itm_tiny.json's).
        finetune_custom_config["task_config"] = {**task_data.task_config,
                                                 **(finetune_custom_config.get("task_config") or {})}
    if task_data.first_stage_steps:
        # Retrieval: the Trainer also trains the first stage and ships the eval gallery's index with the model.
        finetune_custom_config.setdefault("first_stage_steps", task_data.first_stage_steps)
    finetune_trainer = tfx.components.Trainer(
            run_fn=FINETUNE_RUN_FN,
            examples=vqa_example_gen.outputs["examples"],
            schema=data_gate.outputs["vqa_schema_out"],
            base_model=pretrain_trainer.outputs["model"] if pretrain_trainer is not None else None,
            train_args=parameter.steps("finetune_train_args", finetune_steps, tfx.proto.TrainArgs),
            eval_args=parameter.steps("finetune_eval_args", training.eval_steps, tfx.proto.EvalArgs),
            custom_config=finetune_custom_config).with_id(FINETUNE_TRAINER)

    # The last blessed model of this pipeline, looked up in ML Metadata, is the gate's baseline.
    blessed_model_resolver = tfx.dsl.Resolver(
            strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
            model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
            model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id(BLESSED_MODEL_RESOLVER)
    evaluator = UniterEvaluator(
            examples=caption_example_gen.outputs["examples"],
            # A task trained on the captions is evaluated on them (``examples``), not on a second copy.
            task_examples=None if task_data.trains_on_captions else vqa_example_gen.outputs["examples"],
            model=finetune_trainer.outputs["model"],
            baseline_model=blessed_model_resolver.outputs["model"],
            lower_bounds=None if gate.lower_bounds is None else dict(gate.lower_bounds),
            max_regression=None if gate.max_regression is None else dict(gate.max_regression),
            batch_size=32,
            # VQA's metrics come from the general routine; another task adds its own (uniter_tf.evaluation).
            task=None if is_vqa else task_data.name).with_id(EVALUATOR)
    if runner.runtime_parameters:
        # UniterEvaluator takes the thresholds as mappings and stores them as JSON strings; the runtime
        # parameters replace those strings (same format, defaults unchanged).
        for key in ("lower_bounds", "max_regression"):
            evaluator.exec_properties[key] = parameter(f"eval_{key}", evaluator.exec_properties[key])
    push_destination = tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=serving_model_dir))
    if runner.runtime_parameters:
        push_destination = parameter("push_destination", json.dumps(
                {"filesystem": {"base_directory": serving_model_dir}}))
    pusher = tfx.components.Pusher(
            model=finetune_trainer.outputs["model"],
            model_blessing=evaluator.outputs["blessing"],
            push_destination=push_destination,
    ).with_id(PUSHER)
    if training.resources is not None:
        for trainer in (pretrain_trainer, finetune_trainer):
            if trainer is not None:
                trainer.with_platform_config(training.resources)

    components = data_components + [pretrain_trainer, finetune_trainer, blessed_model_resolver, evaluator, pusher]
    return _assemble(pipeline_name, pipeline_root, [component for component in components if component is not None],
                     enable_cache, metadata_connection_config, beam_pipeline_args)


def _assemble(pipeline_name: str, pipeline_root: str, components: List[Any], enable_cache: bool,
              metadata_connection_config, beam_pipeline_args: Optional[List[str]]) -> tfx.dsl.Pipeline:
    # Beam options go to the Beam components only: pipeline-level ones would be passed to every container
    # of a Kubeflow compile, the Trainers' included.
    for component in components:
        if isinstance(component, base_beam_component.BaseBeamComponent) and beam_pipeline_args:
            component.with_beam_pipeline_args(list(beam_pipeline_args))
    return tfx.dsl.Pipeline(
            pipeline_name=pipeline_name,
            pipeline_root=pipeline_root,
            components=components,
            enable_cache=enable_cache,
            metadata_connection_config=metadata_connection_config,
    )
