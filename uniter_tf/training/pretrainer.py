"""The multi-task UNITER pretraining loop (spec §3.8): a custom train step under ``tf.distribute``.

One optimizer update = ``gradient_accumulation_steps`` micro-batches of **one** task (drawn by
:class:`~uniter_tf.training.task_sampler.TaskSampler`). Per update:

1. each replica computes the task loss of its micro-batch (mean, official reduction) and its gradients
   (scaled by the task's dynamic loss scale under ``mixed_float16``); micro-batch gradients are **summed**
   (official: no division by the accumulation count);
2. gradients are all-reduced (sum) and divided by the number of replicas: the average of per-replica mean
   gradients, as Horovod's averaging all-reduce in the official code;
3. the loss scale is removed, non-finite gradients skip the update (and halve that task's scale);
4. global-norm clipping at ``grad_norm``; AdamW (:class:`~uniter_tf.training.optimizer.AdamW`) with the
   rate of the 1-based update number (:class:`~uniter_tf.training.schedule.LinearWarmupLinearDecay`).

Keras ``fit`` is not used (it fails under MultiWorkerMirrored with Keras 3); the loop is plain Python over
``tf.function`` steps, one trace per task (and per accumulation phase).

Resuming: the run state (model, optimizer moments, step, loss scales, dropout seed states) is checkpointed
by a ``tf.train.CheckpointManager``. The input position is restored by **replay**: the pipelines are pure
functions of the seed (:mod:`uniter_tf.data.pretraining_inputs`) and the task of every update is a function
of ``(seed, step)``, so the number of batches each task consumed is known from the step alone and the
pipelines ``skip`` them. This works for every strategy (distributed iterators cannot be checkpointed) and
keeps shuffle buffers out of the checkpoints.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import tensorflow as tf

from uniter_tf import runs
from uniter_tf.data import pretraining_inputs
from uniter_tf.training import checkpointing
from uniter_tf.training.optimizer import AdamW, DynamicLossScale, exempt_from_weight_decay
from uniter_tf.training.performance import bfloat16_warning
from uniter_tf.training.pretrain_config import PretrainConfig, mix_task
from uniter_tf.training.schedule import LinearWarmupLinearDecay
from uniter_tf.training.strategy import build_strategy, is_chief
from uniter_tf.training.task_sampler import TaskSampler

METRICS_FILE = "metrics.jsonl"
# ``metrics.jsonl`` lines of held-out evaluations carry this task name.
EVAL_TASK = "eval"
EVAL_CURVES = ("itm_accuracy", "mlm_accuracy", "mrckl_accuracy", "mrc_accuracy", "ot_positive_mean",
               "ot_negative_mean")
SUMMARY_FILE = "summary.json"
LOSS_CURVES_FILE = "loss_curves.png"


def _local_replica_count(strategy: tf.distribute.Strategy) -> int:
    # Replicas fed by this worker's input pipeline (distribute_datasets_from_function deals its
    # consecutive batches to them); the default strategy has no worker_devices.
    try:
        return max(1, len(strategy.extended.worker_devices))
    except RuntimeError:
        return 1


def _seed_generator_states(model) -> Dict[str, tf.Variable]:
    """The state variables of the model's Keras seed generators (dropout RNG), for the checkpoint.

    Keras 3 does not track ``SeedGenerator`` states as checkpoint dependencies, so a resumed run would
    restart its dropout streams; saving them makes the resumed run draw the masks it would have drawn.
    """
    import keras

    states: Dict[str, tf.Variable] = {}
    for layer in model._flatten_layers(include_self=True):
        for value in vars(layer).values():
            if isinstance(value, keras.random.SeedGenerator):
                states[f"seed_{len(states)}"] = getattr(value.state, "value", value.state)
    return states


def _set_global_seed(seed: int) -> None:
    import keras

    keras.utils.set_random_seed(seed)


class Pretrainer:
    """Builds the model, optimizer, inputs and checkpoints of a pretraining run, and runs it.

    Args:
        config: the run configuration.
        strategy: a strategy to use instead of the one named in ``config`` (tests).
        log: where progress messages go (default ``print``).
    """

    def __init__(self, config: PretrainConfig, strategy: Optional[tf.distribute.Strategy] = None,
                 log: Callable[[str], None] = print):
        import keras

        from uniter_tf.config import UniterConfig
        from uniter_tf.models.backbone import UniterBackbone
        from uniter_tf.models.pretraining_model import UniterPretrainingModel

        self.config = config
        self.log = log
        self.strategy = strategy or build_strategy(config.strategy, tpu_address=config.tpu_address,
                                                   logical_cpus=config.logical_cpus)
        self.is_chief = is_chief(self.strategy)
        self.model_config = UniterConfig.resolve(config.model).replace(**config.model_overrides)
        self.input_config = config.input_config()
        # One input stream per mixing key: a task (train_files) or a (task, dataset) pair (train_datasets).
        self.sampler = TaskSampler(config.mix_ratios(), config.seed)
        self.mix_keys = self.sampler.tasks
        self.tasks = config.active_tasks()
        self.num_replicas = self.strategy.num_replicas_in_sync
        self.local_replicas = _local_replica_count(self.strategy)
        self.float16 = config.precision == "mixed_float16"
        # Said before anything is built: bf16 without bf16 hardware is a slow-down, not a speed-up.
        slow_bfloat16 = bfloat16_warning(config.precision)
        if slow_bfloat16:
            self.log(slow_bfloat16)

        _set_global_seed(config.seed)
        previous_policy = keras.config.dtype_policy()
        keras.config.set_dtype_policy(config.precision)
        try:
            with self.strategy.scope():
                backbone = UniterBackbone(self.model_config)
                self.model = UniterPretrainingModel(
                        backbone, max_masked_tokens=config.max_masked_tokens,
                        max_masked_regions=config.max_masked_regions)
                self.schedule = LinearWarmupLinearDecay(config.learning_rate, config.warmup_steps,
                                                        config.num_train_steps)
                self.optimizer = AdamW(self.schedule, beta_1=config.beta_1, beta_2=config.beta_2,
                                       epsilon=config.epsilon, weight_decay=config.weight_decay,
                                       exempt=exempt_from_weight_decay)
                self.variables = list(self.model.trainable_variables)
                self.optimizer.build(self.variables)
                self.global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
                self.loss_scales = {task: DynamicLossScale(name=f"loss_scale_{task}") for task in self.tasks} \
                    if self.float16 else {}
                self.accumulators = []
                if config.gradient_accumulation_steps > 1:
                    self.accumulators = [
                            tf.Variable(tf.zeros(variable.shape, tf.float32), trainable=False,
                                        synchronization=tf.VariableSynchronization.ON_READ,
                                        aggregation=tf.VariableAggregation.SUM, name=f"accumulator_{index}")
                            for index, variable in enumerate(self.variables)]
        finally:
            keras.config.set_dtype_policy(previous_policy)

        self.checkpoint = tf.train.Checkpoint(
                **{checkpointing.MODEL_KEY: checkpointing.model_variable_tree(self.model)}, optimizer=self.optimizer, global_step=self.global_step,
                loss_scales=tf.train.Checkpoint(**self.loss_scales) if self.loss_scales else tf.train.Checkpoint(),
                dropout_rng=tf.train.Checkpoint(**_seed_generator_states(self.model)))
        self.manager = checkpointing.make_checkpoint_manager(self.checkpoint, config.output_dir,
                                                             config.keep_checkpoints, self.strategy)
        self._step_functions: Dict[Any, Callable] = {}
        self._iterators: Dict[str, Any] = {}
        self.restored_step = 0

    # ------------------------------------------------------------------------------------ state
    def restore_or_initialize(self) -> int:
        """Resumes from the latest checkpoint of ``output_dir``, or initialises the weights (``init``).

        Returns:
            The step the run continues from (0 for a fresh run).
        """
        latest = self.manager.latest_checkpoint
        if latest:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
            self.restored_step = int(self.global_step.numpy())
            self.log(f"resumed from {latest} at step {self.restored_step}")
        else:
            checkpointing.initialize_backbone(self.model, self.config.init, self.config.init_path, log=self.log)
            self.restored_step = 0
        return self.restored_step

    def consumed_batches(self, step: int) -> Dict[str, int]:
        """Per mixing key, how many per-replica batches its pipeline on this worker delivered before ``step``."""
        counts = self.sampler.counts(1, step) if step > 0 else {key: 0 for key in self.mix_keys}
        return {key: count * self.config.gradient_accumulation_steps * self.local_replicas
                for key, count in counts.items()}

    def _iterator(self, mix_key: str):
        if mix_key not in self._iterators:
            skip = self.consumed_batches(self.restored_step)[mix_key]
            task, files = mix_task(mix_key), self.config.files_for(mix_key)
            # Streams of the same task on different datasets must not share masks and negatives.
            seed = self.config.seed if task == mix_key else self.config.seed + zlib.crc32(mix_key.encode("utf-8"))

            def dataset_fn(input_context):
                dataset = pretraining_inputs.build_task_dataset(
                        task, files, self.model_config, self.input_config, seed=seed, input_context=input_context)
                return dataset.skip(skip) if skip else dataset

            distributed = self.strategy.distribute_datasets_from_function(dataset_fn)
            self._iterators[mix_key] = iter(distributed)
        return self._iterators[mix_key]

    # ------------------------------------------------------------------------------ step logic
    def _replica_gradients(self, task: str, batch):
        """Loss, metrics and (loss-scaled) float32 gradients of one micro-batch on this replica."""
        with tf.GradientTape() as tape:
            loss, metrics = self.model.compute_task_loss(task, batch, training=True)
            scaled_loss = loss * self.loss_scales[task].scale if self.float16 else loss
        gradients = tape.gradient(scaled_loss, self.variables)
        gradients = [None if gradient is None else tf.cast(tf.convert_to_tensor(gradient), tf.float32)
                     for gradient in gradients]
        metrics = dict(metrics)
        metrics["examples"] = tf.cast(tf.shape(batch[pretraining_inputs.TOKEN_IDS])[0], tf.float32)
        return loss, metrics, gradients

    def _apply(self, task: str, gradients):
        """All-reduce, unscale, finite check, clip and apply (replica context)."""
        present = [index for index, gradient in enumerate(gradients) if gradient is not None]
        context = tf.distribute.get_replica_context()
        reduced = context.all_reduce(tf.distribute.ReduceOp.SUM, [gradients[index] for index in present])
        divisor = float(self.num_replicas)
        if self.float16:
            divisor = divisor * self.loss_scales[task].scale
        reduced = [gradient / divisor for gradient in reduced]
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(gradient)) for gradient in reduced])
        norm = tf.linalg.global_norm(reduced)
        if self.config.grad_norm > 0:
            reduced, _ = tf.clip_by_global_norm(reduced, self.config.grad_norm, use_norm=norm)
        # Official AdamW skips parameters without a gradient (the heads of the other tasks).
        variables = [self.variables[index] for index in present]
        learning_rate = self.schedule(self.global_step + 1)
        self.optimizer.apply_gradients(reduced, variables, learning_rate, apply_update=finite,
                                       variable_indices=present)
        if self.float16:
            self.loss_scales[task].update(finite)
        return norm, finite, learning_rate

    def _step_function(self, task: str, phase: str):
        key = (task, phase)
        if key in self._step_functions:
            return self._step_functions[key]
        accumulate = self.config.gradient_accumulation_steps > 1
        compute = self._replica_gradients
        if self.config.jit_compile:
            compute = tf.function(self._replica_gradients, jit_compile=True, reduce_retracing=True)

        def replica_step(batch):
            loss, metrics, gradients = compute(task, batch)
            if phase == "accumulate":
                for accumulator, gradient in zip(self.accumulators, gradients):
                    if gradient is not None:
                        accumulator.assign_add(gradient)
                return loss, metrics
            if accumulate:
                gradients = [None if gradient is None else gradient + accumulator.read_value()
                             for gradient, accumulator in zip(gradients, self.accumulators)]
            norm, finite, learning_rate = self._apply(task, gradients)
            if accumulate:
                for accumulator in self.accumulators:
                    accumulator.assign(tf.zeros_like(accumulator))
            metrics = dict(metrics)
            metrics.update({"grad_norm": norm, "learning_rate": learning_rate,
                            "update_skipped": 1.0 - tf.cast(finite, tf.float32)})
            if self.float16:
                metrics["loss_scale"] = self.loss_scales[task].scale.read_value()
            return loss, metrics

        def step(iterator):
            loss, metrics = self.strategy.run(replica_step, args=(next(iterator),))
            mean = lambda value: self.strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None)  # noqa: E731
            reduced = {name: mean(value) for name, value in metrics.items()}
            reduced["examples"] = self.strategy.reduce(tf.distribute.ReduceOp.SUM, metrics["examples"], axis=None)
            if phase == "apply":
                self.global_step.assign_add(1)
            return mean(loss), reduced

        function = tf.function(step, reduce_retracing=True)
        self._step_functions[key] = function
        return function

    def train_update(self, mix_key: str) -> Dict[str, float]:
        """Runs one optimizer update of a mixing key (a task, or ``task/dataset``) with all its micro-batches;
        returns the metrics as floats."""
        iterator = self._iterator(mix_key)
        task = mix_task(mix_key)
        examples = 0.0
        for _ in range(self.config.gradient_accumulation_steps - 1):
            _, metrics = self._step_function(task, "accumulate")(iterator)
            examples += float(metrics["examples"])
        loss, metrics = self._step_function(task, "apply")(iterator)
        values = {name: float(value) for name, value in metrics.items()}
        values["examples"] += examples
        values["loss"] = float(loss)
        return values

    # ------------------------------------------------------------------------------ main loop
    def train(self) -> Dict[str, Any]:
        """Runs (or resumes) the whole run; returns the summary also written to ``summary.json``."""
        import keras

        config = self.config
        start_step = self.restore_or_initialize()
        os.makedirs(config.output_dir, exist_ok=True)
        if self.is_chief:
            # The run directory names its model, so `uniter export` / a resume needs no --config.
            runs.write_model_config(config.output_dir, self.model_config)
            # A run killed after logging step s but before checkpointing s replays s: drop its lines first.
            dropped = trim_metrics_log(os.path.join(config.output_dir, METRICS_FILE), start_step)
            if dropped:
                self.log(f"dropped {dropped} {METRICS_FILE} line(s) past step {start_step} (from the interrupted run)")
        writer = tf.summary.create_file_writer(os.path.join(config.output_dir, "tensorboard")) \
            if self.is_chief else tf.summary.create_noop_writer()
        progress = keras.utils.Progbar(config.num_train_steps, stateful_metrics=None, unit_name="update") \
            if config.progress_bar and self.is_chief else None
        if progress is not None and start_step:
            progress.update(start_step)
        last_losses: Dict[str, float] = {}
        # Per-task sums over the current log window: each record is a window mean, not one update's value.
        window_sums: Dict[str, Dict[str, float]] = {}
        window_updates: Dict[str, int] = {}
        window_examples, window_start = 0.0, time.perf_counter()
        run_start = time.perf_counter()
        total_examples = 0.0
        step = start_step
        while step < config.num_train_steps:
            # Logged per mixing key: a task, or task/dataset under train_datasets.
            mix_key = self.sampler.task_for_step(step + 1)
            values = self.train_update(mix_key)
            step = int(self.global_step.numpy())
            last_losses[mix_key] = values["loss"]
            window_examples += values["examples"]
            total_examples += values["examples"]
            if progress is not None:
                elapsed = max(time.perf_counter() - window_start, 1e-9)
                shown = [(f"{name}_loss", value) for name, value in sorted(last_losses.items())]
                shown.append(("examples/s", window_examples / elapsed))
                progress.update(step, values=shown, finalize=step >= config.num_train_steps)
            sums = window_sums.setdefault(mix_key, {})
            for name, value in values.items():
                if name not in ("examples", "learning_rate"):
                    sums[name] = sums.get(name, 0.0) + value
            window_updates[mix_key] = window_updates.get(mix_key, 0) + 1
            if step % config.log_every == 0 or step == config.num_train_steps:
                elapsed = max(time.perf_counter() - window_start, 1e-9)
                records = [{"step": step, "task": name, "updates": window_updates[name],
                            "examples_per_second": window_examples / elapsed, "learning_rate": values["learning_rate"],
                            **{key: total / window_updates[name] for key, total in window_sums[name].items()}}
                           for name in sorted(window_updates)]
                self._log_window(writer, step, records)
                window_sums, window_updates = {}, {}
                window_examples, window_start = 0.0, time.perf_counter()
            if step % config.checkpoint_every == 0 or step == config.num_train_steps:
                self.manager.save(checkpoint_number=step)
            if config.eval_every and step % config.eval_every == 0 and step < config.num_train_steps \
                    and config.eval_files:
                self._log_eval(writer, step, self.evaluate())
        run_seconds = time.perf_counter() - run_start
        checkpointing.discard_worker_scratch(config.output_dir, self.strategy)
        evaluation = self.evaluate() if config.eval_files else {}
        if evaluation:
            self._log_eval(writer, step, evaluation)
        writer.flush()
        summary = {
                "final_step": step,
                "resumed_from_step": start_step,
                "updates_this_run": step - start_step,
                "seconds_this_run": run_seconds,
                "examples_per_second": total_examples / run_seconds if run_seconds > 0 else 0.0,
                "num_replicas": self.num_replicas,
                "last_losses": last_losses,
                "evaluation": evaluation,
                "checkpoint": self.manager.latest_checkpoint,
        }
        if self.is_chief:
            with open(os.path.join(config.output_dir, SUMMARY_FILE), "w", encoding="utf-8") as handle:
                json.dump(summary, handle, indent=2, sort_keys=True)
            plot_loss_curves(os.path.join(config.output_dir, METRICS_FILE),
                             os.path.join(config.output_dir, LOSS_CURVES_FILE))
        return summary

    def _log_window(self, writer, step: int, records: List[Dict[str, Any]]) -> None:
        """TensorBoard scalars and ``metrics.jsonl`` lines of one log window: one record per task that ran."""
        if not self.is_chief or not records:
            return
        global_names = ("step", "task", "updates", "learning_rate", "examples_per_second")
        with writer.as_default(step=step):
            tf.summary.scalar("learning_rate", records[0]["learning_rate"])
            tf.summary.scalar("examples_per_second", records[0]["examples_per_second"])
            for record in records:
                for name, value in record.items():
                    if name not in global_names:
                        tf.summary.scalar(f"{record['task']}/{name}", value)
        self._append_metrics(records)

    def _append_metrics(self, records: List[Dict[str, Any]]) -> None:
        with open(os.path.join(self.config.output_dir, METRICS_FILE), "a", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, sort_keys=True) + "\n")

    def _log_eval(self, writer, step: int, evaluation: Dict[str, float]) -> None:
        if not self.is_chief:
            return
        with writer.as_default(step=step):
            for name, value in evaluation.items():
                tf.summary.scalar(f"eval/{name}", value)
        self._append_metrics([{"step": step, "task": EVAL_TASK, **evaluation}])
        self.log(f"evaluation at step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(evaluation.items())))

    # ------------------------------------------------------------------------------ evaluation
    def evaluate(self, files: Optional[List[str]] = None, max_batches: Optional[int] = None) -> Dict[str, float]:
        """Held-out metrics of every active task (no dropout): see :func:`evaluate_pretraining`."""
        return evaluate_pretraining(self.model, files or self.config.eval_files, self.tasks, self.input_config,
                                    seed=self.config.seed + 1, max_batches=max_batches or self.config.eval_batches)


def evaluate_pretraining(model, files, tasks, input_config, *, seed: int = 43,
                         max_batches: int = 20) -> Dict[str, float]:
    """Evaluates a pretraining model on held-out canonical records, pooled over items (official metrics).

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
                                                        num_epochs=1).take(max_batches)
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


def trim_metrics_log(metrics_path: str, last_step: int) -> int:
    """Rewrites ``metrics.jsonl`` keeping only lines up to ``last_step``, the step a run resumes from.

    Lines past it (and a line torn by a kill mid-write) were written by an interrupted run whose updates are
    replayed, so keeping them would log those steps twice.

    Returns:
        How many lines were dropped.
    """
    if not os.path.exists(metrics_path):
        return 0
    kept, dropped = [], 0
    with open(metrics_path, encoding="utf-8") as handle:
        for line in handle:
            try:
                record = json.loads(line)
                keep = line.endswith("\n") and int(record["step"]) <= last_step
            except (ValueError, KeyError, TypeError):
                keep = False
            if keep:
                kept.append(line)
            else:
                dropped += 1
    if dropped:
        scratch = metrics_path + ".trimmed"
        with open(scratch, "w", encoding="utf-8") as handle:
            handle.writelines(kept)
        os.replace(scratch, metrics_path)
    return dropped


def plot_loss_curves(metrics_path: str, output_path: str) -> Optional[str]:
    """Plots ``metrics.jsonl`` into a PNG: each task's training loss (log-window means) against the update,
    and, when the run evaluated held-out data, the held-out accuracies and OT distances in a second panel.

    Returns:
        ``output_path``, or None when there is nothing to plot.
    """
    if not os.path.exists(metrics_path):
        return None
    losses: Dict[str, List[tuple]] = {}
    held_out: Dict[str, List[tuple]] = {}
    with open(metrics_path, encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            if record["task"] == EVAL_TASK:
                for name in EVAL_CURVES:
                    if name in record:
                        held_out.setdefault(name, []).append((record["step"], record[name]))
            else:
                losses.setdefault(record["task"], []).append((record["step"], record["loss"]))
    if not losses:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    panels = 2 if held_out else 1
    figure, axes = pyplot.subplots(1, panels, figsize=(7 * panels, 4), squeeze=False)
    for task, points in sorted(losses.items()):
        points.sort()
        axes[0][0].plot([p[0] for p in points], [p[1] for p in points], marker=".", label=task)
    axes[0][0].set_yscale("log")
    axes[0][0].set_xlabel("update")
    axes[0][0].set_ylabel("training loss (mean over each log window)")
    axes[0][0].set_title("UNITER pretraining: loss per task")
    axes[0][0].legend()
    if held_out:
        for name, points in sorted(held_out.items()):
            points.sort()
            axes[0][1].plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
        axes[0][1].set_xlabel("update")
        axes[0][1].set_title("held-out evaluation")
        axes[0][1].legend()
    figure.tight_layout()
    figure.savefig(output_path, dpi=100)
    pyplot.close(figure)
    return output_path


__all__ = ["Pretrainer", "evaluate_pretraining", "plot_loss_curves", "METRICS_FILE", "SUMMARY_FILE",
           "LOSS_CURVES_FILE"]
