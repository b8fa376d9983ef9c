"""The one training loop of every task (pretraining and fine-tuning): a custom step under ``tf.distribute``.

``Trainer(task, TrainerConfig, RuntimeConfig)`` trains any :class:`uniter_tf.tasks.Task`. One optimizer
update = ``gradient_accumulation_steps`` micro-batches of **one** input stream of the task (drawn by
:class:`~uniter_tf.training.task_sampler.TaskSampler` from :meth:`Task.stream_ratios`; a downstream task has
one stream). Per update:

1. each replica computes the loss of its micro-batch (:meth:`Task.compute_batch_loss`, mean, the official
   reduction) and its gradients (scaled by the stream's dynamic loss scale under ``mixed_float16``);
   micro-batch gradients are **summed** (official: no division by the accumulation count);
2. gradients are all-reduced (sum) and divided by the number of replicas: the average of per-replica mean
   gradients, as Horovod's averaging all-reduce in the official code;
3. the loss scale is removed, non-finite gradients skip the update (and halve that loss scale);
4. global-norm clipping at ``grad_norm``; one AdamW (:class:`~uniter_tf.training.optimizer.AdamW`) with the
   rate of the 1-based update number (:class:`~uniter_tf.training.schedule.LinearWarmupLinearDecay`) times
   the task's per-variable multiplier (:meth:`Task.learning_rate_multipliers`: the official param groups).

The dtype policy (``precision``) is given to the task's model as ``dtype=``; the global Keras policy is
left alone. Keras ``fit`` is not used (it fails under MultiWorkerMirrored with Keras 3); the loop is plain
Python over ``tf.function`` steps, one trace per loss group (and per accumulation phase).

Resuming: the run state (model, optimizer moments, step, loss scales, dropout seed states) is checkpointed
by a ``tf.train.CheckpointManager``. The input position is restored by **replay**: the task's pipelines are
pure functions of the seed and the stream of every update is a function of ``(seed, step)``, so the number of
batches each stream consumed is known from the step alone and the pipelines ``skip`` them. This works for
every strategy (distributed iterators cannot be checkpointed) and keeps shuffle buffers out of checkpoints.

Every file the Trainer writes goes through ``tf.io.gfile`` so ``output_dir`` may be ``gs://...``: the run's
files (``metrics.jsonl``, ``summary.json``, ``loss_curves.png``, ``trainer_config.json``, what the task needs
for export, :meth:`Task.write_run_files`), TensorBoard and the checkpoints. It writes no export.
"""

from __future__ import annotations

import io
import json
import os
import time
from typing import Any, Callable, Dict, List, Mapping, Optional

import tensorflow as tf

from uniter_tf.training import checkpointing
from uniter_tf.training.optimizer import AdamW, DynamicLossScale, exempt_from_weight_decay
from uniter_tf.training.performance import bfloat16_warning
from uniter_tf.training.schedule import LinearWarmupLinearDecay
from uniter_tf.training.strategy import build_strategy, is_chief
from uniter_tf.training.task_sampler import TaskSampler
from uniter_tf.training.trainer_config import RuntimeConfig, TrainerConfig

METRICS_FILE = "metrics.jsonl"
# ``metrics.jsonl`` lines of held-out evaluations carry this task name.
EVAL_TASK = "eval"
EVAL_CURVES = ("itm_accuracy", "mlm_accuracy", "mrckl_accuracy", "mrc_accuracy", "ot_positive_mean",
               "ot_negative_mean", "score", "accuracy")
SUMMARY_FILE = "summary.json"
LOSS_CURVES_FILE = "loss_curves.png"
TRAINER_CONFIG_FILE = "trainer_config.json"


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
    for layer in model._flatten_layers(include_self=True):  # pylint: disable=protected-access
        for value in vars(layer).values():
            if isinstance(value, keras.random.SeedGenerator):
                states[f"seed_{len(states)}"] = getattr(value.state, "value", value.state)
    return states


def _set_global_seed(seed: int) -> None:
    import keras

    keras.utils.set_random_seed(seed)


class Trainer:
    """Builds the model, optimizer, inputs and checkpoints of a run of ``task``, and runs it.

    Args:
        task: a :class:`uniter_tf.tasks.Task`.
        config: how to train.
        runtime: where (output directory, strategy).
        strategy: a strategy to use instead of the one named in ``runtime`` (tests).
        log: where progress messages go (default ``print``).
        run_record: extra JSON-serialisable description of the run stored with the task's run files
            (e.g. the experiment config as given); default: the task / trainer / runtime sections.
    """

    def __init__(self, task, config: TrainerConfig, runtime: RuntimeConfig, *,
                 strategy: Optional[tf.distribute.Strategy] = None, log: Callable[[str], None] = print,
                 run_record: Optional[Mapping[str, Any]] = None):
        self.task = task
        self.trainer_config = config
        self.config = config  # wrappers may replace it by their own config object; the loop never reads it
        self.runtime = runtime
        self.output_dir = runtime.output_dir
        self.log = log
        self.run_record = dict(run_record) if run_record is not None else {
                "task_name": task.name, "task": task.get_config(), "trainer": config.to_dict(),
                "runtime": runtime.to_dict()}
        self.strategy = strategy or build_strategy(runtime.strategy, tpu_address=runtime.tpu_address,
                                                   logical_cpus=runtime.logical_cpus)
        self.is_chief = is_chief(self.strategy)
        self.model_config = task.model_config()
        # One input stream per mixing key (pretraining: a task or task/dataset; fine-tuning: the task).
        self.sampler = TaskSampler(task.stream_ratios(), config.seed)
        self.streams = self.sampler.tasks
        self.loss_groups = sorted({task.stream_loss_group(stream) for stream in self.streams})
        self.num_replicas = self.strategy.num_replicas_in_sync
        self.local_replicas = _local_replica_count(self.strategy)
        self.float16 = config.precision == "mixed_float16"
        # Said before anything is built: bf16 without bf16 hardware is a slow-down, not a speed-up.
        slow_bfloat16 = bfloat16_warning(config.precision)
        if slow_bfloat16:
            self.log(slow_bfloat16)

        _set_global_seed(config.seed)
        with self.strategy.scope():
            dtype = None if config.precision == "float32" else config.precision
            self.model = task.build_model(self.model_config, dtype=dtype)
            self.schedule = LinearWarmupLinearDecay(config.learning_rate, config.warmup_steps,
                                                    config.num_train_steps)
            self.optimizer = AdamW(self.schedule, beta_1=config.beta_1, beta_2=config.beta_2,
                                   epsilon=config.epsilon, weight_decay=config.weight_decay,
                                   exempt=exempt_from_weight_decay)
            self.variables = list(self.model.trainable_variables)
            self.optimizer.build(self.variables, task.learning_rate_multipliers(self.model))
            self.global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
            self.loss_scales = {group: DynamicLossScale(name=f"loss_scale_{group}") for group in self.loss_groups} \
                if self.float16 else {}
            self.accumulators = []
            if config.gradient_accumulation_steps > 1:
                self.accumulators = [
                        tf.Variable(tf.zeros(variable.shape, tf.float32), trainable=False,
                                    synchronization=tf.VariableSynchronization.ON_READ,
                                    aggregation=tf.VariableAggregation.SUM, name=f"accumulator_{index}")
                        for index, variable in enumerate(self.variables)]

        self.checkpoint = tf.train.Checkpoint(
                **task.checkpoint_items(self.model), optimizer=self.optimizer, global_step=self.global_step,
                loss_scales=tf.train.Checkpoint(**self.loss_scales) if self.loss_scales else tf.train.Checkpoint(),
                dropout_rng=tf.train.Checkpoint(**_seed_generator_states(self.model)))
        self.manager = checkpointing.make_checkpoint_manager(self.checkpoint, self.output_dir,
                                                             config.keep_checkpoints, self.strategy)
        self._step_functions: Dict[Any, Callable] = {}
        self._iterators: Dict[str, Any] = {}
        self.restored_step = 0
        self._state_ready = False
        #: The metrics of the latest update (loss, grad_norm, learning_rate, the task's metrics, ...).
        self.last_train_metrics: Dict[str, float] = {}

    # ------------------------------------------------------------------------------------ state
    def restore_or_initialize(self) -> int:
        """Resumes from the latest checkpoint of ``output_dir``, or initialises the weights (the task's ``init``).

        Returns:
            The step the run continues from (0 for a fresh run).
        """
        self._state_ready = True
        latest = self.manager.latest_checkpoint
        if latest:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
            self.restored_step = int(self.global_step.numpy())
            self.log(f"resumed from {latest} at step {self.restored_step}")
        else:
            self.task.initialize(self.model, log=self.log)
            self.restored_step = 0
        return self.restored_step

    def consumed_batches(self, step: int) -> Dict[str, int]:
        """Per stream, how many per-replica batches its pipeline on this worker delivered before ``step``."""
        counts = self.sampler.counts(1, step) if step > 0 else {key: 0 for key in self.streams}
        return {key: count * self.trainer_config.gradient_accumulation_steps * self.local_replicas
                for key, count in counts.items()}

    def _iterator(self, stream: str):
        if stream not in self._iterators:
            skip = self.consumed_batches(self.restored_step)[stream]
            seed = self.trainer_config.seed

            def dataset_fn(input_context):
                dataset = self.task.build_inputs(stream, input_context=input_context, seed=seed, training=True)
                return dataset.skip(skip) if skip else dataset

            distributed = self.strategy.distribute_datasets_from_function(dataset_fn)
            self._iterators[stream] = iter(distributed)
        return self._iterators[stream]

    # ------------------------------------------------------------------------------ step logic
    def _replica_gradients(self, stream: str, batch):
        """Loss, metrics and (loss-scaled) float32 gradients of one micro-batch on this replica."""
        group = self.task.stream_loss_group(stream)
        with tf.GradientTape() as tape:
            loss, metrics = self.task.compute_batch_loss(self.model, stream, batch, training=True)
            scaled_loss = loss * self.loss_scales[group].scale if self.float16 else loss
        gradients = tape.gradient(scaled_loss, self.variables)
        gradients = [None if gradient is None else tf.cast(tf.convert_to_tensor(gradient), tf.float32)
                     for gradient in gradients]
        metrics = {name: tf.cast(value, tf.float32) for name, value in dict(metrics).items()}
        # Not converted by autograph: it reads static structure only, and autograph breaks a zero-argument
        # super() inside an `if` of a task's override (VqaTask.batch_size resolved to another method).
        batch_size = tf.autograph.experimental.do_not_convert(self.task.batch_size)
        metrics["examples"] = tf.cast(batch_size(batch), tf.float32)
        return tf.cast(loss, tf.float32), metrics, gradients

    def _apply(self, group: str, gradients):
        """All-reduce, unscale, finite check, clip and apply (replica context)."""
        present = [index for index, gradient in enumerate(gradients) if gradient is not None]
        context = tf.distribute.get_replica_context()
        reduced = context.all_reduce(tf.distribute.ReduceOp.SUM, [gradients[index] for index in present])
        divisor = float(self.num_replicas)
        if self.float16:
            divisor = divisor * self.loss_scales[group].scale
        reduced = [gradient / divisor for gradient in reduced]
        norm = tf.linalg.global_norm(reduced)
        # A NaN or inf in any gradient makes the norm NaN or inf, so one check of the norm replaces an
        # is_finite pass over every gradient value (113 M for uniter-base; docs/performance.md, issue 16). It
        # also skips an update whose finite gradients square past float32's range: clipping would make it NaN.
        finite = tf.math.is_finite(norm)
        if self.trainer_config.grad_norm > 0:
            reduced, _ = tf.clip_by_global_norm(reduced, self.trainer_config.grad_norm, use_norm=norm)
        # Official AdamW skips parameters without a gradient (the heads of the other tasks).
        variables = [self.variables[index] for index in present]
        learning_rate = self.schedule(self.global_step + 1)
        self.optimizer.apply_gradients(reduced, variables, learning_rate, apply_update=finite,
                                       variable_indices=present)
        if self.float16:
            self.loss_scales[group].update(finite)
        return norm, finite, learning_rate

    def _step_function(self, stream: str, phase: str):
        # Streams of one loss group compute their loss the same way, so they share a traced step.
        group = self.task.stream_loss_group(stream)
        key = (group, phase)
        if key in self._step_functions:
            return self._step_functions[key]
        accumulate = self.trainer_config.gradient_accumulation_steps > 1
        compute = self._replica_gradients
        if self.trainer_config.jit_compile:
            compute = tf.function(self._replica_gradients, jit_compile=True, reduce_retracing=True)

        def replica_step(batch):
            # Outside XLA: e.g. dense targets from ragged label lists (dynamic shapes).
            batch = self.task.prepare_batch(stream, batch)
            if self.trainer_config.jit_compile:
                # XLA has no string tensors; string features (example ids) never reach a loss.
                batch = _without_strings(batch)
            loss, metrics, gradients = compute(stream, batch)
            if phase == "accumulate":
                for accumulator, gradient in zip(self.accumulators, gradients):
                    if gradient is not None:
                        accumulator.assign_add(gradient)
                return loss, metrics
            if accumulate:
                gradients = [None if gradient is None else gradient + accumulator.read_value()
                             for gradient, accumulator in zip(gradients, self.accumulators)]
            norm, finite, learning_rate = self._apply(group, gradients)
            if accumulate:
                for accumulator in self.accumulators:
                    accumulator.assign(tf.zeros_like(accumulator))
            metrics = dict(metrics)
            metrics.update({"grad_norm": norm, "learning_rate": learning_rate,
                            "update_skipped": 1.0 - tf.cast(finite, tf.float32)})
            if self.float16:
                metrics["loss_scale"] = self.loss_scales[group].scale.read_value()
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

    def train_update(self, stream: str) -> Dict[str, float]:
        """Runs one optimizer update of ``stream`` with all its micro-batches; returns the metrics as floats.

        Raises:
            ValueError: the stream's input pipeline ended (its files hold no usable record).
        """
        return self._update(stream, self._iterator(stream))

    def train_on_batch(self, batch, stream: Optional[str] = None) -> Dict[str, float]:
        """One update on a given (global) batch instead of the stream's pipeline (benchmarks, tests)."""
        stream = stream or self.streams[0]
        dataset = tf.data.Dataset.from_tensors(batch).repeat(self.trainer_config.gradient_accumulation_steps)
        return self._update(stream, iter(self.strategy.experimental_distribute_dataset(dataset)))

    def _update(self, stream: str, iterator) -> Dict[str, float]:
        examples = 0.0
        try:
            for _ in range(self.trainer_config.gradient_accumulation_steps - 1):
                _, metrics = self._step_function(stream, "accumulate")(iterator)
                examples += float(metrics["examples"])
            loss, metrics = self._step_function(stream, "apply")(iterator)
        except (tf.errors.OutOfRangeError, StopIteration):
            raise ValueError(f"task {self.task.name!r}: the input stream {stream!r} ended: its training files "
                             f"{self.task.train_files} hold no usable record") from None
        values = {name: float(value) for name, value in metrics.items()}
        values["examples"] += examples
        values["loss"] = float(loss)
        return values

    # ------------------------------------------------------------------------------ run files
    def write_run_files(self) -> None:
        """Writes the run's description files (chief only): the trainer config and the task's files."""
        if not self.is_chief:
            return
        tf.io.gfile.makedirs(self.output_dir)
        self.task.write_run_files(self.output_dir, self.model_config, self.run_record)
        write_json(os.path.join(self.output_dir, TRAINER_CONFIG_FILE),
                   {"trainer": self.trainer_config.to_dict(), "runtime": self.runtime.to_dict()})

    def save_checkpoint(self) -> str:
        """Checkpoints the current state at the current step (with the run's files); returns the prefix.

        For a run that is exported without (more) training, e.g. a TFX ``run_fn`` asked for 0 updates.
        """
        self.write_run_files()
        return self.manager.save(checkpoint_number=int(self.global_step.numpy()))

    # ------------------------------------------------------------------------------ main loop
    def train(self) -> Dict[str, Any]:
        """Runs (or resumes) the whole run; returns the summary also written to ``summary.json``."""
        import keras

        config = self.trainer_config
        # A wrapper may have restored / initialised on construction; do it once.
        start_step = self.restored_step if self._state_ready else self.restore_or_initialize()
        tf.io.gfile.makedirs(self.output_dir)
        if self.is_chief:
            self.write_run_files()
            # A run killed after logging step s but before checkpointing s replays s: drop its lines first.
            dropped = trim_metrics_log(os.path.join(self.output_dir, METRICS_FILE), start_step)
            if dropped:
                self.log(f"dropped {dropped} {METRICS_FILE} line(s) past step {start_step} (from the interrupted run)")
        writer = tf.summary.create_file_writer(os.path.join(self.output_dir, "tensorboard")) \
            if self.is_chief else tf.summary.create_noop_writer()
        progress = keras.utils.Progbar(config.num_train_steps, stateful_metrics=None, unit_name="update") \
            if config.progress_bar and self.is_chief else None
        if progress is not None and start_step:
            progress.update(start_step)
        last_losses: Dict[str, float] = {}
        # Per-stream sums over the current log window: each record is a window mean, not one update's value.
        window_sums: Dict[str, Dict[str, float]] = {}
        window_updates: Dict[str, int] = {}
        window_examples, window_start = 0.0, time.perf_counter()
        run_start = time.perf_counter()
        total_examples = 0.0
        step = start_step
        last_metrics: Dict[str, float] = {}
        while step < config.num_train_steps:
            stream = self.sampler.task_for_step(step + 1)
            values = self.train_update(stream)
            step = int(self.global_step.numpy())
            last_losses[stream] = values["loss"]
            last_metrics = dict(values)
            self.last_train_metrics = last_metrics
            window_examples += values["examples"]
            total_examples += values["examples"]
            if progress is not None:
                elapsed = max(time.perf_counter() - window_start, 1e-9)
                shown = [(f"{name}_loss", value) for name, value in sorted(last_losses.items())]
                shown.append(("examples/s", window_examples / elapsed))
                progress.update(step, values=shown, finalize=step >= config.num_train_steps)
            sums = window_sums.setdefault(stream, {})
            for name, value in values.items():
                if name not in ("examples", "learning_rate"):
                    sums[name] = sums.get(name, 0.0) + value
            window_updates[stream] = window_updates.get(stream, 0) + 1
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
                    and self.task.eval_files:
                self._log_eval(writer, step, self.evaluate(step=step))
        run_seconds = time.perf_counter() - run_start
        checkpointing.discard_worker_scratch(self.output_dir, self.strategy)
        evaluation = self.evaluate(step=step) if self.task.eval_files else {}
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
                "last_metrics": last_metrics,
                "evaluation": evaluation,
                "checkpoint": self.manager.latest_checkpoint,
        }
        if self.is_chief:
            write_json(os.path.join(self.output_dir, SUMMARY_FILE), summary)
            plot_loss_curves(os.path.join(self.output_dir, METRICS_FILE),
                             os.path.join(self.output_dir, LOSS_CURVES_FILE), title=f"UNITER {self.task.name}")
        return summary

    def _log_window(self, writer, step: int, records: List[Dict[str, Any]]) -> None:
        """TensorBoard scalars and ``metrics.jsonl`` lines of one log window: one record per stream that ran."""
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
        with tf.io.gfile.GFile(os.path.join(self.output_dir, METRICS_FILE), "a") as handle:
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
    def evaluate(self, files: Optional[List[str]] = None, max_batches: Optional[int] = None,
                 step: Optional[int] = None) -> Dict[str, float]:
        """Held-out metrics of the task (no dropout): :meth:`Task.evaluate` on ``files`` (default: its eval files).

        Tasks compute the figures the evaluator reports through the evaluation library
        (:mod:`uniter_tf.evaluation`), so a training log's ``vqa_score`` / ``itm_accuracy`` is the evaluator's.

        Args:
            files: eval file patterns (default: the task's).
            max_batches: batches to read (default ``trainer.eval_batches``; None there: the whole split).
            step: the step the task names its outputs after (default: the current one).
        """
        return self.task.evaluate(self.model, files or self.task.eval_files,
                                  max_batches or self.trainer_config.eval_batch_limit, seed=self.trainer_config.seed + 1,
                                  output_dir=self.output_dir if self.is_chief else None,
                                  step=int(self.global_step.numpy()) if step is None else step)


def _without_strings(batch):
    """``batch`` (dicts / tuples / lists of tensors) without its string tensors."""
    if isinstance(batch, Mapping):
        return {key: _without_strings(value) for key, value in batch.items()
                if not (isinstance(value, tf.Tensor) and value.dtype == tf.string)}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_without_strings(value) for value in batch)
    return batch


def write_json(path: str, values: Any) -> None:
    """Writes ``values`` as indented JSON through ``tf.io.gfile`` (any TF filesystem)."""
    with tf.io.gfile.GFile(path, "w") as handle:
        handle.write(json.dumps(values, indent=2, sort_keys=True))


def trim_metrics_log(metrics_path: str, last_step: int) -> int:
    """Rewrites ``metrics.jsonl`` keeping only lines up to ``last_step``, the step a run resumes from.

    Lines past it (and a line torn by a kill mid-write) were written by an interrupted run whose updates are
    replayed, so keeping them would log those steps twice.

    Returns:
        How many lines were dropped.
    """
    if not tf.io.gfile.exists(metrics_path):
        return 0
    kept, dropped = [], 0
    with tf.io.gfile.GFile(metrics_path, "r") as handle:
        text = handle.read()
    for line in text.splitlines(keepends=True):
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
        with tf.io.gfile.GFile(scratch, "w") as handle:
            handle.write("".join(kept))
        tf.io.gfile.rename(scratch, metrics_path, overwrite=True)
    return dropped


def plot_loss_curves(metrics_path: str, output_path: str, title: str = "UNITER pretraining") -> Optional[str]:
    """Plots ``metrics.jsonl`` into a PNG: each stream's training loss (log-window means) against the update,
    and, when the run evaluated held-out data, the held-out accuracies and OT distances in a second panel.

    Returns:
        ``output_path``, or None when there is nothing to plot.
    """
    if not tf.io.gfile.exists(metrics_path):
        return None
    losses: Dict[str, List[tuple]] = {}
    held_out: Dict[str, List[tuple]] = {}
    with tf.io.gfile.GFile(metrics_path, "r") as handle:
        lines = handle.read().splitlines()
    for line in lines:
        if not line.strip():
            continue
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
    if all(p[1] > 0 for points in losses.values() for p in points):
        axes[0][0].set_yscale("log")
    axes[0][0].set_xlabel("update")
    axes[0][0].set_ylabel("training loss (mean over each log window)")
    axes[0][0].set_title(f"{title}: loss per task")
    axes[0][0].legend()
    if held_out:
        for name, points in sorted(held_out.items()):
            points.sort()
            axes[0][1].plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
        axes[0][1].set_xlabel("update")
        axes[0][1].set_title("held-out evaluation")
        axes[0][1].legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    pyplot.close(figure)
    # Through a buffer: matplotlib writes local files only, the run directory may be gs:// or ram://.
    with tf.io.gfile.GFile(output_path, "wb") as handle:
        handle.write(buffer.getvalue())
    return output_path


__all__ = ["Trainer", "plot_loss_curves", "trim_metrics_log", "write_json", "METRICS_FILE", "SUMMARY_FILE",
           "LOSS_CURVES_FILE", "EVAL_TASK", "TRAINER_CONFIG_FILE"]
