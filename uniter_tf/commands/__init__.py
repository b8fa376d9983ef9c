"""Subcommands of the ``uniter`` CLI, one module each.

Every module here defines:

* ``NAME``: the subcommand (``uniter NAME``);
* ``HELP``: a one-line description;
* ``add_arguments(parser)``: adds its flags to an ``argparse`` parser;
* ``run(args) -> int``: runs it and returns the exit status;
* optionally ``BEAM_FLAGS = True``: flags the command does not define go to Beam's PipelineOptions as
  ``args.beam_args`` (checked: a flag Beam does not know either is rejected).

User errors (a missing file, a bad value) are raised, not printed: ``uniter_tf.console.UserError``,
``ValueError`` or ``OSError``. The CLI reports them in one line and exits 2; the traceback goes to the
log file (to the terminal with ``--verbose``).

Modules must import heavy packages (TensorFlow, Beam, TFX) inside ``run`` only, so that
``uniter --help`` and ``uniter --version`` stay instant.
"""
