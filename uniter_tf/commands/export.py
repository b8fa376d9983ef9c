"""``uniter export``: write a servable SavedModel version from a trained or converted model."""

from __future__ import annotations

NAME = "export"
HELP = "Export a model directory as a SavedModel version (BASE/<version>) with UNITER's serving signatures."


def _sizes(text: str):
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None


def add_arguments(parser):
    parser.add_argument("--model-dir", required=True,
                        help="A fine-tuning run, a converted checkpoint (config.json + backbone.weights.h5) or a "
                             "pretraining run (its model_config.json, else --config).")
    parser.add_argument("--output", required=True, help="The model's base path; the export goes to OUTPUT/<version>.")
    parser.add_argument("--version", type=int, default=None,
                        help="Version number (default: one more than the newest under OUTPUT).")
    parser.add_argument("--config", default=None,
                        help="Model configuration (preset or JSON) of a pretraining run without model_config.json.")
    parser.add_argument("--max-text-length", type=int, default=None,
                        help="Longest token row incl. [CLS]/[SEP] (default: the run's, else 60).")
    parser.add_argument("--text-buckets", default=None,
                        help="Comma-separated token-row widths to pad to (default 16,32,<max-text-length>).")
    parser.add_argument("--region-buckets", default="16,36,64,100",
                        help="Comma-separated region counts to pad to; the last is the most accepted "
                             "(default 16,36,64,100).")
    parser.add_argument("--top-k", type=int, default=5, help="Answers per example for task heads (default 5).")
    parser.add_argument("--no-warmup", action="store_true", help="Do not write TF Serving warm-up requests.")
    parser.add_argument("--jit-compile", action="store_true",
                        help="Compile the model part of the scoring signatures with XLA (faster inference; each "
                             "new batch/text/region bucket compiles on first use; tensorflow_model_server needs "
                             "--xla_cpu_compilation_enabled=true).")
    parser.add_argument("--index", default=None,
                        help="An image index of the run's first stage (uniter index): it and its images' regions go "
                             "into the version's assets.extra/retrieval so the server answers retrieval requests "
                             "(the run's first stage adds embed_text / embed_image whether or not --index is given).")
    parser.add_argument("--index-features", nargs="+", default=None,
                        help="The gallery's region records for --index (default: those the index was built from).")
    parser.add_argument("--no-first-stage", action="store_true",
                        help="Leave the run's retrieval first stage (embed_text / embed_image) out of the export.")


def run(args) -> int:
    from uniter_tf.export.model_dir import DEFAULT_REGION_BUCKETS, export_model_dir

    # A missing model, an existing version or a bad value raises OSError / ValueError: one line, exit 2.
    result = export_model_dir(args.model_dir, args.output, version=args.version, config=args.config,
                              top_k=args.top_k, max_text_length=args.max_text_length,
                              text_buckets=_sizes(args.text_buckets) if args.text_buckets else None,
                              region_buckets=_sizes(args.region_buckets) if args.region_buckets
                              else DEFAULT_REGION_BUCKETS,
                              warmup=not args.no_warmup, jit_compile=args.jit_compile,
                              first_stage=False if args.no_first_stage else None, index=args.index,
                              index_features=args.index_features)
    ops = result.metadata.get("non_core_ops", [])
    print(f"exported the {result.kind} model from {result.source} to {result.path}")
    print(f"signatures: {', '.join(sorted(result.metadata['signatures']))}")
    print(f"ops outside core TensorFlow (the serving binary must link them): {', '.join(ops) or 'none'}")
    return 0
