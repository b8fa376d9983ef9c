"""``uniter parity``: compare the Keras model with official-UNITER parity fixtures."""

from __future__ import annotations

NAME = "parity"
HELP = ("Run the model on an official-UNITER parity fixture (state_dict.npz, inputs.npz, outputs.npz, "
        "config.json; pretraining or one downstream head) and print the max abs error of every output, or on "
        "a folder of fixtures (e.g. parity_downstream/) and print one line per head; exit 1 if any output "
        "exceeds --atol or a fixture of a folder cannot be run (unknown head, missing file); exit 2 if the one "
        "fixture given is incomplete.")


def add_arguments(parser):
    parser.add_argument("--fixture", required=True,
                        help="Fixture directory (format of tests/fixtures/parity_official, or one head of "
                             "parity_downstream/), or a folder whose sub-folders are fixtures.")
    parser.add_argument("--atol", type=float, default=1e-5, help="Tolerance of every output (default 1e-5).")
    parser.add_argument("--model-dir", default=None,
                        help="Check this converted model (a `uniter convert --output` directory) instead of the "
                             "fixture's own state_dict.npz; one fixture only.")


def run(args) -> int:
    import os  # pylint: disable=import-outside-toplevel

    from uniter_tf.checkpoints import parity  # pylint: disable=import-outside-toplevel
    from uniter_tf.console import UserError  # pylint: disable=import-outside-toplevel

    if not os.path.exists(os.path.join(args.fixture, "config.json")) and os.path.isdir(args.fixture) and \
            parity.fixture_folders(args.fixture):
        if args.model_dir:
            raise UserError("--model-dir checks one fixture, not a folder of fixtures")
        results = parity.run_parity_folder(args.fixture, atol=args.atol)
        for label, _, rows, error in results:
            print(parity.format_summary_line(label, rows, error, args.atol))
        failed = [label for label, _, rows, _ in results if rows is None or not rows or not all(r.ok for r in rows)]
        print(f"{len(results) - len(failed)}/{len(results)} fixtures within tolerance"
              + (f"; failed: {', '.join(failed)}" if failed else ""))
        return 1 if failed else 0
    model = None
    if args.model_dir:
        from uniter_tf.checkpoints import official  # pylint: disable=import-outside-toplevel

        # A converted fine-tuned head has its task weights file; a pretraining conversion does not.
        if os.path.exists(os.path.join(args.model_dir, official.TASK_WEIGHTS_FILE)):
            model = official.load_task_model(args.model_dir)
        else:
            model = official.load_pretrained(args.model_dir, pretraining=True)
    try:
        rows = parity.run_parity(args.fixture, atol=args.atol, model=model)
    except KeyError as error:  # a fixture without an array the model needs; exit 2, as a missing file does
        raise UserError(f"fixture {args.fixture}: missing array {error}") from None
    # A missing fixture file (FileNotFoundError) or a bad one (ValueError): one line from the CLI, exit 2.
    print(parity.format_rows(rows, args.atol))
    if not rows:
        print("no output of the fixture could be compared")
        return 1
    return 0 if all(row.ok for row in rows) else 1
