"""``uniter convert``: official UNITER / BERT checkpoint → Keras weights + config JSON."""

from __future__ import annotations

NAME = "convert"
HELP = ("Convert an official UNITER (or BERT init / HF-BERT) state dict (.pt, .npz, .safetensors) into a "
        "directory with Keras weights and the config JSON; prints missing and unexpected keys. .pt files are "
        "read without PyTorch, and their pickle code is never run (only tensor data is accepted).")


def add_arguments(parser):
    parser.add_argument("--checkpoint", required=True,
                        help="State-dict file: .pt/.pth/.bin (torch.save zip or legacy layout; torch not needed), .npz or "
                             ".safetensors.")
    parser.add_argument("--config", default="base",
                        help="Preset (base, large, mini, tiny, uniter-base, ...) or a config JSON file: ours, an official "
                             "config/uniter-*.json, or a parity fixture's config.json (default base).")
    parser.add_argument("--output", required=True, help="Output directory.")
    parser.add_argument("--key-prefix", default=None,
                        help="Prefix of the backbone keys in the file: 'uniter.', 'bert.' or '' (bare HF BertModel); "
                             "detected when omitted.")
    parser.add_argument("--text-only", action="store_true",
                        help="The file has no image side (BERT): missing img_embeddings keys are expected.")
    parser.add_argument("--no-grow", action="store_true",
                        help="Do not enlarge vocab/type tables to the checkpoint's (NLVR2/VCR); fail on mismatch.")
    parser.add_argument("--strict", action="store_true", help="Fail when any key is missing or unexpected.")


def release_large_blocks() -> bool:
    """Makes glibc serve every allocation of 1 MiB or more by its own mmap, returned to the OS when freed.

    glibc raises its mmap threshold each time a large block is freed; after that, the initialisers'
    temporaries and each tensor's read buffer are recycled inside the heap and the resident size never
    shrinks. Converting uniter-large (1.27 GiB) then peaked at 2.72 GiB (2.14x) instead of 2.20 GiB
    (bench/convert_bench.py). A fixed threshold only costs an mmap per large allocation, nothing for a
    one-shot conversion. Called by `uniter convert`, which owns its process; other platforms are left alone.

    Returns:
        Whether the threshold was set (glibc found).
    """
    import ctypes  # pylint: disable=import-outside-toplevel
    import sys  # pylint: disable=import-outside-toplevel

    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    m_mmap_threshold = -3  # from glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, 1 << 20))


def run(args) -> int:
    import sys  # pylint: disable=import-outside-toplevel

    from uniter_tf.checkpoints import official  # pylint: disable=import-outside-toplevel
    from uniter_tf.config import UniterConfig  # pylint: disable=import-outside-toplevel

    release_large_blocks()
    try:
        config = UniterConfig.resolve(args.config)
        model, report = official.convert_checkpoint(args.checkpoint, config, key_prefix=args.key_prefix,
                                                    text_only=args.text_only, grow_tables=not args.no_grow,
                                                    strict=args.strict, log=print)
    except (FileNotFoundError, ImportError, ValueError) as error:
        print(f"uniter convert: error: {error}", file=sys.stderr)
        return 1
    paths = official.save_converted(model, args.output, report)
    for name, path in paths.items():
        print(f"wrote {name}: {path}")
    return 0
