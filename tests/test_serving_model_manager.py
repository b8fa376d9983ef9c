"""The version manager: latest-N policy, failed loads, and unloading only after requests finish."""

import os
import threading

import pytest

from serving.errors import Code, ServingError
from serving.model_manager import ModelManager, ServableVersion, numeric_versions


def _make_version_dir(base_path, version, broken=False):
    directory = os.path.join(base_path, str(version))
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "saved_model.pb"), "w") as handle:
        handle.write("broken" if broken else "ok")


def _fake_loader(model_name, version, path):
    with open(os.path.join(path, "saved_model.pb")) as handle:
        if handle.read() == "broken":
            raise ValueError(f"cannot parse {path}")
    return ServableVersion(model_name, version, path, signatures={}, signature_def_map={})


def test_numeric_versions_ignores_non_numeric_and_incomplete_directories(tmp_path):
    for version in (3, 10, 1):
        _make_version_dir(str(tmp_path), version)
    os.makedirs(tmp_path / "7")  # no saved_model.pb yet (a copy in progress)
    os.makedirs(tmp_path / "tmp-12")
    _make_version_dir(str(tmp_path), "tmp-13")
    assert numeric_versions(str(tmp_path)) == [1, 3, 10]
    assert numeric_versions(str(tmp_path / "absent")) == []


def test_latest_n_policy_loads_new_versions_and_unloads_old_ones(tmp_path):
    base_path = str(tmp_path)
    _make_version_dir(base_path, 1)
    manager = ModelManager("m", base_path, num_versions=2, poll_interval_s=0, loader=_fake_loader)
    manager.start()
    assert manager.available_versions() == [1]
    _make_version_dir(base_path, 2)
    _make_version_dir(base_path, 3)
    manager.poll_once()
    assert manager.available_versions() == [2, 3]
    states = {version: state for version, state, _, _ in manager.status()}
    assert states == {3: "AVAILABLE", 2: "AVAILABLE", 1: "END"}
    with manager.acquire() as servable:
        assert servable.version == 3
    with manager.acquire(2) as servable:
        assert servable.version == 2
    with pytest.raises(ServingError) as raised:
        with manager.acquire(1):
            pass
    assert raised.value.code == Code.NOT_FOUND
    manager.stop()


def test_a_version_that_fails_to_load_leaves_the_previous_one_serving(tmp_path):
    base_path = str(tmp_path)
    _make_version_dir(base_path, 1)
    loads = []

    def counting_loader(model_name, version, path):
        loads.append(version)
        return _fake_loader(model_name, version, path)

    manager = ModelManager("m", base_path, poll_interval_s=0, loader=counting_loader, retry_backoff_s=0)
    manager.start()
    _make_version_dir(base_path, 2, broken=True)
    manager.poll_once()
    manager.poll_once()  # an unchanged broken version is not retried every poll
    assert manager.available_versions() == [1]
    version, state, code, message = manager.status(2)[0]
    assert (version, state, code) == (2, "END", Code.UNKNOWN)
    assert "cannot parse" in message
    assert loads == [1, 2]
    _make_version_dir(base_path, 2)  # fixed in place
    os.utime(os.path.join(base_path, "2", "saved_model.pb"), (1e9 + 5, 2e9))
    manager.poll_once()
    assert manager.available_versions() == [2]
    manager.stop()


def test_an_unloaded_version_is_released_only_after_its_requests_return(tmp_path):
    base_path = str(tmp_path)
    _make_version_dir(base_path, 1)
    manager = ModelManager("m", base_path, poll_interval_s=0, loader=_fake_loader)
    manager.start()
    request_started, finish_request = threading.Event(), threading.Event()
    seen = []

    def slow_request():
        with manager.acquire() as servable:
            seen.append(servable)
            request_started.set()
            finish_request.wait(10)

    worker = threading.Thread(target=slow_request)
    worker.start()
    assert request_started.wait(10)
    _make_version_dir(base_path, 2)
    manager.poll_once()
    old = seen[0]
    assert manager.available_versions() == [2]  # new requests go to version 2 at once
    assert old.in_flight == 1 and not old.released.is_set()  # version 1 waits for its request
    finish_request.set()
    worker.join(10)
    assert old.released.is_set()
    manager.stop()


def test_no_version_at_all_is_not_found(tmp_path):
    manager = ModelManager("m", str(tmp_path / "empty"), poll_interval_s=0, loader=_fake_loader)
    manager.start()
    with pytest.raises(ServingError) as raised:
        with manager.acquire():
            pass
    assert raised.value.code == Code.NOT_FOUND
    assert "no version of model 'm'" in raised.value.message
    with pytest.raises(ServingError):
        manager.status()
    manager.stop()
