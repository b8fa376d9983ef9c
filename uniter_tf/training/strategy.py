"""Selection of the ``tf.distribute`` strategy from the training config.

Names: ``default`` (no distribution), ``one_device``, ``mirrored`` (all local GPUs, or CPU devices),
``multi_worker_mirrored`` (workers from ``TF_CONFIG``) and ``tpu`` (``TPUClusterResolver``). The global
batch is ``per-replica batch × num_replicas_in_sync``; the input pipeline builds per-replica batches through
``distribute_datasets_from_function``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import tensorflow as tf

STRATEGIES = ("default", "one_device", "mirrored", "multi_worker_mirrored", "tpu")


def configure_logical_cpus(count: int) -> None:
    """Splits the physical CPU into ``count`` logical devices (tests of ``mirrored`` on one machine).

    Must run before TensorFlow initialises its devices; raises ``RuntimeError`` otherwise.
    """
    if count < 1:
        raise ValueError(f"logical CPU count must be >= 1, got {count}")
    cpus = tf.config.list_physical_devices("CPU")
    current = tf.config.get_logical_device_configuration(cpus[0])
    if current and len(current) == count:
        return
    tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * count)


def build_strategy(name: str = "default", *, devices: Optional[Sequence[str]] = None,
                   tpu_address: str = "", logical_cpus: int = 0) -> tf.distribute.Strategy:
    """Returns the strategy ``name``.

    Args:
        name: one of :data:`STRATEGIES`.
        devices: for ``one_device`` the device (first entry) and for ``mirrored`` the device list;
            default: the first GPU (else CPU) / every GPU (else every logical CPU).
        tpu_address: ``TPUClusterResolver(tpu=...)`` (empty: the TPU of this VM / from the environment).
        logical_cpus: with ``mirrored`` and no GPU, split the CPU into this many logical devices first.

    Raises:
        ValueError: unknown name.
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; known: {STRATEGIES}")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        device = devices[0] if devices else ("/gpu:0" if tf.config.list_physical_devices("GPU") else "/cpu:0")
        return tf.distribute.OneDeviceStrategy(device)
    if name == "mirrored":
        if devices is None and not tf.config.list_physical_devices("GPU"):
            if logical_cpus:
                configure_logical_cpus(logical_cpus)
            devices = [device.name for device in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multi_worker_mirrored":
        # Workers and this task's index come from TF_CONFIG; RING works on CPU and GPU.
        options = tf.distribute.experimental.CommunicationOptions(
                implementation=tf.distribute.experimental.CommunicationImplementation.AUTO)
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_address)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the worker that writes summaries, plots and the exported model (task 0 / the only one)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0)
