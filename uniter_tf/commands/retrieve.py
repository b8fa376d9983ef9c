"""``uniter retrieve``: text → image ids from an image index, or image → captions from a caption index;
optionally reranked by the cross-encoder."""

from __future__ import annotations

NAME = "retrieve"
HELP = ("Text to images (--text, an image index) or image to captions (--image-id, a caption index built with "
        "`uniter index --kind text`): the first stage's top --k of --index, or (--rerank K) its top K rescored by "
        "the run's cross-encoder; prints JSON lines {rank, image_id | text_id + text, score, first_stage_score}.")


def add_arguments(parser):
    parser.add_argument("--index", required=True, help="An index directory written by `uniter index`.")
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", help="A caption: retrieve images from an image index.")
    query.add_argument("--image-id", help="An image id of --features (default: the caption index's records): "
                                          "retrieve captions from a caption index.")
    parser.add_argument("--k", type=int, default=10, help="Answers (default 10; at most the gallery).")
    parser.add_argument("--rerank", type=int, default=0,
                        help="Rescore the first stage's top RERANK candidates with the cross-encoder (>= --k, at "
                             "most the gallery; default 0: first stage only).")
    parser.add_argument("--run", default=None,
                        help="The run whose first stage and cross-encoder to use (default: the one the index was "
                             "built with); its first stage must be the index's model version.")
    parser.add_argument("--features", nargs="+", default=None,
                        help="Text queries: the gallery's records for reranking; image queries: the records holding "
                             "the query image (default: those the index was built from).")


def run(args) -> int:
    import json

    from uniter_tf.retrieval import first_stage as first_stage_lib
    from uniter_tf.retrieval.index import EmbeddingIndex, IndexVersionError, check_k, read_index_description
    from uniter_tf.retrieval.rerank import CrossEncoder, retrieve, retrieve_captions

    # Every check that needs no model comes first: a bad request costs no TensorFlow start-up.
    if args.text is not None and not args.text.strip():
        raise ValueError("--text is empty")
    if args.image_id is not None and not args.image_id.strip():
        raise ValueError("--image-id is empty")
    description = read_index_description(args.index)
    wanted_kind = "image" if args.text is not None else "text"
    if description["kind"] != wanted_kind:
        raise ValueError(f"--index {args.index} holds {description['kind']} embeddings: "
                         + ("--text queries need an image index (uniter index)" if wanted_kind == "image" else
                            "--image-id queries need a caption index (uniter index --kind text)"))
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
    index_features = description.get("metadata", {}).get("features")
    index = EmbeddingIndex.load(args.index, expected_model_version=stage_version)
    stage = first_stage_lib.load_first_stage(run_dir)
    feature_dim = stage.model_config.region_feature_dim
    cross_encoder = CrossEncoder.from_run(run_dir) if args.rerank else None
    if args.image_id is not None:
        if not index_features:
            raise ValueError(f"the caption index {args.index} names no caption records")
        captions = first_stage_lib.read_gallery(index_features, feature_dim=feature_dim)
        images = (first_stage_lib.read_gallery(args.features, feature_dim=feature_dim, require_captions=False)
                  if args.features else captions)
        for rank, item in enumerate(retrieve_captions(args.image_id, stage, index, images, captions, k=args.k,
                                                      rerank=args.rerank, cross_encoder=cross_encoder), 1):
            print(json.dumps({"rank": rank, "text_id": item.text_id, "text": item.text, "score": round(item.score, 6),
                              "first_stage_score": round(item.first_stage_score, 6), "reranked": item.reranked}))
        return 0
    image_parts = None
    if args.rerank:
        features = args.features or index_features
        if not features:
            raise ValueError("--rerank needs the gallery's records: give --features")
        image_parts = first_stage_lib.read_gallery(features, feature_dim=feature_dim, require_captions=False).image_parts
    answers = retrieve(args.text, stage, index, k=args.k, rerank=args.rerank, cross_encoder=cross_encoder,
                       image_parts=image_parts)
    for rank, item in enumerate(answers, 1):
        print(json.dumps({"rank": rank, "image_id": item.image_id, "score": round(item.score, 6),
                          "first_stage_score": round(item.first_stage_score, 6), "reranked": item.reranked}))
    return 0
