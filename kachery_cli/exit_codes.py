"""The one place where exceptions become exit codes and one-line messages.

Every command (including kachery-mount and kachery-server) runs its body
through :func:`run_reporting_errors`, so users see one line on stderr and a
distinct exit code, never a traceback.
"""

import errno
import io
import sys
from enum import IntEnum

from kachery_core.errors import (
    AccessDenied,
    ConfigError,
    HashMismatch,
    InvalidHash,
    InvalidManifest,
    InvalidURL,
    IsADirectoryInSnapshot,
    NotADirectoryInSnapshot,
    NotASnapshot,
    ObjectNotFound,
    RemoteRejected,
    RemoteUnavailable,
)


class ExitStatus(IntEnum):
    OK = 0
    NOT_FOUND = 1
    INVALID_INPUT = 2  # also click's code for usage errors
    CORRUPT = 3  # hash mismatch, invalid manifest
    REMOTE_UNAVAILABLE = 4
    ACCESS_DENIED = 5
    STORAGE_ERROR = 6  # disk full, permissions, other OS errors
    REMOTE_REJECTED = 7
    INTERRUPTED = 130


# Order matters: the first matching class wins.
_STATUS_BY_ERROR = (
    (InvalidURL, ExitStatus.INVALID_INPUT),
    (InvalidHash, ExitStatus.INVALID_INPUT),
    (ConfigError, ExitStatus.INVALID_INPUT),
    (IsADirectoryInSnapshot, ExitStatus.INVALID_INPUT),
    (NotADirectoryInSnapshot, ExitStatus.INVALID_INPUT),
    (NotASnapshot, ExitStatus.INVALID_INPUT),  # before InvalidManifest, its base
    (ObjectNotFound, ExitStatus.NOT_FOUND),
    (HashMismatch, ExitStatus.CORRUPT),
    (InvalidManifest, ExitStatus.CORRUPT),
    (AccessDenied, ExitStatus.ACCESS_DENIED),
    (RemoteUnavailable, ExitStatus.REMOTE_UNAVAILABLE),
    (RemoteRejected, ExitStatus.REMOTE_REJECTED),
)


class StdoutError(OSError):
    """A write to standard output failed (``> /dev/full``, a quota): the
    reader's side, not the store's disk, so the message must not say "no
    space left on device" alone."""

    def __str__(self):
        return f"cannot write to standard output: {self.strerror}"


def status_for(error):
    """The ExitStatus for an exception."""
    for error_class, status in _STATUS_BY_ERROR:
        if isinstance(error, error_class):
            return status
    if isinstance(error, FileNotFoundError):
        return ExitStatus.NOT_FOUND
    if isinstance(error, (IsADirectoryError, NotADirectoryError, ValueError)):
        return ExitStatus.INVALID_INPUT
    return ExitStatus.STORAGE_ERROR


def message_for(error):
    """One line describing ``error`` for a user."""
    if isinstance(error, StdoutError):
        return str(error)
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return f"no space left on device{_path_suffix(error)}"
    if isinstance(error, OSError) and error.strerror and not _is_kachery(error):
        return f"{error.strerror}{_path_suffix(error)}"
    return str(error) or type(error).__name__


def _is_kachery(error):
    return type(error).__module__.startswith("kachery_core")


def _path_suffix(error):
    return f": {error.filename}" if getattr(error, "filename", None) else ""


def run_reporting_errors(body, *args, stop=None, **kwargs):
    """Run ``body``; turn expected failures into one stderr line and an exit code.

    ``stop(interruption)``, when given, handles Ctrl-C/SIGTERM instead of the
    plain exit 130 (the commands' interrupt.stop_now: at once, cleaned up)."""
    try:
        return body(*args, **kwargs)
    except KeyboardInterrupt as interruption:
        if stop is not None:
            stop(interruption)
        sys.stderr.write("kachery: interrupted\n")
        sys.exit(ExitStatus.INTERRUPTED)
    except BrokenPipeError:
        _silence_stdout()
        sys.exit(ExitStatus.OK)
    except (OSError, ValueError) as error:  # KacheryError subclasses both families
        if isinstance(error, StdoutError):
            _silence_stdout()  # what is still buffered must not fail again at exit
        sys.stderr.write(f"kachery: error: {message_for(error)}\n")
        sys.exit(status_for(error))
    except RecursionError:
        # Manifests nest two JSON objects per directory level, and Python's
        # json recurses: about 450 levels of directories fit its limit.
        sys.stderr.write("kachery: error: directory tree nested too deeply"
                         " (kachery handles about 450 levels)\n")
        sys.exit(ExitStatus.INVALID_INPUT)
    except Exception as error:  # noqa: BLE001 - last line of defence: still one line
        if _is_kachery(error):
            sys.stderr.write(f"kachery: error: {message_for(error)}\n")
            sys.exit(status_for(error))
        sys.stderr.write(f"kachery: internal error: {type(error).__name__}: {error}\n")
        sys.exit(70)


def run_click_command(command, prog_name):
    """Entry point body of a command: click parsing, then our error contract.

    click runs with ``standalone_mode=False`` so that usage errors and Ctrl-C
    come back to us: a bad option is one ``kachery: error:`` line with exit 2
    (not click's usage block), Ctrl-C is exit 130 (not click's 'Aborted!', 1).
    """
    import click

    from . import interrupt

    no_args_is_help = getattr(click.exceptions, "NoArgsIsHelpError", ())

    def invoke():
        guard_stdout()
        try:
            status = command.main(prog_name=prog_name, standalone_mode=False)
        except no_args_is_help as error:  # bare `kachery`: show the help, not an error
            sys.stdout.write(error.format_message() + "\n")
            sys.exit(ExitStatus.OK)
        except click.UsageError as error:
            # The failing subcommand's own help: `kachery ls` points at `kachery ls --help`.
            path = error.ctx.command_path if error.ctx is not None else prog_name
            hint = f" (see {path} --help)"
            sys.stderr.write(f"kachery: error: {_one_line(error.format_message())}{hint}\n")
            sys.exit(ExitStatus.INVALID_INPUT)
        except click.ClickException as error:
            sys.stderr.write(f"kachery: error: {_one_line(error.format_message())}\n")
            sys.exit(error.exit_code)
        except click.Abort as error:  # click's wrapping of Ctrl-C (or of our SIGTERM)
            cause = error.__cause__ or error.__context__
            raise (cause if isinstance(cause, KeyboardInterrupt) else KeyboardInterrupt()) from None
        if sys.stdout is not None:
            sys.stdout.flush()  # here, not at exit: a failure is our one line
        sys.exit(status if isinstance(status, int) else ExitStatus.OK)

    def stop(interruption):
        if interrupt.installed():  # a command that stops at once (see interrupt.py)
            interrupt.stop_now(interruption)

    run_reporting_errors(invoke, stop=stop)


class _StdoutFile(io.FileIO):
    """Standard output's descriptor; a failed write raises StdoutError."""

    def write(self, data):
        try:
            return super().write(data)
        except (BrokenPipeError, BlockingIOError):  # `| head`: success; non-blocking: retried
            raise
        except OSError as error:
            raise StdoutError(error.errno, error.strerror) from None


def guard_stdout():
    """Route sys.stdout through _StdoutFile, so that every command's output
    (click.echo, print, sys.stdout.buffer) fails with one "cannot write to
    standard output" line, told apart from a full store disk."""
    stream = sys.stdout
    try:
        fd = stream.fileno()
        stream.flush()
    except (AttributeError, OSError, ValueError):  # closed (`>&-`) or not a file
        return
    raw = _StdoutFile(fd, "w", closefd=False)
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(raw), encoding=stream.encoding,
                                  errors=stream.errors, line_buffering=stream.line_buffering)


def _one_line(text):
    return " ".join(text.split())


def _silence_stdout():
    """After EPIPE (e.g. `kachery-cat ... | head`), make the exit-time flush quiet."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
