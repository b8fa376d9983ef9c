"""Runs the uniter-tf pipeline locally: LocalDagRunner, SQLite ML Metadata, Beam DirectRunner.

    python pipeline/local_runner.py                         # or: python -m pipeline.local_runner
    tfx pipeline create --engine=local --pipeline_path=pipeline/local_runner.py
    tfx run create --engine=local --pipeline_name=uniter-tf

Settings come from :mod:`pipeline.configs` (override with ``UNITER_*`` environment variables). The
sample data is generated into ``UNITER_SAMPLE_DATA_DIR`` with ``uniter sample-data`` when it is absent.

With the TFX CLI: ``tfx pipeline create`` runs this file once with a patched runner (nothing is executed) and
records the pipeline's name, root and this file's path under ``$LOCAL_HOME/<name>/`` (default
``~/tfx/local/``); ``tfx run create`` then runs this file again with ``python`` in the caller's environment,
so the ``UNITER_*`` variables of *that* command are the run's settings (the recorded root is not re-read).
It prints the run's library log (absl INFO) and exits 0, or exits 1 with ``Error while running "..."`` when
a component fails, and with ``Pipeline "<name>" does not exist.`` before a ``tfx pipeline create``.
``tests/test_pipeline_fingerprint.py`` runs the whole pipeline this way to a pushed model.

The file imports only from the installed ``pipeline`` package (``pip install -e .``): the TFX CLI runs it
as a script with ``pipeline/`` first on ``sys.path``, and nothing in that folder is named like a package it
imports (the factory is ``pipeline/definition.py``), so no ``sys.path`` edit is needed.
"""

import os
from typing import Dict, List

from absl import logging
from tfx import v1 as tfx

from pipeline import configs
from pipeline import definition as pipeline_lib

#: Sample-data size of the embedded run (``UNITER_SAMPLE_NUM_IMAGES``).
SAMPLE_NUM_IMAGES = configs.SAMPLE_NUM_IMAGES


def ensure_sample_data(data_root: str, num_images: int = SAMPLE_NUM_IMAGES, seed: int = 0,
                       presence_questions: bool = configs.SAMPLE_PRESENCE_QUESTIONS) -> str:
    """Generates the deterministic sample data into ``data_root`` unless it is already there (same size and
    question set)."""
    import json  # pylint: disable=import-outside-toplevel

    captions_path = os.path.join(data_root, "captions.json")
    if os.path.exists(os.path.join(data_root, "vqa_annotations.json")) and os.path.exists(captions_path):
        with open(captions_path, encoding="utf-8") as handle:
            existing = json.load(handle)
        if (len(existing.get("images", [])) == num_images
                and bool(existing.get("info", {}).get("presence_questions")) == bool(presence_questions)):
            return data_root
    import shutil  # pylint: disable=import-outside-toplevel

    from uniter_tf.data import sample_data  # pylint: disable=import-outside-toplevel

    # Another size was asked for: images of the old set must not stay behind in images/.
    shutil.rmtree(os.path.join(data_root, "images"), ignore_errors=True)
    counts = sample_data.generate(data_root, sample_data.SampleDataConfig(num_images=num_images, seed=seed,
                                                                          presence_questions=presence_questions))
    logging.info("generated sample data in %s: %s", data_root, counts)
    return data_root


#: NLVR2 sentence sets added to the sample root for ``UNITER_FINETUNE_TASK=nlvr2`` (train, held-out ``dev``):
#: each set is 2 sentences x 2 image pairs, so 240 / 60 statements over 480 / 120 pair images.
SAMPLE_NLVR2_SETS = (60, 15)


def ensure_task_annotations(data_root: str, task: str) -> None:
    """Writes the fine-tuning task's sample annotations into ``data_root`` when they are absent.

    ``refcoco``: the sample scenes' RefCOCO annotations (``refs.json``, ``instances.json``, the official
    forms). ``nlvr2``: rendered image pairs (:func:`uniter_tf.data.sample_nlvr2.add_to_sample_root`, the
    official ``{split}-{set}-{pair}-img0/1`` names) into ``images/`` with their boxes in ``boxes.json``, and
    ``train.json`` / ``dev.json`` (:data:`SAMPLE_NLVR2_SETS`); they are written again when ``boxes.json`` lost
    them (sample data regenerated). The sample data already holds SNLI-VE's ``snli_ve_*.jsonl``; the other
    tasks need nothing.
    """
    if task == "refcoco" and not os.path.exists(os.path.join(data_root, "refs.json")):
        from uniter_tf.data.sample_refcoco_records import write_annotations  # pylint: disable=import-outside-toplevel

        write_annotations(data_root, data_root)
    elif task == "nlvr2":
        import json  # pylint: disable=import-outside-toplevel

        from uniter_tf.data import sample_nlvr2  # pylint: disable=import-outside-toplevel

        with open(os.path.join(data_root, "boxes.json"), encoding="utf-8") as handle:
            has_pairs = "train-0-0-img0.png" in json.load(handle)
        if has_pairs and all(os.path.exists(os.path.join(data_root, name)) for name in ("train.json", "dev.json")):
            return
        train_sets, eval_sets = SAMPLE_NLVR2_SETS
        written = sample_nlvr2.add_to_sample_root(
                data_root, sample_nlvr2.SampleNlvr2Config(train_sets=train_sets, eval_sets=eval_sets))
        logging.info("added %d NLVR2 pair images and %s to %s", written["images"],
                     sorted(written["annotations"].values()), data_root)


def node_states(metadata_path: str, pipeline_name: str) -> Dict[str, List[str]]:
    """Per pipeline node, the states of its executions in ML Metadata, oldest first.

    States are MLMD's names: ``COMPLETE`` (ran), ``CACHED`` (skipped, outputs reused), ``FAILED``, ...

    Args:
        metadata_path: the SQLite MLMD file.
        pipeline_name: the pipeline (node contexts are named ``<pipeline>.<node id>``).
    """
    import ml_metadata as mlmd  # pylint: disable=import-outside-toplevel
    from ml_metadata.proto import metadata_store_pb2  # pylint: disable=import-outside-toplevel

    store = mlmd.MetadataStore(tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path))
    states: Dict[str, List[str]] = {}
    prefix = f"{pipeline_name}."
    for context in store.get_contexts_by_type("node"):
        if not context.name.startswith(prefix):
            continue
        executions = sorted(store.get_executions_by_context(context.id), key=lambda execution: execution.id)
        states[context.name[len(prefix):]] = [
                metadata_store_pb2.Execution.State.Name(execution.last_known_state) for execution in executions]
    return states


def build_local_pipeline(enable_cache: bool = True, include_pretraining: bool = True) -> tfx.dsl.Pipeline:
    """The pipeline with the embedded local settings (SQLite MLMD under the pipeline root)."""
    ensure_sample_data(configs.SAMPLE_DATA_DIR)
    ensure_task_annotations(configs.SAMPLE_DATA_DIR, configs.FINETUNE_TASK)
    os.makedirs(os.path.dirname(configs.METADATA_PATH), exist_ok=True)
    return pipeline_lib.create_pipeline(
            pipeline_name=configs.PIPELINE_NAME,
            pipeline_root=configs.PIPELINE_ROOT,
            data=configs.data_config_from_env(configs.SAMPLE_DATA_DIR),
            training=configs.training_config_from_env(include_pretraining=include_pretraining),
            serving_model_dir=configs.SERVING_MODEL_DIR,
            gate=configs.gate_config_from_env(),
            beam_pipeline_args=configs.BEAM_PIPELINE_ARGS,
            metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
                    configs.METADATA_PATH),
            enable_cache=enable_cache,
    )


def run() -> None:
    """Runs the embedded pipeline with LocalDagRunner."""
    tfx.orchestration.LocalDagRunner().run(build_local_pipeline())


if __name__ == "__main__":
    logging.set_verbosity(logging.INFO)
    run()
