"""One LocalDagRunner run of ``create_pipeline`` on a test's folder, and the evaluator's latest report."""

from __future__ import annotations

import glob
import json
import os
from typing import Any, Dict, List, Tuple


def run_pipeline_once(name: str, root: str, data, training, gate, serving_dir: str,
                      metadata_path: str) -> Tuple[Dict[str, List[str]], Dict[str, Any], str]:
    """Builds ``pipeline.definition.create_pipeline`` (in-memory DirectRunner, one worker) and runs it.

    Returns:
        ``(node states by node id, the last UniterEvaluator metrics.json as a dict, its path)``.
    """
    from tfx import v1 as tfx

    from pipeline import definition as pipeline_lib
    from pipeline import local_runner

    pipeline = pipeline_lib.create_pipeline(
            pipeline_name=name, pipeline_root=root, data=data, training=training, serving_model_dir=serving_dir,
            gate=gate, beam_pipeline_args=["--direct_running_mode=in_memory", "--direct_num_workers=1"],
            metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path))
    tfx.orchestration.LocalDagRunner().run(pipeline)
    reports = sorted(glob.glob(os.path.join(root, "UniterEvaluator", "evaluation", "*", "metrics.json")),
                     key=lambda path: int(path.split(os.sep)[-2]))
    with open(reports[-1], encoding="utf-8") as handle:
        return local_runner.node_states(metadata_path, name), json.load(handle), reports[-1]
