"""Writes the runtime part of requirements.lock: every pin except the packages of requirements-dev.txt.

The production image installs this (see Dockerfile); `make install` installs the whole lock.

    python scripts/runtime_lock.py requirements.lock requirements-dev.txt > runtime.lock
"""

import re
import sys
from typing import Iterable, List, Set

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==")


def normalize(name: str) -> str:
    """PEP 503 normalisation: ``Scikit_Image`` and ``scikit-image`` are one distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


def dev_names(lines: Iterable[str]) -> Set[str]:
    """The distribution names of a requirements-dev.txt (comments and blank lines skipped)."""
    return {normalize(line.split("#", 1)[0].strip()) for line in lines if line.split("#", 1)[0].strip()}


def runtime_pins(lock_lines: Iterable[str], excluded: Set[str]) -> List[str]:
    """The ``name==version`` lines of the lock whose name is not in ``excluded``.

    Raises:
        ValueError: an excluded name has no pin in the lock (a typo would silently keep it).
    """
    pins, seen = [], set()
    for line in lock_lines:
        match = _PIN.match(line.strip())
        if not match:
            continue
        name = normalize(match.group(1))
        seen.add(name)
        if name not in excluded:
            pins.append(line.strip())
    unknown = sorted(excluded - seen)
    if unknown:
        raise ValueError(f"requirements-dev.txt names packages that requirements.lock does not pin: {unknown}")
    return pins


def main(argv: List[str]) -> int:
    if len(argv) != 3:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as lock, open(argv[2], encoding="utf-8") as dev:
        pins = runtime_pins(lock, dev_names(dev))
    sys.stdout.write("\n".join(pins) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
