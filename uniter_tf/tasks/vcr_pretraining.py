"""VCR second-stage pretraining (spec §2.3, §3.10) as a Task: MLM, MRFR, MRC-kl on VCR records, no ITM.

The pretraining task (:class:`~uniter_tf.tasks.pretraining.PretrainingTask`) with VCR streams
(:func:`uniter_tf.data.vcr_pretraining_inputs.build_vcr_pretraining_dataset`: both text formats, MLM
masked per segment) and the VCR model sizes (word table + 81 reference rows, 4 token types). From a
first-stage model (``init`` ``pretrained`` / ``official`` / ``bert``) it does what the official
``UniterForPretrainingForVCR`` does after loading (``pretrain_vcr.py:227-231``):

* ``init_type_embedding()``: type rows ``[T0, T1, T0, T0]``;
* ``init_word_embedding(81)``: the word rows, then 81 fresh N(0, initializer_range) rows, and the **MLM head
  rebuilt from scratch** (new transform, zero bias over the grown vocabulary, decoder tied to the new
  table): the first stage's MLM transform is not kept; the MRFR, MRC and ITM heads are.

The run directory is a pretraining run whose ``model_config.json`` has the VCR sizes; ``vcr`` fine-tuning
with ``init: pretrained`` and ``init_path`` = this run starts from it as it is
(:meth:`uniter_tf.models.vcr_task.VcrTask.initialize`).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np
import tensorflow as tf

from uniter_tf.tasks.base_task import register_task
from uniter_tf.tasks.pretraining import PretrainingTask

#: The official 2nd-stage mix of uniter-base (mlm:mrfr:mrckl = 2:1:1, spec §3.9).
VCR_TASK_RATIOS = {"mlm": 2, "mrfr": 1, "mrckl": 1}


@register_task("vcr_pretraining")  # a literal: tests read the registered names from the source
class VcrPretrainingTask(PretrainingTask):
    """Second-stage pretraining on VCR records (module docstring).

    Args:
        formats: text formats trained, ``["qa", "qar"]`` by default (the official loader bug trains only
            ``qar``, spec §7.25).
        **kwargs: :class:`PretrainingTask` parameters (``task_ratios`` default 2:1:1 over mlm/mrfr/mrckl;
            ``train_datasets`` is not supported).

    Raises:
        ValueError: an ITM ratio, ``train_datasets``, or an unknown format.
    """

    name = "vcr_pretraining"
    EXTRA_PARAMS = ("formats",)

    def __init__(self, formats=("qa", "qar"), task_ratios: Optional[Mapping[str, float]] = None, **kwargs):
        from uniter_tf.data.vcr_pretraining_inputs import FORMATS, VCR_PRETRAINING_TASKS

        ratios = dict(VCR_TASK_RATIOS if task_ratios is None else task_ratios)
        super().__init__(task_ratios=ratios, **kwargs)
        extra = sorted(task for task, ratio in ratios.items() if float(ratio) > 0 and task not in VCR_PRETRAINING_TASKS)
        if extra:
            raise ValueError(f"task 'vcr_pretraining' has no {extra} (second stage: {VCR_PRETRAINING_TASKS}, no ITM)")
        if self.train_datasets:
            raise ValueError("task 'vcr_pretraining' reads train_files (VCR records), not train_datasets")
        formats = [formats] if isinstance(formats, str) else list(formats)
        if not formats or sorted(set(formats) - set(FORMATS)):
            raise ValueError(f"task 'vcr_pretraining': formats must be among {sorted(FORMATS)}, got {formats}")
        self.formats = formats

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config["formats"] = list(self.formats)
        return config

    def model_config(self):
        """The run's config grown to the VCR tables (a config that has them already is kept)."""
        from uniter_tf.models.official_init import VCR_NUM_SPECIAL_TOKENS, VCR_TYPE_ROWS

        if self._model_config is None:
            config = PretrainingTask.model_config(self)
            if config.type_vocab_size == 2:
                config = config.replace(vocab_size=config.vocab_size + VCR_NUM_SPECIAL_TOKENS,
                                        type_vocab_size=len(VCR_TYPE_ROWS))
            elif config.type_vocab_size != len(VCR_TYPE_ROWS):
                raise ValueError(f"task 'vcr_pretraining': the model has {config.type_vocab_size} token types; "
                                 "VCR needs a standard (2) or a VCR (4) type table")
            self._model_config = config
        return self._model_config

    def _standard_config(self):
        from uniter_tf.models.official_init import VCR_NUM_SPECIAL_TOKENS

        config = self.model_config()
        return config.replace(vocab_size=config.vocab_size - VCR_NUM_SPECIAL_TOKENS, type_vocab_size=2)

    def build_inputs(self, stream: str, input_context=None, seed: int = 42, training: bool = True):
        from uniter_tf.data.vcr_pretraining_inputs import build_vcr_pretraining_dataset

        del training
        return build_vcr_pretraining_dataset(stream, self.train_files, self.model_config(), self.input_config,
                                             seed=seed, input_context=input_context, formats=self.formats)

    def initialize(self, model, init: Optional[str] = None, init_path: Optional[str] = None,
                   log: Callable[[str], None] = print) -> None:
        """``scratch``: as :meth:`PretrainingTask.initialize` (the region-feature statistics of the training
        records, with ``region_feature_standardization``). Otherwise the first-stage model is initialised at
        its own sizes, then grown into ``model`` as ``init_type_embedding()`` + ``init_word_embedding(81)``
        (module docstring), its region-feature statistics carried over."""
        from uniter_tf.models.vcr_task import grow_backbone_for_vcr

        init = init or self.params["init"]
        init_path = init_path if init_path is not None else self.params["init_path"]
        if init == "scratch":
            PretrainingTask.initialize(self, model, init, init_path, log=log)
            return
        source = PretrainingTask.build_model(self, self._standard_config())
        restored = None
        if init == "pretrained":  # the whole first-stage model, heads included (official: load_state_dict)
            from uniter_tf import runs  # pylint: disable=import-outside-toplevel

            try:
                restored = runs.restore_pretraining_model(source, init_path)
                log(f"initialised the backbone and the pretraining heads from {restored}")
            except AssertionError:  # a backbone-only checkpoint: the heads stay fresh
                restored = None
        if restored is None:
            PretrainingTask.initialize(self, source, init, init_path, log=log)
        grow_backbone_for_vcr(source.backbone, model.backbone, seed=0)
        for name in ("mrfr_head", "mrc_head", "itm_head"):  # kept from the first stage, as official
            copy_layer_weights(getattr(source, name), getattr(model, name))
        log("grew the word table by 81 reference rows and the type table to 4 rows; MLM head rebuilt "
            "(init_type_embedding / init_word_embedding(81))")

    def evaluate(self, model, files: Optional[List[str]] = None, max_batches: Optional[int] = None, *,
                 seed: int = 43, output_dir: Optional[str] = None, step: Optional[int] = None) -> Dict[str, float]:
        """Each task's mean loss on held-out VCR records, ``mlm_accuracy`` and ``mrckl_accuracy``."""
        from uniter_tf.data import pretraining_inputs
        from uniter_tf.data.vcr_pretraining_inputs import build_vcr_pretraining_dataset

        del output_dir, step
        files = files or self.eval_files
        options = pretraining_inputs.PretrainingInputConfig(**dict(self.input_config.__dict__, shuffle_buffer=0))
        results: Dict[str, float] = {}
        for task in self.active_tasks():
            dataset = build_vcr_pretraining_dataset(task, files, model.config, options, seed=seed, num_epochs=1,
                                                    formats=self.formats)
            if max_batches is not None:
                dataset = dataset.take(max_batches)
            sums = {"loss": 0.0, "batches": 0.0, "correct": 0.0, "count": 0.0}
            for batch in dataset:
                outputs = model(batch, task=task, training=False)
                sums["loss"] += float(outputs["loss"])
                sums["batches"] += 1
                if task == "mlm":
                    weights = outputs["mlm_weights"].numpy()
                    predictions = np.argmax(outputs["mlm_logits"].numpy(), axis=-1)
                    sums["correct"] += float(np.sum((predictions == outputs["mlm_labels"].numpy()) * weights))
                    sums["count"] += float(np.sum(weights))
                elif task == "mrckl":
                    weights = outputs["mrc_weights"].numpy()
                    predictions = np.argmax(outputs["mrc_logits"].numpy(), axis=-1)
                    targets = np.argmax(outputs["mrc_soft_labels"].numpy(), axis=-1)
                    sums["correct"] += float(np.sum((predictions == targets) * weights))
                    sums["count"] += float(np.sum(weights))
            if not sums["batches"]:
                continue
            results[f"{task}_loss"] = sums["loss"] / sums["batches"]
            if task in ("mlm", "mrckl"):
                results[f"{task}_accuracy"] = sums["correct"] / max(sums["count"], 1.0)
        if not results:
            raise ValueError(f"the eval files {files} hold no labelled VCR question")
        return results


def copy_layer_weights(source, target) -> None:
    """Assigns every weight of ``source`` to the same-named weight of ``target`` (same shapes)."""
    target_weights = {weight.path.split("/", 1)[-1]: weight for weight in target.weights}
    for weight in source.weights:
        key = weight.path.split("/", 1)[-1]
        if key not in target_weights or tuple(target_weights[key].shape) != tuple(weight.shape):
            raise ValueError(f"cannot copy {weight.path} {list(weight.shape)} into {target.name}")
        target_weights[key].assign(tf.cast(weight, target_weights[key].dtype))


__all__ = ["VcrPretrainingTask", "VCR_TASK_RATIOS", "copy_layer_weights"]
