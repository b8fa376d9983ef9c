"""``uniter retrieve``: text → image ids from an index, optionally reranked by the cross-encoder."""

from __future__ import annotations

NAME = "retrieve"
HELP = ("Text to images: the first stage's top --k images of --index, or (--rerank K) its top K rescored by the "
        "run's cross-encoder; prints JSON lines {rank, image_id, score, first_stage_score}.")


def add_arguments(parser):
    parser.add_argument("--index", required=True, help="An index directory written by `uniter index`.")
    parser.add_argument("--text", required=True, help="The query.")
    parser.add_argument("--k", type=int, default=10, help="Answers (default 10; at most the gallery).")
    parser.add_argument("--rerank", type=int, default=0,
                        help="Rescore the first stage's top RERANK images with the cross-encoder (>= --k, at most "
                             "the gallery; default 0: first stage only).")
    parser.add_argument("--run", default=None,
                        help="The run whose first stage and cross-encoder to use (default: the one the index was "
                             "built with); its first stage must be the index's model version.")
    parser.add_argument("--features", nargs="+", default=None,
                        help="The gallery's records for reranking (default: those the index was built from).")


def run(args) -> int:
    import json

    from uniter_tf.retrieval import first_stage as first_stage_lib
    from uniter_tf.retrieval.index import EmbeddingIndex, IndexVersionError, check_k, read_index_description
    from uniter_tf.retrieval.rerank import CrossEncoder, retrieve

    # Every check that needs no model comes first: a bad request costs no TensorFlow start-up.
    if not args.text.strip():
        raise ValueError("--text is empty")
    description = read_index_description(args.index)
    check_k(args.k, description["size"], "--k")
    if args.rerank:
        check_k(args.rerank, description["size"], "--rerank")
        if args.rerank < args.k:
            raise ValueError(f"--rerank ({args.rerank}) must be at least --k ({args.k})")
    run_dir = args.run or description.get("metadata", {}).get("run")
    if not run_dir:
        raise ValueError(f"the index {args.index} names no run; give --run")
    stage_version = first_stage_lib.read_first_stage_description(run_dir)["model_version"]
    if stage_version != description["model_version"]:
        raise IndexVersionError(f"index {args.index} was built with first-stage model version "
                                f"{description['model_version']}, the run {run_dir} has version {stage_version}: "
                                "rebuild the index with `uniter index`")
    index = EmbeddingIndex.load(args.index, expected_model_version=stage_version)
    stage = first_stage_lib.load_first_stage(run_dir)
    cross_encoder = image_parts = None
    if args.rerank:
        features = args.features or description.get("metadata", {}).get("features")
        if not features:
            raise ValueError("--rerank needs the gallery's records: give --features")
        image_parts = first_stage_lib.read_gallery(features, feature_dim=stage.model_config.region_feature_dim,
                                                   require_captions=False).image_parts
        cross_encoder = CrossEncoder.from_run(run_dir)
    answers = retrieve(args.text, stage, index, k=args.k, rerank=args.rerank, cross_encoder=cross_encoder,
                       image_parts=image_parts)
    for rank, item in enumerate(answers, 1):
        print(json.dumps({"rank": rank, "image_id": item.image_id, "score": round(item.score, 6),
                          "first_stage_score": round(item.first_stage_score, 6), "reranked": item.reranked}))
    return 0
