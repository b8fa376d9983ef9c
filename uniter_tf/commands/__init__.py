"""Subcommands of the ``uniter`` CLI, one module each.

Every module here defines:

* ``NAME``: the subcommand (``uniter NAME``);
* ``HELP``: a one-line description;
* ``add_arguments(parser)``: adds its flags to an ``argparse`` parser;
* ``run(args) -> int``: runs it and returns the exit status.

Modules must import heavy packages (TensorFlow, Beam, TFX) inside ``run`` only, so that
``uniter --help`` and ``uniter --version`` stay instant.
"""
