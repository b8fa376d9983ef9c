"""Peak memory of `uniter convert` on a uniter-large-sized PyTorch checkpoint.

    python bench/convert_bench.py [--preset uniter-large] [--workdir DIR] [--keep] [--json FILE]

1. A child process builds the preset's pretraining model and writes its freshly initialised weights as a
   ``torch.save`` zip file with :func:`uniter_tf.checkpoints.torch_format.save_zip` (official key names,
   PyTorch ``[out, in]`` layout, the tied decoder / feat_regress weights sharing their primaries'
   storages, as ``torch.save(model.state_dict())`` writes them). uniter-large: about 337 M float32 values.
2. A second, fresh child runs ``uniter convert --strict`` on it in-process (``cli.main``: read, build,
   load, write ``backbone.weights.h5`` + ``pretraining.weights.h5``) and reports its resident
   memory: after importing TensorFlow and the library (the baseline), the high-water mark when the load
   report is logged (every tensor loaded, nothing saved yet), and the peak of the whole process
   (``ru_maxrss``), all against the checkpoint's file size.

Prints one JSON object. Exit status 1 when the peak is not below twice the checkpoint's size
(``--above-baseline``: when the peak minus the baseline is not).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)


def _status_bytes(field: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process from /proc, in bytes."""
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def write_checkpoint(path: str, preset: str) -> dict:
    """Writes the preset's initial pretraining weights as a torch zip checkpoint, one tensor at a time."""
    import numpy as np

    from uniter_tf.checkpoints import official, torch_format
    from uniter_tf.config import UniterConfig
    from uniter_tf.models.backbone import UniterBackbone
    from uniter_tf.models.pretraining_model import UniterPretrainingModel

    model = UniterPretrainingModel(UniterBackbone(UniterConfig.from_preset(preset)))
    mapping = official.official_variable_map(model)
    primaries = set(official.TIED_KEYS.values())
    kept = {}
    count = [0, 0]

    def tensors():
        for key, (variable, transform) in mapping.items():
            array = variable.numpy()
            if transform == official.LINEAR:
                array = np.ascontiguousarray(array.T)
            if key in primaries:
                kept[key] = array  # its tied copy below shares this array, hence its storage
            count[0] += 1
            count[1] += array.size
            yield key, array
        for copy, primary in official.TIED_KEYS.items():
            if primary in kept and copy.endswith(".weight"):  # the official files store no decoder.bias copy
                yield copy, kept[primary]

    torch_format.save_zip(path, tensors())
    return {"tensors": count[0], "values": count[1]}


def measure_conversion(path: str, preset: str, output_dir: str) -> dict:
    """Runs ``uniter convert`` on ``path`` in this process and returns the memory figures (call in a fresh
    process)."""
    import contextlib
    import io

    import tensorflow as tf  # noqa: F401  (imported first: part of the baseline, as in `uniter convert`)

    from uniter_tf import cli

    baseline = _status_bytes("VmRSS")
    after_load = {}

    class _Output(io.StringIO):
        def write(self, text):
            if text.startswith("loaded ") and "hwm" not in after_load:  # the report: every tensor loaded
                after_load["hwm"] = _status_bytes("VmHWM")
                after_load["summary"] = text.splitlines()[0]
            return super().write(text)

    output = _Output()
    start = time.perf_counter()
    with contextlib.redirect_stdout(output):
        status = cli.main(["convert", "--checkpoint", path, "--config", preset, "--output", output_dir, "--strict"])
    seconds = time.perf_counter() - start
    if status != 0:
        raise RuntimeError(f"uniter convert exited {status}:\n{output.getvalue()[-2000:]}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"rss_baseline_bytes": baseline, "hwm_after_load_bytes": after_load.get("hwm"),
            "peak_rss_bytes": peak, "convert_seconds": round(seconds, 1), "report": after_load.get("summary")}


def _child(args: list) -> dict:
    completed = subprocess.run([sys.executable, os.path.abspath(__file__)] + args, check=False, capture_output=True,
                               text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES=""))
    if completed.returncode:
        raise RuntimeError(f"{' '.join(args)} failed ({completed.returncode}):\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--preset", default="uniter-large")
    parser.add_argument("--workdir", default=None, help="Where the checkpoint and the output go (default: a temp dir).")
    parser.add_argument("--keep", action="store_true", help="Keep the checkpoint and the converted directory.")
    parser.add_argument("--json", default=None, help="Also write the result to this file.")
    parser.add_argument("--above-baseline", action="store_true",
                        help="Exit 1 unless the peak minus the baseline after imports is below 2x the checkpoint "
                             "(for presets small enough that TensorFlow's own ~0.55 GiB dominates the peak).")
    parser.add_argument("--write", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--output", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.write:
        print(json.dumps(write_checkpoint(args.write, args.preset)))
        return 0
    if args.measure:
        print(json.dumps(measure_conversion(args.measure, args.preset, args.output)))
        return 0

    workdir = args.workdir or tempfile.mkdtemp(prefix="convert_bench_")
    os.makedirs(workdir, exist_ok=True)
    checkpoint = os.path.join(workdir, f"{args.preset}.pt")
    try:
        start = time.perf_counter()
        written = _child(["--preset", args.preset, "--write", checkpoint])
        write_seconds = time.perf_counter() - start
        size = os.path.getsize(checkpoint)
        measured = _child(["--preset", args.preset, "--measure", checkpoint, "--output",
                           os.path.join(workdir, "converted")])
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    gib = 1024 ** 3
    result = dict(preset=args.preset, checkpoint_bytes=size, write_seconds=round(write_seconds, 1), **written,
                  **measured)
    result["peak_over_checkpoint"] = round(measured["peak_rss_bytes"] / size, 3)
    result["peak_minus_baseline_over_checkpoint"] = round(
            (measured["peak_rss_bytes"] - measured["rss_baseline_bytes"]) / size, 3)
    result["summary"] = (f"checkpoint {size / gib:.2f} GiB ({written['values'] / 1e6:.0f} M values); peak RSS "
                         f"{measured['peak_rss_bytes'] / gib:.2f} GiB = {result['peak_over_checkpoint']:.2f}x "
                         f"(baseline after imports {measured['rss_baseline_bytes'] / gib:.2f} GiB; after load "
                         f"{(measured['hwm_after_load_bytes'] or 0) / gib:.2f} GiB)")
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
    ratio = result["peak_minus_baseline_over_checkpoint" if args.above_baseline else "peak_over_checkpoint"]
    return 0 if ratio < 2.0 else 1


if __name__ == "__main__":
    sys.exit(main())
