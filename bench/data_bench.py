"""Benchmarks of the canonical record and region-feature extraction (figures in docs/performance.md).

Sections (``--section``, default ``all``):

* ``storage``: float16 bytes vs float32 list for region features: serialized / GZIP size and tf.data
  parse+decode speed; the storage cost of denormalising image features into every text record.
* ``read``: tf.data read throughput (examples/s) of canonical GZIP TFRecords through ``read_decoded``.
* ``memory``: peak RSS of streaming a dataset of N and 4N records (each in a fresh process).
* ``extraction``: images/s of the in-process extractor (detector alone, and the whole per-image work) vs the
  Beam DirectRunner pipeline; the pipeline figure is marginal (runs on N and 3N images, difference) so that
  the fixed start-up (Beam, detector load) is reported separately.

Run: ``.venv/bin/python bench/data_bench.py --section all`` (add ``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from uniter_tf.data import schema, tfrecord_io  # noqa: E402  (after the path setup above)

UNITER_FEATURE_DIM = 2048
CAPTIONS_PER_IMAGE = 5  # COCO


def _random_image_record(rng, image_index, feature_dim, num_regions, text_fields=None):
    boxes = np.sort(rng.uniform(0, 400, size=(num_regions, 2, 2)), axis=1).reshape(num_regions, 4)[:, [0, 2, 1, 3]]
    features = np.maximum(rng.normal(0.5, 1.0, size=(num_regions, feature_dim)), 0).astype(np.float32)
    return schema.make_example(image_id=f"img{image_index}", region_features=features, region_boxes=boxes,
                               image_height=480, image_width=640, **(text_fields or {}))


def _text_fields(rng, example_index):
    return {"example_id": f"cap{example_index}", "text": "a man riding a horse on a sandy beach next to the ocean",
            "token_ids": rng.integers(1000, 28000, size=12).tolist()}


def _write_dataset(path_prefix, num_records, feature_dim, seed=0, num_shards=4):
    rng = np.random.default_rng(seed)

    def records():
        for index in range(num_records):
            yield _random_image_record(rng, index // CAPTIONS_PER_IMAGE, feature_dim, int(rng.integers(10, 101)),
                                       _text_fields(rng, index))

    return tfrecord_io.write_sharded(records(), path_prefix, num_shards=num_shards)


def _float_list_example(example):
    """The same record with region_features as a float32 list (the alternative encoding)."""
    import tensorflow as tf

    copy = tf.train.Example()
    copy.CopyFrom(example)
    blob = example.features.feature[schema.REGION_FEATURES].bytes_list.value[0]
    values = np.frombuffer(blob, "<f2").astype(np.float32)
    del copy.features.feature[schema.REGION_FEATURES]
    copy.features.feature["region_features_list"].float_list.value.extend(values)
    return copy


def _in_graph_rate(dataset, repeats=2):
    """Best examples/s of counting ``dataset`` inside the graph (no per-element Python overhead)."""
    import tensorflow as tf

    def count_all():
        return dataset.reduce(tf.constant(0, tf.int64), lambda count, _: count + 1)

    count_all = tf.function(count_all)
    count_all()  # warm-up: tracing, file cache
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        count = int(count_all())
        best = max(best, count / (time.perf_counter() - start))
    return best


def bench_storage(args):
    import gzip

    import tensorflow as tf

    rng = np.random.default_rng(0)
    num = 40 if args.quick else 200
    results = {}
    examples = [_random_image_record(rng, i, UNITER_FEATURE_DIM, 36, _text_fields(rng, i)) for i in range(num)]
    variants = {"float16_bytes": examples, "float32_list": [_float_list_example(e) for e in examples]}
    list_spec = dict(schema.feature_spec())
    del list_spec[schema.REGION_FEATURES]
    list_spec["region_features_list"] = tf.io.FixedLenSequenceFeature([], tf.float32, allow_missing=True)

    def decode_list(serialized):
        parsed = tf.io.parse_single_example(serialized, list_spec)
        return tf.reshape(parsed["region_features_list"], [tf.cast(parsed[schema.NUM_REGIONS], tf.int32), -1])

    bytes_spec = schema.feature_spec()

    def decode_bytes(serialized):
        # The same work as decode_list (parse + features to [n, D] float32), without parse_and_decode's checks.
        parsed = tf.io.parse_single_example(serialized, bytes_spec)
        values = tf.cast(tf.io.decode_raw(parsed[schema.REGION_FEATURES], tf.float16, little_endian=True), tf.float32)
        return tf.reshape(values, [tf.cast(parsed[schema.NUM_REGIONS], tf.int32), -1])

    for name, records in variants.items():
        serialized = [r.SerializeToString() for r in records]
        raw = sum(len(s) for s in serialized) / num
        gz = len(gzip.compress(b"".join(serialized), compresslevel=6)) / num
        decode = decode_bytes if name == "float16_bytes" else decode_list
        dataset = tf.data.Dataset.from_tensor_slices(serialized).repeat(10).map(decode, num_parallel_calls=2)
        results[name] = {"bytes_per_record": round(raw), "gzip_bytes_per_record": round(gz),
                         "decode_examples_per_s": round(_in_graph_rate(dataset), 1)}
        with tempfile.TemporaryDirectory() as directory:
            prefix = os.path.join(directory, name)
            tfrecord_io.write_sharded(serialized * 5, prefix, num_shards=4)
            from_files = tfrecord_io.read_examples(prefix + "-*", deterministic=False).map(
                    decode, num_parallel_calls=2)
            results[name]["gzip_files_read_and_decode_examples_per_s"] = round(_in_graph_rate(from_files), 1)
        if name == "float16_bytes":
            checked = tf.data.Dataset.from_tensor_slices(serialized).repeat(10).map(
                    schema.parse_and_decode, num_parallel_calls=2)
            results[name]["parse_and_decode_examples_per_s"] = round(_in_graph_rate(checked), 1)
    # Denormalisation: an image record vs the text fields alone, 5 captions per image (COCO).
    text_only = tf.train.Example()
    for key in (schema.EXAMPLE_ID, schema.IMAGE_ID, schema.TEXT, schema.TOKEN_IDS):
        text_only.features.feature[key].CopyFrom(examples[0].features.feature[key])
    image_only = tf.train.Example()
    for key in schema.IMAGE_FEATURE_KEYS:
        image_only.features.feature[key].CopyFrom(examples[0].features.feature[key])
    text_size, image_size = len(text_only.SerializeToString()), len(image_only.SerializeToString())
    normalised = CAPTIONS_PER_IMAGE * text_size + image_size
    denormalised = CAPTIONS_PER_IMAGE * (text_size + image_size)
    results["denormalisation"] = {"captions_per_image": CAPTIONS_PER_IMAGE, "text_bytes": text_size,
                                  "image_bytes_36_regions_2048d": image_size,
                                  "storage_ratio_denormalised_vs_normalised": round(denormalised / normalised, 2)}
    return results


def bench_read(args):
    import tensorflow as tf

    num = 200 if args.quick else 2000
    with tempfile.TemporaryDirectory() as directory:
        _write_dataset(os.path.join(directory, "train"), num, UNITER_FEATURE_DIM)
        dataset = tfrecord_io.read_decoded(os.path.join(directory, "train-*"), feature_dim=UNITER_FEATURE_DIM,
                                           deterministic=False)
        in_graph = _in_graph_rate(dataset)
        batched = dataset.padded_batch(8).prefetch(tf.data.AUTOTUNE)
        start = time.perf_counter()
        count = sum(int(tf.shape(batch["region_features"])[0]) for batch in batched)
        python_batched = count / (time.perf_counter() - start)
        size = sum(os.path.getsize(os.path.join(directory, name)) for name in os.listdir(directory))
    return {"records": num, "regions_per_record": "uniform 10..100", "feature_dim": UNITER_FEATURE_DIM,
            "gzip_bytes_per_record": round(size / num), "examples_per_s_in_graph": round(in_graph, 1),
            "examples_per_s_padded_batch_8_python_loop": round(python_batched, 1)}


def _read_rss_child(pattern):
    count = sum(1 for _ in tfrecord_io.read_decoded(pattern, feature_dim=UNITER_FEATURE_DIM))
    print(json.dumps({"records": count, "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def bench_memory(args):
    sizes = (100, 400) if args.quick else (500, 2000)
    results = []
    with tempfile.TemporaryDirectory() as directory:
        for size in sizes:
            prefix = os.path.join(directory, f"n{size}")
            _write_dataset(prefix, size, UNITER_FEATURE_DIM, num_shards=4)
            data_mib = sum(os.path.getsize(p) for p in tfrecord_io.list_files(prefix + "-*")) / 2**20
            output = subprocess.run([sys.executable, __file__, "--section", "_read_rss", "--pattern", prefix + "-*"],
                                    check=True, capture_output=True, text=True).stdout
            result = json.loads(output.strip().splitlines()[-1])
            result["data_mib_gzip"] = round(data_mib, 1)
            result["max_rss_mib"] = round(result["max_rss_mib"], 1)
            results.append(result)
    return results


def _extraction_images(directory, num_images, seed=0):
    from uniter_tf.data import sample_data

    sample_data.generate(directory, sample_data.SampleDataConfig(num_images=num_images, seed=seed))
    return os.path.join(directory, "images")


def bench_extraction(args):
    from uniter_tf.extraction import beam_pipeline
    from uniter_tf.extraction.images import decode_image

    small = 8 if args.quick else 30
    large = 3 * small
    results = {}
    with tempfile.TemporaryDirectory() as directory:
        image_dir = _extraction_images(os.path.join(directory, "data"), large)
        paths = sorted(os.path.join(image_dir, name) for name in os.listdir(image_dir))
        config = beam_pipeline.ExtractionConfig(detector_path=args.detector)
        start = time.perf_counter()
        extractor = config.build_extractor()
        images = [decode_image(open(path, "rb").read(), path) for path in paths[:3]]
        for image in images:
            extractor.extract(image, "warm-up")
        results["detector_load_and_warm_up_s"] = round(time.perf_counter() - start, 1)

        start = time.perf_counter()
        for path in paths:
            extractor.detector.detect(decode_image(open(path, "rb").read(), path))
        results["in_process_detect_only_images_per_s"] = round(len(paths) / (time.perf_counter() - start), 2)
        start = time.perf_counter()
        for path in paths:
            image = decode_image(open(path, "rb").read(), path)
            extractor.extract(image, os.path.basename(path)).to_example().SerializeToString()
        results["in_process_full_images_per_s"] = round(len(paths) / (time.perf_counter() - start), 2)
        del extractor

        pipeline_seconds = {}
        for count in (small, large):
            subset = os.path.join(directory, f"subset{count}")
            os.makedirs(subset)
            for path in paths[:count]:
                os.symlink(path, os.path.join(subset, os.path.basename(path)))
            start = time.perf_counter()
            counters = beam_pipeline.run_extraction(
                    os.path.join(subset, "*.png"), os.path.join(directory, f"out{count}"), config,
                    beam_args=["--runner=DirectRunner"], num_shards=1)
            pipeline_seconds[count] = time.perf_counter() - start
            assert counters["images_ok"] == count, counters
        marginal = (large - small) / (pipeline_seconds[large] - pipeline_seconds[small])
        results["beam_direct_runner_wall_s"] = {str(k): round(v, 1) for k, v in pipeline_seconds.items()}
        results["beam_direct_runner_marginal_images_per_s"] = round(marginal, 2)
        results["beam_fixed_cost_s"] = round(pipeline_seconds[small] - small / marginal, 1)
        results["ratio_beam_vs_in_process_full"] = round(marginal / results["in_process_full_images_per_s"], 2)
        results["ratio_beam_vs_detect_only"] = round(marginal / results["in_process_detect_only_images_per_s"], 2)
        results["images"] = f"{large} rendered sample images, 320x240 PNG"
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--section", default="all",
                        choices=["all", "storage", "read", "memory", "extraction", "_read_rss"])
    parser.add_argument("--quick", action="store_true", help="Small sizes (smoke run; figures not representative).")
    parser.add_argument("--detector", default=None, help="Detector for the extraction section (default SSD).")
    parser.add_argument("--pattern", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.section == "_read_rss":
        _read_rss_child(args.pattern)
        return
    sections = {"storage": bench_storage, "read": bench_read, "memory": bench_memory, "extraction": bench_extraction}
    chosen = sections if args.section == "all" else {args.section: sections[args.section]}
    for name, function in chosen.items():
        start = time.perf_counter()
        result = function(args)
        print(json.dumps({"section": name, "seconds": round(time.perf_counter() - start, 1), "result": result}),
              flush=True)


if __name__ == "__main__":
    main()
