"""Executor of UniterExampleGen: runs the ingest ``ptransform_fn`` on the component's Beam pipeline."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List

from absl import logging
from tfx import types
from tfx.components.util import examples_utils
from tfx.dsl.components.base import base_beam_executor
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils

from components import input_fingerprint
from components.uniter_example_gen import spec as spec_lib

#: Shard file prefix inside each ``Split-<name>`` folder (as TFX's own ExampleGen).
FILE_PREFIX = "data_tfrecord"
#: Custom property of the Examples artifact with the total number of dead letters.
DEAD_LETTERS_PROPERTY = "dead_letters"


def features_location(features_artifacts: List[types.Artifact], features_path: str) -> str:
    """The feature location for the importers: the features artifact's TFRecords, else ``features_path``.

    A ``RegionFeatures`` artifact holds ``region_features-*.tfrecord.gz`` at its root (components/artifacts.py);
    one folder level below is searched too.

    Raises:
        ValueError: neither is given.
    """
    if features_artifacts:
        patterns = []
        for artifact in features_artifacts:
            for depth in ("*", os.path.join("*", "*")):
                patterns.append(os.path.join(artifact.uri, depth + ".tfrecord*"))
        return ",".join(patterns)
    if features_path:
        return features_path
    raise ValueError("UniterExampleGen needs a `features` channel or the `features_path` parameter")


def annotation_paths(exec_properties: Dict[str, Any]) -> Dict[str, List[str]]:
    """The annotation files (``annotations``, ``annotations2``), relative ones joined to ``input_base``.

    Raises:
        ValueError: a parameter is not a JSON list of strings (named in the message).
    """
    base = exec_properties.get(spec_lib.INPUT_BASE_KEY) or ""
    paths = {}
    for key, default in ((spec_lib.ANNOTATIONS_KEY, None), (spec_lib.ANNOTATIONS2_KEY, "[]")):
        raw = exec_properties.get(key) or default
        try:
            values = json.loads(raw)
        except (TypeError, json.JSONDecodeError):
            values = None
        if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
            raise ValueError(f"UniterExampleGen parameter {key!r} must be a JSON list of paths, got {raw!r}")
        # Absolute paths and URLs stay as they are; relative ones are under input_base.
        paths[key] = [value if (not base or os.path.isabs(value) or "://" in value) else os.path.join(base, value)
                      for value in values]
    return paths


def inputs_fingerprint(exec_properties: Dict[str, Any]) -> str:
    """The fingerprint of the component's file inputs.

    The annotation files by content (SHA-256); a ``features_path`` (used when there is no features channel,
    whose artifact id is already in the cache key) by its files' names, sizes and mtimes.
    """
    paths = annotation_paths(exec_properties)
    parts = [input_fingerprint.content_fingerprint(paths[spec_lib.ANNOTATIONS_KEY] + paths[spec_lib.ANNOTATIONS2_KEY])]
    features_path = exec_properties.get(spec_lib.FEATURES_PATH_KEY)
    if features_path:
        parts.append(input_fingerprint.listing_fingerprint(
                [location for location in features_path.split(",") if location]))
    return ";".join(parts)


class Driver(input_fingerprint.FingerprintDriver):
    """Adds the fingerprint of the annotation files (and ``features_path``) to the cache key."""

    def fingerprint(self, exec_properties: Dict[str, Any]) -> str:
        return inputs_fingerprint(exec_properties)


def ingest_config(input_dict: Dict[str, List[types.Artifact]], exec_properties: Dict[str, Any]):
    """Builds the :class:`IngestConfig` from the component's inputs and execution properties."""
    from uniter_tf.data import ingest

    options = json.loads(exec_properties.get(spec_lib.INGEST_OPTIONS_KEY) or "{}")
    features = features_location(input_dict.get(spec_lib.FEATURES_KEY, []),
                                 exec_properties.get(spec_lib.FEATURES_PATH_KEY) or "")
    if input_dict.get(spec_lib.FEATURES_KEY) and "feature_format" not in options:
        options["feature_format"] = "canonical"
    paths = annotation_paths(exec_properties)
    return ingest.IngestConfig(
            annotation_format=exec_properties[spec_lib.ANNOTATION_FORMAT_KEY],
            annotations=tuple(paths[spec_lib.ANNOTATIONS_KEY]),
            annotations2=tuple(paths[spec_lib.ANNOTATIONS2_KEY]),
            features=features, **options)


class Executor(base_beam_executor.BaseBeamExecutor):
    """Writes ``Split-train`` / ``Split-eval`` GZIP TFRecords of canonical records, and the dead letters.

    The Examples artifact gets ``split_names``, the payload and file format properties that StatisticsGen
    and the Trainer read, and one integer custom property per ingest counter (``dead_letters`` = their
    total). Dead letters are written under ``<examples uri>/dead_letters/``. Finite features are checked
    in the Beam code (region features are float16 bytes, which TFDV statistics cannot see into).
    """

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        from uniter_tf.data import dead_letter, ingest

        self._log_startup(input_dict, output_dict, exec_properties)
        config = ingest_config(input_dict, exec_properties)
        examples = artifact_utils.get_single_instance(output_dict[spec_lib.EXAMPLES_KEY])
        examples.split_names = artifact_utils.encode_split_names(list(ingest.SPLITS))
        answer_to_label = ingest.resolve_answer_vocabulary(config)
        if answer_to_label is not None:
            ingest.write_answer_vocabulary(examples.uri, answer_to_label)  # tf.io.gfile: gs:// roots work

        pipeline = self._make_beam_pipeline()
        prefixes = {split: os.path.join(artifact_utils.get_split_uri([examples], split), FILE_PREFIX)
                    for split in ingest.SPLITS}
        # The transform writes both splits through Beam's TFRecord sink (no file opened inside a DoFn).
        outputs = pipeline | "UniterIngest" >> ingest.IngestExamples(config, answer_to_label,
                                                                     output_prefixes=prefixes)
        _ = outputs["dead_letters"] | "DeadLetters" >> ingest.WriteDeadLetters(
                os.path.join(examples.uri, ingest.DEAD_LETTER_DIR))
        result = pipeline.run()
        result.wait_until_finish()
        for split in ingest.SPLITS:
            ingest.ensure_split_files(os.path.dirname(prefixes[split]), FILE_PREFIX)

        counts = ingest.query_counters(result)
        examples_utils.set_payload_format(examples, example_gen_pb2.PayloadFormat.FORMAT_TF_EXAMPLE)
        examples_utils.set_file_format(examples, "tfrecords_gzip")
        for name, value in counts.items():
            examples.set_int_custom_property(name, int(value))
        total = sum(counts.get(reason, 0) for reason in dead_letter.ALL_REASONS)
        examples.set_int_custom_property(DEAD_LETTERS_PROPERTY, total)
        # Set by the driver under the local / CLI runners; computed here where no driver runs (Kubeflow V2).
        fingerprint = exec_properties.get(input_fingerprint.FINGERPRINT_KEY) or inputs_fingerprint(exec_properties)
        examples.set_string_custom_property(input_fingerprint.FINGERPRINT_KEY, fingerprint)
        logging.info("%s", dead_letter.format_summary(counts, title="UniterExampleGen ingest summary"))
