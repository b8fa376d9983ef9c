"""``uniter import-features``: existing region features (img_db, BUTD TSV, npz) -> canonical per-image TFRecords."""

from __future__ import annotations

NAME = "import-features"
HELP = ("Convert region features you already have (official UNITER img_db, BUTD/LXMERT TSV, npz folders) "
        "into canonical per-image GZIP TFRecords, as `uniter extract` writes them.")


def add_arguments(parser):
    parser.add_argument("--features", required=True,
                        help="img_db dir, npz dir, or TSV / TFRecord / npz files or globs (comma-separated)")
    parser.add_argument("--feature-format", default="auto",
                        choices=("auto", "img_db", "butd_tsv", "lxmert_tsv", "npz", "canonical"))
    parser.add_argument("--output", required=True, help="output prefix, e.g. out/region_features")
    parser.add_argument("--num-shards", type=int, default=1)
    parser.add_argument("--feature-dim", type=int, help="expected D; other widths are dead letters")
    parser.add_argument("--conf-threshold", type=float, default=0.2)
    parser.add_argument("--min-boxes", type=int, default=10)
    parser.add_argument("--max-boxes", type=int, default=100)
    parser.add_argument("--keep-all-boxes", action="store_true", help="skip the box-selection rule")


def run(args) -> int:
    from uniter_tf.data import boxes, dead_letter
    from uniter_tf.data.importers import convert

    selection = None if args.keep_all_boxes else boxes.BoxSelection(args.conf_threshold, args.min_boxes,
                                                                     args.max_boxes)
    result = convert.convert_features(args.features, args.output, args.feature_format, args.feature_dim,
                                      args.num_shards, selection)
    print(dead_letter.format_summary(result.counts, title=f"import-features summary ({args.output})"))
    print(f"shards: {len(result.paths)}\ndead letters: {result.dead_letter_path}")
    return 0
