"""A short pretraining of a fine-tuning config's model on the rendered sample captions (issue 12's learning tests).

The downstream learning tests fine-tune "from a short pretraining": :func:`short_pretraining` runs the shipped
local pretraining recipe (``configs/pretrain_local.json``: lr 3e-3, batches of 16) on its MLM and ITM (+ WRA)
tasks, 1:1, for :data:`PRETRAIN_STEPS` updates on the captions of the sample images the SNLI-VE and RefCOCO
tests render (``SampleDataConfig(num_images=160, seed=0)``), with the model the fine-tuning config names (its
``task.model`` and ``task.model_overrides``, dropout off as in the recipe), so the fine-tuning run's
``task.init=pretrained`` restores every backbone weight, the ITM head and the region-feature standardisation
statistics (computed by the pretraining on its own training records). Images held out by those tests
(``image_id % 5 == 0``) are the pretraining's eval split, so no held-out image's caption is pretrained on.

A run is cached per pytest session under ``basetemp/short_pretraining/<key>``, the key a hash of everything
that makes it (model, tasks, updates, sample data), so modules of one session that fine-tune the same model share it.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import time
from typing import Any, Dict

from uniter_tf.data.sample_data import VE_EVAL_EVERY

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
#: Updates of the short pretraining.
PRETRAIN_STEPS = 400
#: The sample the SNLI-VE and RefCOCO learning tests render (their NUM_IMAGES and seed).
SAMPLE_IMAGES = 160
SAMPLE_SEED = 0
#: Held-out images of the sample tasks (``image_id % EVAL_EVERY == 0``; RefCOCO's sample uses the same rule).
EVAL_EVERY = VE_EVAL_EVERY
#: The recipe's tasks (``task.task_ratios``): MLM + ITM only, as each pretraining task is one more traced train
#: step, most of a short run's time.
TASK_RATIOS = {"itm": 1, "mlm": 1}


def finetune_model(config_name: str) -> Dict[str, Any]:
    """``{"model": preset, "model_overrides": {...}}`` of ``configs/<config_name>``'s task."""
    task = json.loads((REPO_ROOT / "configs" / config_name).read_text())["task"]
    return {"model": task.get("model", "tiny"), "model_overrides": dict(task.get("model_overrides", {}))}


def short_pretraining(tmp_path_factory, config_name: str, *, steps: int = PRETRAIN_STEPS) -> Dict[str, Any]:
    """Runs (or reuses this session's) short pretraining of the model of ``configs/<config_name>``.

    Args:
        tmp_path_factory: pytest's session factory (the cache lives under its base temp).
        config_name: the fine-tuning config whose model is pretrained, e.g. ``"finetune_ve_tiny.json"``.
        steps: pretraining updates.

    Returns:
        ``{"run_dir": str, "evaluation": held-out pretraining metrics, "seconds": wall time when it ran (0 when
        reused), "steps": steps}``; ``run_dir`` is what a fine-tuning run's ``task.init_path`` takes.
    """
    from uniter_tf.config import UniterConfig
    from uniter_tf.data import sample_data
    from uniter_tf.data.sample_records import write_sample_pretraining_records
    from uniter_tf.training.experiment import ExperimentConfig
    from uniter_tf.training.pretrainer import Pretrainer

    model = finetune_model(config_name)
    # Pretraining never uses dropout in the local recipe; the fine-tuning sets its own (task.dropout).
    # ``ot_iterations`` is not a weight: the recipe's 10 keeps WRA cheap whatever the fine-tuning model says.
    overrides = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, **model["model_overrides"],
                 "ot_iterations": 10}
    recipe = {"model": model["model"], "model_overrides": overrides, "steps": steps, "images": SAMPLE_IMAGES,
              "seed": SAMPLE_SEED, "eval_every": EVAL_EVERY, "task_ratios": TASK_RATIOS}
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    root = tmp_path_factory.getbasetemp() / "short_pretraining" / key
    summary_file = root / "short_pretraining.json"
    if summary_file.exists():
        return {**json.loads(summary_file.read_text()), "seconds": 0.0}
    started = time.monotonic()
    sample_data.generate(str(root / "sample"), sample_data.SampleDataConfig(num_images=SAMPLE_IMAGES, seed=SAMPLE_SEED))
    model_config = UniterConfig.resolve(model["model"])
    write_sample_pretraining_records(str(root / "sample"), str(root / "records"), model_config, eval_every=EVAL_EVERY)
    records = root / "records"
    config = ExperimentConfig.from_file(str(REPO_ROOT / "configs" / "pretrain_local.json"), [
            f"task.model={json.dumps(model['model'])}", f"task.model_overrides={json.dumps(overrides)}",
            f"task.train_files={json.dumps([str(records / 'train*')])}",
            f"task.eval_files={json.dumps([str(records / 'eval*')])}", f"runtime.output_dir={root / 'run'}",
            f"task.task_ratios={json.dumps(TASK_RATIOS)}", f"trainer.num_train_steps={steps}",
            f"trainer.checkpoint_every={steps}", "trainer.eval_every=0",
            "trainer.eval_batches=4", "trainer.progress_bar=false"]).to_pretrain_config()
    evaluation = Pretrainer(config).train()["evaluation"]
    result = {"run_dir": str(root / "run"), "evaluation": {name: float(value) for name, value in evaluation.items()},
              "steps": steps}
    summary_file.write_text(json.dumps(result))
    return {**result, "seconds": time.monotonic() - started}
