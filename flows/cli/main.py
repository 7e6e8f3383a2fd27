"""The edge of ``mlcycle``: parse, run the command's handler, translate what a user can fix
into one error line (the only place that does), stop cleanly on Ctrl-C or SIGTERM, and exit
without the interpreter's teardown."""

from __future__ import annotations

import atexit
import logging
import os
import shlex
import signal
import sys
import traceback
from collections.abc import Sequence

from flows.cli.formatting import error_line
from flows.cli.parser import build_parser
from tasks.core.errors import user_error
from tasks.core.processes import Terminated, raise_terminated
from tasks.lifecycle.prefect_api import PrefectApiLost, api_lost

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it
EXIT_TERMINATED = 143  # 128 + SIGTERM
EXIT_UNCAUGHT = 1  # Python's own code for an exception nobody caught
DEBUG_OFF = ("", "0", "false", "no")  # MLCYCLE_DEBUG values that leave tracebacks out

# What a stopped command left behind, and how to go on; per command, else the default.
STOPPED_ADVICE = {
    "run": "the MLflow run is marked KILLED and nothing was registered; `git checkout "
    "params.yaml dvc.lock && dvc checkout` restores the workspace, `mlcycle run` starts again",
    "register": "no alias moved unless the registration finished; `mlcycle register` "
    "again completes it",
    "restore": "the workspace's own dvc.lock and params.yaml are back; run it again",
}
STOPPED_DEFAULT_ADVICE = "run it again when ready"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["mlcycle", *(sys.argv[1:] if argv is None else argv)])
    # SIGINT and SIGTERM stop the command in its main thread: the flow records the run as
    # stopped, the children are stopped in order, and the exit code says which signal it was.
    previous = {signum: signal.signal(signum, _stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return _stopped(args.command, "interrupted (Ctrl-C)", EXIT_INTERRUPTED)
    except Terminated:
        return _stopped(args.command, "terminated (SIGTERM)", EXIT_TERMINATED)
    except PrefectApiLost:  # its one line is out already (see `session.watching`)
        return 1
    except BrokenPipeError:  # `mlcycle models | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as error:
        return _report(error, args.verbose or _debugging())
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class _LastExitHandler:
    """Registered before any other exit handler, so it runs after all of them (atexit runs
    them last-in, first-out): it flushes logging and the output, then ends the process with
    the command's exit code, skipping the interpreter's teardown that frees torch's, MLflow's
    and Prefect's modules (seconds of a short command, for nothing)."""

    def __init__(self) -> None:
        self.code = EXIT_UNCAUGHT  # until main returns or exits

    def run(self) -> None:
        logging.shutdown()  # logging's own exit handler ran before ours registered: after it
        _flush_and_exit(self.code)


def console_main() -> None:
    """The ``mlcycle`` console script: :func:`main`, then the interpreter's own exit (it waits
    for the threads and runs the exit handlers: Prefect's, MLflow's) without its teardown."""
    last = _LastExitHandler()
    atexit.register(last.run)
    try:
        last.code = main()
    except SystemExit as exit_:  # --help, a parser error: argparse's code
        last.code = _exit_code(exit_.code)
        raise
    if api_lost():  # Prefect's exit handlers would retry the dead API for minutes
        _flush_and_exit(last.code)
    sys.exit(last.code)


def _exit_code(code: object) -> int:
    """The status ``sys.exit(code)`` ends with: None is 0, a message is 1."""
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


def _flush_and_exit(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _report(error: Exception, verbose: bool) -> int:
    """The one error-translation point (see ``tasks.core.errors.user_error``): a failure a user
    can fix is one line, exit 1; anything else is a bug and keeps its traceback. ``verbose``
    adds the traceback under the line, for whoever debugs it."""
    translated = user_error(error)
    if translated is None:
        raise error
    if verbose:
        traceback.print_exception(error, file=sys.stderr)
    error_line(str(translated))
    return 1


def _debugging() -> bool:
    return os.environ.get("MLCYCLE_DEBUG", "").strip().lower() not in DEBUG_OFF


def _stop(signum: int, frame: object) -> None:
    """The first SIGINT/SIGTERM stops the command; later ones only say that it is stopping
    (the flow is recording how the run ended, and children get a few seconds each)."""
    for other in (signal.SIGINT, signal.SIGTERM):
        signal.signal(other, _already_stopping)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise_terminated(signum, frame)


def _already_stopping(signum: int, frame: object) -> None:
    print("mlcycle: stopping, please wait (a few seconds)", file=sys.stderr, flush=True)


def _stopped(command: str, how: str, code: int) -> int:
    advice = STOPPED_ADVICE.get(command, STOPPED_DEFAULT_ADVICE)
    print(f"mlcycle: stopped, {how}: {advice}", file=sys.stderr)
    return code
