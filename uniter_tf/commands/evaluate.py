"""``uniter evaluate``: ITM accuracy, retrieval recall@1/5/10 and the VQA score of an exported model."""

from __future__ import annotations

NAME = "evaluate"
HELP = ("Evaluate an exported model (SavedModel, TFX Model artifact, serving base path or fine-tuning run) "
        "on TFRecord files: ITM accuracy, retrieval R@1/5/10, VQA score; prints the metrics as JSON.")


def add_arguments(parser):
    parser.add_argument("--run", required=True,
                        help="A SavedModel directory, a TFX Model artifact (with Format-Serving/), a serving base "
                             "path with numbered versions (the newest is used) or a fine-tuning run (its "
                             "export/<version>/).")
    parser.add_argument("--files", required=True, nargs="+",
                        help="Glob(s) of the eval split's canonical TFRecords (GZIP when the name ends in .gz).")
    parser.add_argument("--train-files", nargs="+", default=None,
                        help="Glob(s) of the training records: their VQA questions give the question-only "
                             "baseline (vqa_baseline_score).")
    parser.add_argument("--batch-size", type=int, default=32, help="Records per model call (default 32).")
    parser.add_argument("--max-gallery-texts", type=int, default=1000,
                        help="The first this-many captions are the retrieval queries, their images the gallery "
                             "(default 1000).")
    parser.add_argument("--output", default=None, help="Also write the metrics to this JSON file.")
    parser.add_argument("--task", default=None, choices=("retrieval",),
                        help="retrieval: every caption of --files against every image of them (no "
                             "--max-gallery-texts cut), txt/img R@1/5/10 and r_mean; with --output the float16 "
                             "score matrix goes beside it (OUTPUT_STEM_scores.npy, OUTPUT_STEM_ids.json).")


def run(args) -> int:
    from uniter_tf import evaluation

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.max_gallery_texts < 1:
        raise ValueError(f"--max-gallery-texts must be >= 1, got {args.max_gallery_texts}")
    if getattr(args, "task", None) == "retrieval":
        import os

        from uniter_tf.retrieval import gallery

        prefix = os.path.splitext(args.output)[0] if args.output else None
        metrics = gallery.evaluate_saved_model(args.run, args.files, batch_size=args.batch_size, output_prefix=prefix)
        return _print_metrics(metrics, args.output)
    # A missing model, unmatched files or a malformed record raise ValueError: one line, exit 2.
    metrics = evaluation.evaluate_files(args.run, args.files, batch_size=args.batch_size,
                                        max_gallery_texts=args.max_gallery_texts, train_files=args.train_files)
    return _print_metrics(metrics, args.output)


def _print_metrics(metrics, output) -> int:
    import json

    text = json.dumps(metrics, indent=2, sort_keys=True)
    if output:
        import tensorflow as tf

        with tf.io.gfile.GFile(output, "w") as handle:
            handle.write(text + "\n")
    print(text)
    return 0
