"""Facts about the running environment: package versions, CPU features, devices."""

from __future__ import annotations

import importlib.metadata
import platform
import sys
from typing import Dict, List

# Distribution names whose versions users are asked for in bug reports.
STACK_DISTRIBUTIONS = (
    "tensorflow",
    "keras",
    "keras-nlp",
    "tensorflow-text",
    "tfx",
    "apache-beam",
    "tensorflow-serving-api",
    "tf-keras",
    "numpy",
)

# /proc/cpuinfo flags that decide which matmul kernels TF's oneDNN can use.
CPU_FEATURES = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")


def package_versions() -> Dict[str, str]:
    versions = {}
    for name in STACK_DISTRIBUTIONS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def cpu_features(cpuinfo_path: str = "/proc/cpuinfo") -> Dict[str, object]:
    model, flags = "unknown", set()
    try:
        with open(cpuinfo_path, encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model == "unknown":
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "features": {name: name in flags for name in CPU_FEATURES}}


def visible_devices() -> List[str]:
    import tensorflow as tf

    return [f"{d.device_type}:{d.name}" for d in tf.config.list_physical_devices()]


def collect() -> Dict[str, object]:
    from uniter_tf import __version__

    return {
        "uniter-tf": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        "cpu": cpu_features(),
        "devices": visible_devices(),
    }


def format_report(report: Dict[str, object]) -> str:
    lines = [f"uniter-tf {report['uniter-tf']}", f"python {report['python']} on {report['platform']}"]
    lines += [f"{name} {version}" for name, version in report["packages"].items()]
    cpu = report["cpu"]
    flags = ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in cpu["features"].items())
    lines.append(f"cpu {cpu['model']}: {flags}")
    lines.append("devices " + ", ".join(report["devices"]))
    return "\n".join(lines)
