"""Served retrieval latency (issue 13): the ``retrieve`` signature over gRPC, per rerank depth.

Serves ``--export`` (a base path whose newest version was written by ``uniter export --index``) with
``serving/server.py`` on 127.0.0.1 (ephemeral port), and sends ``--queries`` caption texts of
``--text-files`` one at a time (``UniterClient.retrieve``, ``k`` = ``--k``) for each ``--reranks`` value
(0: the first stage alone). Untimed first: every query once at depth 0 (the first call of each text
bucket shape is slower), then one request per depth.
Prints JSON: per depth the median / p90 / mean latency in ms and the cross-encoder passes per query.

Run (docs/retrieval.md, "Served"): ``uniter index --features 'runs/sample_big_records/eval-*' --run
runs/finetune_itm_tiny --output /tmp/index1000``, ``uniter export --model-dir runs/finetune_itm_tiny --output
/tmp/export1000 --index /tmp/index1000``, then ``.venv/bin/python bench/retrieval_serving.py --export
/tmp/export1000 --text-files 'runs/sample_big_records/eval-*'``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--export", required=True, help="The model's base path (versions with retrieval assets).")
    parser.add_argument("--text-files", nargs="+", required=True, help="Caption records whose texts are the queries.")
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--reranks", type=int, nargs="+", default=[0, 10, 20, 50])
    parser.add_argument("--output-json", default=None)
    args = parser.parse_args(argv)

    from serving.client import UniterClient
    from serving.server import ModelServer, ServerConfig
    from uniter_tf.retrieval.first_stage import read_gallery

    texts = read_gallery(args.text_files).texts
    texts = [texts[int(i)] for i in np.linspace(0, len(texts) - 1, min(args.queries, len(texts)))]
    started = time.perf_counter()
    server = ModelServer(ServerConfig(model_name="uniter", model_base_path=args.export, port=0, rest_api_port=None,
                                      poll_interval_s=0)).start()
    result = {"export": args.export, "queries": len(texts), "k": args.k,
              "server_start_s": round(time.perf_counter() - started, 1), "depths": {}}
    try:
        with UniterClient(f"127.0.0.1:{server.grpc_port}", timeout_s=300) as client:
            for text in texts:
                client.retrieve(text, k=args.k, rerank=0)  # untimed
            for rerank in args.reranks:
                client.retrieve(texts[0], k=args.k, rerank=rerank)  # untimed
                latencies = []
                for text in texts:
                    start = time.perf_counter()
                    client.retrieve(text, k=args.k, rerank=rerank)
                    latencies.append(time.perf_counter() - start)
                milliseconds = np.asarray(latencies) * 1000
                result["depths"][str(rerank)] = {
                        "cross_encoder_passes": rerank, "median_ms": round(float(np.median(milliseconds)), 1),
                        "p90_ms": round(float(np.percentile(milliseconds, 90)), 1),
                        "mean_ms": round(float(milliseconds.mean()), 1)}
                print(json.dumps({"rerank": rerank, **result["depths"][str(rerank)]}), flush=True)
            result["version"] = client.last_version
    finally:
        server.stop()
    if args.output_json:
        with open(args.output_json, "w") as handle:
            json.dump(result, handle, indent=1)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
