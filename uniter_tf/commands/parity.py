"""``uniter parity``: compare the Keras model with an official-UNITER parity fixture."""

from __future__ import annotations

NAME = "parity"
HELP = ("Run the model on an official-UNITER parity fixture (state_dict.npz, inputs.npz, outputs.npz, "
        "config.json) and print the max abs error of every output; exit 1 if any exceeds --atol.")


def add_arguments(parser):
    parser.add_argument("--fixture", required=True, help="Fixture directory (format of tests/fixtures/parity_official).")
    parser.add_argument("--atol", type=float, default=1e-5, help="Tolerance of every output (default 1e-5).")


def run(args) -> int:
    import sys  # pylint: disable=import-outside-toplevel

    from uniter_tf.checkpoints import parity  # pylint: disable=import-outside-toplevel

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
