"""SIGTERM and SIGHUP end our commands as SIGINT does: cleanly, never mid-refresh.

Supervisors, ``timeout``, container runtimes and desktop hosts stop a helper with SIGTERM
(a closed terminal sends SIGHUP). Their default action ends a process at once: a refresh
whose request was sent dies with its answer B, and the next process replays the spent A.
Ctrl-C instead raises :class:`KeyboardInterrupt` in the main thread, which unwinds the
command while the refresh, on its own thread, finishes (``Keeper.close`` and the exit
hook wait for a refresh that holds the lock, bounded by the token request's timeout) and
stores B, or keeps a rescue copy, before the interpreter exits.
:func:`stop_like_sigint` gives SIGTERM and SIGHUP that path.

Windows has no SIGHUP, and SIGTERM there is never sent by another process (it ends one
with ``TerminateProcess``, which nothing can catch): installing the handler is harmless,
and unverified. SIGKILL cannot be caught anywhere: see docs/guarantees.md for its cost.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

SIGNALS = ("SIGTERM", "SIGHUP")
"""Signals that end a command like SIGINT does."""


class Terminated(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM, SIGHUP): handled wherever Ctrl-C is."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """128 + the signal's number: what a shell reports for a process it ended."""
        return 128 + self.signum


def ignore_stop_signals() -> None:
    """Ignore SIGTERM and SIGHUP from now on (main thread only): the process is ending,
    and what it still does (a refresh in flight, storing B) must not be cut short."""
    if threading.current_thread() is not threading.main_thread():
        return
    for name in SIGNALS:
        number = getattr(signal, name, None)
        if number is not None:
            signal.signal(number, signal.SIG_IGN)


def _stop(signum: int, frame: FrameType | None) -> None:
    # The first request unwinds the command; later ones are ignored while the refresh
    # in flight finishes (its own timeout bounds it), as a second SIGTERM from a
    # supervisor must not cut short what the first one let finish.
    ignore_stop_signals()
    raise Terminated(signum)


def stop_like_sigint() -> None:
    """Make SIGTERM and SIGHUP raise :class:`Terminated` in the main thread.

    Only from the main thread (Python runs handlers there); a signal the process was
    started with ignored (``nohup``) stays ignored.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for name in SIGNALS:
        number = getattr(signal, name, None)
        if number is None or signal.getsignal(number) is signal.SIG_IGN:
            continue
        signal.signal(number, _stop)
