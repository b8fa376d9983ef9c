"""``uniter ingest``: annotations + region features -> canonical train/eval TFRecords (Beam)."""

from __future__ import annotations

NAME = "ingest"
HELP = ("Join annotations (captions, questions, ...) with region features into canonical GZIP TFRecords "
        "with train/eval splits, dead letters and a summary (Apache Beam, DirectRunner by default); other "
        "flags go to Beam's PipelineOptions (e.g. --runner=DataflowRunner).")
# The CLI passes flags this command does not define to Beam, and rejects those Beam does not know either.
BEAM_FLAGS = True


def add_arguments(parser):
    from uniter_tf.data.readers import FORMATS

    parser.add_argument("--format", dest="annotation_format", required=True, choices=FORMATS,
                        help="annotation format")
    parser.add_argument("--annotations", required=True, action="append",
                        help="annotation file (repeat for several)")
    parser.add_argument("--annotations2", action="append", default=[],
                        help="second file: SBU urls, VQA annotations, RefCOCO instances.json (repeat to pair)")
    parser.add_argument("--features", required=True,
                        help="img_db dir, npz dir, or TSV / TFRecord / npz files or globs (comma-separated)")
    parser.add_argument("--feature-format", default="auto",
                        choices=("auto", "img_db", "butd_tsv", "lxmert_tsv", "npz", "canonical"))
    parser.add_argument("--feature-dim", type=int, default=2048, help="the dataset's region feature dim D")
    parser.add_argument("--output", required=True, help="output directory")
    split = parser.add_mutually_exclusive_group()
    split.add_argument("--eval-fraction", type=float, default=0.1,
                       help="share of images whose texts go to eval (hash of the image key)")
    split.add_argument("--splits-from-annotations", action="store_true",
                       help="use the annotations' splits (train/restval -> train, val/dev -> eval, rest excluded)")
    parser.add_argument("--max-text-tokens", type=int, default=60)
    parser.add_argument("--overlong", choices=("drop", "truncate"), default="drop")
    parser.add_argument("--image-key", dest="image_key_mode", choices=("name", "numeric"), default="name",
                        help="how image ids are matched (see uniter_tf/data/image_keys.py)")
    parser.add_argument("--strip-feature-prefix", default="", help="prefix removed from feature ids (nlvr2_)")
    parser.add_argument("--conf-threshold", type=float, default=0.2)
    parser.add_argument("--min-boxes", type=int, default=10)
    parser.add_argument("--max-boxes", type=int, default=100)
    parser.add_argument("--keep-all-boxes", action="store_true", help="skip the box-selection rule")
    parser.add_argument("--answer-vocabulary", help="VQA ans2label.json (default: top-K of the annotations)")
    parser.add_argument("--answer-top-k", type=int, default=3129)
    parser.add_argument("--cc-image-id", dest="cc_image_id_scheme", choices=("row_index", "url_sha1"),
                        default="row_index")
    parser.add_argument("--vocabulary", help="WordPiece vocab.txt (default: vendored bert-base-cased)")
    parser.add_argument("--lower-case", action="store_true")
    parser.add_argument("--num-shards", type=int, default=0, help="shards per split (0: runner decides)")
    parser.add_argument("--split-salt", default="")
    parser.add_argument("--images-dir", help="vcr: the vcr1images folder (img_fn and metadata_fn are relative to it)")
    parser.add_argument("--detected-features", default="",
                        help="vcr: detected-box features, placed after the ground-truth regions of --features")
    # Beam options need no `--` separator (it is still accepted): --runner=DirectRunner --direct_num_workers=2
    parser.set_defaults(beam_args=[])


def run(args) -> int:
    from uniter_tf.data import dead_letter, ingest

    config = ingest.IngestConfig(
            annotation_format=args.annotation_format, annotations=tuple(args.annotations),
            annotations2=tuple(args.annotations2), features=args.features, feature_format=args.feature_format,
            feature_dim=args.feature_dim, max_text_tokens=args.max_text_tokens, overlong=args.overlong,
            eval_fraction=args.eval_fraction, splits_from_annotations=args.splits_from_annotations,
            image_key_mode=args.image_key_mode, strip_feature_prefix=args.strip_feature_prefix,
            conf_threshold=None if args.keep_all_boxes else args.conf_threshold, min_boxes=args.min_boxes,
            max_boxes=args.max_boxes, answer_vocabulary=args.answer_vocabulary, answer_top_k=args.answer_top_k,
            cc_image_id_scheme=args.cc_image_id_scheme, vocabulary=args.vocabulary, lower_case=args.lower_case,
            num_shards=args.num_shards, split_salt=args.split_salt, images_dir=args.images_dir,
            detected_features=args.detected_features)
    result = ingest.run_ingest(config, args.output, list(args.beam_args))
    print(dead_letter.format_summary(result.counts, title=f"ingest summary ({args.output})"))
    print(f"train: {result.split_dirs['train']}\neval: {result.split_dirs['eval']}\n"
          f"dead letters ({result.num_dead_letters}): {result.dead_letter_dir}\nsummary: {result.summary_path}")
    return 0
