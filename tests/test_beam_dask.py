"""`uniter extract` and `uniter ingest` on a dask.distributed cluster give the DirectRunner's outputs.

The slow test starts a real cluster (`python -m dask scheduler` and `python -m dask worker --nworkers 2`
on 127.0.0.1, free ports, stopped at the end), runs both commands through the CLI with
`--runner=DaskRunner --dask_client_address=...` and with the DirectRunner on the same inputs (rendered
sample images plus a truncated PNG; captions plus an empty one and one of an image without features), and
compares the written records and dead letters as sets and the summaries' counters.
"""

import json
import os
import subprocess
import sys
import time

import pytest

from uniter_tf.commands import _beam_flags


def test_dask_runner_flag_selects_the_project_runner():
    flags = _beam_flags.check_beam_flags(["--runner=DaskRunner", "--dask_client_address=127.0.0.1:8786",
                                          "--dask_npartitions=2"])
    from uniter_tf import beam_dask

    assert flags == [f"--runner={beam_dask.RUNNER_PATH}", "--dask_client_address=127.0.0.1:8786",
                     "--dask_npartitions=2"]
    assert _beam_flags.check_beam_flags(["--runner", "DaskRunner"]) == ["--runner", beam_dask.RUNNER_PATH]
    # A misspelt Dask flag is rejected like any other unknown Beam flag.
    with pytest.raises(_beam_flags.UnknownBeamFlags, match="--dask_client_adress"):
        _beam_flags.check_beam_flags(["--runner=DaskRunner", "--dask_client_adress=127.0.0.1:8786"])


def _start(command, log_path):
    log = open(log_path, "w", encoding="utf-8")  # pylint: disable=consider-using-with
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=os.path.dirname(log_path))


def _stop(process):
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    """``host:port`` of a scheduler with two single-threaded worker processes, all on 127.0.0.1."""
    from dask.distributed import Client

    root = tmp_path_factory.mktemp("dask")
    scheduler_file = str(root / "scheduler.json")
    scheduler = _start([sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
                        "--no-dashboard", "--scheduler-file", scheduler_file], str(root / "scheduler.log"))
    workers = None
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(scheduler_file):
            assert scheduler.poll() is None, (root / "scheduler.log").read_text()
            assert time.monotonic() < deadline, "the dask scheduler did not start in 60 s"
            time.sleep(0.2)
        workers = _start([sys.executable, "-m", "dask", "worker", "--scheduler-file", scheduler_file,
                          "--nworkers", "2", "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard",
                          "--local-directory", str(root / "workers")], str(root / "workers.log"))
        with Client(scheduler_file=scheduler_file, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
            address = client.scheduler.address
        assert address.startswith("tcp://127.0.0.1:")
        yield address[len("tcp://"):]
    finally:
        if workers is not None:
            _stop(workers)
        _stop(scheduler)


def _records(pattern):
    """The records as a sorted list of canonical bytes.

    A ``tf.train.Example`` feature map serialises in an order that differs between processes, so the same
    record written by a Dask worker and by the test process can differ as bytes; re-serialising
    deterministically compares what they hold.
    """
    import tensorflow as tf

    from uniter_tf.data import tfrecord_io

    return sorted(tf.train.Example.FromString(record.numpy()).SerializeToString(deterministic=True)
                  for record in tfrecord_io.read_examples(pattern))


def _dead_letters(directory):
    import glob

    lines = []
    for path in glob.glob(os.path.join(directory, "dead_letters-*.jsonl")):
        with open(path, encoding="utf-8") as handle:
            lines += [json.dumps(json.loads(line), sort_keys=True) for line in handle if line.strip()]
    return sorted(lines)


def _no_leftovers(directory):
    """Sink temp folders are removed when a write is finalised; one left means a write ran twice or failed."""
    left = [name for _, dirs, _ in os.walk(directory) for name in dirs if name.startswith("beam-temp-")]
    assert not left, left


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from uniter_tf.data import sample_data
    from uniter_tf.extraction import toy_detector

    root = tmp_path_factory.mktemp("inputs")
    sample_data.generate(str(root), sample_data.SampleDataConfig(num_images=3, seed=5))
    good = (root / "images" / "sample_000000.png").read_bytes()
    (root / "images" / "truncated.png").write_bytes(good[: len(good) // 3])
    captions = json.loads((root / "captions.json").read_text())
    captions["images"].append({"id": 77, "file_name": "missing.png", "width": 320, "height": 240})
    captions["annotations"] += [{"image_id": 0, "id": 9990, "caption": "   "},
                                {"image_id": 77, "id": 9991, "caption": "a red circle on the left"}]
    (root / "captions_with_bad.json").write_text(json.dumps(captions))
    return {"root": root, "detector": toy_detector.write_toy_detector(str(root / "detector")),
            "feature_dim": toy_detector.FEATURE_DIM, "num_classes": toy_detector.NUM_CLASSES}


@pytest.mark.slow
@pytest.mark.e2e
def test_extract_and_ingest_on_dask_match_the_direct_runner(dask_cluster, inputs, tmp_path, capsys):
    from uniter_tf import cli
    from uniter_tf.data import dead_letter

    runners = {"direct": ["--runner=DirectRunner"],
               # Two partitions after the Reshuffle of the matched images: both workers extract.
               "dask": ["--runner=DaskRunner", f"--dask_client_address={dask_cluster}", "--dask_npartitions=2"]}
    root = inputs["root"]
    seconds = {}
    for name, flags in runners.items():
        started = time.monotonic()
        assert cli.main(["extract", "--images", str(root / "images" / "*"), "--output", str(tmp_path / f"x_{name}"),
                         "--detector", inputs["detector"], "--num-classes", str(inputs["num_classes"]),
                         "--min-boxes", "3", "--max-boxes", "6", "--num-shards", "2", *flags]) == 0
        seconds[f"extract {name}"] = time.monotonic() - started
    capsys.readouterr()
    extracted = {name: _records(str(tmp_path / f"x_{name}" / "region_features-*")) for name in runners}
    assert len(extracted["direct"]) == 3
    assert extracted["dask"] == extracted["direct"]
    letters = {name: _dead_letters(str(tmp_path / f"x_{name}")) for name in runners}
    assert len(letters["direct"]) == 1 and '"truncated"' in letters["direct"][0]
    assert letters["dask"] == letters["direct"]
    summaries = {name: json.loads((tmp_path / f"x_{name}" / "extraction_summary.json").read_text())
                 for name in runners}
    assert summaries["dask"]["counters"] == summaries["direct"]["counters"]
    assert summaries["dask"]["dead_letters"] == summaries["direct"]["dead_letters"] == 1

    for name, flags in runners.items():
        started = time.monotonic()
        # The features are the Dask run's extraction output: the two commands chained on the cluster.
        assert cli.main(["ingest", "--format", "coco", "--annotations", str(root / "captions_with_bad.json"),
                         "--features", str(tmp_path / "x_dask" / "region_features-*"), "--feature-format",
                         "canonical", "--feature-dim", str(inputs["feature_dim"]), "--min-boxes", "3",
                         "--max-boxes", "6", "--eval-fraction", "0.5", "--output", str(tmp_path / f"i_{name}"),
                         *flags]) == 0
        seconds[f"ingest {name}"] = time.monotonic() - started
    assert "ingest summary" in capsys.readouterr().out
    for split in ("train", "eval"):
        written = {name: _records(str(tmp_path / f"i_{name}" / split / "*.tfrecord.gz")) for name in runners}
        assert written["dask"] == written["direct"], split
        assert written["direct"], f"no {split} records: the comparison would be empty"
    letters = {name: _dead_letters(str(tmp_path / f"i_{name}" / "dead_letters")) for name in runners}
    assert letters["dask"] == letters["direct"]
    reasons = sorted(json.loads(line)["reason"] for line in letters["direct"])
    assert reasons == sorted([dead_letter.EMPTY_TEXT, dead_letter.UNKNOWN_IMAGE])
    counts = {name: json.loads((tmp_path / f"i_{name}" / "ingest_summary.json").read_text())["counts"]
              for name in runners}
    assert counts["dask"] == counts["direct"]
    assert counts["direct"][dead_letter.EMPTY_TEXT] == counts["direct"][dead_letter.UNKNOWN_IMAGE] == 1
    for name in runners:
        _no_leftovers(str(tmp_path / f"x_{name}"))
        _no_leftovers(str(tmp_path / f"i_{name}"))
    print("seconds:", {key: round(value, 1) for key, value in seconds.items()})
