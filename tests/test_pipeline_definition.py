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
        "SchemaGen": set(),
        "ExampleValidator": {"StatisticsGen", "SchemaGen"},
        "VqaStatisticsGen": {"VqaExampleGen"},
        "VqaSchemaGen": set(),
        "VqaExampleValidator": {"VqaStatisticsGen", "VqaSchemaGen"},
        "DataGate": {"ExampleValidator", "VqaExampleValidator", "SchemaGen", "VqaSchemaGen"},
        "PretrainTrainer": {"CaptionExampleGen", "DataGate"},
        "FinetuneTrainer": {"VqaExampleGen", "PretrainTrainer", "DataGate"},
        "UniterEvaluator": {"CaptionExampleGen", "VqaExampleGen", "FinetuneTrainer", "LatestBlessedModelResolver"},
        "Pusher": {"FinetuneTrainer", "UniterEvaluator"},
}


def _create(tmp_path, training=None, **kwargs):
    from pipeline import configs
    from pipeline import definition as pipeline_lib

    return pipeline_lib.create_pipeline(pipeline_name="uniter-test", pipeline_root=str(tmp_path / "root"),
                                        data=configs.DataConfig(data_root=str(tmp_path / "data")),
                                        training=training or configs.TrainingConfig(),
                                        serving_model_dir=str(tmp_path / "serving"), **kwargs)


def test_component_graph(tmp_path):
    pipeline = _create(tmp_path)
    upstream = {component.id: {node.id for node in component.upstream_nodes} for component in pipeline.components}
    for node_id, expected in EXPECTED_UPSTREAM.items():
        assert upstream[node_id] == expected, node_id
    finetune = next(component for component in pipeline.components if component.id == "FinetuneTrainer")
    assert finetune.inputs["base_model"].producer_component_id == "PretrainTrainer"
    # The run_fns are imported by module path: nothing is packaged, no module file is in the cache key.
    assert finetune.exec_properties["run_fn"] == "pipeline.finetune_module.run_fn"
    assert not finetune.exec_properties.get("module_file")
    assert finetune.inputs["schema"].producer_component_id == "DataGate"
    # The schemas are imported (curated), never inferred.
    schema_gens = {component.id: component for component in pipeline.components if component.id.endswith("SchemaGen")}
    from pipeline import configs

    assert {name: type(component).__name__ for name, component in schema_gens.items()} == {
            "SchemaGen": "ImportSchemaGen", "VqaSchemaGen": "ImportSchemaGen"}
    assert schema_gens["SchemaGen"].exec_properties["schema_file"] == configs.CAPTION_SCHEMA_FILE
    assert schema_gens["VqaSchemaGen"].exec_properties["schema_file"] == configs.VQA_SCHEMA_FILE
    custom_config = json.loads(finetune.exec_properties["custom_config"])
    # Both trainers build the same backbone: the detector's feature width and classes are in it.
    assert custom_config["model_config"] == "tiny"
    assert custom_config["model_overrides"] == {"region_feature_dim": 576 + 1280, "num_soft_labels": 91}
    pretrain = next(component for component in pipeline.components if component.id == "PretrainTrainer")
    assert pretrain.exec_properties["run_fn"] == "pipeline.pretrain_module.run_fn"
    assert pretrain.inputs["schema"].producer_component_id == "DataGate"
    pretrain_config = json.loads(pretrain.exec_properties["custom_config"])
    assert {key: pretrain_config[key] for key in ("model_config", "model_overrides")} == {
            key: custom_config[key] for key in ("model_config", "model_overrides")}
    pusher = next(component for component in pipeline.components if component.id == "Pusher")
    assert pusher.inputs["model_blessing"].producer_component_id == "UniterEvaluator"
    assert pipeline.enable_cache


def test_without_pretraining_finetunes_from_scratch(tmp_path):
    from pipeline import configs

    pipeline = _create(tmp_path, training=configs.TrainingConfig(include_pretraining=False))
    ids = {component.id for component in pipeline.components}
    assert "PretrainTrainer" not in ids and "FinetuneTrainer" in ids
    finetune = next(component for component in pipeline.components if component.id == "FinetuneTrainer")
    assert "base_model" not in finetune.inputs


def _kfp_type_names_valid():
    from components import artifacts

    title = re.compile(r"^[a-z][a-z0-9-_]{2,20}[.][A-Z][a-zA-Z0-9-_]{2,49}$")
    return all(title.fullmatch(artifact.TYPE_NAME) for artifact in (artifacts.Images, artifacts.RegionFeatures))


IMAGE = "europe-docker.pkg.dev/uniter-project/uniter/uniter-tf:1.2.3"
PIPELINE_ROOT = "gs://uniter-bucket/pipelines"


@pytest.fixture(scope="module")
def compiled_kubeflow(tmp_path_factory):
    """The Kubeflow V2 JSON, compiled once for the module (the compile takes ~30 s of CPU)."""
    # KubeflowV2DagRunner accepts only custom artifact type names of the form 'namespace.Name'.
    assert _kfp_type_names_valid()
    from pipeline import kubeflow_v2_runner

    patch = pytest.MonkeyPatch()
    for name in ("UNITER_SAMPLE_DATA_DIR", "UNITER_SERVING_MODEL_DIR", "UNITER_KUBEFLOW_BEAM_PIPELINE_ARGS",
                 "UNITER_TRAINER_ACCELERATOR", "UNITER_TRAINER_ACCELERATOR_COUNT", "UNITER_TRAINER_CPU"):
        patch.delenv(name, raising=False)
    patch.setenv("UNITER_TRAINER_MEMORY_GB", "24")
    try:
        output = tmp_path_factory.mktemp("kubeflow") / "uniter_pipeline.json"
        path = kubeflow_v2_runner.compile_pipeline(str(output), image=IMAGE, pipeline_root=PIPELINE_ROOT)
    finally:
        patch.undo()
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def test_kubeflow_v2_compilation(compiled_kubeflow):
    compiled = json.loads(compiled_kubeflow)
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
    assert images == {IMAGE}
    trainer_config = json.dumps(spec["root"]["dag"]["tasks"]["FinetuneTrainer"])
    assert "pipeline.finetune_module.run_fn" in trainer_config


def test_kubeflow_v2_runtime_parameters_resources_and_no_local_paths(compiled_kubeflow):
    from pipeline import configs
    from pipeline import definition as pipeline_lib

    compiled = json.loads(compiled_kubeflow)
    spec = compiled["pipelineSpec"]
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert set(parameters) == set(pipeline_lib.RUNTIME_PARAMETERS)
    defaults = {name: parameter["defaultValue"] for name, parameter in parameters.items()}
    assert defaults == compiled["runtimeConfig"]["parameterValues"]
    assert defaults["data_root"] == f"{PIPELINE_ROOT}/data"
    assert defaults["images_root"] == f"{PIPELINE_ROOT}/data/images"
    assert defaults["caption_schema_file"] == f"{PIPELINE_ROOT}/data/schema/captions_schema.pbtxt"
    assert defaults["vqa_schema_file"] == f"{PIPELINE_ROOT}/data/schema/vqa_schema.pbtxt"
    assert json.loads(defaults["push_destination"]) == {
            "filesystem": {"base_directory": f"{PIPELINE_ROOT}/serving_model/uniter"}}
    assert json.loads(defaults["pretrain_train_args"]) == {"num_steps": configs.PRETRAIN_TRAIN_STEPS}
    assert json.loads(defaults["finetune_train_args"]) == {"num_steps": configs.FINETUNE_TRAIN_STEPS}
    assert json.loads(defaults["eval_lower_bounds"]) == configs.EVAL_LOWER_BOUNDS
    assert json.loads(defaults["eval_max_regression"]) == configs.EVAL_MAX_REGRESSION
    # The tasks read the parameters instead of constants.
    tasks = spec["root"]["dag"]["tasks"]
    wired = {(task_name, key): value["componentInputParameter"]
             for task_name, task in tasks.items()
             for key, value in task.get("inputs", {}).get("parameters", {}).items()
             if "componentInputParameter" in value}
    assert wired == {
            ("ImageImporter", "artifact_uri"): "images_root",
            ("SchemaGen", "schema_file"): "caption_schema_file", ("VqaSchemaGen", "schema_file"): "vqa_schema_file",
            ("RegionFeatureExtractor", "boxes_json"): "boxes_json",
            ("CaptionExampleGen", "input_base"): "data_root", ("VqaExampleGen", "input_base"): "data_root",
            ("PretrainTrainer", "train_args"): "pretrain_train_args",
            ("PretrainTrainer", "eval_args"): "pretrain_eval_args",
            ("FinetuneTrainer", "train_args"): "finetune_train_args",
            ("FinetuneTrainer", "eval_args"): "finetune_eval_args",
            ("UniterEvaluator", "lower_bounds"): "eval_lower_bounds",
            ("UniterEvaluator", "max_regression"): "eval_max_regression",
            ("Pusher", "push_destination"): "push_destination"}

    executors = spec["deploymentSpec"]["executors"]
    # Kubeflow V2 runs no custom drivers: the images come through its native importer, URI = images_root.
    assert executors["ImageImporter_executor"]["importer"]["artifactUri"] == {"runtimeParameter": "artifact_uri"}
    for trainer in ("PretrainTrainer", "FinetuneTrainer"):
        assert executors[f"{trainer}_executor"]["container"]["resources"] == {"cpuLimit": 8.0, "memoryLimit": 24.0}
    # The local DirectRunner flags are not baked into the cluster spec.
    assert "--direct_running_mode" not in compiled_kubeflow and "--direct_num_workers" not in compiled_kubeflow

    # No absolute path of the compiling machine.
    import tempfile

    local_prefixes = {REPOSITORY_ROOT, os.path.realpath(REPOSITORY_ROOT), tempfile.gettempdir(), "/work/", "/tmp/",
                      os.path.expanduser("~") + "/"}
    leaked = {prefix for prefix in local_prefixes if prefix in compiled_kubeflow}
    assert not leaked, leaked


def test_kubeflow_compile_requires_image_and_pipeline_root(monkeypatch, capsys):
    from pipeline import kubeflow_v2_runner

    monkeypatch.delenv("UNITER_PIPELINE_IMAGE", raising=False)
    monkeypatch.delenv("UNITER_PIPELINE_ROOT", raising=False)
    assert kubeflow_v2_runner.main(["--pipeline-root", PIPELINE_ROOT]) == 2
    message = capsys.readouterr().err.strip()
    assert message == ("error: the Kubeflow compile needs the container image of the steps: "
                       "pass --image or set UNITER_PIPELINE_IMAGE")
    monkeypatch.setenv("UNITER_PIPELINE_IMAGE", IMAGE)
    with pytest.raises(kubeflow_v2_runner.CompileError, match="--pipeline-root or set UNITER_PIPELINE_ROOT"):
        kubeflow_v2_runner.compile_pipeline()
    monkeypatch.setenv("UNITER_TRAINER_ACCELERATOR_COUNT", "2")
    with pytest.raises(kubeflow_v2_runner.CompileError, match="UNITER_TRAINER_ACCELERATOR"):
        kubeflow_v2_runner.trainer_resources()
    monkeypatch.setenv("UNITER_TRAINER_ACCELERATOR", "NVIDIA_TESLA_T4")
    resources = kubeflow_v2_runner.trainer_resources()
    assert (resources.accelerator.type, resources.accelerator.count) == ("NVIDIA_TESLA_T4", 2)


def test_local_pipeline_keeps_plain_values_and_beam_args_only_on_beam_components(tmp_path):
    from tfx.dsl.components.base import base_beam_component

    pipeline = _create(tmp_path, beam_pipeline_args=["--direct_num_workers=1"])
    assert pipeline.beam_pipeline_args == []
    for component in pipeline.components:
        if isinstance(component, base_beam_component.BaseBeamComponent):
            assert component.executor_spec.beam_pipeline_args == ["--direct_num_workers=1"], component.id
    example_gen = next(component for component in pipeline.components if component.id == "CaptionExampleGen")
    assert example_gen.exec_properties["input_base"] == str(tmp_path / "data")
    importer = next(component for component in pipeline.components if component.id == "ImageImporter")
    assert importer.exec_properties["source_uri"] == str(tmp_path / "data" / "images")


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


def test_create_pipeline_takes_config_objects_and_names_a_wrong_argument(tmp_path):
    from pipeline import configs
    from pipeline import definition as pipeline_lib

    with pytest.raises(TypeError, match="training must be a pipeline.configs.TrainingConfig, got dict"):
        pipeline_lib.create_pipeline("p", str(tmp_path), configs.DataConfig(data_root=str(tmp_path)),
                                     {"pretrain_steps": 2}, str(tmp_path / "serving"))
    with pytest.raises(TypeError, match="unexpected keyword argument 'pretrain_steps'"):
        pipeline_lib.create_pipeline("p", str(tmp_path), configs.DataConfig(data_root=str(tmp_path)),
                                     configs.TrainingConfig(), str(tmp_path / "serving"), pretrain_steps=2)
    with pytest.raises(ValueError, match="min_boxes <= max_boxes"):
        configs.DataConfig(data_root=str(tmp_path), min_boxes=5, max_boxes=2)
    with pytest.raises(ValueError, match="TrainingConfig: batch_size must be >= 1"):
        configs.TrainingConfig(batch_size=0)
    data_only = _create(tmp_path, training=configs.TrainingConfig(enabled=False))
    assert {component.id for component in data_only.components} == {
            "ImageImporter", "RegionFeatureExtractor", "CaptionExampleGen", "VqaExampleGen", "StatisticsGen",
            "SchemaGen", "ExampleValidator", "VqaStatisticsGen", "VqaSchemaGen", "VqaExampleValidator", "DataGate"}


def test_checked_in_curated_schemas_are_the_builder_with_the_pipeline_settings():
    from components.uniter_example_gen import schema as schema_lib
    from pipeline import configs

    for path, kind in ((configs.CAPTION_SCHEMA_FILE, "captions"), (configs.VQA_SCHEMA_FILE, "vqa")):
        with open(path, encoding="utf-8") as handle:
            assert handle.read() == schema_lib.schema_text(
                    schema_lib.build_schema(kind=kind, **configs.CURATED_SCHEMA_SETTINGS)), path
    # The pipeline's model width is the schema's feature width.
    from pipeline import definition as pipeline_lib

    assert pipeline_lib.region_feature_dim(None, 91) == {
            "region_feature_dim": configs.CURATED_SCHEMA_SETTINGS["feature_dim"],
            "num_soft_labels": configs.CURATED_SCHEMA_SETTINGS["num_soft_labels"]}


def test_runner_files_import_from_the_installed_package_without_sys_path_edits():
    for name in ("local_runner.py", "kubeflow_v2_runner.py"):
        with open(os.path.join(REPOSITORY_ROOT, "pipeline", name), encoding="utf-8") as handle:
            source = handle.read()
        assert not re.search(r"sys\.path\.(insert|append)|sys\.path\[[^]]*\]\s*=", source), name
    # Nothing in pipeline/ may shadow the package when the TFX CLI runs a runner as a script (its folder
    # first on sys.path): the factory is definition.py, not pipeline.py.
    assert not os.path.exists(os.path.join(REPOSITORY_ROOT, "pipeline", "pipeline.py"))


@pytest.mark.slow
def test_kubeflow_runner_runs_as_a_script_from_any_directory():
    # Run as a script the way the TFX CLI does (python FILE): the imports resolve, the compile's missing
    # image is the error.
    env = {key: value for key, value in os.environ.items() if key not in ("UNITER_PIPELINE_IMAGE", "PYTHONPATH")}
    completed = subprocess.run([sys.executable, os.path.join(REPOSITORY_ROOT, "pipeline", "kubeflow_v2_runner.py"),
                                "--pipeline-root", PIPELINE_ROOT], cwd="/", env=env, capture_output=True, text=True,
                               timeout=240)
    assert completed.returncode == 2, completed.stderr[-3000:]
    assert "the Kubeflow compile needs the container image" in completed.stderr
