"""Peak memory of the evaluator's retrieval on a 1,000-caption x 200-image gallery (docs/performance.md).

Two approaches score the same records with the same tiny model (``tiny`` preset, random weights, the
in-memory Keras scorer of :mod:`uniter_tf.evaluation.scorers`), each in a fresh process:

* ``old``: the evaluator before it became a library (``components/uniter_evaluator/evaluation.py`` at
  ``--old-revision``, loaded from git): it builds the whole caption x image pair list (200,000
  ``tf.train.Example`` with the image's region features copied into each) before scoring.
* ``new``: :func:`uniter_tf.evaluation.evaluate` over :meth:`EvalRecords.from_files`: pairs are
  ``text part + image part`` bytes made one batch at a time, and only the match logit is kept.

Memory is the process's peak resident set (``VmHWM`` of /proc/self/status, the same figure as
``resource.getrusage(RUSAGE_SELF).ru_maxrss``), reported in full and as the rise over the RSS just before
``evaluate`` (TensorFlow, the model and the input records already loaded). Both runs must report the same
metrics (checked).

Run: ``.venv/bin/python bench/retrieval_memory.py`` (``--feature-dim 2048`` runs the new approach with
UNITER's real feature size as well; the old one would need ~30 GB there and is skipped).

``--full-gallery`` measures the retrieval task's full-gallery evaluation instead
(:func:`uniter_tf.retrieval.gallery.evaluate_gallery`: every caption against every image, the
``[n_text, n_image]`` matrix written as float16 .npy), e.g. ``--full-gallery --images 1000
--captions-per-image 5`` for the 5,000 x 1,000 gallery of docs/retrieval.md. ``--null-scorer`` replaces the
model by a scorer that only counts the serialized pairs it receives (the pairs are still built, batch by
batch): the figure is then the evaluation's own memory, without a model's, and 5 million pairs take
minutes instead of hours on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import types

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

#: The last commit whose evaluator built the whole pair list in memory.
OLD_REVISION = "e38f4da"
NUM_REGIONS = 36


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def write_gallery(path: str, num_images: int, captions_per_image: int, feature_dim: int, seed: int = 0) -> None:
    """One GZIP TFRecord file: ``captions_per_image`` caption records per image (COCO-like)."""
    import tensorflow as tf

    from uniter_tf.data import schema

    rng = np.random.default_rng(seed)
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    with tf.io.TFRecordWriter(path, options) as writer:
        for image_index in range(num_images):
            corners = rng.uniform(0, 300, size=(NUM_REGIONS, 2))
            boxes = np.concatenate([corners, corners + rng.uniform(10, 100, size=(NUM_REGIONS, 2))], axis=1)
            image = dict(image_id=f"img_{image_index:05d}", image_height=480, image_width=640, region_boxes=boxes,
                         region_features=rng.normal(size=(NUM_REGIONS, feature_dim)).astype(np.float32))
            for caption_index in range(captions_per_image):
                writer.write(schema.make_example(
                        **image, example_id=f"cap_{image_index:05d}_{caption_index}", text="a caption",
                        token_ids=rng.integers(1000, 20000, size=int(rng.integers(8, 15)))).SerializeToString())


def _old_module(revision: str):
    source = subprocess.run(["git", "show", f"{revision}:components/uniter_evaluator/evaluation.py"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout
    module = types.ModuleType("old_uniter_evaluation")
    exec(compile(source, f"{revision}:components/uniter_evaluator/evaluation.py", "exec"), module.__dict__)  # noqa: S102
    return module


def gallery_child(records_path: str, feature_dim: int, batch_size: int, null_scorer: bool) -> dict:
    """Runs the full-gallery evaluation in this process and returns its figures."""
    from uniter_tf import evaluation
    from uniter_tf.retrieval import gallery

    if null_scorer:
        def scorer(serialized):
            return {"task_logits": np.zeros((len(serialized), 1), np.float32)}
    else:
        import keras

        from uniter_tf.config import UniterConfig
        from uniter_tf.models.backbone import UniterBackbone
        from uniter_tf.models.itm_rank import ItmRankHead
        from uniter_tf.models.pretraining_heads import ItmHead

        keras.utils.set_random_seed(7)
        config = UniterConfig.from_preset("tiny", region_feature_dim=feature_dim)
        itm_head, rank_head = ItmHead(config.hidden_size), ItmRankHead(config.hidden_size)
        itm_head.build()
        rank_head.build()
        scorer = evaluation.keras_scorer(UniterBackbone(config), itm_head, config, task_head=rank_head)
    pair_calls = [0]

    def counted(serialized):
        pair_calls[0] += len(serialized)
        return scorer(serialized)

    records = evaluation.EvalRecords.from_files(records_path)
    counted([records.serialized_pair(records.captions[0], records.caption_image_ids[0])])  # trace first
    rss_before = _status_kib("VmRSS")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gallery_") as output:
        metrics = gallery.evaluate_gallery(counted, records, batch_size=batch_size,
                                           output_prefix=os.path.join(output, "retrieval"))
        matrix_bytes = os.path.getsize(os.path.join(output, "retrieval" + gallery.SCORES_SUFFIX))
    seconds = time.perf_counter() - started
    return {"approach": "full_gallery" + ("_null_scorer" if null_scorer else "_tiny_model"),
            "feature_dim": feature_dim, "pairs_scored": pair_calls[0] - 1, "seconds": round(seconds, 1),
            "score_matrix_npy_mib": round(matrix_bytes / 2 ** 20, 1),
            "rss_before_evaluate_mib": round(rss_before / 1024, 1),
            "peak_rss_mib": round(_status_kib("VmHWM") / 1024, 1),
            "peak_rise_mib": round((_status_kib("VmHWM") - rss_before) / 1024, 1),
            "metrics": {key: metrics[key] for key in sorted(metrics)}}


def child(approach: str, records_path: str, feature_dim: int, batch_size: int, revision: str) -> dict:
    """Runs one evaluation in this process and returns its figures."""
    import keras
    import tensorflow as tf

    from uniter_tf import evaluation
    from uniter_tf.config import UniterConfig
    from uniter_tf.models.backbone import UniterBackbone
    from uniter_tf.models.pretraining_heads import ItmHead

    keras.utils.set_random_seed(7)
    config = UniterConfig.from_preset("tiny", region_feature_dim=feature_dim)
    backbone = UniterBackbone(config)
    itm_head = ItmHead(config.hidden_size)
    itm_head.build()
    scorer = evaluation.keras_scorer(backbone, itm_head, config, max_text_length=60)
    pair_calls = [0]

    def counted(serialized):
        pair_calls[0] += len(serialized)
        return scorer(serialized)

    if approach == "old":
        old = _old_module(revision)
        serialized = [record.numpy() for record in tf.data.TFRecordDataset(records_path, compression_type="GZIP")]
        records = old.EvalRecords(serialized)
        evaluate = old.evaluate
    else:
        records = evaluation.EvalRecords.from_files(records_path)
        evaluate = evaluation.evaluate
    counted(records_for_warmup(records, approach))  # trace the scoring function before measuring
    rss_before = _status_kib("VmRSS")
    started = time.perf_counter()
    metrics = evaluate(counted, records, batch_size=batch_size, max_gallery_texts=1000, has_vqa_head=False)
    seconds = time.perf_counter() - started
    return {"approach": approach, "feature_dim": feature_dim, "pairs_scored": pair_calls[0],
            "seconds": round(seconds, 1), "rss_before_evaluate_mib": round(rss_before / 1024, 1),
            "peak_rss_mib": round(_status_kib("VmHWM") / 1024, 1),
            "peak_rise_mib": round((_status_kib("VmHWM") - rss_before) / 1024, 1),
            "metrics": {key: metrics[key] for key in sorted(metrics)}}


def records_for_warmup(records, approach: str) -> list:
    if approach == "old":
        return [records.captions[0].SerializeToString()]
    return [records.serialized_pair(records.captions[0], records.caption_image_ids[0])]


def lscpu_model() -> str:
    text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    for line in text.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--captions-per-image", type=int, default=5)
    parser.add_argument("--feature-dim", type=int, default=None,
                        help="Also run the new approach with this region feature size (e.g. 2048).")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--old-revision", default=OLD_REVISION)
    parser.add_argument("--skip-old", action="store_true")
    parser.add_argument("--full-gallery", action="store_true",
                        help="Measure the retrieval task's full-gallery evaluation (see the module docstring).")
    parser.add_argument("--null-scorer", action="store_true",
                        help="With --full-gallery: no model, only the pairs are built and counted.")
    parser.add_argument("--child", choices=("old", "new", "gallery"), help=argparse.SUPPRESS)
    parser.add_argument("--records", help=argparse.SUPPRESS)
    parser.add_argument("--child-feature-dim", type=int, default=64, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child == "gallery":
        print(json.dumps(gallery_child(args.records, args.child_feature_dim, args.batch_size, args.null_scorer)))
        return 0
    if args.child:
        print(json.dumps(child(args.child, args.records, args.child_feature_dim, args.batch_size,
                               args.old_revision)))
        return 0

    from uniter_tf.config import UniterConfig

    tiny_dim = UniterConfig.from_preset("tiny").region_feature_dim
    if args.full_gallery:
        return full_gallery_main(args, args.feature_dim or tiny_dim)
    runs = [("new", tiny_dim)] + ([] if args.skip_old else [("old", tiny_dim)])
    if args.feature_dim and args.feature_dim != tiny_dim:
        runs.append(("new", args.feature_dim))
    results = []
    with tempfile.TemporaryDirectory(prefix="retrieval_memory_") as workdir:
        written = {}
        for approach, dim in runs:
            if dim not in written:
                written[dim] = os.path.join(workdir, f"gallery_{dim}.tfrecord.gz")
                write_gallery(written[dim], args.images, args.captions_per_image, dim)
            command = [sys.executable, os.path.abspath(__file__), "--child", approach, "--records", written[dim],
                       "--child-feature-dim", str(dim), "--batch-size", str(args.batch_size),
                       "--old-revision", args.old_revision]
            finished = subprocess.run(command, capture_output=True, text=True, check=False)
            if finished.returncode != 0:
                print(finished.stderr[-3000:], file=sys.stderr)
                results.append({"approach": approach, "feature_dim": dim, "failed": finished.returncode})
                continue
            results.append(json.loads(finished.stdout.strip().splitlines()[-1]))
            print(json.dumps({key: value for key, value in results[-1].items() if key != "metrics"}), flush=True)
    same_dim = [result for result in results if result.get("feature_dim") == tiny_dim and "metrics" in result]
    if len(same_dim) == 2:
        new_metrics, old_metrics = same_dim[0]["metrics"], same_dim[1]["metrics"]
        differences = {key: abs(new_metrics[key] - old_metrics[key]) for key in old_metrics if key in new_metrics}
        if max(differences.values()) > 1e-6:
            print(f"MISMATCH between the approaches: {differences}", file=sys.stderr)
            return 1
    print(json.dumps({"machine": lscpu_model(), "cpus": os.cpu_count(),
                      "gallery": f"{args.images * args.captions_per_image} captions x {args.images} images",
                      "load_average": os.getloadavg(), "results": results}, indent=1))
    return 0


def full_gallery_main(args, feature_dim: int) -> int:
    """Writes the gallery, runs :func:`gallery_child` in a fresh process and prints its figures."""
    with tempfile.TemporaryDirectory(prefix="retrieval_memory_") as workdir:
        path = os.path.join(workdir, f"gallery_{feature_dim}.tfrecord.gz")
        write_gallery(path, args.images, args.captions_per_image, feature_dim)
        command = [sys.executable, os.path.abspath(__file__), "--child", "gallery", "--records", path,
                   "--child-feature-dim", str(feature_dim), "--batch-size", str(args.batch_size)]
        if args.null_scorer:
            command.append("--null-scorer")
        finished = subprocess.run(command, capture_output=True, text=True, check=False)
        if finished.returncode != 0:
            print(finished.stderr[-3000:], file=sys.stderr)
            return 1
        result = json.loads(finished.stdout.strip().splitlines()[-1])
    print(json.dumps({"machine": lscpu_model(), "cpus": os.cpu_count(),
                      "gallery": f"{args.images * args.captions_per_image} captions x {args.images} images",
                      "regions_per_image": NUM_REGIONS, "load_average": os.getloadavg(), "result": result}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
