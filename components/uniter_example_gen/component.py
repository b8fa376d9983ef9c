"""UniterExampleGen: the ingest pipeline as a TFX component (Spec / Executor / Component)."""

from __future__ import annotations

import json
from typing import Any, Dict, Optional, Sequence, Union

from tfx import types
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.orchestration import data_types
from tfx.types import standard_artifacts

from components.uniter_example_gen import executor
from components.uniter_example_gen import spec as spec_lib


class UniterExampleGen(base_beam_component.BaseBeamComponent):
    """Joins annotations with region features into canonical ``tf.Example`` records (train / eval splits).

    The output is a standard ``Examples`` artifact (``Split-train/``, ``Split-eval/``, GZIP TFRecords) that
    StatisticsGen, SchemaGen, ExampleValidator and the Trainer consume. Bad input goes to dead letters
    (``<uri>/dead_letters/*.jsonl``) and is counted in the artifact's custom properties.

    The annotation files are part of the cache key: the component's driver hashes their content (and
    lists ``features_path``'s files: names, sizes, mtimes) into the ``input_fingerprint`` execution
    property before the cache lookup, so an edited caption makes this component and everything
    downstream run again. The fingerprint is also a custom property of the ``Examples`` artifact.

    Args:
        annotation_format: one of ``uniter_tf.data.readers.FORMATS``.
        annotations: annotation file paths (relative ones are under ``input_base``).
        annotations2: second files (SBU urls, VQA annotations, RefCOCO instances.json).
        features: optional ``RegionFeatures`` channel (per-image canonical TFRecords from extraction).
        features_path: feature location when there is no channel (img_db dir, npz dir, TSV/TFRecord globs).
        ingest_options: other ``IngestConfig`` fields (``feature_dim``, ``eval_fraction``,
            ``max_text_tokens``, ``overlong``, ``image_key_mode``, ...).
        input_base: folder of relative annotation paths (a ``RuntimeParameter`` in the Kubeflow compile,
            where a path cannot be joined at compile time).
    """

    SPEC_CLASS = spec_lib.UniterExampleGenSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)
    DRIVER_CLASS = executor.Driver

    def __init__(self, annotation_format: str, annotations: Sequence[str], annotations2: Sequence[str] = (),
                 features: Optional[types.BaseChannel] = None, features_path: Optional[str] = None,
                 ingest_options: Optional[Dict[str, Any]] = None,
                 input_base: Union[str, data_types.RuntimeParameter, None] = None):
        from uniter_tf.data import ingest

        options = dict(ingest_options or {})
        allowed = set(ingest.IngestConfig.__dataclass_fields__) - {
                "annotation_format", "annotations", "annotations2", "features"}
        unknown = set(options) - allowed
        if unknown:
            raise ValueError(f"unknown ingest_options {sorted(unknown)}")
        if features is None and not features_path:
            raise ValueError("UniterExampleGen needs `features` (a RegionFeatures channel) or `features_path`")
        spec = spec_lib.UniterExampleGenSpec(
                features=features,
                annotation_format=annotation_format,
                annotations=json.dumps(list(annotations)),
                annotations2=json.dumps(list(annotations2)),
                features_path=features_path,
                ingest_options=json.dumps(options, sort_keys=True),
                input_base=input_base,
                examples=types.Channel(type=standard_artifacts.Examples),
        )
        super().__init__(spec=spec)
