"""Where one default uniter-base training step spends its time: TensorFlow profiler, per-op kernel time.

Builds the same trainer as ``bench/compare_official.py``'s ``train-itm`` / ``train-mlm`` case (the default
``Pretrainer``, batch 8 × (50 tokens + 36 regions), fp32), runs ``--warmup`` updates, records ``--steps``
updates with ``tf.profiler`` and sums the kernel time of every op from the trace, grouped into

* ``forward matmul`` / ``backward matmul``: dense, batched and fused matmuls outside / inside the gradient
  (``gradient_tape/...``); the kernel name says whether oneDNN (``_Mkl*``) or Eigen (``MatMul``) ran it;
* ``optimizer``: the finite check, global norm, clipping and the AdamW update (ops outside the model
  and its gradient, except the gradient sums the tape adds there);
* ``other forward`` / ``other backward``: everything else (layer norm, GELU, softmax, dropout, gathers).

With ``--inter-op-threads 1`` the ops run one at a time, so their times add up to the step's wall time (the
default pool of 2 runs two ops at once and each op's time then includes the wait for the other's cores).
Prints one JSON object (seconds per step). Results: docs/performance.md (issue 16). Example::

    .venv/bin/python bench/step_profile.py --task itm --inter-op-threads 1 --logdir /tmp/step_profile
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

MATMUL_KERNELS = ("MatMul", "BatchMatMul", "FusedMatMul", "Einsum")
GRADIENT_SUMS = ("AddN", "UnsortedSegmentSum")


def op_category(name: str, op_type: str) -> str:
    """The group of one profiled op (``name`` is its graph node name, ``op_type`` its kernel)."""
    backward = name.startswith("gradient_tape/")
    in_model = backward or "uniter" in name.split("/")[0]
    if any(kernel in op_type for kernel in MATMUL_KERNELS):
        return "backward matmul" if backward else "forward matmul"
    if not in_model:
        # The tape sums the gradients of shared or gathered weights (AddN, UnsortedSegmentSum for the
        # embeddings) outside its name scope; everything else out here is the update.
        return "other backward" if op_type in GRADIENT_SUMS else "optimizer"
    return "other backward" if backward else "other forward"


def per_op_seconds(logdir: str):
    """``{(node name, kernel): seconds}`` summed over the host threads of the newest trace in ``logdir``."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    paths = sorted(glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb")))
    if not paths:
        raise FileNotFoundError(f"no profiler trace under {logdir}")
    space = xplane_pb2.XSpace()
    with open(paths[-1], "rb") as handle:
        space.ParseFromString(handle.read())
    totals = collections.Counter()
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                # Op events are "node:Kernel"; executor and eager wrappers ("EagerLocalExecute: ...",
                # "ExecutorState::Process") span many ops and would count them twice.
                node, _, kernel = name.rpartition(":")
                if not node or " " in name or kernel in ("Process", "Run") or node.endswith(":"):
                    continue
                totals[(node, kernel)] += event.duration_ps / 1e12
    return totals


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="itm", choices=("itm", "mlm"), help="pretraining task (default itm)")
    parser.add_argument("--warmup", type=int, default=2, help="updates before profiling (the first one traces)")
    parser.add_argument("--steps", type=int, default=2, help="profiled updates")
    parser.add_argument("--inter-op-threads", type=int, default=0,
                        help="TensorFlow's inter-op pool (default 0: TensorFlow decides, 2 on 2 cores)")
    parser.add_argument("--logdir", default=None, help="where the trace goes (default: a new temporary folder)")
    parser.add_argument("--top", type=int, default=15, help="kernels listed by time")
    args = parser.parse_args(argv)

    import compare_official  # pylint: disable=import-outside-toplevel

    tf = compare_official._tf_setup()  # pylint: disable=protected-access
    if args.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads)
    workdir = tempfile.mkdtemp(prefix="step-profile-")
    logdir = args.logdir or os.path.join(workdir, "trace")
    trainer, _ = compare_official.default_pretrainer(args.task, workdir)
    for _ in range(max(1, args.warmup)):
        trainer.train_update(args.task)
    tf.profiler.experimental.start(logdir)
    start = time.perf_counter()
    for _ in range(args.steps):
        trainer.train_update(args.task)
    wall = (time.perf_counter() - start) / args.steps
    tf.profiler.experimental.stop()

    totals = per_op_seconds(logdir)
    groups, kernels = collections.Counter(), collections.Counter()
    for (node, kernel), seconds in totals.items():
        groups[op_category(node, kernel)] += seconds / args.steps
        kernels[kernel] += seconds / args.steps
    print(json.dumps({
            "task": args.task, "inter_op_threads": args.inter_op_threads, "step_wall_s": round(wall, 3),
            "op_seconds_per_step": round(sum(groups.values()), 3),
            "groups_s": {name: round(value, 3) for name, value in groups.most_common()},
            "top_kernels_s": {name: round(value, 3) for name, value in kernels.most_common(args.top)},
            "load_average": [round(value, 2) for value in os.getloadavg()], "trace": logdir}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
