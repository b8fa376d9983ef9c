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
                             "pretraining run (with --config).")
    parser.add_argument("--output", required=True, help="The model's base path; the export goes to OUTPUT/<version>.")
    parser.add_argument("--version", type=int, default=None,
                        help="Version number (default: one more than the newest under OUTPUT).")
    parser.add_argument("--config", default=None,
                        help="Model configuration (preset or JSON) of a pretraining run.")
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


def run(args) -> int:
    import json
    import os

    from uniter_tf.export.exporter import EXPORT_METADATA_FILE, export_uniter
    from uniter_tf.export.model_dir import load_exportable_model
    from uniter_tf.export.op_inventory import non_core_ops
    from uniter_tf.export.signatures import ExportOptions

    # A missing model, an existing version or a bad value raises OSError / ValueError: one line, exit 2.
    model = load_exportable_model(args.model_dir, config=args.config, top_k=args.top_k)
    max_text_length = args.max_text_length or model.max_text_length or 60
    max_text_length = min(max_text_length, model.backbone.config.max_position_embeddings)
    if args.text_buckets:
        text_buckets = _sizes(args.text_buckets)
    else:
        text_buckets = tuple(width for width in (16, 32) if width < max_text_length) + (max_text_length,)
    options = ExportOptions(max_text_length=max_text_length, text_buckets=text_buckets,
                            region_buckets=_sizes(args.region_buckets), top_k=args.top_k,
                            warmup=not args.no_warmup, jit_compile=args.jit_compile)
    path = export_uniter(args.output, model.backbone, model.itm_head, task=model.task, options=options,
                         version=args.version)
    ops = non_core_ops(path)
    metadata_path = os.path.join(path, "assets.extra", EXPORT_METADATA_FILE)
    with open(metadata_path, encoding="utf-8") as handle:
        metadata = json.load(handle)
    metadata["non_core_ops"] = ops
    with open(metadata_path, "w", encoding="utf-8") as handle:
        json.dump(metadata, handle, indent=2, sort_keys=True)
    print(f"exported the {model.kind} model from {model.source} to {path}")
    print(f"signatures: {', '.join(sorted(metadata['signatures']))}")
    print(f"ops outside core TensorFlow (the serving binary must link them): {', '.join(ops) or 'none'}")
    return 0
