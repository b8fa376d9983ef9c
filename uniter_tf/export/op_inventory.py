"""Lists the op types a SavedModel uses that core TensorFlow does not register (TF-Text's, ...).

A ``tensorflow_model_server`` binary links one TF-Text version; a model that uses an op it lacks
fails to load with "Op type not registered". The check runs in a fresh interpreter that imports
TensorFlow but not ``tensorflow_text``, so the op registry holds exactly the core ops.

Run as ``python -m uniter_tf.export.op_inventory SAVED_MODEL_DIR`` (prints one op per line), or with
``-`` to check the op types given one per line on stdin. :func:`non_core_ops` reads the graph in the
calling process (through ``tf.io.gfile``, so the export may be on ``gs://`` or ``ram://``, which a
subprocess cannot see) and sends only the op names to the subprocess.
"""

from __future__ import annotations

import subprocess
import sys
from typing import List, Set


def op_types(saved_model_dir: str) -> Set[str]:
    """Every op type in the SavedModel's graph and function library."""
    from tensorflow.python.saved_model import loader_impl

    saved_model = loader_impl.parse_saved_model(saved_model_dir)
    types = set()
    for meta_graph in saved_model.meta_graphs:
        types.update(node.op for node in meta_graph.graph_def.node)
        for function in meta_graph.graph_def.library.function:
            types.update(node.op for node in function.node_def)
    return types


def _unregistered_in_this_process(types) -> List[str]:
    from tensorflow.python.framework import op_def_registry

    return sorted(op for op in set(types) if op_def_registry.get(op) is None)


def non_core_ops(saved_model_dir: str, timeout_s: float = 300) -> List[str]:
    """The op types of ``saved_model_dir`` that core TensorFlow lacks (checked in a subprocess).

    Raises:
        RuntimeError: when the subprocess fails (its stderr is in the message).
    """
    names = "\n".join(sorted(op_types(saved_model_dir))) + "\n"
    result = subprocess.run([sys.executable, "-m", "uniter_tf.export.op_inventory", "-"], input=names,
                            capture_output=True, text=True, timeout=timeout_s)
    if result.returncode != 0:
        raise RuntimeError(f"listing the ops of {saved_model_dir} failed: {result.stderr[-2000:]}")
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


def main(argv=None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if len(arguments) != 1:
        print("usage: python -m uniter_tf.export.op_inventory SAVED_MODEL_DIR|-", file=sys.stderr)
        return 2
    if "tensorflow_text" in sys.modules:
        print("tensorflow_text is already imported; run this in a fresh interpreter", file=sys.stderr)
        return 2
    if arguments[0] == "-":
        types = [line.strip() for line in sys.stdin if line.strip()]
    else:
        types = op_types(arguments[0])
    for op in _unregistered_in_this_process(types):
        print(op)
    return 0


if __name__ == "__main__":
    sys.exit(main())
