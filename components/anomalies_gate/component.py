"""``DataGate``: the Trainers run only on example sets that ExampleValidator found no anomaly in.

ExampleValidator writes its findings (an ``ExampleAnomalies`` artifact, one ``Anomalies`` proto per split)
but stops nothing. This gate reads them for every example set the Trainers consume (captions for
pretraining, VQA questions for fine-tuning) and either

* fails (:class:`DataContractError`, naming the example set, split, feature and anomaly): the run stops
  here, no Trainer starts, so nothing is evaluated or pushed; or
* passes each example set's schema on unchanged (``caption_schema_out`` / ``vqa_schema_out``): the
  Trainers take their ``schema`` from the gate, which both makes them wait for it and hands them the
  curated contract their records were checked against (``fn_args.schema_path``).
"""


import os
from typing import Any, Dict, List, Sequence, Tuple

from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils
from tfx.types.standard_artifacts import ExampleAnomalies, Schema

#: ExampleValidator's file in each ``Split-<name>`` directory.
ANOMALIES_FILE = "SchemaDiff.pb"


class DataContractError(RuntimeError):
    """The validator found anomalies: the message lists example set, split, feature and anomaly."""


def read_anomalies(anomalies: ExampleAnomalies) -> Dict[str, Any]:
    """Split name → ``tensorflow_metadata`` ``Anomalies`` proto of an ``ExampleAnomalies`` artifact.

    Raises:
        DataContractError: a split's ``SchemaDiff.pb`` is missing (an unreadable report is not a pass).
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from tensorflow_metadata.proto.v0 import anomalies_pb2  # pylint: disable=import-outside-toplevel

    split_names = artifact_utils.decode_split_names(anomalies.split_names)
    if not split_names:
        raise DataContractError(f"the anomalies artifact {anomalies.uri} names no split")
    result = {}
    for split in split_names:
        path = os.path.join(anomalies.uri, f"Split-{split}", ANOMALIES_FILE)
        if not tf.io.gfile.exists(path):
            raise DataContractError(f"the validator's report {path} is missing")
        proto = anomalies_pb2.Anomalies()
        with tf.io.gfile.GFile(path, "rb") as handle:
            proto.ParseFromString(handle.read())
        result[split] = proto
    return result


def describe_anomalies(example_set: str, reports: Dict[str, Any]) -> List[str]:
    """One line per anomalous feature: ``<set> split <split>: feature '<name>': <anomaly> (<details>)``."""
    lines = []
    for split in sorted(reports):
        proto = reports[split]
        for feature in sorted(proto.anomaly_info):
            info = proto.anomaly_info[feature]
            details = "; ".join(reason.description for reason in info.reason if reason.description)
            lines.append(f"{example_set} split {split}: feature {feature!r}: "
                         f"{info.short_description or info.description}" + (f" ({details})" if details else ""))
        if proto.HasField("dataset_anomaly_info"):
            info = proto.dataset_anomaly_info
            lines.append(f"{example_set} split {split}: dataset: {info.short_description or info.description}")
    return lines


def check_example_sets(example_sets: Sequence[Tuple[str, ExampleAnomalies]]) -> None:
    """Raises :class:`DataContractError` listing every anomaly of the named example sets.

    Args:
        example_sets: (name, ``ExampleAnomalies`` artifact) pairs, e.g. ``("captions", artifact)``.
    """
    problems = []
    for name, anomalies in example_sets:
        problems.extend(describe_anomalies(name, read_anomalies(anomalies)))
    if problems:
        raise DataContractError(
                "the data contract is broken, not training on these examples "
                f"({len(problems)} anomal{'y' if len(problems) == 1 else 'ies'} against the curated schema):\n  "
                + "\n  ".join(problems))


def _pass_schema(source: Schema, target: Schema) -> None:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    files = [name for name in tf.io.gfile.listdir(source.uri) if not tf.io.gfile.isdir(os.path.join(source.uri, name))]
    if len(files) != 1:
        raise DataContractError(f"the schema artifact {source.uri} must hold one file, found {sorted(files)}")
    tf.io.gfile.makedirs(target.uri)
    tf.io.gfile.copy(os.path.join(source.uri, files[0]), os.path.join(target.uri, files[0]), overwrite=True)


@component
def DataGate(  # pylint: disable=invalid-name  (a component class, named as TFX names them)
        caption_anomalies: InputArtifact[ExampleAnomalies],
        vqa_anomalies: InputArtifact[ExampleAnomalies],
        caption_schema: InputArtifact[Schema],
        vqa_schema: InputArtifact[Schema],
        caption_schema_out: OutputArtifact[Schema],
        vqa_schema_out: OutputArtifact[Schema],
        task_example_set: Parameter[str] = "vqa",
):
    """Fails on any anomaly of the caption or fine-tuning examples; else passes both schemas on to the Trainers.

    The ``vqa_*`` slots hold the fine-tuning task's example set whatever the task (their names are kept so a
    VQA pipeline's graph and cache are unchanged); ``task_example_set`` is that set's name in the messages
    (``ve``, ``nlvr2``, ``refcoco``).
    """
    check_example_sets([("captions", caption_anomalies), (task_example_set, vqa_anomalies)])
    _pass_schema(caption_schema, caption_schema_out)
    _pass_schema(vqa_schema, vqa_schema_out)
