"""VQA fine-tuning with ITM rehearsal (issue 11): the ITM head trains beside the VQA head when asked, only then."""

import numpy as np
import pytest

from uniter_tf.config import UniterConfig
from uniter_tf.models import vqa
from uniter_tf.testing import synthetic_vqa
from uniter_tf.training import finetune

NUM_ANSWERS = 4


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    directory = tmp_path_factory.mktemp("rehearsal")
    return synthetic_vqa.write_synthetic_vqa_records(str(directory / "train"), UniterConfig.from_preset("tiny"),
                                                     num_images=8, num_answers=NUM_ANSWERS)


def _run(tmp_path, records, task_config):
    config = finetune.FinetuneConfig(
            task="vqa", task_config={"num_answers": NUM_ANSWERS, **task_config}, model_config="tiny",
            train_files=records, output_dir=str(tmp_path), train_batch_size=4, eval_batch_size=4,
            learning_rate=1e-3, warmup_steps=0, num_train_steps=2, valid_steps=2, dropout=0.0, seed=5)
    return finetune.FinetuneRun(config)


def _itm_weights(run):
    return [variable.numpy().copy() for variable in run.itm_head.weights]


# Two small Trainer runs (~35 s of CPU together on the shared 2-core machine): slow suite.
@pytest.mark.slow
@pytest.mark.parametrize("ratio", [0.0, 1.0])
def test_itm_head_trains_only_with_rehearsal(tmp_path, records, ratio):
    task_config = {"itm_rehearsal_ratio": ratio, "itm_rehearsal_files": records} if ratio else {}
    run = _run(tmp_path, records, task_config)
    before = _itm_weights(run)
    head_before = [variable.numpy().copy() for variable in run.model.head.weights]
    assert sorted(run.streams) == (["itm", "vqa"] if ratio else ["vqa"])
    if ratio:
        assert run.sampler.counts(1, 2) == {"vqa": 1, "itm": 1}  # the seeded mix draws both streams
    run.train()
    changed = [not np.array_equal(old, new.numpy()) for old, new in zip(before, run.itm_head.weights)]
    assert all(changed) if ratio else not any(changed)
    # The VQA head trains either way.
    assert any(not np.array_equal(old, new.numpy()) for old, new in zip(head_before, run.model.head.weights))


def test_rehearsal_needs_caption_files_and_a_valid_ratio():
    with pytest.raises(ValueError, match="itm_rehearsal_files"):
        vqa.VqaTask(num_answers=3, itm_rehearsal_ratio=0.5)
    with pytest.raises(ValueError, match="itm_rehearsal_ratio"):
        vqa.VqaTask(num_answers=3, itm_rehearsal_ratio=-1, itm_rehearsal_files=["x"])
    with pytest.raises(ValueError, match="itm_rehearsal_inputs"):
        vqa.VqaTask(num_answers=3, itm_rehearsal_ratio=1, itm_rehearsal_files=["x"],
                    itm_rehearsal_inputs={"batch_sise": 4})
