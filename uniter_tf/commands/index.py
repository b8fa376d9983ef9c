"""``uniter index``: embed an image gallery with a run's first stage and write the retrieval index."""

from __future__ import annotations

NAME = "index"
#: Flags this command does not define go to Beam (``--beam`` runs the embedding pass as a Beam pipeline).
BEAM_FLAGS = True
HELP = ("Build the image index of retrieve-then-rerank: the run's first stage (trained first with --train-files "
        "if the run has none) embeds every image of --features (or, --kind text, every caption); writes INDEX "
        "(embeddings, ids, model version).")


def add_arguments(parser):
    parser.add_argument("--features", required=True, nargs="+",
                        help="Glob(s) of canonical TFRecords holding the gallery's images: per-image region "
                             "features (uniter extract) or caption records (one image part per distinct image).")
    parser.add_argument("--run", required=True,
                        help="The cross-encoder's run directory (a retrieval fine-tuning run); its first stage is "
                             "RUN/first_stage.")
    parser.add_argument("--output", required=True, help="The index directory to write.")
    parser.add_argument("--kind", choices=("image", "text"), default="image",
                        help="image (default): index the images of --features (text -> image retrieval); text: "
                             "index their captions, ids = the records' example_id (image -> caption retrieval, "
                             "`uniter retrieve --image-id`).")
    parser.add_argument("--train-files", nargs="+", default=None,
                        help="Caption records to train the first stage on (InfoNCE) when RUN has none, or with "
                             "--retrain.")
    parser.add_argument("--retrain", action="store_true", help="Train the first stage again (needs --train-files).")
    parser.add_argument("--first-stage-steps", type=int, default=300, help="First-stage updates (default 300).")
    parser.add_argument("--first-stage-batch-size", type=int, default=32,
                        help="Distinct images per first-stage batch (default 32).")
    parser.add_argument("--batch-size", type=int, default=128, help="Images per embedding call (default 128).")
    parser.add_argument("--backend", choices=("auto", "exact", "ivf"), default="auto",
                        help="auto (default): exact below 200,000 images, faiss IVF from there on; exact: always "
                             "exact inner product (slower, recall 1); ivf: always the inverted file.")
    parser.add_argument("--beam", action="store_true",
                        help="Run the embedding pass as an Apache Beam pipeline (DirectRunner by default; Beam flags "
                             "such as --runner=DataflowRunner pass through) instead of in this process.")
    parser.set_defaults(beam_args=[])
    parser.add_argument("--nprobe", type=int, default=16,
                        help="IVF lists probed per query (default 16; more: higher recall, slower).")


def run(args) -> int:
    import json
    import os
    import time

    from uniter_tf.retrieval import first_stage as first_stage_lib
    from uniter_tf.retrieval.index import (EmbeddingIndex, build_caption_index, build_image_index,
                                          image_index_metadata)

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.nprobe < 1:
        raise ValueError(f"--nprobe must be >= 1, got {args.nprobe}")
    if not os.path.isdir(args.run):
        raise ValueError(f"--run {args.run}: no such directory")
    if args.kind == "text" and args.beam:
        raise ValueError("--beam embeds images only; build a caption index (--kind text) without --beam")
    stage_dir = first_stage_lib.first_stage_dir(args.run)
    has_stage = os.path.exists(os.path.join(stage_dir, first_stage_lib.CONFIG_FILE))
    if args.retrain or not has_stage:
        if not args.train_files:
            raise ValueError(f"--run {args.run} has no trained first stage ({stage_dir}); give --train-files to "
                             "train one" if not has_stage else "--retrain needs --train-files")
        first_stage_lib.train_first_stage(args.run, args.train_files, steps=args.first_stage_steps,
                                          batch_size=args.first_stage_batch_size, output_dir=stage_dir,
                                          log=lambda line: print(line, flush=True))
    start = time.perf_counter()
    if args.beam:
        import shutil
        import tempfile

        from uniter_tf.retrieval import beam_index

        stage = first_stage_lib.load_first_stage(stage_dir)
        scratch = tempfile.mkdtemp(prefix="uniter-index-")
        try:
            shards = beam_index.embed_gallery_with_beam(args.features, stage_dir, os.path.join(scratch, "embeddings"),
                                                        beam_args=args.beam_args, batch_size=args.batch_size)
            image_ids, embeddings = beam_index.read_embedding_shards(shards)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        index = EmbeddingIndex(image_ids, embeddings, stage.model_version(), "image",
                               image_index_metadata(args.run, stage_dir, args.features), backend=args.backend,
                               nprobe=args.nprobe)
    else:
        build = build_caption_index if args.kind == "text" else build_image_index
        index = build(stage_dir, args.features, run=args.run, backend=args.backend, nprobe=args.nprobe,
                      batch_size=args.batch_size)
    index.save(args.output)
    size_key = "images" if index.kind == "image" else "captions"
    print(json.dumps({"index": args.output, "kind": index.kind, size_key: len(index), "dim": index.dim,
                      "backend": index.backend, "model_version": index.model_version,
                      "seconds": round(time.perf_counter() - start, 2)}))
    return 0
