"""The data contract: the anomalies gate before the Trainers, and the Trainers' check of their records."""

import os

import numpy as np
import pytest

from components.anomalies_gate import component as gate
from components.uniter_example_gen import schema as schema_lib


def _anomalies_artifact(tmp_path, reports):
    """An ExampleAnomalies artifact as ExampleValidator writes it: Split-<name>/SchemaDiff.pb per split."""
    from tensorflow_metadata.proto.v0 import anomalies_pb2
    from tfx.types import artifact_utils, standard_artifacts

    artifact = standard_artifacts.ExampleAnomalies()
    artifact.uri = str(tmp_path / "anomalies")
    artifact.split_names = artifact_utils.encode_split_names(sorted(reports))
    for split, features in reports.items():
        proto = anomalies_pb2.Anomalies()
        for feature, (short, description) in features.items():
            info = proto.anomaly_info[feature]
            info.short_description = short
            info.reason.add(type=anomalies_pb2.AnomalyInfo.INT_TYPE_BIG_INT, short_description=short,
                            description=description)
        os.makedirs(os.path.join(artifact.uri, f"Split-{split}"), exist_ok=True)
        with open(os.path.join(artifact.uri, f"Split-{split}", gate.ANOMALIES_FILE), "wb") as handle:
            handle.write(proto.SerializeToString())
    return artifact


def test_gate_passes_clean_reports_and_names_the_feature_and_anomaly_otherwise(tmp_path):
    clean = _anomalies_artifact(tmp_path / "clean", {"train": {}, "eval": {}})
    gate.check_example_sets([("captions", clean)])
    broken = _anomalies_artifact(tmp_path / "broken", {"train": {}, "eval": {
            "num_regions": ("Out-of-range values", "Unexpectedly large value: 30.")}})
    with pytest.raises(gate.DataContractError) as raised:
        gate.check_example_sets([("captions", clean), ("vqa", broken)])
    message = str(raised.value)
    assert "not training" in message and "1 anomaly" in message
    assert "vqa split eval: feature 'num_regions': Out-of-range values (Unexpectedly large value: 30.)" in message
    # A report that is not there is not a pass.
    os.remove(os.path.join(broken.uri, "Split-eval", gate.ANOMALIES_FILE))
    with pytest.raises(gate.DataContractError, match="Split-eval/SchemaDiff.pb is missing"):
        gate.check_example_sets([("vqa", broken)])


def _record(example_id="q1", **changes):
    from uniter_tf.data import schema as record_schema

    values = dict(image_id="img_1", region_features=np.ones((3, 8), np.float32),
                  region_boxes=np.tile([[0, 0, 4, 4]], (3, 1)), image_height=8, image_width=8,
                  soft_labels=np.full((3, 5), 0.2, np.float32), example_id=example_id, text="what is it?",
                  token_ids=[5, 6, 7], answers=["circle"], answer_labels=[0], answer_scores=[1.0])
    values.update(changes)
    values = {key: value for key, value in values.items() if value is not None}
    return record_schema.make_example(**values)


def _write(path, examples):
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path), tf.io.TFRecordOptions(compression_type="GZIP")) as writer:
        for example in examples:
            writer.write(example.SerializeToString())
    return str(path)


def test_trainer_check_reads_the_schema_and_names_record_and_feature(tmp_path):
    from pipeline import data_contract

    schema_path = schema_lib.write_schema(str(tmp_path / "vqa.pbtxt"), kind="vqa", feature_dim=8, min_regions=1,
                                          max_regions=4, num_soft_labels=5)
    good = _write(tmp_path / "good.tfrecord.gz", [_record("q1"), _record("q2")])
    assert data_contract.check_records(schema_path, [str(tmp_path / "good*.gz")]) == 2

    missing_text = _write(tmp_path / "no_text.tfrecord.gz", [_record("q1"), _record("q9", text=None)])
    with pytest.raises(data_contract.SchemaMismatchError, match="record 'q9' lacks feature 'text', required by"):
        data_contract.check_records(schema_path, [missing_text])
    no_answers = _write(tmp_path / "no_answers.tfrecord.gz", [_record("q3", answers=[])])
    with pytest.raises(data_contract.SchemaMismatchError,
                       match=r"feature 'answers' of record 'q3' has 0 values, .* allows >= 1"):
        data_contract.check_records(schema_path, [no_answers])
    too_many = _write(tmp_path / "long.tfrecord.gz", [_record(
            "q4", region_features=np.ones((6, 8), np.float32), region_boxes=np.tile([[0, 0, 4, 4]], (6, 1)),
            soft_labels=np.full((6, 5), 0.2, np.float32))])
    with pytest.raises(data_contract.SchemaMismatchError, match="'region_positions' of record 'q4' has 42 values"):
        data_contract.check_records(schema_path, [too_many])

    example = _record("q5")
    example.features.feature["colour"].bytes_list.value.append(b"red")
    with pytest.raises(data_contract.SchemaMismatchError, match="carries feature 'colour', which .* does not"):
        data_contract.check_records(schema_path, [_write(tmp_path / "extra.tfrecord.gz", [example])])
    example = _record("q6")
    example.features.feature["label"].float_list.value.append(1.0)
    with pytest.raises(data_contract.SchemaMismatchError, match="'label' of record 'q6' is FLOAT, .* declares INT"):
        data_contract.check_records(schema_path, [_write(tmp_path / "dtype.tfrecord.gz", [example])])
    with pytest.raises(data_contract.SchemaMismatchError, match="no training files match"):
        data_contract.check_records(schema_path, [str(tmp_path / "nothing*")])
    with pytest.raises(ValueError, match="is not a text-proto tensorflow_metadata Schema"):
        data_contract.check_records(good, [good])


def test_records_with_the_task_field_fit_both_curated_schemas(tmp_path):
    """The task name (a string feature of the canonical records) is declared, optional, in both schemas."""
    from pipeline import configs, data_contract

    for path in (configs.CAPTION_SCHEMA_FILE, configs.VQA_SCHEMA_FILE):
        schema = schema_lib.read_schema(path)
        task = next(feature for feature in schema.feature if feature.name == schema_lib.TASK_FEATURE)
        assert task.presence.min_fraction == 0 and task.value_count.max == 1
    example = _record("q7", region_features=np.ones((3, 1856), np.float32),
                      soft_labels=np.full((3, 91), 0.01, np.float32))
    if schema_lib.TASK_FEATURE not in example.features.feature:
        example.features.feature[schema_lib.TASK_FEATURE].bytes_list.value.append(b"vqa")
    assert data_contract.check_records(configs.VQA_SCHEMA_FILE,
                                       [_write(tmp_path / "task.tfrecord.gz", [example])]) == 1


def test_pretraining_run_fn_stops_before_training_on_records_that_break_its_schema(tmp_path):
    import types

    from pipeline.pretrain_module import run_fn
    from uniter_tf.config import UniterConfig
    from uniter_tf.testing.synthetic_data import write_synthetic_records

    examples = tmp_path / "Examples"
    config = UniterConfig.from_preset("tiny")
    write_synthetic_records(str(examples / "Split-train" / "data_tfrecord"), config, num_images=2)
    # The VQA contract asks every record for answers; image-caption records have none.
    schema_path = schema_lib.write_schema(str(tmp_path / "schema.pbtxt"), kind="vqa",
                                          feature_dim=config.region_feature_dim, min_regions=1, max_regions=100)
    fn_args = types.SimpleNamespace(
            train_files=[str(examples / "Split-train")], eval_files=[], schema_path=schema_path,
            model_run_dir=str(tmp_path / "ModelRun"), serving_model_dir=str(tmp_path / "Model" / "Format-Serving"),
            train_steps=2, eval_steps=1, custom_config={"model_config": "tiny", "batch_size": 2})
    from pipeline.data_contract import SchemaMismatchError

    with pytest.raises(SchemaMismatchError, match="lacks feature 'answers', required by .*schema.pbtxt"):
        run_fn(fn_args)
    assert not os.path.exists(fn_args.model_run_dir) or not os.listdir(fn_args.model_run_dir)


@pytest.mark.parametrize("task", ["ve", "nlvr2", "refcoco"])
def test_the_pipelines_gate_names_the_fine_tuning_tasks_own_example_set(tmp_path, task):
    """The gate's second slot holds the task's examples: its anomaly lines say ``ve``, not ``vqa``."""
    from pipeline import configs
    from pipeline import definition as pipeline_lib

    def data_gate(task_name):
        pipeline = pipeline_lib.create_pipeline(
                pipeline_name="uniter-test", pipeline_root=str(tmp_path / task_name / "root"),
                data=configs.DataConfig(data_root=str(tmp_path / "data")),
                training=configs.TrainingConfig(finetune_task=task_name),
                serving_model_dir=str(tmp_path / task_name / "serving"))
        (component,) = [node for node in pipeline.components if node.id == pipeline_lib.DATA_GATE]
        return component

    # VQA's gate is built as before (no parameter, so its compiled graph and cache keys are unchanged).
    assert "task_example_set" not in data_gate("vqa").exec_properties
    component = data_gate(task)
    assert component.exec_properties["task_example_set"] == task
    clean = _anomalies_artifact(tmp_path / "clean", {"train": {}, "eval": {}})
    broken = _anomalies_artifact(tmp_path / "broken", {"train": {
            "label": ("Out-of-range values", "Unexpectedly large value: 7.")}, "eval": {}})
    schemas = {name: _schema_artifact(tmp_path / name) for name in ("caption_schema", "vqa_schema")}
    outputs = {name: [_schema_artifact(tmp_path / name, write=False)]
               for name in ("caption_schema_out", "vqa_schema_out")}
    executor = component.executor_spec.executor_class()
    with pytest.raises(gate.DataContractError) as raised:
        executor.Do({"caption_anomalies": [clean], "vqa_anomalies": [broken],
                     **{name: [artifact] for name, artifact in schemas.items()}}, outputs,
                    dict(component.exec_properties))
    message = str(raised.value)
    assert f"{task} split train: feature 'label': Out-of-range values" in message, message
    assert "vqa" not in message, message


def _schema_artifact(folder, write=True):
    from tfx.types import standard_artifacts

    artifact = standard_artifacts.Schema()
    artifact.uri = str(folder)
    if write:
        os.makedirs(folder, exist_ok=True)
        (folder / "schema.pbtxt").write_text("")
    return artifact
