"""The uniter-tf TFX pipeline: images → region features → examples → pretrain → fine-tune → gate → push.

::

    ImageFolder(images) ─► RegionFeatureExtractor ─┬─► UniterExampleGen (captions) ─► StatisticsGen ─► SchemaGen
                                                │          │                         └──────────────► ExampleValidator
                                                │          ├─► Trainer (pretrain, pretrain_module.run_fn)
                                                │          │          │ base_model
                                                └─► UniterExampleGen (VQA) ─► Trainer (fine-tune, finetune_module.run_fn)
                                                                                     │
              Resolver (LatestBlessedModelStrategy, reads MLMD) ─► baseline ─► UniterEvaluator ─► Pusher

The caption records train pretraining and feed the gate's ITM / retrieval metrics, the VQA records train
fine-tuning and the gate's VQA score. The data components run on Beam (``beam_pipeline_args`` select
DirectRunner, Dataflow, Flink or Spark); the same factory serves the local runner, the TFX CLI and the
Kubeflow V2 / Vertex compilation.

Caching: the raw inputs are part of the cache key. ``ImageFolder`` (node ``ImageImporter``) fingerprints
the image folder's listing (names, sizes, mtimes) and the ground-truth boxes file's content, the
ExampleGens fingerprint their annotation files' content (components/input_fingerprint.py); a changed input
re-runs its node and everything downstream.

For the Kubeflow compile, ``runtime_parameters=True`` turns the data roots, the serving directory, the
trainers' step counts and the gate's thresholds into ``RuntimeParameter`` s (:data:`RUNTIME_PARAMETERS`)
whose defaults are the given values.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Mapping, Optional

from tfx import v1 as tfx
from tfx.dsl.components.base import base_beam_component

from components.artifacts import Images
from components.image_folder import ImageFolder
from components.region_feature_extractor.component import RegionFeatureExtractor
from components.uniter_evaluator.component import UniterEvaluator
from components.uniter_example_gen.component import UniterExampleGen

PIPELINE_DIRECTORY = os.path.dirname(os.path.abspath(__file__))
PRETRAIN_MODULE_FILE = os.path.join(PIPELINE_DIRECTORY, "pretrain_module.py")
FINETUNE_MODULE_FILE = os.path.join(PIPELINE_DIRECTORY, "finetune_module.py")

#: Node ids (stable: MLMD contexts and caching key on them).
IMAGE_IMPORTER = "ImageImporter"
FEATURE_EXTRACTOR = "RegionFeatureExtractor"
CAPTION_EXAMPLE_GEN = "CaptionExampleGen"
VQA_EXAMPLE_GEN = "VqaExampleGen"
STATISTICS_GEN = "StatisticsGen"
SCHEMA_GEN = "SchemaGen"
EXAMPLE_VALIDATOR = "ExampleValidator"
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
        "push_destination": 'the Pusher\'s PushDestination JSON, {"filesystem": {"base_directory": DIR}}',
        "pretrain_train_args": 'pretraining TrainArgs JSON, {"num_steps": N}',
        "pretrain_eval_args": 'pretraining EvalArgs JSON, {"num_steps": N}',
        "finetune_train_args": 'fine-tuning TrainArgs JSON, {"num_steps": N}',
        "finetune_eval_args": 'fine-tuning EvalArgs JSON, {"num_steps": N}',
        "eval_lower_bounds": "the gate's value thresholds JSON, {metric: minimum}",
        "eval_max_regression": "the gate's change thresholds JSON, {metric: largest drop}",
}


def region_feature_dim(detector_path: Optional[str], num_classes: int) -> Dict[str, int]:
    """The record widths the detector produces: ``region_feature_dim`` and ``num_soft_labels``.

    The default detector (SSD-MobileNet-v2) pools two feature maps of 576 + 1280 channels over 91 COCO
    classes; another detector must be described by the caller (``model_overrides``).
    """
    if detector_path is not None:
        raise ValueError("with a custom detector, give model_overrides={'region_feature_dim': D, "
                         "'num_soft_labels': C} for its feature width and classes")
    from uniter_tf.extraction import ssd_mobilenet  # pylint: disable=import-outside-toplevel

    return {"region_feature_dim": int(sum(ssd_mobilenet.FEATURE_MAP_CHANNELS)), "num_soft_labels": int(num_classes)}


def _trainer_code(module_file: str, run_fn: Optional[str]) -> Dict[str, str]:
    return {"run_fn": run_fn} if run_fn else {"module_file": module_file}


class _Parameters:
    """Hands out either the plain value or a ``RuntimeParameter`` with that value as default."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __call__(self, name: str, value: Any) -> Any:
        if name not in RUNTIME_PARAMETERS:
            raise KeyError(f"{name} is not one of RUNTIME_PARAMETERS")
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
        data_root: str,
        serving_model_dir: str,
        *,
        metadata_connection_config=None,
        beam_pipeline_args: Optional[List[str]] = None,
        enable_cache: bool = True,
        model_preset: str = "tiny",
        model_overrides: Optional[Mapping[str, Any]] = None,
        detector_path: Optional[str] = None,
        num_detector_classes: int = 91,
        ground_truth_boxes: bool = False,
        min_boxes: int = 4,
        max_boxes: int = 16,
        eval_fraction: float = 0.25,
        pretrain_steps: int = 20,
        finetune_steps: int = 20,
        eval_steps: int = 5,
        batch_size: int = 8,
        pretrain_config: Optional[Mapping[str, Any]] = None,
        finetune_config: Optional[Mapping[str, Any]] = None,
        eval_lower_bounds: Optional[Mapping[str, float]] = None,
        eval_max_regression: Optional[Mapping[str, float]] = None,
        pretrain_module_file: str = PRETRAIN_MODULE_FILE,
        finetune_module_file: str = FINETUNE_MODULE_FILE,
        pretrain_run_fn: Optional[str] = None,
        finetune_run_fn: Optional[str] = None,
        include_pretraining: bool = True,
        include_training: bool = True,
        images_root: Optional[str] = None,
        boxes_json: Optional[str] = None,
        runtime_parameters: bool = False,
        trainer_resources=None,
        fingerprint_images: bool = True,
) -> tfx.dsl.Pipeline:
    """Builds the pipeline.

    Args:
        pipeline_name: the pipeline's name (MLMD context; the TFX CLI keys on it).
        pipeline_root: artifact root.
        data_root: the raw data, laid out as ``uniter sample-data`` writes it: ``images/``,
            ``captions.json`` (COCO), ``vqa_questions.json`` and ``vqa_annotations.json`` (VQA v2).
        serving_model_dir: the Pusher's base directory (TF Serving layout ``<base>/<version>/``).
        metadata_connection_config: MLMD connection (the local runner's SQLite); None for orchestrators
            that bring their own (Kubeflow / Vertex).
        beam_pipeline_args: Beam options, given to each Beam component (not to the Trainers or the gate).
        enable_cache: skip components whose inputs and properties are unchanged (per MLMD).
        model_preset: :class:`uniter_tf.config.UniterConfig` preset of both trainers.
        model_overrides: fields changed on top of the preset; the region feature width and the number of
            soft labels are derived from the detector when not given here.
        detector_path: the extraction detector (None: the default SSD-MobileNet-v2).
        num_detector_classes: its classes incl. background (the soft-label width).
        ground_truth_boxes: pool the detector's features over the object boxes of ``data_root/boxes.json``
            (as the official VCR / RefCOCO features) instead of its detections; each box keeps the class of
            the detection that overlaps it (IoU >= 0.5), else background. For data whose objects the
            detector does not find (the rendered sample shapes).
        min_boxes: UNITER box rule minimum of the extraction.
        max_boxes: UNITER box rule maximum of the extraction.
        eval_fraction: share of images whose texts go to the eval split.
        pretrain_steps: pretraining updates.
        finetune_steps: fine-tuning updates.
        eval_steps: validation batches of each trainer.
        batch_size: examples per training batch.
        pretrain_config: more ``custom_config`` for the pretraining run_fn.
        finetune_config: more :class:`uniter_tf.training.finetune.FinetuneConfig` fields.
        eval_lower_bounds: the gate's value thresholds (metric → minimum).
        eval_max_regression: the gate's change thresholds (metric → largest drop vs. the last blessed model).
        pretrain_module_file: the pretraining Trainer's module (TFX packages it; its content is part of
            the cache key).
        finetune_module_file: the fine-tuning Trainer's module.
        pretrain_run_fn: instead of the module file, the import path of the pretraining ``run_fn``
            (``pipeline.pretrain_module.run_fn``), for images that install the project (Kubeflow).
        finetune_run_fn: the same for fine-tuning.
        include_pretraining: False leaves out the pretraining Trainer; fine-tuning then starts from a
            randomly initialised backbone (for checkouts without a pretraining module; the demo says so).
        include_training: False stops after the data components (images to validated examples): a
            data-only run, e.g. to check a data refresh and its caching.
        images_root: the image folder (default ``data_root/images``).
        boxes_json: the ground-truth boxes file (default ``data_root/boxes.json``; read with
            ``ground_truth_boxes``).
        runtime_parameters: make the values named in :data:`RUNTIME_PARAMETERS` Kubeflow runtime
            parameters (defaults: the values given here). For the Kubeflow V2 compile; the local runner
            takes plain values.
        trainer_resources: a KFP ``ResourceSpec`` (CPU, memory, accelerator) for both Trainers' containers
            (Kubeflow V2 / Vertex; ignored by the local runner).
        fingerprint_images: bring the images in with :class:`ImageFolder` (its driver puts the folder's
            listing into the cache key; the ``Images`` artifact points at the folder). False: with
            ``tfx.dsl.Importer`` (the Kubeflow compile: Kubeflow V2 runs no custom drivers and compiles the
            Importer to its native importer, whose URI may be a runtime parameter).

    Returns:
        The ``tfx.dsl.Pipeline``.
    """
    from uniter_tf.config import UniterConfig  # pylint: disable=import-outside-toplevel

    overrides = dict(model_overrides or {})
    if "region_feature_dim" not in overrides or "num_soft_labels" not in overrides:
        derived = region_feature_dim(detector_path, num_detector_classes)
        for key, value in derived.items():
            overrides.setdefault(key, value)
    UniterConfig.from_preset(model_preset, **overrides)  # fail at definition time on a bad override
    # Both trainers get the same preset and overrides, so they build identical backbones.
    model_settings: Dict[str, Any] = {"model_config": model_preset, "model_overrides": overrides}

    parameter = _Parameters(runtime_parameters)
    images_root = images_root or os.path.join(data_root, "images")
    boxes_json = (boxes_json or os.path.join(data_root, "boxes.json")) if ground_truth_boxes else None
    if boxes_json is not None:
        boxes_json = parameter("boxes_json", boxes_json)
    if fingerprint_images:
        # The images and their boxes are fingerprinted (an Importer reuses its artifact for the same URI).
        image_importer = ImageFolder(source_uri=parameter("images_root", images_root), pattern="*.png",
                                     boxes_json=boxes_json).with_id(IMAGE_IMPORTER)
        images = image_importer.outputs["images"]
    else:
        image_importer = tfx.dsl.Importer(
                source_uri=parameter("images_root", images_root), artifact_type=Images).with_id(IMAGE_IMPORTER)
        images = image_importer.outputs["result"]
    feature_extractor = RegionFeatureExtractor(
            images=images, image_pattern="*.png", detector_path=detector_path,
            num_classes=num_detector_classes, min_boxes=min_boxes, max_boxes=max_boxes,
            boxes_json=boxes_json,
    ).with_id(FEATURE_EXTRACTOR)
    ingest_options = {
            "feature_dim": overrides["region_feature_dim"],
            "eval_fraction": eval_fraction,
            # The extraction already applied the UNITER box rule; keep every stored region.
            "conf_threshold": None,
            "min_boxes": min_boxes,
            "max_boxes": max_boxes,
            # COCO / VQA annotations name images by number, the extracted records by file name.
            "image_key_mode": "numeric",
    }
    # Annotation names are relative to input_base, which a runtime parameter can replace as a whole.
    input_base = parameter("data_root", data_root)
    caption_example_gen = UniterExampleGen(
            annotation_format="coco", annotations=["captions.json"], input_base=input_base,
            features=feature_extractor.outputs["region_features"],
            ingest_options=ingest_options).with_id(CAPTION_EXAMPLE_GEN)
    vqa_example_gen = UniterExampleGen(
            annotation_format="vqa", annotations=["vqa_questions.json"], annotations2=["vqa_annotations.json"],
            input_base=input_base, features=feature_extractor.outputs["region_features"],
            ingest_options=ingest_options).with_id(VQA_EXAMPLE_GEN)

    statistics_gen = tfx.components.StatisticsGen(
            examples=caption_example_gen.outputs["examples"]).with_id(STATISTICS_GEN)
    schema_gen = tfx.components.SchemaGen(
            statistics=statistics_gen.outputs["statistics"], infer_feature_shape=False).with_id(SCHEMA_GEN)
    example_validator = tfx.components.ExampleValidator(
            statistics=statistics_gen.outputs["statistics"],
            schema=schema_gen.outputs["schema"]).with_id(EXAMPLE_VALIDATOR)

    data_components = [image_importer, feature_extractor, caption_example_gen, vqa_example_gen, statistics_gen,
                       schema_gen, example_validator]
    if not include_training:
        # Nothing downstream is even constructed: a consumer registers itself on its producers.
        return _assemble(pipeline_name, pipeline_root, data_components, enable_cache, metadata_connection_config,
                         beam_pipeline_args)

    pretrain_trainer = None
    if include_pretraining:
        pretrain_custom_config = {**model_settings, "batch_size": batch_size}
        pretrain_custom_config.update(pretrain_config or {})
        pretrain_trainer = tfx.components.Trainer(
                **_trainer_code(pretrain_module_file, pretrain_run_fn),
                examples=caption_example_gen.outputs["examples"],
                schema=schema_gen.outputs["schema"],
                train_args=parameter.steps("pretrain_train_args", pretrain_steps, tfx.proto.TrainArgs),
                eval_args=parameter.steps("pretrain_eval_args", eval_steps, tfx.proto.EvalArgs),
                custom_config=pretrain_custom_config).with_id(PRETRAIN_TRAINER)

    finetune_custom_config = {
            "task": "vqa",
            **model_settings,
            "train_batch_size": batch_size,
            "eval_batch_size": batch_size,
            "learning_rate": 5e-4,
            "warmup_steps": max(1, finetune_steps // 10),
            "valid_steps": finetune_steps,
            "log_every": max(1, finetune_steps // 4),
    }
    finetune_custom_config.update(finetune_config or {})
    finetune_trainer = tfx.components.Trainer(
            **_trainer_code(finetune_module_file, finetune_run_fn),
            examples=vqa_example_gen.outputs["examples"],
            base_model=pretrain_trainer.outputs["model"] if pretrain_trainer is not None else None,
            train_args=parameter.steps("finetune_train_args", finetune_steps, tfx.proto.TrainArgs),
            eval_args=parameter.steps("finetune_eval_args", eval_steps, tfx.proto.EvalArgs),
            custom_config=finetune_custom_config).with_id(FINETUNE_TRAINER)

    # The last blessed model of this pipeline, looked up in ML Metadata, is the gate's baseline.
    blessed_model_resolver = tfx.dsl.Resolver(
            strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
            model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
            model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id(BLESSED_MODEL_RESOLVER)
    evaluator = UniterEvaluator(
            examples=caption_example_gen.outputs["examples"],
            task_examples=vqa_example_gen.outputs["examples"],
            model=finetune_trainer.outputs["model"],
            baseline_model=blessed_model_resolver.outputs["model"],
            lower_bounds=eval_lower_bounds,
            max_regression=eval_max_regression,
            batch_size=32).with_id(EVALUATOR)
    if runtime_parameters:
        # UniterEvaluator takes the thresholds as mappings and stores them as JSON strings; the runtime
        # parameters replace those strings (same format, defaults unchanged).
        for key in ("lower_bounds", "max_regression"):
            evaluator.exec_properties[key] = parameter(f"eval_{key}", evaluator.exec_properties[key])
    push_destination = tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=serving_model_dir))
    if runtime_parameters:
        push_destination = parameter("push_destination", json.dumps(
                {"filesystem": {"base_directory": serving_model_dir}}))
    pusher = tfx.components.Pusher(
            model=finetune_trainer.outputs["model"],
            model_blessing=evaluator.outputs["blessing"],
            push_destination=push_destination,
    ).with_id(PUSHER)
    if trainer_resources is not None:
        for trainer in (pretrain_trainer, finetune_trainer):
            if trainer is not None:
                trainer.with_platform_config(trainer_resources)

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
