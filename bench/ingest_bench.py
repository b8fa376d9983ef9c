"""Ingest benchmarks: importer streaming and `uniter ingest` (DirectRunner) throughput and peak memory.

Each measurement runs in a fresh subprocess so that its peak RSS (``ru_maxrss``) is its own. Data are
synthetic, written in the official formats: an img_db (LMDB of msgpack fp16 arrays, ``nbb`` file) and a
COCO captions JSON with ``--captions-per-image`` captions per image.

Usage:
    .venv/bin/python bench/ingest_bench.py --sizes 50,200,800 --regions 36 --feature-dim 2048
    .venv/bin/python bench/ingest_bench.py --sizes 50,200 --modes ingest --num-shards 1   # Beam file sink
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)


class PeakMemorySampler:
    """Samples ``VmRSS`` and ``RssAnon`` of this process every ``interval`` s and keeps the peaks (MiB).

    ``RssAnon`` excludes file-backed pages: an LMDB is memory-mapped, so the pages it touches count in
    ``VmRSS`` (reclaimable page cache) but not in ``RssAnon`` (the heap, where a loader that holds the
    dataset would grow).
    """

    def __init__(self, interval: float = 0.02):
        self.peaks = {"VmRSS": 0.0, "RssAnon": 0.0}
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self):
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                name, _, value = line.partition(":")
                if name in self.peaks:
                    self.peaks[name] = max(self.peaks[name], int(value.split()[0]) / 1024.0)

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            time.sleep(self._interval)

    def __enter__(self):
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()
        self._sample()


def make_dataset(directory: str, num_images: int, regions: int, feature_dim: int, captions_per_image: int):
    """Writes ``directory/img_db`` and ``directory/captions.json``; returns their paths."""
    import numpy as np

    from uniter_tf.data import boxes as boxes_lib
    from uniter_tf.data.importers import img_db

    rng = np.random.default_rng(0)
    images = {}
    for image_id in range(num_images):
        x1 = rng.uniform(0, 0.5, regions)
        y1 = rng.uniform(0, 0.5, regions)
        x2, y2 = x1 + 0.3, y1 + 0.3
        images[f"coco_train2014_{image_id:012d}.npz"] = {
                "features": rng.normal(size=(regions, feature_dim)).astype(np.float32),
                "norm_bb": np.stack([x1, y1, x2, y2, x2 - x1, y2 - y1], 1).astype(np.float32),
                "conf": np.linspace(0.95, 0.25, regions).astype(np.float32),
        }
    img_db.write_img_db(os.path.join(directory, "img_db"), images, selection=boxes_lib.BoxSelection())
    del images
    annotations = []
    for image_id in range(num_images):
        for index in range(captions_per_image):
            annotations.append({"image_id": image_id, "id": image_id * 10 + index,
                                "caption": f"A man riding a bicycle down the street number {index} near a red car."})
    captions = {"images": [{"id": image_id, "file_name": f"COCO_train2014_{image_id:012d}.jpg", "height": 480,
                            "width": 640} for image_id in range(num_images)],
                "annotations": annotations}
    captions_path = os.path.join(directory, "captions.json")
    with open(captions_path, "w", encoding="utf-8") as handle:
        json.dump(captions, handle)
    return os.path.join(directory, "img_db"), captions_path


def measure_importer(img_db_dir: str):
    """Streams every record of the img_db; returns (records, seconds)."""
    from uniter_tf.data.importers import img_db

    start = time.perf_counter()
    count = sum(1 for _ in img_db.iter_img_db(img_db_dir))
    return count, time.perf_counter() - start


def measure_ingest(img_db_dir: str, captions_path: str, output: str, feature_dim: int, num_shards: int = 0):
    """Runs the ingest pipeline on the DirectRunner; returns (records written, seconds)."""
    from uniter_tf.data import dead_letter, ingest

    config = ingest.IngestConfig(annotation_format="coco", annotations=(captions_path,), features=img_db_dir,
                                 feature_dim=feature_dim, num_shards=num_shards)
    start = time.perf_counter()
    result = ingest.run_ingest(config, output, ["--direct_num_workers=1"])
    seconds = time.perf_counter() - start
    written = sum(result.counts.get(dead_letter.EXAMPLES_WRITTEN_PREFIX + split, 0) for split in ingest.SPLITS)
    return written, seconds


def _child(args):
    if args.child == "ingest":
        import apache_beam  # noqa: F401  (module imports are not pipeline work)
        import tensorflow  # noqa: F401
    with PeakMemorySampler() as sampler:
        if args.child == "importer":
            count, seconds = measure_importer(args.img_db)
        else:
            count, seconds = measure_ingest(args.img_db, args.captions, args.output, args.feature_dim,
                                            args.num_shards)
    print(json.dumps({"records": count, "seconds": seconds, "peak_rss_mib": sampler.peaks["VmRSS"],
                      "peak_anon_mib": sampler.peaks["RssAnon"]}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="50,200", help="numbers of images, comma-separated")
    parser.add_argument("--regions", type=int, default=36)
    parser.add_argument("--feature-dim", type=int, default=2048)
    parser.add_argument("--captions-per-image", type=int, default=5)
    parser.add_argument("--modes", default="importer,ingest")
    parser.add_argument("--num-shards", type=int, default=0,
                        help="ingest shards per split (0: streaming writer; N: Beam's file sink)")
    parser.add_argument("--child", choices=("importer", "ingest"), help=argparse.SUPPRESS)
    parser.add_argument("--img-db", help=argparse.SUPPRESS)
    parser.add_argument("--captions", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    rows = []
    for size in [int(value) for value in args.sizes.split(",")]:
        with tempfile.TemporaryDirectory(prefix="uniter_ingest_bench_") as directory:
            img_db_dir, captions_path = make_dataset(directory, size, args.regions, args.feature_dim,
                                                     args.captions_per_image)
            for mode in args.modes.split(","):
                command = [sys.executable, os.path.abspath(__file__), "--child", mode, "--img-db", img_db_dir,
                           "--captions", captions_path, "--output", os.path.join(directory, f"out_{mode}"),
                           "--feature-dim", str(args.feature_dim), "--num-shards", str(args.num_shards)]
                completed = subprocess.run(command, capture_output=True, text=True, check=True,
                                           env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
                measured = json.loads(completed.stdout.strip().splitlines()[-1])
                row = {"mode": mode, "images": size, **measured,
                       "records_per_s": measured["records"] / measured["seconds"]}
                rows.append(row)
                print(json.dumps(row), flush=True)
    print("\n| mode | images | records | seconds | records/s | peak VmRSS (MiB) | peak RssAnon (MiB) |\n"
          "|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['mode']} | {row['images']} | {row['records']} | {row['seconds']:.1f} | "
              f"{row['records_per_s']:.1f} | {row['peak_rss_mib']:.0f} | {row['peak_anon_mib']:.0f} |")


if __name__ == "__main__":
    main()
