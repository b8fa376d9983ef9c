"""Speed settings the trainers apply before they start: the XLA compilation cache and the bf16 check.

* :func:`enable_xla_persistent_cache` points TensorFlow's XLA JIT at an on-disk cache
  (``--tf_xla_persistent_cache_directory``), so a ``jit_compile`` step (or an XLA-compiled serving
  function) is compiled once per shape and machine, not once per process: uniter-base's training step
  takes minutes to compile on a 2-core CPU. TensorFlow reads ``TF_XLA_FLAGS`` once, when its runtime
  starts, so this must run before the first TensorFlow op (``uniter pretrain`` / ``uniter finetune`` call
  it first thing); later calls only report that the cache is not active in this process.
* :func:`bfloat16_warning` says when ``mixed_bfloat16`` will be *slower* than float32: on a CPU with
  neither AVX512-BF16 nor AMX (e.g. AVX2-only AMD EPYC), oneDNN has no native bf16 matmul and emulates
  it through float32 conversions (measured 88 vs 105 GFLOP/s on a 2048² matmul, docs/performance.md).
"""

from __future__ import annotations

import os
from typing import Dict, Optional

from uniter_tf.env_info import cpu_features

#: Environment variable naming the XLA cache folder; ``off`` (or empty) disables the cache.
CACHE_ENV = "UNITER_XLA_CACHE"
_FLAG = "--tf_xla_persistent_cache_directory"


def default_cache_directory() -> str:
    """``$UNITER_XLA_CACHE``, else ``$XDG_CACHE_HOME/uniter_tf/xla`` (``~/.cache/uniter_tf/xla``)."""
    if os.environ.get(CACHE_ENV) is not None:
        return os.environ[CACHE_ENV]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "uniter_tf", "xla")


def _tensorflow_runtime_started() -> bool:
    """Whether TensorFlow's eager context exists (then its XLA flags have been read already)."""
    import sys

    context_module = sys.modules.get("tensorflow.python.eager.context")
    if context_module is None:
        return False
    context = getattr(context_module, "_context", None)
    return context is not None and getattr(context, "_context_handle", None) is not None


def _writable_directory(directory: str) -> bool:
    """Whether ``directory`` exists (or can be made) and a file can be created in it.

    ``os.makedirs(exist_ok=True)`` alone succeeds on an existing folder of a read-only file system, so
    this creates and removes a probe file, as XLA will when it writes its first cache entry.
    """
    import tempfile

    try:
        os.makedirs(directory, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".write-probe-", dir=directory)
        os.close(handle)
        os.remove(probe)
    except OSError:
        return False
    return True


def enable_xla_persistent_cache(directory: Optional[str] = None) -> Optional[str]:
    """Adds the persistent XLA cache flag to ``TF_XLA_FLAGS`` (before TensorFlow starts).

    Args:
        directory: the cache folder (default :func:`default_cache_directory`); ``"off"`` or ``""``
            disables it.

    Returns:
        The active cache folder, or None when disabled or when TensorFlow started before this call
        (the flag would be ignored) and no cache was configured then.
    """
    directory = default_cache_directory() if directory is None else directory
    flags = os.environ.get("TF_XLA_FLAGS", "")
    for token in flags.split():
        if token.startswith(_FLAG + "="):
            return token.split("=", 1)[1] or None  # the user's own setting wins
    if not directory or directory.lower() == "off" or _tensorflow_runtime_started():
        return None
    if not _writable_directory(directory):
        # e.g. a read-only home (Bazel's sandbox mounts / read-only, the folder may already exist there):
        # XLA would fail the first compiled call writing its .pb.tmp, so run without the cache instead.
        return None
    os.environ["TF_XLA_FLAGS"] = f"{flags} {_FLAG}={directory}".strip()
    return directory


def bfloat16_warning(precision: str, devices: Optional[Dict[str, int]] = None,
                     features: Optional[Dict[str, bool]] = None) -> Optional[str]:
    """A warning when ``precision`` is ``mixed_bfloat16`` on a CPU without bf16 matmul hardware.

    Args:
        precision: the run's precision policy.
        devices: device type -> count (default: TensorFlow's physical devices); with a GPU or TPU
            the check does not apply.
        features: the CPU features of :func:`uniter_tf.env_info.cpu_features` (default: this CPU's).

    Returns:
        The warning text, or None.
    """
    if precision != "mixed_bfloat16":
        return None
    if devices is None:
        import tensorflow as tf

        devices = {}
        for device in tf.config.list_physical_devices():
            devices[device.device_type] = devices.get(device.device_type, 0) + 1
    if devices.get("GPU") or devices.get("TPU"):
        return None
    cpu = cpu_features() if features is None else {"model": "this CPU", "features": features}
    flags = cpu["features"]
    if flags.get("avx512_bf16") or flags.get("amx_bf16"):
        return None
    return (f"WARNING: precision=mixed_bfloat16 on {cpu['model']}, which has neither AVX512-BF16 nor AMX-BF16 "
            f"(see `uniter env`): oneDNN emulates bfloat16 matmuls through float32 here, so training will be "
            f"slower than precision=float32, not faster. Use float32 on this machine.")


__all__ = ["CACHE_ENV", "bfloat16_warning", "default_cache_directory", "enable_xla_persistent_cache"]
