"""Retrieve-then-rerank trade-off (issue 13): recall and cost of the cross-encoder, the first stage, and both.

On one held-out gallery (every caption of ``--eval-files`` as a text query against every image of them):

* **cross-encoder**: every caption scored against every image by the run's cross-encoder (rank logit);
  ``n_image`` passes per query;
* **first stage**: the dual encoder (:mod:`uniter_tf.retrieval.first_stage`, trained here on
  ``--train-files`` unless the run already has one) and exact inner-product search
  (:mod:`uniter_tf.retrieval.index`); 0 cross-encoder passes;
* **rerank K**: the first stage's top K rescored by the cross-encoder, for K in ``--ks`` (capped at the
  gallery); K passes per query.

Recall is text → image R@1/5/10 (the fraction of captions whose image ranks < K). The reranked recall
uses the full cross-encoder matrix's scores of the candidates (the same model on the same pairs); the wall
time per query is measured separately by really embedding ``--timed-queries`` captions, searching the index
and scoring their K candidates. ``--synthetic-num`` also times one query against an index of that many
random 256-d unit vectors.

Run (the sample gallery of docs/performance.md, after configs/finetune_itm_tiny.json's ``_command``):
``.venv/bin/python bench/retrieval_rerank.py --run runs/finetune_itm_tiny --train-files
'runs/sample_records/train-*' --eval-files 'runs/sample_records/eval-*' --output-json
runs/retrieval_rerank_60.json --plot docs/images/retrieval_rerank_60.png``; the 1000-image gallery of
docs/performance.md adds ``--eval-files 'runs/sample_big_records/eval-*' --max-queries 300 --synthetic-num 0``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def text_to_image_recall(score_matrix: np.ndarray, truth: np.ndarray) -> dict:
    from uniter_tf.retrieval.rerank import ranks_of_truth, recall_at

    rankings = np.stack([np.lexsort((np.arange(row.shape[0]), -row)) for row in score_matrix])
    return recall_at(ranks_of_truth(rankings, truth))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--train-files", nargs="+", required=True)
    parser.add_argument("--eval-files", nargs="+", required=True)
    parser.add_argument("--ks", type=int, nargs="+", default=[10, 20, 50, 100])
    parser.add_argument("--first-stage-steps", type=int, default=300)
    parser.add_argument("--first-stage-batch-size", type=int, default=32)
    parser.add_argument("--first-stage-learning-rate", type=float, default=2e-4)
    parser.add_argument("--first-stage-head-lr-multiplier", type=float, default=1.0,
                        help="The projections' and temperature's rate over the backbone's (train_first_stage's "
                             "head_learning_rate_multiplier).")
    parser.add_argument("--retrain", action="store_true", help="Train the first stage even if the run has one.")
    parser.add_argument("--timed-queries", type=int, default=20)
    parser.add_argument("--captions-per-image", type=int, default=0,
                        help="Keep only each image's first N captions as queries (0: all): bounds the full "
                             "cross-encoder's n_text x n_image passes on a large gallery.")
    parser.add_argument("--max-queries", type=int, default=0,
                        help="Only N evenly spaced queries (after --captions-per-image; 0: all); the gallery stays "
                             "every image of --eval-files.")
    parser.add_argument("--synthetic-num", type=int, default=1_000_000)
    parser.add_argument("--output-json", default=None)
    parser.add_argument("--plot", default=None)
    args = parser.parse_args(argv)

    from uniter_tf.retrieval import first_stage as first_stage_lib
    from uniter_tf.retrieval.index import EmbeddingIndex
    from uniter_tf.retrieval.rerank import CrossEncoder, ranks_of_truth, recall_at, reranked_ranking

    stage_dir = first_stage_lib.first_stage_dir(args.run)
    if args.retrain or not os.path.exists(os.path.join(stage_dir, first_stage_lib.CONFIG_FILE)):
        first_stage_lib.train_first_stage(args.run, args.train_files, steps=args.first_stage_steps,
                                          batch_size=args.first_stage_batch_size,
                                          learning_rate=args.first_stage_learning_rate,
                                          head_learning_rate_multiplier=args.first_stage_head_lr_multiplier,
                                          output_dir=stage_dir)
    stage = first_stage_lib.load_first_stage(stage_dir)
    training = first_stage_lib.read_first_stage_description(stage_dir)["training"]
    gallery = first_stage_lib.read_gallery(args.eval_files, feature_dim=stage.model_config.region_feature_dim)
    if args.captions_per_image:
        seen = {}
        keep = []
        for row, image in enumerate(gallery.text_to_image):
            seen[image] = seen.get(image, 0) + 1
            if seen[image] <= args.captions_per_image:
                keep.append(row)
    else:
        keep = list(range(len(gallery.text_ids)))
    if args.max_queries and args.max_queries < len(keep):
        # Evenly spaced, so every caption kind (the sample data's three templates) stays represented.
        keep = [keep[int(i)] for i in np.linspace(0, len(keep) - 1, args.max_queries)]
    if len(keep) < len(gallery.text_ids):
        for name in ("text_ids", "texts", "word_ids", "text_parts"):
            setattr(gallery, name, [getattr(gallery, name)[row] for row in keep])
        gallery.text_to_image = gallery.text_to_image[keep]
    n_text, n_image = len(gallery.text_ids), gallery.num_images
    truth = gallery.text_to_image
    cross_encoder = CrossEncoder.from_run(args.run, batch_size=128)
    image_parts = [gallery.image_parts[image] for image in gallery.image_ids]
    result = {"run": args.run, "num_texts": n_text, "num_images": n_image, "first_stage_training": training}

    # (a) the full cross-encoder: n_image passes per caption.
    cross_encoder.score_parts(gallery.text_parts[0], image_parts[:2])  # trace once, outside the timing
    start = time.perf_counter()
    cross = np.stack([cross_encoder.score_parts(part, image_parts) for part in gallery.text_parts])
    full_seconds = time.perf_counter() - start
    result["cross_encoder"] = {**text_to_image_recall(cross, truth), "passes_per_query": n_image,
                               "ms_per_query": round(1e3 * full_seconds / n_text, 2)}

    # (b) the first stage alone: embeddings + exact search.
    index = EmbeddingIndex(gallery.image_ids, stage.embed_images(gallery.region_features, gallery.region_positions),
                           stage.model_version())
    text_embeddings = stage.embed_word_ids(gallery.word_ids)
    first = text_embeddings @ index.embeddings.T
    timed = list(range(min(args.timed_queries, n_text)))
    stage.embed_word_ids(gallery.word_ids[:1])
    start = time.perf_counter()
    for row in timed:
        index.search(stage.embed_word_ids([gallery.word_ids[row]])[0], min(10, n_image))
    first_ms = 1e3 * (time.perf_counter() - start) / len(timed)
    result["first_stage"] = {**text_to_image_recall(first, truth), "passes_per_query": 0,
                             "ms_per_query": round(first_ms, 2)}

    # (c) rerank the top K.
    result["rerank"] = []
    for k in sorted({min(k, n_image) for k in args.ks}):
        rankings = np.stack([reranked_ranking(first[row], k, lambda columns, row=row: cross[row, columns])
                             for row in range(n_text)])
        start = time.perf_counter()
        for row in timed:
            _, rows = index.search(stage.embed_word_ids([gallery.word_ids[row]])[0], k)
            cross_encoder.score_parts(gallery.text_parts[row], [image_parts[column] for column in rows[0]])
        seconds = (time.perf_counter() - start) / len(timed)
        # The first stage's recall of its top K: the ceiling of any reranker.
        ceiling = float(np.mean(ranks_of_truth(np.argsort(-first, axis=1, kind="stable"), truth) < k))
        result["rerank"].append({"k": k, **recall_at(ranks_of_truth(rankings, truth)), "passes_per_query": k,
                                 "ms_per_query": round(1e3 * seconds, 2), "candidate_recall": ceiling,
                                 "fewer_passes_than_full": round(n_image / k, 1)})

    # One query against a synthetic index of --synthetic-num 256-d unit vectors (clustered, as
    # bench/retrieval_index_synthetic.py), with each backend of uniter_tf.retrieval.index.
    if args.synthetic_num:
        from retrieval_index_synthetic import synthetic_embeddings  # bench/ is on sys.path (the script's folder)

        vectors = synthetic_embeddings(args.synthetic_num, 256, 2000, 0)
        rng = np.random.default_rng(1)
        queries = vectors[rng.integers(0, args.synthetic_num, 20)]
        queries = queries + 0.3 * rng.standard_normal(queries.shape, dtype=np.float32) / 16.0
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        ids = [str(i) for i in range(args.synthetic_num)]
        result["synthetic_index"] = {"vectors": args.synthetic_num, "dim": 256}
        found = {}
        for backend in ("exact", "ivf"):
            start = time.perf_counter()
            big = EmbeddingIndex(ids, vectors, "synthetic", backend=backend)
            built = time.perf_counter() - start
            times, found[backend] = [], []
            for query in queries:
                start = time.perf_counter()
                found[backend].append(big.search(query, 10)[1][0])
                times.append(time.perf_counter() - start)
            result["synthetic_index"][backend] = {"build_s": round(built, 2),
                                                  "query_ms_median": round(1e3 * float(np.median(times)), 2),
                                                  "query_ms_max": round(1e3 * float(np.max(times)), 2)}
            del big
        result["synthetic_index"]["ivf"]["recall_at_10_vs_exact"] = float(np.mean(
                [len(set(a.tolist()) & set(b.tolist())) / 10 for a, b in zip(found["ivf"], found["exact"])]))
        del vectors

    print(json.dumps(result, indent=1))
    if args.output_json:
        with open(args.output_json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=1)
    if args.plot:
        plot(result, args.plot)
    return result


def plot(result: dict, path: str) -> None:
    """Recall vs K (left) and cross-encoder passes / wall time per query vs K (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [entry["k"] for entry in result["rerank"]]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for metric, colour in (("r1", "tab:blue"), ("r5", "tab:orange"), ("r10", "tab:green")):
        left.plot(ks, [entry[metric] for entry in result["rerank"]], "o-", color=colour, label=f"rerank {metric.upper()}")
        left.axhline(result["cross_encoder"][metric], color=colour, linestyle="--", linewidth=1)
        left.axhline(result["first_stage"][metric], color=colour, linestyle=":", linewidth=1)
    left.set_xlabel("K (first-stage candidates reranked)")
    left.set_ylabel("text → image recall")
    left.set_title(f"{result['num_texts']} captions × {result['num_images']} images\n"
                   "dashed: full cross-encoder, dotted: first stage alone", fontsize=9)
    left.legend(fontsize=8)
    right.plot(ks, [entry["passes_per_query"] for entry in result["rerank"]], "o-", label="cross-encoder passes")
    right.axhline(result["cross_encoder"]["passes_per_query"], color="tab:blue", linestyle="--", linewidth=1,
                  label="full cross-encoder passes")
    right.set_xlabel("K")
    right.set_ylabel("passes per query")
    twin = right.twinx()
    twin.plot(ks, [entry["ms_per_query"] for entry in result["rerank"]], "s-", color="tab:red", label="ms / query")
    twin.axhline(result["cross_encoder"]["ms_per_query"], color="tab:red", linestyle="--", linewidth=1)
    twin.set_ylabel("wall ms per query (2 loaded cores)")
    right.legend(loc="upper left", fontsize=8)
    twin.legend(loc="lower right", fontsize=8)
    right.set_title("cost per query (dashed: full cross-encoder)", fontsize=9)
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    main()
