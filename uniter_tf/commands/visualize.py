"""``uniter visualize``: attention maps and the word-region transport plan of one caption and image, as PNGs."""

from __future__ import annotations

NAME = "visualize"
HELP = ("Write PNGs of a model's attention (per layer and head, text/region blocks marked) and of the "
        "word-region OT transport plan for one caption and one image's regions.")


def add_arguments(parser):
    model = parser.add_argument_group("model (one of)")
    model.add_argument("--model-dir", default=None,
                       help="A model directory: `uniter convert` output (config.json + backbone.weights.h5), a "
                            "`uniter finetune` run, or a pretraining run (then --preset names its config).")
    model.add_argument("--preset", default=None,
                       help="A UniterConfig preset or JSON file: the model of --random-init, or the config of a "
                            "pretraining run in --model-dir.")
    model.add_argument("--random-init", action="store_true",
                       help="Use a randomly initialised backbone of --preset (to check the tooling).")
    model.add_argument("--seed", type=int, default=0, help="Seed of --random-init.")
    regions = parser.add_argument_group("regions (one of)")
    regions.add_argument("--regions-npz", default=None,
                         help=".npz with 'features' [n, D] and 'positions' [n, 7] (or pixel 'boxes' [n, 4] with "
                              "'image_height'/'image_width').")
    regions.add_argument("--tfrecord", default=None, help="Canonical TFRecord file or glob; its text is the default "
                                                         "caption.")
    regions.add_argument("--record-index", type=int, default=0, help="Which record of --tfrecord (0-based).")
    regions.add_argument("--compression", default="GZIP", choices=["GZIP", "ZLIB", "NONE"],
                         help="Compression of --tfrecord.")
    parser.add_argument("--caption", default=None, help="The text (default: the record's text with --tfrecord).")
    parser.add_argument("--output-dir", required=True, help="Where the PNGs are written.")
    parser.add_argument("--vocab", default=None, help="vocab.txt (default: the vendored bert-base-cased one).")
    parser.add_argument("--lower-case", action="store_true", help="Lower-case (for uncased vocabularies).")
    parser.add_argument("--max-text-length", type=int, default=60, help="Longest text incl. [CLS]/[SEP].")
    parser.add_argument("--layers", default=None, help="Comma-separated layer indices to draw (default all).")
    parser.add_argument("--per-head", action="store_true", help="Also write one PNG per layer and head.")


def _load_backbone(args):
    import keras

    from uniter_tf.config import UniterConfig
    from uniter_tf.export.model_dir import load_exportable_model
    from uniter_tf.models.backbone import UniterBackbone

    if args.model_dir:
        if args.random_init:
            raise ValueError("give either --model-dir or --preset with --random-init, not both")
        return load_exportable_model(args.model_dir, config=args.preset).backbone
    if not args.preset:
        raise ValueError("give --model-dir, or --preset with --random-init")
    if not args.random_init:
        raise ValueError(f"--preset {args.preset} alone has no trained weights; add --random-init to draw an "
                         "untrained model, or use --model-dir")
    keras.utils.set_random_seed(args.seed)
    return UniterBackbone(UniterConfig.resolve(args.preset))


def run(args) -> int:
    import json

    from uniter_tf import visualization
    from uniter_tf.console import UserError
    from uniter_tf.tokenization import UniterTokenizer

    if bool(args.regions_npz) == bool(args.tfrecord):
        raise UserError("give exactly one of --regions-npz and --tfrecord")
    backbone = _load_backbone(args)  # ValueError on a bad combination: reported in one line by the CLI
    caption = args.caption
    if args.regions_npz:
        regions = visualization.load_regions_npz(args.regions_npz)
    else:
        compression = None if args.compression == "NONE" else args.compression
        regions, record_text = visualization.load_regions_tfrecord(args.tfrecord, args.record_index, compression)
        caption = caption if caption is not None else record_text
    if not caption:
        raise UserError("no caption (pass --caption; the record has no text)")
    layers = None
    if args.layers:
        layers = [int(layer) for layer in args.layers.split(",") if layer.strip()]
    tokenizer = UniterTokenizer(args.vocab, lower_case=args.lower_case, model_vocab_size=backbone.config.vocab_size)
    summary = visualization.visualize_example(backbone, tokenizer, regions, args.output_dir, caption=caption,
                                              max_text_length=args.max_text_length, layers=layers,
                                              per_head=args.per_head)
    summary["caption"] = caption
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0
