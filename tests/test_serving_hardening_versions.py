"""Issue 18, server side: the version poller against real file copies (items 11 and 12).

* item 11: a version copied with ``cp -a`` (``saved_model.pb`` first, ``variables/`` after, with
  preserved modification times) fails its first load and must be retried once the rest arrives,
  although no file is newer than the one seen at the failure; retries back off;
* item 12: a directory named ``²`` (``str.isdigit()`` is true, ``int()`` refuses it) or ``٣`` (which
  ``int()`` reads as 3) is not a version: it is skipped and logged once, and new versions load.
"""

import logging
import os
import subprocess
import time

import pytest

from serving.model_manager import ModelManager, ServableVersion, load_saved_model, numeric_versions
from serving.toy_model import write_toy_model


def _newest_mtime(path):
    return max(os.path.getmtime(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)


def test_a_version_copied_with_cp_a_is_retried_when_its_files_arrive(tmp_path):
    source = write_toy_model(str(tmp_path / "source"), 2)  # the export being pushed, made earlier
    base_path = str(tmp_path / "served")
    write_toy_model(base_path, 1)
    manager = ModelManager("uniter", base_path, poll_interval_s=0, loader=load_saved_model, retry_backoff_s=0.5)
    manager.start()
    assert manager.available_versions() == [1]

    target = os.path.join(base_path, "2")
    os.makedirs(target)
    files = sorted(name for name in os.listdir(source) if os.path.isfile(os.path.join(source, name)))
    directories = sorted(set(os.listdir(source)) - set(files))
    assert "saved_model.pb" in files and "variables" in directories
    subprocess.run(["cp", "-a", *[os.path.join(source, name) for name in files], target], check=True)
    manager.poll_once()  # sees saved_model.pb without its variables: the load fails
    version, state, _, message = manager.status(2)[0]
    assert (version, state) == (2, "END") and "variables" in message
    mark_at_failure = _newest_mtime(target)

    subprocess.run(["cp", "-a", *[os.path.join(source, name) for name in directories], target], check=True)
    # Every file arrived with its original (older) time: the newest time did not change.
    assert _newest_mtime(target) == mark_at_failure
    manager.poll_once()  # within the back-off: not yet
    assert manager.available_versions() == [1]
    time.sleep(0.6)
    manager.poll_once()
    assert manager.available_versions() == [2]
    assert manager.status(2)[0][1] == "AVAILABLE"
    with manager.acquire() as servable:
        assert servable.version == 2 and "score_tensors" in servable.signatures
    manager.stop()


def _make_version_dir(base_path, name, content="ok"):
    directory = os.path.join(base_path, str(name))
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "saved_model.pb"), "w") as handle:
        handle.write(content)


def test_failed_loads_back_off_and_an_unchanged_version_is_not_retried(tmp_path):
    base_path = str(tmp_path)
    _make_version_dir(base_path, 1)
    attempts = []

    def loader(model_name, version, path):
        attempts.append(time.monotonic())
        with open(os.path.join(path, "saved_model.pb")) as handle:
            if handle.read().startswith("broken"):
                raise ValueError(f"cannot parse {path}")
        return ServableVersion(model_name, version, path, signatures={}, signature_def_map={})

    manager = ModelManager("m", base_path, poll_interval_s=0, loader=loader, retry_backoff_s=1.0)
    manager.start()
    _make_version_dir(base_path, 2, "broken")
    manager.poll_once()
    assert len(attempts) == 2  # version 1, then version 2 (failed)
    manager.poll_once()  # unchanged: never retried, whatever the time
    _make_version_dir(base_path, 2, "broken again")
    manager.poll_once()  # changed, but within the first back-off (1 s)
    assert len(attempts) == 2
    time.sleep(1.05)
    manager.poll_once()
    assert len(attempts) == 3  # retried (and failed again): the back-off doubles to 2 s
    _make_version_dir(base_path, 2, "ok, fixed")
    time.sleep(1.05)
    manager.poll_once()
    assert len(attempts) == 3
    time.sleep(1.0)
    manager.poll_once()
    assert len(attempts) == 4 and manager.available_versions() == [2]
    assert attempts[3] - attempts[2] >= 2.0
    manager.stop()


@pytest.mark.parametrize("name", ["\u00b2", "\u0663", "99999999999999999999999"])
def test_a_directory_that_is_not_an_ascii_version_is_skipped_and_logged_once(tmp_path, caplog, name):
    base_path = str(tmp_path)
    _make_version_dir(base_path, 1)
    _make_version_dir(base_path, name)  # "²".isdigit() and "٣".isdigit() are True; int("٣") == 3
    loads = []

    def loader(model_name, version, path):
        loads.append((version, os.path.basename(path)))
        return ServableVersion(model_name, version, path, signatures={}, signature_def_map={})

    manager = ModelManager("m", base_path, poll_interval_s=0, loader=loader)
    with caplog.at_level(logging.WARNING, logger="serving.model_manager"):
        manager.start()
        _make_version_dir(base_path, 2)
        manager.poll_once()
        manager.poll_once()
    assert manager.available_versions() == [2]
    assert loads == [(1, "1"), (2, "2")]
    warnings = [record.getMessage() for record in caplog.records if name in record.getMessage()]
    assert len(warnings) == 1 and "ASCII digits" in warnings[0]
    assert numeric_versions(base_path) == [1, 2]
    manager.stop()
