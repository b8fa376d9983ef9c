"""UNITER pretraining (spec §3) as a :class:`~uniter_tf.tasks.base_task.Task`: the four-task mix.

Streams: with ``train_files`` one stream per pretraining task (``"itm"``, ``"mlm"``, ...) mixed by
``task_ratios``; with ``train_datasets`` one stream per (task, dataset) pair, ``"itm/coco"``, mixed by each
dataset's ratios (spec §3.9). Each stream has its own input pipeline
(:func:`uniter_tf.data.pretraining_inputs.build_task_dataset`), so ITM negatives come from the images of
the stream's dataset. Under ``mixed_float16`` every pretraining task has its own dynamic loss scale (the
official per-task apex scalers): the loss group of ``"itm/coco"`` is ``"itm"``.
"""

from __future__ import annotations

import zlib
from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np
import tensorflow as tf

from uniter_tf import runs
from uniter_tf.data import pretraining_inputs
from uniter_tf.data.pretraining_inputs import TASKS, PretrainingInputConfig
from uniter_tf.tasks.base_task import COMMON_PARAMS, Task, check_common_params, register_task

#: The official all-data mix (itm:mlm:mrfr:mrckl = 30:40:20:20 of 110 = 3:4:2:2), spec §3.9.
DEFAULT_TASK_RATIOS = {"itm": 3, "mlm": 4, "mrfr": 2, "mrckl": 2}
#: The pretraining task's own parameters (besides the common ones).
OWN_PARAMS = ("train_datasets", "inputs", "task_ratios", "max_masked_tokens", "max_masked_regions")


def mix_ratios(task_ratios: Mapping[str, float], train_datasets) -> Dict[str, float]:
    """The mixing ratio of every input stream: ``task`` keys when there are no ``train_datasets`` (one
    dataset mixed by ``task_ratios``), ``task/dataset`` keys otherwise (see :func:`mix_task`)."""
    if not train_datasets:
        return {task: float(task_ratios[task]) for task in TASKS if float(task_ratios.get(task, 0)) > 0}
    return {f"{task}/{entry['name']}": float(entry["task_ratios"][task])
            for entry in train_datasets for task in TASKS
            if float(entry["task_ratios"].get(task, 0)) > 0}


def mix_task(stream: str) -> str:
    """The pretraining task of a stream: ``"itm/coco"`` → ``"itm"``, ``"itm"`` → ``"itm"``."""
    return stream.split("/", 1)[0]


def check_task_ratios(ratios: Any, where: str) -> None:
    """Raises ValueError (naming ``where``) unless ``ratios`` maps known tasks to non-negative numbers."""
    if not isinstance(ratios, Mapping):
        raise ValueError(f"{where} must be an object of task → ratio, got {ratios!r}")
    unknown_tasks = sorted(set(ratios) - set(TASKS))
    if unknown_tasks:
        raise ValueError(f"{where}: unknown tasks {unknown_tasks}; known: {TASKS}")
    try:
        values = [float(ratio) for ratio in ratios.values()]
    except (TypeError, ValueError):
        raise ValueError(f"{where}: ratios must be numbers, got {dict(ratios)}") from None
    if not values or any(value < 0 for value in values) or sum(values) <= 0:
        raise ValueError(f"{where} must be non-negative with a positive sum, got {dict(ratios)}")


def checked_dataset(entry: Any, index: int) -> Dict[str, Any]:
    """One ``train_datasets`` entry, validated (errors name ``train_datasets[index]``)."""
    where = f"train_datasets[{index}]"
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where} must be an object with name, files and task_ratios, got {entry!r}")
    unknown = sorted(set(entry) - {"name", "files", "task_ratios"})
    missing = sorted({"name", "files", "task_ratios"} - set(entry))
    if unknown or missing:
        raise ValueError(f"{where}: unknown keys {unknown}, missing keys {missing} "
                         "(each dataset has name, files and task_ratios)")
    name = entry["name"]
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"{where}.name must be a non-empty string without '/', got {name!r}")
    files = [entry["files"]] if isinstance(entry["files"], str) else entry["files"]
    if not isinstance(files, list) or not files or not all(isinstance(path, str) and path for path in files):
        raise ValueError(f"{where}.files must be a non-empty list of file patterns, got {entry['files']!r}")
    check_task_ratios(entry["task_ratios"], f"{where}.task_ratios")
    return {"name": name, "files": list(files), "task_ratios": dict(entry["task_ratios"])}


@register_task("pretraining")
class PretrainingTask(Task):
    """The pretraining mix (ITM with optimal transport, MLM, MRFR, MRC-kl).

    Args:
        model: a ``UniterConfig`` preset name, JSON path or dict.
        model_overrides: ``UniterConfig`` fields to change.
        train_files: canonical GZIP TFRecord shards of one dataset (tasks mixed by ``task_ratios``).
        eval_files: held-out shards (may be empty).
        init: ``scratch``, ``bert``, ``official`` or ``pretrained``.
        init_path: the file or directory of ``init``.
        train_datasets: instead of ``train_files``, ``[{"name", "files", "task_ratios"}]`` (spec §3.9).
        inputs: :class:`~uniter_tf.data.pretraining_inputs.PretrainingInputConfig` fields.
        task_ratios: task → mix ratio (with ``train_files``).
        max_masked_tokens: static K of masked tokens per example (XLA); None: dynamic.
        max_masked_regions: static K of masked regions per example (XLA); None: dynamic.

    Raises:
        ValueError: an invalid parameter (named).
    """

    name = "pretraining"
    #: Parameters a subclass adds to COMMON_PARAMS + OWN_PARAMS (accepted by :meth:`from_config`).
    EXTRA_PARAMS: tuple = ()

    def __init__(self, model: Any = "tiny", model_overrides: Optional[Mapping[str, Any]] = None,
                 train_files: Any = (), eval_files: Any = (), init: str = "scratch", init_path: str = "",
                 train_datasets: Any = (), inputs: Optional[Mapping[str, Any]] = None,
                 task_ratios: Optional[Mapping[str, float]] = None, max_masked_tokens: Optional[int] = None,
                 max_masked_regions: Optional[int] = None):
        self._task_params = check_common_params(
                {"model": model, "model_overrides": model_overrides or {}, "train_files": train_files,
                 "eval_files": eval_files, "init": init, "init_path": init_path}, self.name)
        self.task_ratios = dict(DEFAULT_TASK_RATIOS if task_ratios is None else task_ratios)
        check_task_ratios(self.task_ratios, "task_ratios")
        self.train_datasets = [checked_dataset(entry, index) for index, entry in enumerate(train_datasets or [])]
        names = [entry["name"] for entry in self.train_datasets]
        if len(set(names)) != len(names):
            raise ValueError(f"train_datasets: dataset names must be unique, got {names}")
        if self.train_datasets and self._task_params["train_files"]:
            raise ValueError("give either train_files (one dataset, mixed by task_ratios) or train_datasets "
                             "(a mix per dataset), not both")
        self.inputs = dict(inputs or {})
        # Validated now, so a typo fails before any TensorFlow work.
        self.input_config = PretrainingInputConfig.from_dict(self.inputs)
        for key, value in (("max_masked_tokens", max_masked_tokens), ("max_masked_regions", max_masked_regions)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"task {self.name!r}: {key} must be a positive integer or null, got {value!r}")
        self.max_masked_tokens = max_masked_tokens
        self.max_masked_regions = max_masked_regions
        self._model_config = None

    # ----------------------------------------------------------------------------------- config
    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "PretrainingTask":
        """Builds the task from its parameters (``_``-prefixed keys are comments).

        Raises:
            ValueError: unknown keys (named) or invalid values.
        """
        values = {key: value for key, value in dict(config).items() if not str(key).startswith("_")}
        known = COMMON_PARAMS + OWN_PARAMS + cls.EXTRA_PARAMS
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown parameters {unknown} for task {cls.name!r}; known: {sorted(known)}")
        return cls(**values)

    def get_config(self) -> Dict[str, Any]:
        """Every parameter of the task (common and own)."""
        return {**self.params, "train_datasets": [dict(entry) for entry in self.train_datasets],
                "inputs": dict(self.inputs), "task_ratios": dict(self.task_ratios),
                "max_masked_tokens": self.max_masked_tokens, "max_masked_regions": self.max_masked_regions}

    def model_config(self):
        # Resolved once: the model and every input pipeline must agree on it.
        if self._model_config is None:
            self._model_config = super().model_config()
        return self._model_config

    # ---------------------------------------------------------------------------------- streams
    def stream_ratios(self) -> Dict[str, float]:
        """``task`` streams for ``train_files``, ``task/dataset`` streams for ``train_datasets``."""
        return mix_ratios(self.task_ratios, self.train_datasets)

    def active_tasks(self) -> List[str]:
        """Pretraining tasks with a positive ratio (in any dataset), in :data:`TASKS` order."""
        return sorted({mix_task(key) for key in self.stream_ratios()}, key=TASKS.index)

    def stream_loss_group(self, stream: str) -> str:
        return mix_task(stream)

    def files_for(self, stream: str) -> List[str]:
        """The training files of ``stream``."""
        if "/" not in stream:
            return self.train_files
        name = stream.split("/", 1)[1]
        for entry in self.train_datasets:
            if entry["name"] == name:
                return list(entry["files"])
        raise KeyError(f"no training dataset named {name!r}")

    def build_inputs(self, stream: str, input_context=None, seed: int = 42, training: bool = True):
        del training  # pretraining streams are always the endless, shuffled training pipelines
        task = mix_task(stream)
        # Streams of the same task on different datasets must not share masks and negatives.
        stream_seed = seed if task == stream else seed + zlib.crc32(stream.encode("utf-8"))
        return pretraining_inputs.build_task_dataset(task, self.files_for(stream), self.model_config(),
                                                     self.input_config, seed=stream_seed,
                                                     input_context=input_context)

    # ------------------------------------------------------------------------------ model, loss
    def build_model(self, model_config=None, *, dtype=None):
        """A :class:`~uniter_tf.models.pretraining_model.UniterPretrainingModel` (its heads take the
        backbone's dtype policy)."""
        from uniter_tf.models.backbone import UniterBackbone  # pylint: disable=import-outside-toplevel
        from uniter_tf.models.pretraining_model import UniterPretrainingModel  # pylint: disable=import-outside-toplevel

        model_config = model_config or self.model_config()
        backbone = UniterBackbone(model_config, dtype=dtype) if dtype else UniterBackbone(model_config)
        return UniterPretrainingModel(backbone, max_masked_tokens=self.max_masked_tokens,
                                      max_masked_regions=self.max_masked_regions)

    def compute_batch_loss(self, model, stream: str, batch, training: bool):
        return model.compute_task_loss(mix_task(stream), batch, training=training)

    def batch_size(self, batch):
        return tf.shape(batch[pretraining_inputs.TOKEN_IDS])[0]

    def initialize(self, model, init: Optional[str] = None, init_path: Optional[str] = None,
                   log: Callable[[str], None] = print) -> None:
        from uniter_tf.training import checkpointing  # pylint: disable=import-outside-toplevel

        init = init or self.params["init"]
        checkpointing.initialize_backbone(model, init, init_path if init_path is not None else self.params["init_path"],
                                          log=log)
        if init != "pretrained" and model.backbone.config.region_feature_standardization:
            # A new model: the standardisation's statistics come from its training records, once; a pretrained
            # backbone brings its own (non-trainable weights of the checkpoint).
            from uniter_tf.data import feature_stats  # pylint: disable=import-outside-toplevel

            files = list(self.train_files) + [pattern for entry in self.train_datasets for pattern in entry["files"]]
            feature_stats.initialize_standardization(model.backbone, files, log=log)

    def checkpoint_items(self, model) -> Dict[str, Any]:
        """``{"model": {backbone.<path>, heads.<path>}}``, the pretraining layout of :mod:`uniter_tf.runs`."""
        return {runs.MODEL_KEY: runs.model_variable_tree(model)}

    def write_run_files(self, output_dir: str, model_config, training_config: Mapping[str, Any]) -> None:
        # The run directory names its model, so `uniter export` / a resume needs no config.
        del training_config
        runs.write_model_config(output_dir, model_config)

    def evaluate(self, model, files: Optional[List[str]] = None, max_batches: Optional[int] = None, *,
                 seed: int = 43, output_dir: Optional[str] = None, step: Optional[int] = None) -> Dict[str, float]:
        """:func:`evaluate_pretraining` of every active task, then the evaluation library's figures.

        ``itm_accuracy`` (and the retrieval recalls) are the library's (:func:`uniter_tf.evaluation.evaluate`:
        every caption with its own image and with the next image), what ``uniter evaluate`` and the TFX
        evaluator report on the same records; the accuracy on the ITM stream's sampled negatives stays as
        ``itm_sampled_accuracy``.

        Args:
            model: the pretraining model.
            files: eval file patterns (default: the task's eval files).
            max_batches: batches per stream, and ``max_batches × batch_size`` records for the library; None:
                the whole split.
            seed: the masking / negative-sampling seed of the streams.
            output_dir: unused.
            step: unused.
        """
        import itertools  # pylint: disable=import-outside-toplevel

        from uniter_tf import evaluation  # pylint: disable=import-outside-toplevel

        del output_dir, step
        files = files or self.eval_files
        results = evaluate_pretraining(model, files, self.active_tasks(), self.input_config, seed=seed,
                                       max_batches=max_batches)
        if "itm_accuracy" in results:
            results["itm_sampled_accuracy"] = results.pop("itm_accuracy")
        max_records = None if max_batches is None else max_batches * self.input_config.batch_size
        scorer = evaluation.keras_scorer(model.backbone, model.itm_head, model.config,
                                         max_text_length=self.input_config.max_text_length)
        records = evaluation.EvalRecords(itertools.islice(evaluation.iter_serialized_records(files), max_records))
        results.update(evaluation.evaluate(scorer, records, self.input_config.batch_size, has_vqa_head=False))
        return results


def evaluate_pretraining(model, files, tasks, input_config, *, seed: int = 43,
                         max_batches: Optional[int] = 20) -> Dict[str, float]:
    """Evaluates a pretraining model on held-out canonical records, pooled over items (official metrics).

    Each task's stream reads ``max_batches`` batches (None: one pass over the files).

    Returns:
        ``mlm_accuracy`` (over masked tokens), ``itm_accuracy``, ``ot_positive_mean`` /
        ``ot_negative_mean`` (mean OT distance of matched / mismatched pairs), ``mrfr_loss``,
        ``mrckl_accuracy`` and each task's mean ``{task}_loss``, for the tasks given.
    """
    options = dict(input_config.__dict__)
    options["shuffle_buffer"] = 0
    eval_options = pretraining_inputs.PretrainingInputConfig(**options)
    results: Dict[str, float] = {}
    for task in tasks:
        dataset = pretraining_inputs.build_task_dataset(task, files, model.config, eval_options, seed=seed,
                                                        num_epochs=1)
        if max_batches is not None:
            dataset = dataset.take(max_batches)
        # One trace per task: the signature keeps the bucketed dims unknown.
        forward = tf.function(lambda batch, task=task: model(batch, task=task, training=False),
                              input_signature=[dataset.element_spec])
        sums: Dict[str, float] = {}

        def add(name, value):
            sums[name] = sums.get(name, 0.0) + float(value)

        for batch in dataset:
            outputs = forward(batch)
            add("loss", outputs["loss"])
            add("batches", 1)
            if task == "mlm":
                weights = outputs["mlm_weights"].numpy()
                predictions = np.argmax(outputs["mlm_logits"].numpy(), axis=-1)
                add("mlm_correct", np.sum((predictions == outputs["mlm_labels"].numpy()) * weights))
                add("mlm_count", np.sum(weights))
            elif task == "itm":
                labels = batch[pretraining_inputs.ITM_LABELS].numpy()
                predictions = np.argmax(outputs["itm_logits"].numpy(), axis=-1)
                add("itm_correct", np.sum(predictions == labels))
                add("itm_count", labels.size)
                if "ot_distance" in outputs:
                    distance = outputs["ot_distance"].numpy()
                    add("ot_positive_sum", np.sum(distance[labels == 1]))
                    add("ot_positive_count", np.sum(labels == 1))
                    add("ot_negative_sum", np.sum(distance[labels == 0]))
                    add("ot_negative_count", np.sum(labels == 0))
            elif task in ("mrckl", "mrc"):
                weights = outputs["mrc_weights"].numpy()
                predictions = np.argmax(outputs["mrc_logits"].numpy(), axis=-1)
                targets = np.argmax(outputs["mrc_soft_labels"].numpy(), axis=-1)
                add("mrc_correct", np.sum((predictions == targets) * weights))
                add("mrc_count", np.sum(weights))
        if not sums.get("batches"):
            continue
        results[f"{task}_loss"] = sums["loss"] / sums["batches"]
        if task == "mlm":
            results["mlm_accuracy"] = sums["mlm_correct"] / max(sums["mlm_count"], 1.0)
        elif task == "itm":
            results["itm_accuracy"] = sums["itm_correct"] / max(sums["itm_count"], 1.0)
            if "ot_positive_count" in sums:
                results["ot_positive_mean"] = sums["ot_positive_sum"] / max(sums["ot_positive_count"], 1.0)
                results["ot_negative_mean"] = sums["ot_negative_sum"] / max(sums["ot_negative_count"], 1.0)
        elif task in ("mrckl", "mrc"):
            results[f"{task}_accuracy"] = sums["mrc_correct"] / max(sums["mrc_count"], 1.0)
    return results


__all__ = ["PretrainingTask", "evaluate_pretraining", "mix_task", "DEFAULT_TASK_RATIOS", "OWN_PARAMS"]
