"""First-stage index choice (issue 13): 1,000,000 synthetic 256-d unit embeddings, exact vs approximate.

Measures, for each candidate, the build time, the time of one query (a single text query, as
``uniter retrieve`` asks; median over ``--queries`` queries) and the recall@10 of the approximate indexes
against the exact top 10:

* ``numpy_exact``: a float32 ``[n, d]`` matrix, ``embeddings @ q`` + ``argpartition`` (no dependency);
* ``faiss_flat``: ``faiss.IndexFlatIP`` (exact, BLAS/SIMD);
* ``faiss_ivf{nlist}_p{nprobe}``: ``faiss.IndexIVFFlat`` (inner product), k-means on ``--train-sample``
  vectors, for several ``nprobe``.

The embeddings are a mixture of ``--clusters`` Gaussian clusters on the unit sphere (real embeddings are
clustered; uniform random vectors are the worst case of an inverted file and are reported with
``--uniform``). Queries are perturbed gallery vectors (a caption close to its image).

Run: ``.venv/bin/python bench/retrieval_index_synthetic.py`` (``--num 1000000 --dim 256``); prints one JSON
line per candidate.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def synthetic_embeddings(num: int, dim: int, clusters: int, seed: int, uniform: bool = False) -> np.ndarray:
    """``[num, dim]`` float32 unit vectors (clustered unless ``uniform``)."""
    rng = np.random.default_rng(seed)
    if uniform:
        values = rng.standard_normal((num, dim), dtype=np.float32)
    else:
        centres = rng.standard_normal((clusters, dim), dtype=np.float32)
        values = centres[rng.integers(0, clusters, num)]
        values += 0.6 * rng.standard_normal((num, dim), dtype=np.float32)
    values /= np.linalg.norm(values, axis=1, keepdims=True)
    return values


def exact_top_k(embeddings: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    """Row indices of the ``k`` largest inner products, best first."""
    scores = embeddings @ query
    top = np.argpartition(-scores, k - 1)[:k]
    return top[np.argsort(-scores[top], kind="stable")]


def time_queries(search, queries: np.ndarray) -> float:
    """Median seconds of one single-vector query."""
    times = []
    for query in queries:
        start = time.perf_counter()
        search(query)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--uniform", action="store_true")
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--train-sample", type=int, default=65536)
    parser.add_argument("--skip-faiss", action="store_true")
    args = parser.parse_args(argv)
    k = 10

    start = time.perf_counter()
    embeddings = synthetic_embeddings(args.num, args.dim, args.clusters, 0, args.uniform)
    generated = time.perf_counter() - start
    rng = np.random.default_rng(1)
    queries = embeddings[rng.integers(0, args.num, args.queries)]
    queries = queries + 0.3 * rng.standard_normal(queries.shape, dtype=np.float32) / np.sqrt(args.dim)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    truth = [exact_top_k(embeddings, query, k) for query in queries]
    common = {"num": args.num, "dim": args.dim, "uniform": args.uniform, "generate_s": round(generated, 2)}

    seconds = time_queries(lambda query: exact_top_k(embeddings, query, k), queries)
    print(json.dumps({**common, "index": "numpy_exact", "build_s": 0.0, "query_ms": round(1e3 * seconds, 2),
                      "recall_at_10": 1.0, "bytes": int(embeddings.nbytes)}), flush=True)
    if args.skip_faiss:
        return
    import faiss  # pylint: disable=import-outside-toplevel

    start = time.perf_counter()
    flat = faiss.IndexFlatIP(args.dim)
    flat.add(embeddings)
    built = time.perf_counter() - start
    seconds = time_queries(lambda query: flat.search(query[None], k), queries)
    print(json.dumps({**common, "index": "faiss_flat", "faiss": faiss.__version__, "build_s": round(built, 2),
                      "query_ms": round(1e3 * seconds, 2), "recall_at_10": 1.0,
                      "bytes": int(embeddings.nbytes)}), flush=True)
    del flat

    start = time.perf_counter()
    quantizer = faiss.IndexFlatIP(args.dim)
    ivf = faiss.IndexIVFFlat(quantizer, args.dim, args.nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.train(embeddings[rng.choice(args.num, min(args.train_sample, args.num), replace=False)])
    ivf.add(embeddings)
    built = time.perf_counter() - start
    for nprobe in args.nprobe:
        ivf.nprobe = nprobe
        seconds = time_queries(lambda query: ivf.search(query[None], k), queries)
        found = [ivf.search(query[None], k)[1][0] for query in queries]
        recall = float(np.mean([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(found, truth)]))
        print(json.dumps({**common, "index": f"faiss_ivf{args.nlist}_p{nprobe}", "build_s": round(built, 2),
                          "query_ms": round(1e3 * seconds, 2), "recall_at_10": round(recall, 4),
                          "bytes": int(faiss.serialize_index(ivf).nbytes)}), flush=True)


if __name__ == "__main__":
    main()
