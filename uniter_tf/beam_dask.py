"""A Beam runner on ``dask.distributed`` that runs ``uniter extract`` and ``uniter ingest`` correctly.

``--runner=DaskRunner`` on a ``uniter`` Beam command selects :class:`DaskRunner` below (see
:mod:`uniter_tf.commands._beam_flags`). It reuses Apache Beam 2.74's Dask runner
(``apache_beam.runners.dask``: its options, result class and transform overrides) but translates the
pipeline into a plain dask task graph of its own, one task per bundle (partition) of each transform,
because Beam's translation onto ``dask.bag`` produced wrong output for our pipelines, each problem found by
running them on a local cluster:

* **Tagged outputs.** Beam's ``ParDo`` translation puts every output of a multi-output ``ParDo``
  (``.with_outputs("dead", main="items")``) into one bag, and every consumer reads that bag: on
  ``uniter extract`` the dead-letter file received the region-feature records as well. Here each
  ``ParDo`` emits ``(tag, value)`` pairs and each output ``PCollection`` is the pairs of its own tag.
* **Only the last transform computed.** Beam's runner computes the bag of the last transform visited,
  assuming it depends on all the others; a pipeline with several sinks (records, dead letters) wrote only
  the last one. Here every ``ParDo`` is part of the computed graph.
* **Side inputs computed inside a task.** Beam's runner materialises a side input by computing its bag
  inside the consuming task (a second, nested computation: work done twice, and a file sink's bundles
  written twice, leaving ``beam-temp-*`` folders behind). Here a side input is one task that gathers its
  partitions; the consuming bundles depend on it, so the scheduler computes it once.
* **Graph optimisation copies tasks.** ``dask.bag``'s blockwise fusion copied a ParDo's tasks into each
  consumer of its outputs (a sink initialised several times); the graph here is computed unoptimised.
* **Outputs of ``finish_bundle`` dropped.** Beam's runner collects a bundle's outputs before calling
  ``finish_bundle``: the last batch of ``BatchElements`` and the file names of the sink writers were lost.
* **No metrics.** Beam's ``DaskRunnerResult.metrics()`` raises ``NotImplementedError`` and counters are
  not recorded at all. Here each bundle runs with a metrics container and the counters are summed on the
  client (``committed`` = ``attempted``: a retried task's counts are not deduplicated).
* **The client is never closed** (a stopped cluster then logs reconnection errors): closed when the run
  finishes.

``GroupByKey`` is a hash shuffle (every input partition split into buckets by a hash of the pickled key
that is the same in every process; Python's ``hash()`` of a str is not). ``beam.Reshuffle`` stripes the
elements over ``--dask_npartitions`` partitions (Beam's runner leaves it a no-op), so the images one
``Create`` of a glob yields spread over the workers.

Limits that remain from Beam's runner: batch pipelines in the global window only (no windowing, state,
timers or splittable DoFns), and ``beam.io.Read`` sources are not translated (our pipelines start with
``beam.Create``).
"""

from __future__ import annotations

import dataclasses
import typing as t

from apache_beam import pvalue
from apache_beam.metrics.metric import MetricResults
from apache_beam.pipeline import PipelineVisitor
from apache_beam.runners.common import Receiver
from apache_beam.runners.dask import dask_runner as beam_dask
from apache_beam.runners.runner import PipelineState

#: Tag of the per-bundle metric updates in a ParDo's output bag (never a user tag: it has spaces).
_METRICS_TAG = "uniter metrics"
#: What ``--runner=DaskRunner`` is rewritten to.
RUNNER_PATH = f"{__name__}.DaskRunner"


class _Collector(Receiver):
    """A Beam ``Receiver`` that appends ``(tag, value)`` to a shared list."""

    def __init__(self, tag, out: list):  # pylint: disable=super-init-not-called
        self.tag = tag
        self.out = out

    def receive(self, windowed_value):
        self.out.append((self.tag, windowed_value.value))

    def receive_batch(self, windowed_batch):  # not used by our DoFns; kept for the Receiver protocol
        raise NotImplementedError("batched DoFn outputs are not supported on the DaskRunner")


class _Receivers(dict):
    """Tag -> :class:`_Collector`, created on first use (a DoFn may emit any of its declared tags)."""

    def __init__(self, out: list):
        super().__init__()
        self.out = out

    def __missing__(self, tag):
        receiver = self[tag] = _Collector(tag, self.out)
        return receiver


@dataclasses.dataclass
class _ParDoSpec:
    """What a task needs to run one ParDo over a partition (pickled into the task)."""

    label: str
    fn: t.Any
    args: list
    kwargs: dict
    side_views: list  # [(view class, view options)] in the order of the transform's side inputs
    window_fn: t.Any


def _run_bundle(elements, spec: _ParDoSpec, *side_values):
    """Runs a DoFn over one partition; returns its outputs as ``(tag, value)`` plus one metrics entry."""
    from apache_beam import DoFn
    from apache_beam.metrics.execution import MetricsContainer
    from apache_beam.runners import common
    from apache_beam.runners.dask.transform_evaluator import get_windowed_value
    from apache_beam.runners.worker import statesampler
    from apache_beam.transforms import sideinputs
    from apache_beam.transforms.window import GlobalWindow
    from apache_beam.utils import counters
    from apache_beam.utils.windowed_value import WindowedValue

    out: list = []
    receivers = _Receivers(out)
    side_inputs = [
            sideinputs.SideInputMap(view_class, view_options,
                                    [WindowedValue(value, 0, (GlobalWindow(),)) for value in values])
            for (view_class, view_options), values in zip(spec.side_views, side_values)]
    handler = common._OutputHandler(  # pylint: disable=protected-access
            window_fn=spec.window_fn, main_receivers=receivers[None], tagged_receivers=receivers,
            per_element_output_counter=None, output_batch_converter=None, process_yields_batches=False,
            process_batch_yields_elements=False)
    invoker = common.DoFnInvoker.create_invoker(
            common.DoFnSignature(spec.fn), handler, context=common.DoFnContext(spec.label, state=None),
            side_inputs=side_inputs, input_args=list(spec.args), input_kwargs=dict(spec.kwargs),
            user_state_context=None, bundle_finalizer_param=DoFn.BundleFinalizerParam())
    # Beam's Metrics.counter(...).inc() records into the container of the current state sampler's state.
    container = MetricsContainer(spec.label)
    previous = statesampler.get_current_tracker()
    sampler = statesampler.StateSampler("", counters.CounterFactory())
    statesampler.set_current_tracker(sampler)
    try:
        with sampler.scoped_state(spec.label, "process", metrics_container=container):
            invoker.invoke_setup()
            invoker.invoke_start_bundle()
            for element in elements:
                invoker.invoke_process(get_windowed_value(element, spec.window_fn))
            invoker.invoke_finish_bundle()  # before collecting: finish_bundle may still emit
            invoker.invoke_teardown()
    finally:
        statesampler.set_current_tracker(previous)
    out.append((_METRICS_TAG, dict(container.get_cumulative().counters)))
    return out


def _select(pairs, tag):
    """The values of one output tag of a ParDo partition."""
    return [value for pair_tag, value in pairs if pair_tag == tag]


def _concat(*partitions):
    """One list of the elements of several partitions (a side input, a Flatten's input)."""
    return [element for partition in partitions for element in partition]


def _stable_bucket(key, buckets: int) -> int:
    """The shuffle bucket of a key, the same in every worker process (``hash()`` of a str is salted)."""
    import hashlib
    import pickle

    return int.from_bytes(hashlib.sha1(pickle.dumps(key, protocol=4)).digest()[:8], "big") % buckets


def _split_by_key(partition, buckets: int):
    """A GroupByKey input partition as ``buckets`` lists of ``(key, windowed value)``."""
    out = [[] for _ in range(buckets)]
    for key, value in partition:
        out[_stable_bucket(key, buckets)].append((key, value))
    return out


def _group_bucket(bucket: int, *splits):
    """``(key, [values])`` of one bucket, from every input partition's split (values unwrapped)."""
    from apache_beam.runners.dask.transform_evaluator import defenestrate

    groups: dict = {}
    for split in splits:
        for key, value in split[bucket]:
            groups.setdefault(key, []).append(defenestrate(value))
    return list(groups.items())


def _stripe(index: int, parts: int, *partitions):
    """Every ``parts``-th element from ``index`` of the concatenated partitions (Reshuffle)."""
    return _concat(*partitions)[index::parts]


def _metrics_of(*raw_partitions):
    """The metric updates of the given ParDo partitions."""
    return [updates for partition in raw_partitions for updates in _select(partition, _METRICS_TAG)]


class _DaskMetrics(MetricResults):
    """The counters of a finished run (summed over bundles); distributions and gauges are not collected."""

    def __init__(self, counters: dict):
        self._counters = counters

    def query(self, filter=None):  # pylint: disable=redefined-builtin
        from apache_beam.metrics.execution import MetricResult

        matched = [MetricResult(key, value, value) for key, value in self._counters.items()
                   if self.matches(filter, key)]
        return {self.COUNTERS: matched, self.DISTRIBUTIONS: [], self.GAUGES: [], self.STRINGSETS: [],
                self.BOUNDED_TRIES: []}


class DaskRunnerResult(beam_dask.DaskRunnerResult):
    """Waits for the run, sums its counters, closes the client."""

    def __post_init__(self):
        super().__post_init__()
        self._counters: dict = {}

    def wait_until_finish(self, duration=None) -> str:
        from distributed import as_completed

        if self._state == PipelineState.DONE:
            return self._state
        try:
            timeout = duration / 1000 if duration is not None else None
            for _, updates in as_completed(self.futures, timeout=timeout, with_results=True):
                for step_counters in updates:
                    for key, value in step_counters.items():
                        self._counters[key] = self._counters.get(key, 0) + value
            self._state = PipelineState.DONE
        except BaseException:
            self._state = PipelineState.FAILED
            raise
        finally:
            self.client.close()
        return self._state

    def metrics(self) -> MetricResults:
        """The run's counters (call after :meth:`wait_until_finish`)."""
        return _DaskMetrics(self._counters)


class DaskRunner(beam_dask.DaskRunner):
    """Runs a batch pipeline on a ``dask.distributed`` cluster (``--dask_client_address=HOST:PORT``).

    Without ``--dask_client_address`` the client starts a local cluster in this process, as Beam's runner.
    """

    def run_pipeline(self, pipeline, options):
        from dask import distributed
        from dask.delayed import Delayed
        from apache_beam.runners.dask import overrides

        dask_options = options.view_as(beam_dask.DaskOptions).get_all_options(drop_default=True, current_only=True)
        partitioning = beam_dask.DaskOptions._extract_bag_kwargs(dask_options)  # pylint: disable=protected-access
        pipeline.replace_all(overrides.dask_overrides())
        graph = _GraphBuilder(partitioning)
        pipeline.visit(graph)
        client = distributed.Client(**dask_options)
        try:
            # A plain task graph, computed without dask's optimisations: each ParDo bundle runs exactly once
            # (blockwise fusion of dask.bag copied a ParDo's tasks into each consumer of its outputs, so sinks
            # were initialised and written several times).
            futures = [client.compute(Delayed(graph.final_key(), graph.tasks), optimize_graph=False)]
        except BaseException:
            client.close()
            raise
        return DaskRunnerResult(client, futures)


class _GraphBuilder(PipelineVisitor):
    """Translates each leaf transform into dask tasks; a PCollection is the list of its partitions' keys."""

    def __init__(self, partitioning: dict):
        import uuid

        self._npartitions = partitioning.get("npartitions")
        self._partition_size = partitioning.get("partition_size")
        self._run = uuid.uuid4().hex[:12]
        self._count = 0
        self.tasks: dict = {}
        self.partitions: dict = {}  # PCollection -> [task key of each partition]
        self.metric_keys: list = []

    def _key(self, label: str) -> str:
        self._count += 1
        return f"{label}-{self._run}-{self._count}"

    def _task(self, key, func, *args):
        from dask._task_spec import DataNode, Task, TaskRef

        self.tasks[key] = Task(key, func, *[arg if isinstance(arg, TaskRef) else DataNode(None, arg) for arg in args])
        return key

    def final_key(self) -> str:
        """Adds the task that gathers every ParDo's metric updates (it depends on every bundle); returns its key."""
        if not self.metric_keys:
            raise ValueError("the pipeline has no ParDo: nothing would run on the DaskRunner")
        from dask._task_spec import TaskRef

        return self._task(f"metrics-{self._run}", _concat, *[TaskRef(key) for key in self.metric_keys])

    def visit_transform(self, transform_node) -> None:
        import apache_beam
        from apache_beam.runners.dask import overrides
        from dask._task_spec import TaskRef

        transform = transform_node.transform
        label = transform_node.full_label
        inputs = [self.partitions[value] for value in transform_node.inputs if not isinstance(value, pvalue.PBegin)]
        cls = transform.__class__
        if cls is apache_beam.ParDo:
            raw = self._pardo(transform_node, inputs[0])
            self.metric_keys.append(self._task(self._key(f"{label}/metrics"), _metrics_of,
                                               *[TaskRef(key) for key in raw]))
            for tag, output in transform_node.outputs.items():
                tag = None if tag in (None, "None") else tag
                self.partitions[output] = [self._task(self._key(f"{label}/{tag}"), _select, TaskRef(key), tag)
                                           for key in raw]
            return
        if cls is overrides._Create:  # pylint: disable=protected-access
            keys = self._create(label, list(transform.values))
        elif cls is overrides._GroupByKeyOnly:  # pylint: disable=protected-access
            keys = self._group_by_key(label, inputs[0])
        elif cls is overrides._Flatten:  # pylint: disable=protected-access
            keys = [key for partitions in inputs for key in partitions]
        elif cls is overrides._Reshuffle:  # pylint: disable=protected-access
            parts = self._npartitions or len(inputs[0])
            refs = [TaskRef(key) for key in inputs[0]]
            keys = [self._task(self._key(f"{label}/{index}"), _stripe, index, parts, *refs) for index in range(parts)]
        elif cls is overrides._Read:  # pylint: disable=protected-access
            raise NotImplementedError(f"{label}: beam.io.Read sources are not supported on the DaskRunner "
                                      "(start the pipeline with beam.Create)")
        elif len(inputs) == 1:
            # GroupAlsoByWindow (GroupByKeyOnly already grouped, in the global window) and pass-through leaves.
            keys = inputs[0]
        else:
            raise NotImplementedError(f"{label}: {cls.__name__} has no DaskRunner translation")
        for output in transform_node.outputs.values():
            self.partitions[output] = keys

    def _create(self, label: str, values: list):
        import math

        if self._npartitions:
            size = max(1, math.ceil(len(values) / self._npartitions))
        else:
            size = self._partition_size or 128  # Beam's DaskRunner default
        chunks = [values[start:start + size] for start in range(0, len(values), size)] or [[]]
        return [self._task(self._key(f"{label}/{index}"), list, chunk) for index, chunk in enumerate(chunks)]

    def _group_by_key(self, label: str, partitions: list):
        from dask._task_spec import TaskRef

        buckets = len(partitions)
        splits = [self._task(self._key(f"{label}/split"), _split_by_key, TaskRef(key), buckets) for key in partitions]
        refs = [TaskRef(key) for key in splits]
        return [self._task(self._key(f"{label}/{bucket}"), _group_bucket, bucket, *refs) for bucket in range(buckets)]

    def _pardo(self, node, partitions: list):
        from dask._task_spec import TaskRef

        transform = node.transform
        args, kwargs = transform.raw_side_inputs
        main_input = next(iter(node.main_inputs.values()))
        window_fn = main_input.windowing.windowfn if hasattr(main_input, "windowing") else None
        side_views, side_refs = [], []
        for side_input in node.side_inputs:
            side_views.append((type(side_input), side_input._view_options()))  # pylint: disable=protected-access
            # One task holds the whole side input; the scheduler computes it once, before the bundles using it.
            side_key = self._task(self._key(f"{node.full_label}/side"), _concat,
                                  *[TaskRef(key) for key in self.partitions[side_input.pvalue]])
            side_refs.append(TaskRef(side_key))
        spec = _ParDoSpec(label=node.full_label, fn=transform.fn, args=list(args), kwargs=dict(kwargs),
                          side_views=side_views, window_fn=window_fn)
        return [self._task(self._key(f"{node.full_label}/{index}"), _run_bundle, TaskRef(key), spec, *side_refs)
                for index, key in enumerate(partitions)]


__all__ = ["DaskRunner", "DaskRunnerResult", "RUNNER_PATH"]
