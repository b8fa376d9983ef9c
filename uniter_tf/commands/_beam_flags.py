"""Checking the flags a Beam command (``uniter extract``, ``uniter ingest``) passes to Apache Beam.

Flags the command does not define go to Beam's ``PipelineOptions`` (``--runner=DataflowRunner
--project=P ...``). Beam itself only logs "Discarding unparseable args" for a flag it does not know and
runs on, so a typo such as ``--max-boxs 5`` would silently do nothing; :func:`check_beam_flags` parses the
flags with every option class Beam has registered and rejects what none of them knows.

``--runner=DaskRunner`` selects :class:`uniter_tf.beam_dask.DaskRunner` (Beam has no short name for its Dask
runner, and Beam's own one mixes the tagged outputs of our dead-letter ParDos; see that module), and any
Dask flag (``--dask_client_address``, ``--dask_npartitions`` ...) registers Beam's ``DaskOptions`` first.
"""

from __future__ import annotations

from typing import List, Sequence

from uniter_tf.console import UserError


class UnknownBeamFlags(UserError):
    """Flags that neither the command nor any of Beam's pipeline option classes know.

    Attributes:
        flags: the rejected arguments, as given.
        beam_options: every option string Beam knows (for "did you mean" hints).
    """

    def __init__(self, flags: Sequence[str], beam_options: Sequence[str] = ()):
        self.flags = list(flags)
        self.beam_options = list(beam_options)
        super().__init__(f"unrecognized arguments: {' '.join(self.flags)}")


def _option_classes():
    from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=import-outside-toplevel

    # The classes Beam's own PipelineOptions.get_all_options parses with: its direct subclasses, one per
    # name (runners and IOs register their options this way when imported).
    return list({str(cls): cls for cls in PipelineOptions.__subclasses__()}.values())


#: ``--runner`` values that select the project's Dask runner (Beam itself knows only the full class path).
_DASK_RUNNER_NAMES = ("DaskRunner", "apache_beam.runners.dask.dask_runner.DaskRunner")


def _use_project_dask_runner(flags: List[str]) -> List[str]:
    """``flags`` with a Dask ``--runner`` rewritten to :data:`uniter_tf.beam_dask.RUNNER_PATH`.

    Imports the runner module (which registers Beam's ``DaskOptions``) when a Dask runner or a ``--dask_``
    flag is given; without the ``dask``/``distributed`` packages that is a :class:`UserError`.
    """
    out, dask_wanted = [], False
    for index, flag in enumerate(flags):
        if flag.startswith("--dask_"):
            dask_wanted = True
        if flag.startswith("--runner="):
            name = flag.split("=", 1)[1]
            if name in _DASK_RUNNER_NAMES:
                dask_wanted = True
                flag = "--runner=uniter_tf.beam_dask.DaskRunner"
        elif index > 0 and flags[index - 1] == "--runner" and flag in _DASK_RUNNER_NAMES:
            dask_wanted = True
            flag = "uniter_tf.beam_dask.DaskRunner"
        out.append(flag)
    if dask_wanted:
        try:
            import uniter_tf.beam_dask  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
        except ImportError as error:
            raise UserError(f"the Dask runner needs the dask and distributed packages ({error}); they are "
                            "pinned in requirements.lock (make install)") from error
    return out


def check_beam_flags(flags: Sequence[str]) -> List[str]:
    """Returns ``flags`` for Beam's PipelineOptions, or raises if some are unknown or malformed.

    A ``--`` separator (the older spelling, ``uniter ingest ... -- --runner=...``) is dropped, and
    ``--runner=DaskRunner`` becomes ``--runner=uniter_tf.beam_dask.DaskRunner``.

    Args:
        flags: the arguments the command's own parser did not recognise.

    Returns:
        The flags, without the ``--`` separator, the Dask runner name made a class path.

    Raises:
        UnknownBeamFlags: arguments no Beam option class knows (typos, stray values).
        UserError: a known Beam option with a bad value (e.g. ``--direct_num_workers=two``).
    """
    flags = list(flags)
    if "--" in flags:
        flags.remove("--")
    if not flags:
        return flags
    flags = _use_project_dask_runner(flags)
    from apache_beam.options import pipeline_options  # pylint: disable=import-outside-toplevel

    class _CheckingParser(pipeline_options._BeamArgumentParser):  # pylint: disable=protected-access
        def error(self, message):
            raise UserError(f"Beam pipeline option: {message}")

    parser = _CheckingParser(allow_abbrev=False)
    for cls in _option_classes():
        cls._add_argparse_args(parser)  # pylint: disable=protected-access
    _, unknown = parser.parse_known_args(flags)
    if unknown:
        options = [option for action in parser._actions for option in action.option_strings]  # pylint: disable=protected-access
        raise UnknownBeamFlags(unknown, options)
    return flags


__all__ = ["UnknownBeamFlags", "check_beam_flags"]
