"""Side-by-side speed of the official UNITER PyTorch code and ours, on this CPU, in one run.

What it measures (uniter-base, fp32, 2 intra-op threads on both sides):

* ``train-itm`` / ``train-mlm``: one pretraining update, batch 8 × (50 tokens incl. [CLS]/[SEP] + 36
  regions of 2048-d features): forward, backward, global-norm clipping at 5.0, AdamW. Official: the
  peer's ``bench_peer.py --what train`` (``fwd``/``bwd``/``opt`` split). Ours: the real
  :class:`~uniter_tf.training.pretrainer.Pretrainer` with its **default** settings (what ``uniter pretrain``
  runs without flags) fed with one pipeline batch of the same shape; with ``--split`` also our
  forward / backward / optimizer split, measured as three separate functions.
* ``infer``: ITM scores of batch 32 × (50 + 36). Official: ``bench_peer.py --what infer`` (eval mode,
  ``no_grad``). Ours: the ``score_tensors`` signature of the **exported SavedModel** with the default
  export options (exported once per run into the work directory, loaded with ``tf.saved_model.load``
  in each measuring process). ``infer-xla`` (not in the default cases): the same with
  ``ExportOptions(jit_compile=True)`` (``uniter export --jit-compile``); its first call compiles.
* ``ipot``: IPOT alone on a precomputed cost, batch 32, 50 × 36, 50 iterations.
* ``matmul``: a 2048² fp32 matmul, torch and TensorFlow, GFLOP/s (best of 10).
* ``matmul-step`` (not in the default cases): only the matmuls of one ``train-itm`` update, run one after
  the other with nothing else (the forward GEMMs of every dense layer and attention product, then the
  input- and weight-gradient GEMMs of each; :func:`step_gemms`), on torch and on TensorFlow. It bounds
  what the rest of the step can gain on this CPU: our update can be no faster than our kernels' time for
  its matmuls, so ``official train-itm / ours matmul-step`` is the best training ratio this TensorFlow's
  kernels allow here; the table prints that bound when both cases ran.

Every measurement is one process. The rounds interleave the two sides (official, ours, ours, official,
…), so that the machine's drift between minutes lands on both; the table gives medians over rounds of
each process's median, the ratio official / ours (> 1: ours is faster) and each figure as a fraction of
the machine's fp32 FMA peak (cores × FMA units × SIMD lanes × 2 × clock, see :func:`fma_peak`). The
system load (``/proc/loadavg``) and the CPU time other processes used during each measurement are
recorded beside it, because on a shared machine they decide how much a figure means.

Set up the peer first (docs: ../shared/peer/README.md)::

    # fetch github:ChenRocks/UNITER (the `fetch` tool), then
    bash ../shared/peer/setup.sh GIT_DIR /tmp/uniter-peer
    .venv/bin/python bench/compare_official.py --peer /tmp/uniter-peer --json compare.json

Defaults take about 10 minutes on an idle 2-core machine (2 rounds of every case).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
CASES = ("train-itm", "train-mlm", "infer", "infer-xla", "ipot", "matmul", "matmul-step")
DEFAULT_CASES = ("train-itm", "train-mlm", "infer", "ipot", "matmul")
THREADS = 2
TRAIN_BATCH, INFER_BATCH, TOKENS, REGIONS = 8, 32, 50, 36

SETUP_HELP = """the official UNITER peer was not found at {peer!r} (need {missing}).
Set it up once:
  1. fetch a snapshot of github.com/ChenRocks/UNITER (the `fetch` tool, source github:ChenRocks/UNITER),
  2. bash ../shared/peer/setup.sh GIT_DIR /tmp/uniter-peer     (see ../shared/peer/README.md)
then rerun with --peer /tmp/uniter-peer (or set UNITER_PEER)."""

# A 2048² fp32 matmul in the peer's torch (our own snippet; nothing of the official code).
TORCH_MATMUL = r"""
import json, time, torch
torch.set_num_threads({threads})
a = torch.randn(2048, 2048); b = torch.randn(2048, 2048)
for _ in range(3): a @ b
t = []
for _ in range(10):
    s = time.perf_counter(); a @ b; t.append(time.perf_counter() - s)
print(json.dumps({{"gflops": 2 * 2048 ** 3 / min(t) / 1e9, "torch": torch.__version__}}))
"""


# ------------------------------------------------------------------------------------------ machine
def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError:
        return ""


def _lscpu() -> Dict[str, str]:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        text = ""
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def fma_peak(lscpu: Optional[Dict[str, str]] = None, cpuinfo: Optional[str] = None,
             fma_units: Optional[int] = None) -> Dict[str, object]:
    """The machine's theoretical fp32 FMA peak and how it was derived.

    ``peak = physical cores × FMA units per core × fp32 lanes per vector × 2 (multiply + add) × clock``.

    * cores: ``lscpu`` "Core(s) per socket" × "Socket(s)" (hyper-threads share the FMA units);
    * lanes: 16 with ``avx512f``, 8 with ``avx2``/``fma`` (256-bit), else 4 (SSE);
    * FMA units: 2 per core on every x86 core with FMA since Intel Haswell and AMD Zen 2; AMD Zen 1
      (family 0x17, model < 0x30) runs 256-bit FMAs as two 128-bit halves, i.e. 1 unit of 8 lanes;
      ``fma_units`` overrides (e.g. 1 for Xeon Silver / Bronze with one AVX-512 unit);
    * clock: "CPU max MHz" from ``lscpu`` when the kernel knows it (turbo), else ``cpu MHz`` of
      ``/proc/cpuinfo`` (the nominal clock under KVM, where turbo is hidden).

    Args:
        lscpu: parsed ``lscpu`` fields (default: run it).
        cpuinfo: the text of ``/proc/cpuinfo`` (default: read it).
        fma_units: FMA units per core, instead of the rule above.

    Returns:
        ``{"gflops", "cores", "fma_units", "lanes", "ghz", "clock_source", "how"}``.
    """
    lscpu = _lscpu() if lscpu is None else lscpu
    cpuinfo = _read("/proc/cpuinfo") if cpuinfo is None else cpuinfo
    found = re.search(r"^flags\s*:(.*)$", cpuinfo, re.M)
    flags = set(found.group(1).split()) if found else set(lscpu.get("Flags", "").split())
    try:
        cores = int(lscpu.get("Core(s) per socket", "0")) * int(lscpu.get("Socket(s)", "1"))
    except ValueError:
        cores = 0
    cores = cores or os.cpu_count() or 1
    lanes = 16 if "avx512f" in flags else 8 if ("avx2" in flags or "fma" in flags) else 4
    if fma_units is None:
        family = int(lscpu.get("CPU family", "0") or 0)
        model = int(lscpu.get("Model", "0") or 0)
        vendor = lscpu.get("Vendor ID", "")
        fma_units = 1 if (vendor == "AuthenticAMD" and family == 0x17 and model < 0x30) or "fma" not in flags else 2
    ghz, source = 0.0, ""
    if lscpu.get("CPU max MHz"):
        ghz, source = float(lscpu["CPU max MHz"]) / 1000.0, "lscpu CPU max MHz"
    else:
        found = re.search(r"^cpu MHz\s*:\s*([\d.]+)", cpuinfo, re.M)
        if found:
            ghz, source = float(found.group(1)) / 1000.0, "/proc/cpuinfo cpu MHz"
    gflops = cores * fma_units * lanes * 2 * ghz
    return {"gflops": gflops, "cores": cores, "fma_units": fma_units, "lanes": lanes, "ghz": ghz,
            "clock_source": source,
            "how": f"{cores} cores x {fma_units} FMA units x {lanes} fp32 lanes x 2 x {ghz:.3f} GHz ({source})"}


def machine_info() -> Dict[str, object]:
    fields = _lscpu()
    flags = set(fields.get("Flags", "").split())
    return {"cpu_model": fields.get("Model name", platform.processor() or "unknown"),
            "logical_cpus": os.cpu_count(),
            "features": sorted(flags & {"avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}),
            "fma_peak": fma_peak(fields)}


class CpuWatch:
    """CPU time used by *other* processes (in cores) while a measurement ran, and the load average."""

    _TICK = os.sysconf("SC_CLK_TCK")

    def _busy(self) -> float:
        values = [int(x) for x in _read("/proc/stat").splitlines()[0].split()[1:]]
        return (sum(values[:8]) - values[3] - values[4]) / self._TICK

    def __enter__(self):
        self.start = (time.perf_counter(), self._busy(), os.times())
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self.start[0]
        times = os.times()
        own = (times.children_user + times.children_system - self.start[2].children_user
               - self.start[2].children_system + times.user + times.system - self.start[2].user
               - self.start[2].system)
        self.wall = wall
        self.other_cores = max(0.0, (self._busy() - self.start[1] - own) / max(wall, 1e-9))
        self.loadavg = _read("/proc/loadavg").split()[:3]


# ------------------------------------------------------------------------------------ our workers
def _tf_setup():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # As every `uniter` command does: XLA compiles land in the on-disk cache (a second process reuses them).
    from uniter_tf.training.performance import enable_xla_persistent_cache

    enable_xla_persistent_cache()
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(THREADS)
    return tf


def _median_times(function, warmup: int, steps: int) -> List[float]:
    """Per-call wall seconds (bench/train_bench.py's ``step_times``, which the caller takes the median of)."""
    sys.path.insert(0, os.path.join(REPO, "bench"))
    from train_bench import step_times  # pylint: disable=import-outside-toplevel

    return step_times(function, warmup, steps)


def _pretraining_batch(task: str, model_config, workdir: str):
    """One batch of the official timing shape from our real input pipeline (GZIP records → masking)."""
    sys.path.insert(0, os.path.join(REPO, "bench"))
    from train_bench import _write_records  # pylint: disable=import-outside-toplevel

    from uniter_tf.data import pretraining_inputs

    prefix = os.path.join(workdir, "records", "train")
    if not os.path.exists(os.path.dirname(prefix)):
        os.makedirs(os.path.dirname(prefix))
        _write_records(prefix, model_config, num_records=32, tokens=TOKENS - 2, regions=REGIONS)
    options = {"batch_size": TRAIN_BATCH, "max_text_length": TOKENS - 2, "text_bucket_boundaries": [TOKENS],
               "region_bucket_boundaries": [REGIONS], "shuffle_buffer": 0, "itm_negative_pool_size": 16}
    files = [prefix + "*"]
    dataset = pretraining_inputs.build_task_dataset(
            task, files, model_config, pretraining_inputs.PretrainingInputConfig(**options), seed=1)
    return next(iter(dataset)), files, options


def default_pretrainer(task: str, workdir: str):
    """Our ``Pretrainer`` with its default settings (what ``uniter pretrain`` runs) on uniter-base, fed one
    fixed pipeline batch of the official timing shape; call after :func:`_tf_setup`.

    Returns:
        ``(trainer, batch)``: ``trainer.train_update(task)`` runs one full update on ``batch``.
    """
    import tensorflow as tf

    from uniter_tf.config import UniterConfig
    from uniter_tf.training.pretrain_config import PretrainConfig
    from uniter_tf.training.pretrainer import Pretrainer

    model_config = UniterConfig.resolve("uniter-base")
    batch, files, options = _pretraining_batch(task, model_config, workdir)
    config = PretrainConfig(model="uniter-base", train_files=files, output_dir=os.path.join(workdir, f"run-{task}"),
                            inputs=options, task_ratios={task: 1}, num_train_steps=10_000, warmup_steps=10,
                            progress_bar=False)
    trainer = Pretrainer(config, log=lambda message: None)
    trainer._iterators[task] = iter(tf.data.Dataset.from_tensors(batch).repeat())  # pylint: disable=protected-access
    return trainer, batch


def worker_train(task: str, warmup: int, steps: int, workdir: str, split: bool) -> Dict[str, object]:
    """Our default pretraining update (``Pretrainer`` with default settings) on one fixed batch."""
    _tf_setup()
    trainer, batch = default_pretrainer(task, workdir)
    config = trainer.config
    start = time.perf_counter()
    trainer.train_update(task)
    first = time.perf_counter() - start
    totals = _median_times(lambda: trainer.train_update(task), warmup, steps)
    result = {"median_s": statistics.median(totals), "all_s": totals, "first_call_s": first,
              "jit_compile": bool(config.jit_compile), "examples": int(batch["token_ids"].shape[0]),
              "tokens": int(batch["token_ids"].shape[1]), "regions": int(batch["region_features"].shape[1])}
    if split:
        result["split_s"] = _train_split(trainer, task, batch, warmup, steps)
    return result


def _train_split(trainer, task: str, batch, warmup: int, steps: int) -> Dict[str, float]:
    """Forward, forward+backward and the optimizer alone as separate functions (medians, seconds)."""
    import tensorflow as tf

    jit = bool(trainer.config.jit_compile)

    @tf.function(jit_compile=jit)
    def forward(inputs):
        return trainer.model.compute_task_loss(task, inputs, training=True)[0]

    @tf.function(jit_compile=jit)
    def forward_backward(inputs):
        return trainer._replica_gradients(task, inputs)  # pylint: disable=protected-access

    gradients = [g for g in forward_backward(batch)[2]]
    present = [i for i, g in enumerate(gradients) if g is not None]
    variables = [trainer.variables[i] for i in present]
    grads = [gradients[i] for i in present]

    @tf.function
    def optimizer_step():
        clipped, _ = tf.clip_by_global_norm(grads, trainer.config.grad_norm)
        trainer.optimizer.apply_gradients(clipped, variables, tf.constant(1e-5), apply_update=tf.constant(True),
                                          variable_indices=present)

    def run(function, *args):
        result = function(*args)
        for value in tf.nest.flatten(result):
            if hasattr(value, "numpy"):
                value.numpy()

    fwd = statistics.median(_median_times(lambda: run(forward, batch), max(1, warmup), steps))
    fwd_bwd = statistics.median(_median_times(lambda: run(forward_backward, batch), max(1, warmup), steps))
    opt = statistics.median(_median_times(lambda: run(optimizer_step), max(1, warmup), steps))
    return {"fwd": fwd, "bwd": fwd_bwd - fwd, "opt": opt}


def _itm_inputs(batch_size: int, seed: int = 1):
    import numpy as np

    from uniter_tf.config import UniterConfig

    sys.path.insert(0, os.path.join(REPO, "bench"))
    from model_bench import make_batch  # pylint: disable=import-outside-toplevel

    batch = make_batch(UniterConfig.resolve("uniter-base"), batch_size, TOKENS, REGIONS, seed=seed)
    batch.pop("itm_labels")
    return {key: np.asarray(value) for key, value in batch.items()}


def worker_export(workdir: str, jit_compile: bool) -> Dict[str, object]:
    """Exports a random-init uniter-base with our exporter (once per run; not timed against anything)."""
    _tf_setup()
    import keras

    from uniter_tf.config import UniterConfig
    from uniter_tf.export.exporter import export_uniter
    from uniter_tf.export.signatures import ExportOptions
    from uniter_tf.models.backbone import UniterBackbone
    from uniter_tf.models.pretraining_heads import ItmHead

    keras.utils.set_random_seed(0)
    config = UniterConfig.resolve("uniter-base")
    backbone = UniterBackbone(config)
    head = ItmHead(config.hidden_size, config.initializer_range)
    head.build()
    start = time.perf_counter()
    path = export_uniter(os.path.join(workdir, "export-xla" if jit_compile else "export"), backbone, head,
                         options=ExportOptions(jit_compile=jit_compile), version=1)
    return {"path": path, "export_s": time.perf_counter() - start}


def worker_infer(path: str, warmup: int, steps: int) -> Dict[str, object]:
    """Our exported SavedModel's ``score_tensors`` signature, ITM scores of batch 32."""
    tf = _tf_setup()
    import tensorflow_text  # noqa: F401  (registers the WordPiece ops of the export's in-graph tokeniser)

    loaded = tf.saved_model.load(path)
    signature = loaded.signatures["score_tensors"]
    inputs = {key: tf.constant(value) for key, value in _itm_inputs(INFER_BATCH).items()}
    start = time.perf_counter()
    signature(**inputs)["itm_score"].numpy()
    first = time.perf_counter() - start
    times = _median_times(lambda: signature(**inputs)["itm_score"].numpy(), warmup, steps)
    median = statistics.median(times)
    return {"median_s": median, "all_s": times, "first_call_s": first, "examples_per_s": INFER_BATCH / median}


def worker_ipot(warmup: int, steps: int) -> Dict[str, object]:
    """Our IPOT plan alone (the function the model calls, as it is compiled in training) on a cost."""
    tf = _tf_setup()
    from uniter_tf.layers.optimal_transport import cosine_cost, ipot_plan

    generator = tf.random.Generator.from_seed(0)
    text = generator.normal([32, TOKENS, 768])
    regions = generator.normal([32, REGIONS, 768])
    text_padding = tf.zeros([32, TOKENS], tf.bool)
    region_padding = tf.zeros([32, REGIONS], tf.bool)
    cost = cosine_cost(text, regions, text_padding, region_padding)
    plan = tf.function(lambda c, t, r: ipot_plan(c, t, r, 0.5, 50, 1))
    times = _median_times(lambda: plan(cost, text_padding, region_padding).numpy(), max(warmup, 5), max(steps, 50))
    return {"median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times)}


def worker_matmul() -> Dict[str, object]:
    tf = _tf_setup()
    left, right = tf.random.normal([2048, 2048]), tf.random.normal([2048, 2048])
    multiply = tf.function(lambda: tf.matmul(left, right))
    times = _median_times(lambda: multiply().numpy(), 3, 10)
    return {"gflops": 2 * 2048 ** 3 / min(times) / 1e9, "tensorflow": tf.__version__}


def step_gemms(batch: int = TRAIN_BATCH, tokens: int = TOKENS, regions: int = REGIONS,
               config=None) -> List[List[int]]:
    """The matmuls of one uniter-base ITM update, in order: ``[batch, m, k, n, transpose_a, transpose_b]``.

    The forward of each dense layer is ``[rows, k] @ [k, n]``; its backward is the input gradient
    ``[rows, n] @ [k, n]ᵀ`` and the weight gradient ``[rows, k]ᵀ @ [rows, n]``, as both frameworks compute
    them. Attention's two batched products (per example and head) get two gradient products each. The
    region features' own gradient is not needed (they are inputs), nor anything below the embeddings; the
    pooler, ITM and IPOT matmuls are under 0.1 % of the FLOPs and left out.

    Args:
        batch, tokens, regions: the update's batch shape (default: the ``train-*`` cases').
        config: a :class:`~uniter_tf.config.UniterConfig` (default uniter-base).
    """
    from uniter_tf.config import UniterConfig

    config = config or UniterConfig.resolve("uniter-base")
    hidden, inner, heads = config.hidden_size, config.intermediate_size, config.num_attention_heads
    length, rows = tokens + regions, batch * (tokens + regions)
    head_size = hidden // heads
    dense = [[rows, hidden, hidden]] * 4 + [[rows, hidden, inner], [rows, inner, hidden]]
    attention = [[batch * heads, length, head_size, length, 0, 1],   # scores = Q Kᵀ
                 [batch * heads, length, length, head_size, 0, 0]]   # context = P V
    forward = [[1, batch * regions, config.region_feature_dim, hidden, 0, 0]]
    backward = [[1, config.region_feature_dim, batch * regions, hidden, 1, 0]]   # weight gradient only
    for _ in range(config.num_hidden_layers):
        forward += [[1, m, k, n, 0, 0] for m, k, n in dense] + attention
        layer_backward = []
        for m, k, n in dense:
            layer_backward += [[1, m, n, k, 0, 1], [1, k, m, n, 1, 0]]
        # d(Q Kᵀ): dQ = dS K, dK = dSᵀ Q; d(P V): dP = dC Vᵀ, dV = Pᵀ dC
        layer_backward += [[batch * heads, length, length, head_size, 0, 0],
                           [batch * heads, length, length, head_size, 1, 0],
                           [batch * heads, length, head_size, length, 0, 1],
                           [batch * heads, length, length, head_size, 1, 0]]
        backward = layer_backward + backward
    return forward + backward


def gemm_flops(gemms: List[List[int]]) -> float:
    return float(sum(2 * b * m * k * n for b, m, k, n, _, _ in gemms))


def worker_matmul_step(warmup: int, steps: int) -> Dict[str, object]:
    """uniter-base's :func:`step_gemms` timed in TensorFlow with the measuring processes' thread setting."""
    _tf_setup()
    return time_gemms(step_gemms(), warmup, steps)


def time_gemms(gemms: List[List[int]], warmup: int, steps: int) -> Dict[str, object]:
    """Runs ``gemms`` in TensorFlow, one after the other, each on its own operands; median seconds per run."""
    import tensorflow as tf

    generator = tf.random.Generator.from_seed(0)
    operands = []
    for b, m, k, n, transpose_a, transpose_b in gemms:
        left = [k, m] if transpose_a else [m, k]
        right = [n, k] if transpose_b else [k, n]
        lead = [b] if b > 1 else []
        operands.append((generator.normal(lead + left), generator.normal(lead + right)))

    @tf.function
    def run_all():
        previous = tf.constant(0.0)
        total = []
        for (left, right), (_, _, _, _, transpose_a, transpose_b) in zip(operands, gemms):
            # A control dependency per product: one GEMM at a time, as the update's chain runs them.
            with tf.control_dependencies([previous]):
                product = tf.matmul(left, right, transpose_a=bool(transpose_a), transpose_b=bool(transpose_b))
            previous = product
            total.append(product[..., :1, :1])
        return tf.add_n([tf.reduce_sum(t) for t in total])

    run_all().numpy()
    times = _median_times(lambda: run_all().numpy(), max(1, warmup), steps)
    flops = gemm_flops(gemms)
    median = statistics.median(times)
    return {"median_s": median, "all_s": times, "gemms": len(gemms), "gflop": flops / 1e9,
            "gflops": flops / median / 1e9}


# The same GEMMs in the peer's torch, one after the other (our snippet; nothing of the official code).
TORCH_MATMUL_STEP = r"""
import json, statistics, sys, time, torch
torch.set_num_threads({threads})
gemms = json.loads(sys.argv[1])
g = torch.Generator().manual_seed(0)
ops = []
for b, m, k, n, ta, tb in gemms:
    lead = [b] if b > 1 else []
    left = torch.randn(lead + ([k, m] if ta else [m, k]), generator=g)
    right = torch.randn(lead + ([n, k] if tb else [k, n]), generator=g)
    ops.append((left.transpose(-1, -2) if ta else left, right.transpose(-1, -2) if tb else right))
def run():
    for left, right in ops:
        torch.matmul(left, right)
for _ in range(1 + {warmup}): run()
t = []
for _ in range({steps}):
    s = time.perf_counter(); run(); t.append(time.perf_counter() - s)
print(json.dumps({{"median_s": statistics.median(t), "all_s": t, "torch": torch.__version__}}))
"""


# ------------------------------------------------------------------------------------ the driver
def _run_json(command: List[str], env: Optional[dict] = None, cwd: Optional[str] = None) -> Dict[str, object]:
    with CpuWatch() as watch:
        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} … failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    lines = [line for line in done.stdout.strip().splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"{' '.join(command[:4])} … printed no JSON:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    result = json.loads(lines[-1])
    result["process_wall_s"] = round(watch.wall, 1)
    result["other_cores"] = round(watch.other_cores, 2)
    result["loadavg"] = watch.loadavg
    return result


class Runner:
    """Starts one measurement per process, official (peer venv) or ours (this interpreter)."""

    def __init__(self, peer: str, workdir: str, args):
        self.peer = peer
        self.workdir = workdir
        self.args = args
        self.peer_python = os.path.join(peer, "venv", "bin", "python")
        self.peer_env = dict(os.environ, OMP_NUM_THREADS=str(THREADS))
        self.our_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow",
                            PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.export_paths: Dict[str, str] = {}

    def official(self, case: str) -> Dict[str, object]:
        script = [self.peer_python, os.path.join(self.peer, "bench_peer.py"), "--worker"]
        steps = ["--warmup", str(self.args.warmup), "--steps", str(self.args.steps)]
        if case.startswith("train-"):
            result = _run_json(script + ["--what", "train", "--task", case.split("-")[1], "--layers", "12",
                                         "--batch", str(TRAIN_BATCH)] + steps, self.peer_env, self.peer)
            return {"value": result["median_s"]["total"], "split_s": {k: result["median_s"][k]
                                                                     for k in ("fwd", "bwd", "opt")}, **_meta(result)}
        if case.startswith("infer"):
            result = _run_json(script + ["--what", "infer", "--layers", "12", "--infer_batch", str(INFER_BATCH)]
                               + steps, self.peer_env, self.peer)
            return {"value": result["median_s"], "examples_per_s": result["examples_per_s"], **_meta(result)}
        if case == "ipot":
            result = _run_json(script + ["--what", "ipot"], self.peer_env, self.peer)
            return {"value": result["ipot_median_ms"] / 1e3, **_meta(result)}
        if case == "matmul":
            result = _run_json([self.peer_python, "-c", TORCH_MATMUL.format(threads=THREADS)], self.peer_env)
            return {"value": result["gflops"], **_meta(result)}
        if case == "matmul-step":
            snippet = TORCH_MATMUL_STEP.format(threads=THREADS, warmup=self.args.warmup, steps=self.args.steps)
            result = _run_json([self.peer_python, "-c", snippet, json.dumps(step_gemms())], self.peer_env)
            return {"value": result["median_s"], **_meta(result)}
        raise ValueError(case)

    def ours(self, case: str) -> Dict[str, object]:
        command = [sys.executable, os.path.abspath(__file__), "--worker", case, "--workdir", self.workdir,
                   "--warmup", str(self.args.warmup), "--steps", str(self.args.steps)]
        if case.startswith("infer"):
            command[3] = "infer"
            if case not in self.export_paths:
                exported = _run_json([sys.executable, os.path.abspath(__file__), "--worker", "export",
                                      "--workdir", self.workdir] + (["--jit-compile"] if case == "infer-xla" else []),
                                     self.our_env)
                self.export_paths[case] = exported["path"]
                print(f"  (exported our SavedModel in {exported['export_s']:.0f} s: {exported['path']})", flush=True)
            command += ["--saved-model", self.export_paths[case]]
        if case.startswith("train-") and self.args.split:
            command.append("--split")
        result = _run_json(command, self.our_env)
        if case.startswith("train-"):
            return {"value": result["median_s"], "first_call_s": result["first_call_s"],
                    "jit_compile": result["jit_compile"], **({"split_s": result["split_s"]} if "split_s" in result
                                                             else {}), **_meta(result)}
        if case.startswith("infer"):
            return {"value": result["median_s"], "examples_per_s": result["examples_per_s"],
                    "first_call_s": result["first_call_s"], **_meta(result)}
        if case == "ipot":
            return {"value": result["median_ms"] / 1e3, **_meta(result)}
        if case == "matmul-step":
            return {"value": result["median_s"], **_meta(result)}
        return {"value": result["gflops"], **_meta(result)}


def _meta(result: Dict[str, object]) -> Dict[str, object]:
    return {key: result[key] for key in ("process_wall_s", "other_cores", "loadavg")}


# FLOPs of each case, to express it as a fraction of the FMA peak (matmul FLOPs only; see model_bench).
def case_flops(case: str) -> Optional[float]:
    sys.path.insert(0, os.path.join(REPO, "bench"))
    from model_bench import training_flops  # pylint: disable=import-outside-toplevel

    from uniter_tf.config import UniterConfig

    config = UniterConfig.resolve("uniter-base")
    if case.startswith("train-"):
        return training_flops(config, TRAIN_BATCH, TOKENS, REGIONS)
    if case.startswith("infer"):
        return training_flops(config, INFER_BATCH, TOKENS, REGIONS) / 3.0
    if case == "ipot":  # two batched mat-vecs of 50 × 36 per iteration
        return 50 * 2 * 2 * 32 * TOKENS * REGIONS
    if case == "matmul-step":
        return gemm_flops(step_gemms())
    return None


def summarize(results: Dict[str, Dict[str, List[dict]]], peak: float) -> List[Dict[str, object]]:
    rows = []
    for case, sides in results.items():
        official = [run["value"] for run in sides.get("official", [])]
        ours = [run["value"] for run in sides.get("ours", [])]
        if not official or not ours:
            continue
        row = {"case": case, "official": statistics.median(official), "ours": statistics.median(ours),
               "official_runs": official, "ours_runs": ours}
        # Times: speed-up = official / ours; rates (matmul GFLOP/s): ours / official.
        row["speedup"] = row["official"] / row["ours"] if case != "matmul" else row["ours"] / row["official"]
        flops = case_flops(case)
        if case == "matmul":
            row["official_peak_fraction"], row["ours_peak_fraction"] = row["official"] / peak, row["ours"] / peak
        elif flops and peak:
            row["official_peak_fraction"] = flops / row["official"] / 1e9 / peak
            row["ours_peak_fraction"] = flops / row["ours"] / 1e9 / peak
        row["other_cores_max"] = max(run["other_cores"] for side in sides.values() for run in side)
        for side in ("official", "ours"):
            splits = [run["split_s"] for run in sides.get(side, []) if "split_s" in run]
            if splits:
                row[f"{side}_split_s"] = {key: statistics.median(split[key] for split in splits) for key in splits[0]}
        rows.append(row)
    return rows


def _format_value(case: str, value: float) -> str:
    if case == "matmul":
        return f"{value:.1f} GFLOP/s"
    if case.startswith("infer"):
        return f"{value:.2f} s ({INFER_BATCH / value:.1f} ex/s)"
    if case == "ipot":
        return f"{value * 1e3:.2f} ms"
    return f"{value:.2f} s"


def format_table(rows: List[Dict[str, object]], machine: Dict[str, object]) -> str:
    peak = machine["fma_peak"]
    lines = [f"CPU: {machine['cpu_model']} ({machine['logical_cpus']} logical CPUs, {', '.join(machine['features'])})",
             f"fp32 FMA peak: {peak['gflops']:.1f} GFLOP/s = {peak['how']}",
             "",
             "| case | official (median) | ours (median) | official / ours | % of FMA peak: official / ours "
             "| runs official; ours | other load (cores, max) |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        case = row["case"]
        fraction = (f"{100 * row['official_peak_fraction']:.0f} % / {100 * row['ours_peak_fraction']:.0f} %"
                    if "ours_peak_fraction" in row else "–")
        scale = 1e3 if case == "ipot" else 1.0  # IPOT runs in ms, the others in s (or GFLOP/s)
        runs = (", ".join(f"{scale * v:.3g}" for v in row["official_runs"]) + "; "
                + ", ".join(f"{scale * v:.3g}" for v in row["ours_runs"]))
        speed = f"**{row['speedup']:.2f}×**" + (" (ours/official)" if case == "matmul" else "")
        lines.append(f"| {case} | {_format_value(case, row['official'])} | {_format_value(case, row['ours'])} | "
                     f"{speed} | {fraction} | {runs} | {row['other_cores_max']:.2f} |")
    for row in rows:
        if "official_split_s" in row or "ours_split_s" in row:
            parts = []
            for side in ("official", "ours"):
                split = row.get(f"{side}_split_s")
                if split:
                    parts.append(f"{side} fwd {split['fwd']:.2f} / bwd {split['bwd']:.2f} / opt {split['opt']:.2f} s")
            lines.append(f"{row['case']} split: " + "; ".join(parts))
    by_case = {row["case"]: row for row in rows}
    if "train-itm" in by_case and "matmul-step" in by_case:
        lines.append(matmul_bound_line(by_case["train-itm"], by_case["matmul-step"]))
    return "\n".join(lines)


def matmul_bound(train_row: Dict[str, object], matmul_row: Dict[str, object]) -> Dict[str, float]:
    """How far each side's update is from its own matmuls, and the best ratio our kernels allow here."""
    return {"best_ratio": train_row["official"] / matmul_row["ours"],
            "measured_ratio": train_row["speedup"],
            "ours_matmul_share": matmul_row["ours"] / train_row["ours"],
            "official_matmul_share": matmul_row["official"] / train_row["official"]}


def matmul_bound_line(train_row: Dict[str, object], matmul_row: Dict[str, object]) -> str:
    bound = matmul_bound(train_row, matmul_row)
    return (f"train-itm bound: our update's matmuls alone take {matmul_row['ours']:.2f} s here, so with nothing "
            f"else costing anything our update could be at best **{bound['best_ratio']:.2f}×** the official "
            f"(measured {bound['measured_ratio']:.2f}×); the matmuls are {100 * bound['ours_matmul_share']:.0f} % "
            f"of our update and {100 * bound['official_matmul_share']:.0f} % of the official one "
            f"(torch's matmuls alone {matmul_row['official']:.2f} s).")


def check_peer(peer: Optional[str]) -> Optional[str]:
    """The missing pieces of the peer folder, or None when it is complete."""
    if not peer:
        return "a --peer folder"
    needed = [os.path.join("venv", "bin", "python"), "bench_peer.py", "uniter_harness.py",
              os.path.join("uniter_src", "model", "pretrain.py")]
    missing = [name for name in needed if not os.path.exists(os.path.join(peer, name))]
    return ", ".join(missing) if missing else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer", default=os.environ.get("UNITER_PEER", "/tmp/uniter-peer"),
                        help="the folder made by ../shared/peer/setup.sh (default $UNITER_PEER or /tmp/uniter-peer)")
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES),
                        help=f"comma list of {', '.join(CASES)} (default: all but infer-xla)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="measurements per side and case (>= 2), interleaved official, ours, ours, official, …")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per process (after the first call)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per process")
    parser.add_argument("--split", action="store_true", help="also measure our forward / backward / optimizer split")
    parser.add_argument("--fma-units", type=int, default=None, help="FMA units per core (default: see fma_peak)")
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a new temporary one)")
    parser.add_argument("--json", default="compare_official.json", help="where to write the results")
    # Internal: one measurement of ours in this process.
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--saved-model", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--jit-compile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        workdir = args.workdir or tempfile.mkdtemp(prefix="compare-official-")
        if args.worker.startswith("train-"):
            result = worker_train(args.worker.split("-", 1)[1], args.warmup, args.steps, workdir, args.split)
        elif args.worker == "export":
            result = worker_export(workdir, args.jit_compile)
        elif args.worker == "infer":
            result = worker_infer(args.saved_model, args.warmup, args.steps)
        elif args.worker == "ipot":
            result = worker_ipot(args.warmup, args.steps)
        elif args.worker == "matmul":
            result = worker_matmul()
        elif args.worker == "matmul-step":
            result = worker_matmul_step(args.warmup, args.steps)
        else:
            parser.error(f"unknown worker {args.worker!r}")
        print(json.dumps(result))
        return 0

    missing = check_peer(args.peer)
    if missing:
        print(SETUP_HELP.format(peer=args.peer, missing=missing), file=sys.stderr)
        return 2
    cases = [case.strip() for case in args.cases.split(",") if case.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown cases {unknown}; known: {', '.join(CASES)}")
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (one measurement per process, two per side)")

    machine = machine_info()
    own_workdir = args.workdir is None
    workdir = args.workdir or tempfile.mkdtemp(prefix="compare-official-")
    runner = Runner(os.path.abspath(args.peer), workdir, args)
    results: Dict[str, Dict[str, List[dict]]] = {}
    started = time.time()
    print(f"CPU {machine['cpu_model']}; load {_read('/proc/loadavg').split()[:3]}; work dir {workdir}", flush=True)
    try:
        for case in cases:
            results[case] = {"official": [], "ours": []}
            for round_index in range(args.rounds):
                # official, ours | ours, official | ...: each side goes first half the time.
                order = ("official", "ours") if round_index % 2 == 0 else ("ours", "official")
                for side in order:
                    run = getattr(runner, side)(case)
                    results[case][side].append(run)
                    print(f"  {case:9s} {side:8s} {_format_value(case, run['value'])}  "
                          f"(process {run['process_wall_s']} s, other load {run['other_cores']} cores, "
                          f"loadavg {' '.join(run['loadavg'])})", flush=True)
    finally:
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    rows = summarize(results, machine["fma_peak"]["gflops"])
    by_case = {row["case"]: row for row in rows}
    print()
    print(format_table(rows, machine))
    print(f"\n{time.time() - started:.0f} s in all")
    report = {"machine": machine, "args": {k: v for k, v in vars(args).items() if k not in ("worker", "saved_model")},
              "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)), "rows": rows,
              "runs": results, "seconds": time.time() - started}
    if "train-itm" in by_case and "matmul-step" in by_case:
        report["train_itm_matmul_bound"] = matmul_bound(by_case["train-itm"], by_case["matmul-step"])
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
