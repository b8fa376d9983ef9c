"""The pipeline definition: component graph, Kubeflow V2 compilation, and the TFX CLI's view of the file."""

import json
import os
import re
import subprocess
import sys

import pytest

import tfx  # noqa: F401  (a broken install must fail, not skip)

REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EXPECTED_UPSTREAM = {
        "RegionFeatureExtractor": {"ImageImporter"},
        "CaptionExampleGen": {"RegionFeatureExtractor"},
        "VqaExampleGen": {"RegionFeatureExtractor"},
        "StatisticsGen": {"CaptionExampleGen"},
        "SchemaGen": {"StatisticsGen"},
        "ExampleValidator": {"StatisticsGen", "SchemaGen"},
        "PretrainTrainer": {"CaptionExampleGen", "SchemaGen"},
        "FinetuneTrainer": {"VqaExampleGen", "PretrainTrainer"},
        "UniterEvaluator": {"CaptionExampleGen", "VqaExampleGen", "FinetuneTrainer", "LatestBlessedModelResolver"},
        "Pusher": {"FinetuneTrainer", "UniterEvaluator"},
}


def _create(tmp_path, **kwargs):
    from pipeline import pipeline as pipeline_lib

    return pipeline_lib.create_pipeline(pipeline_name="uniter-test", pipeline_root=str(tmp_path / "root"),
                                        data_root=str(tmp_path / "data"),
                                        serving_model_dir=str(tmp_path / "serving"), **kwargs)


def test_component_graph(tmp_path):
    pipeline = _create(tmp_path)
    upstream = {component.id: {node.id for node in component.upstream_nodes} for component in pipeline.components}
    for node_id, expected in EXPECTED_UPSTREAM.items():
        assert upstream[node_id] == expected, node_id
    finetune = next(component for component in pipeline.components if component.id == "FinetuneTrainer")
    assert finetune.inputs["base_model"].producer_component_id == "PretrainTrainer"
    assert finetune.exec_properties["module_file"].endswith(os.path.join("pipeline", "finetune_module.py"))
    custom_config = json.loads(finetune.exec_properties["custom_config"])
    # Both trainers build the same backbone: the detector's feature width and classes are in it.
    assert custom_config["model_config"] == "tiny"
    assert custom_config["model_overrides"] == {"region_feature_dim": 576 + 1280, "num_soft_labels": 91}
    pretrain = next(component for component in pipeline.components if component.id == "PretrainTrainer")
    pretrain_config = json.loads(pretrain.exec_properties["custom_config"])
    assert {key: pretrain_config[key] for key in ("model_config", "model_overrides")} == {
            key: custom_config[key] for key in ("model_config", "model_overrides")}
    pusher = next(component for component in pipeline.components if component.id == "Pusher")
    assert pusher.inputs["model_blessing"].producer_component_id == "UniterEvaluator"
    assert pipeline.enable_cache


def test_without_pretraining_finetunes_from_scratch(tmp_path):
    pipeline = _create(tmp_path, include_pretraining=False)
    ids = {component.id for component in pipeline.components}
    assert "PretrainTrainer" not in ids and "FinetuneTrainer" in ids
    finetune = next(component for component in pipeline.components if component.id == "FinetuneTrainer")
    assert "base_model" not in finetune.inputs


def _kfp_type_names_valid():
    from components import artifacts

    title = re.compile(r"^[a-z][a-z0-9-_]{2,20}[.][A-Z][a-zA-Z0-9-_]{2,49}$")
    return all(title.fullmatch(artifact.TYPE_NAME) for artifact in (artifacts.Images, artifacts.RegionFeatures))


def test_kubeflow_v2_compilation(tmp_path, monkeypatch):
    # KubeflowV2DagRunner accepts only custom artifact type names of the form 'namespace.Name'.
    assert _kfp_type_names_valid()
    from pipeline import kubeflow_v2_runner

    output = tmp_path / "uniter_pipeline.json"
    path = kubeflow_v2_runner.compile_pipeline(str(output))
    with open(path, encoding="utf-8") as handle:
        compiled = json.load(handle)
    spec = compiled["pipelineSpec"]
    tasks = spec["root"]["dag"]["tasks"]
    dependencies = {name: set(task.get("dependentTasks", [])) for name, task in tasks.items()}
    for node_id, expected in EXPECTED_UPSTREAM.items():
        # The resolver compiles into one task per resolved channel.
        expected = {"LatestBlessedModelResolver-model-resolver" if name == "LatestBlessedModelResolver" else name
                    for name in expected}
        assert dependencies[node_id] == expected, node_id
    executors = spec["deploymentSpec"]["executors"]
    images = {executor["container"]["image"] for executor in executors.values() if "container" in executor}
    assert images == {kubeflow_v2_runner.configs.PIPELINE_IMAGE}
    trainer_config = json.dumps(spec["root"]["dag"]["tasks"]["FinetuneTrainer"])
    assert "pipeline.finetune_module.run_fn" in trainer_config


@pytest.mark.slow
def test_tfx_cli_pipeline_create_reads_the_local_runner(tmp_path):
    from uniter_tf.data import sample_data

    # A small data set, so the runner does not render the full sample.
    sample_data.generate(str(tmp_path / "data"), sample_data.SampleDataConfig(num_images=2, seed=0))
    env = dict(os.environ, LOCAL_HOME=str(tmp_path / "tfx_home"), UNITER_PIPELINE_ROOT=str(tmp_path / "root"),
               UNITER_SAMPLE_DATA_DIR=str(tmp_path / "data"), UNITER_PIPELINE_NAME="uniter-cli-test")
    # `tfx pipeline create` runs the file to build the pipeline (without running it).
    tfx_binary = os.path.join(os.path.dirname(sys.executable), "tfx")
    completed = subprocess.run(
            [tfx_binary, "pipeline", "create", "--engine=local",
             f"--pipeline_path={os.path.join(REPOSITORY_ROOT, 'pipeline', 'local_runner.py')}"],
            cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert 'Pipeline "uniter-cli-test" created successfully.' in completed.stdout
    saved = tmp_path / "tfx_home" / "uniter-cli-test" / "pipeline_args.json"
    assert saved.exists()
    assert json.loads(saved.read_text())["pipeline_root"] == str(tmp_path / "root")
