"""Rendered caption records and a few-update retrieval run, as the retrieval tests build them through the CLI."""

from __future__ import annotations

import json
import pathlib
from typing import Dict, List, Sequence

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
#: The shipped local retrieval config the tests run (`uniter train --config ...`).
RETRIEVAL_CONFIG = str(REPO_ROOT / "configs" / "finetune_itm_tiny.json")


def sample_caption_records(root: pathlib.Path, num_images: int, eval_every: int) -> Dict[str, List[str]]:
    """Renders ``num_images`` sample scenes under ``root/sample`` and writes their caption records.

    Returns:
        ``write_sample_pretraining_records``'s answer: ``{"train": [...], "eval": [...], ...}`` (every
        ``eval_every``-th image held out).
    """
    from uniter_tf.config import UniterConfig
    from uniter_tf.data import sample_data
    from uniter_tf.data.sample_records import write_sample_pretraining_records

    sample_data.generate(str(root / "sample"), sample_data.SampleDataConfig(num_images=num_images, seed=0))
    return write_sample_pretraining_records(str(root / "sample"), str(root / "records"),
                                            UniterConfig.resolve("tiny"), eval_every=eval_every, num_shards=1)


def train_retrieval_run(run: pathlib.Path, train_files: Sequence[str], more_overrides: Sequence[str] = ()) -> None:
    """``uniter train --config configs/finetune_itm_tiny.json`` from scratch for 2 updates of 4 into ``run``.

    The numbers are checked by the callers, not the learning; ``more_overrides`` (``section.key=value``)
    come last and win.
    """
    from uniter_tf import cli

    overrides = [f"task.train_files={json.dumps(list(train_files))}", "task.eval_files=[]", "task.init=scratch",
                 "task.train_batch_size=4", "trainer.num_train_steps=2", "trainer.warmup_steps=1",
                 "trainer.checkpoint_every=2", "trainer.eval_every=0", "trainer.progress_bar=false",
                 f"runtime.output_dir={run}", *more_overrides]
    assert cli.main(["train", "--config", RETRIEVAL_CONFIG] + sum((["--set", item] for item in overrides), [])) == 0
