"""Ctrl-C and SIGTERM stop a command at once and leave nothing partial.

Transfers run on worker threads (downloads, uploads, the fetcher's pools).
A signal sent to the process may land on any of them, and a main thread
blocked waiting for a worker's result never sees it; at exit Python would
also wait for every worker to finish: an interrupted 1 GiB download used to
run to its end. So a command that calls :func:`install`:

- blocks SIGINT and SIGTERM in its threads (threads made later inherit
  that), and one thread takes them with ``sigwait``;
- that thread interrupts the main thread (``interrupt_main``, then a
  SIGURG that breaks it out of a blocking wait or system call, where it
  runs the pending interruption), which unwinds its own work (an export
  removes its partial ``--dest``) and calls :func:`stop_now`; if the main
  thread does not get there within STOP_GRACE, the signal thread stops the
  process itself;
- :func:`stop_now` prints one line, removes this process's temp files (they
  carry its writer-lock prefix, store.py) and partial copies (export.py),
  and ends the process without waiting for the workers.

Objects are only ever published complete and verified, so stopping anywhere
leaves the store as a kill -9 would: consistent, and here also clean. An
upload cut this way is discarded by the server (it never publishes a short
or unverified body). The mount and the server have their own signal
handling (an orderly unmount, a graceful shutdown) and do not call install.
"""

import _thread
import os
import signal
import sys
import threading

from kachery_core.store import remove_own_temps

#: Exit statuses of the shell convention: 128 + the signal's number.
INTERRUPTED = 128 + signal.SIGINT
TERMINATED = 128 + signal.SIGTERM
#: Seconds the main thread gets to unwind before the process is stopped anyway.
STOP_GRACE = 0.3
_SIGNALS = {signal.SIGINT, signal.SIGTERM}
_stopping = threading.Lock()
_installed = False


class Terminated(KeyboardInterrupt):
    """SIGTERM, delivered like Ctrl-C (the same unwinding), exit 143."""


def install():
    """Route SIGINT/SIGTERM as described above (call from the main thread,
    before the command starts any thread)."""
    global _installed
    if _installed or threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGTERM, _raise_terminated)  # what interrupt_main(SIGTERM) runs
    signal.signal(signal.SIGURG, _wake)
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    threading.Thread(target=_take_signals, name="kachery-signals", daemon=True).start()
    _installed = True


def installed():
    return _installed


def _raise_terminated(signum, frame):
    raise Terminated()


def _wake(signum, frame):
    """Nothing: SIGURG only ends the main thread's blocking call (EINTR)."""


def _take_signals():
    signum = signal.sigwait(_SIGNALS)
    _thread.interrupt_main(signum)
    signal.pthread_kill(threading.main_thread().ident, signal.SIGURG)
    threading.Event().wait(STOP_GRACE)
    stop_now(Terminated() if signum == signal.SIGTERM else KeyboardInterrupt())


def stop_now(interruption):
    """Report, clean up and end the process at once (never returns)."""
    _stopping.acquire()  # the first caller stops the process; any other waits for that
    terminated = isinstance(interruption, Terminated)
    sys.stderr.write("kachery: terminated\n" if terminated else "kachery: interrupted\n")
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    try:
        # The one line is out; what workers say while their files vanish is noise.
        quiet = os.open(os.devnull, os.O_WRONLY)
        os.dup2(quiet, sys.stderr.fileno())
        # Only a command that copies out (export.py) has partial copies; the
        # others do not import it, which keeps their start-up short.
        export = sys.modules.get("kachery_core.export")
        if export is not None:
            export.remove_partials()
        remove_own_temps()
    finally:
        os._exit(TERMINATED if terminated else INTERRUPTED)
