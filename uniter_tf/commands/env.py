"""``uniter env``: versions, CPU features and devices, for bug reports."""

from __future__ import annotations

NAME = "env"
HELP = "Print the versions of the stack, the CPU features and the visible devices (paste into bug reports)."


def add_arguments(parser):
    parser.add_argument("--json", action="store_true", help="Print one JSON object instead of text.")


def run(args) -> int:
    import json

    from uniter_tf import env_info

    report = env_info.collect()
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(env_info.format_report(report))
    return 0
