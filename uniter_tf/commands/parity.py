"""``uniter parity``: compare the Keras model with official-UNITER parity fixtures."""

from __future__ import annotations

NAME = "parity"
HELP = ("Run the model on an official-UNITER parity fixture (state_dict.npz, inputs.npz, outputs.npz, "
        "config.json; pretraining or one downstream head) and print the max abs error of every output, or on "
        "a folder of fixtures (e.g. parity_downstream/) and print one line per head; exit 1 if any output "
        "exceeds --atol or a fixture cannot be run (unknown head, missing file).")


def add_arguments(parser):
    parser.add_argument("--fixture", required=True,
                        help="Fixture directory (format of tests/fixtures/parity_official, or one head of "
                             "parity_downstream/), or a folder whose sub-folders are fixtures.")
    parser.add_argument("--atol", type=float, default=1e-5, help="Tolerance of every output (default 1e-5).")


def run(args) -> int:
    import os  # pylint: disable=import-outside-toplevel
    import sys  # pylint: disable=import-outside-toplevel

    from uniter_tf.checkpoints import parity  # pylint: disable=import-outside-toplevel

    if not os.path.exists(os.path.join(args.fixture, "config.json")) and os.path.isdir(args.fixture) and \
            parity.fixture_folders(args.fixture):
        results = parity.run_parity_folder(args.fixture, atol=args.atol)
        for label, _, rows, error in results:
            print(parity.format_summary_line(label, rows, error, args.atol))
        failed = [label for label, _, rows, _ in results if rows is None or not rows or not all(r.ok for r in rows)]
        print(f"{len(results) - len(failed)}/{len(results)} fixtures within tolerance"
              + (f"; failed: {', '.join(failed)}" if failed else ""))
        return 1 if failed else 0
    try:
        rows = parity.run_parity(args.fixture, atol=args.atol)
    except (FileNotFoundError, ValueError, KeyError) as error:
        print(f"uniter parity: error: {error}", file=sys.stderr)
        return 1
    print(parity.format_rows(rows, args.atol))
    if not rows:
        print("no output of the fixture could be compared")
        return 1
    return 0 if all(row.ok for row in rows) else 1
