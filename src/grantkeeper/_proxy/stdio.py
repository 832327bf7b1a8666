"""The host's side of the proxy: newline-delimited JSON-RPC on stdin and stdout.

stdout belongs to the protocol alone. The descriptor the host reads is duplicated for the
proxy's own use and descriptor 1 is pointed at stderr, so nothing else can write there:
not a stray ``print``, not a library, not the browser ``webbrowser`` starts (browsers print
"Opening in existing browser session." to the stdout they inherit).
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading


class ProtocolOut:
    """Writes one JSON-RPC message per line to the host, on a descriptor no child inherits."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self.closed = False

    @classmethod
    def claim_stdout(cls) -> ProtocolOut:
        """Take descriptor 1 for the protocol and send everything else written there to stderr."""
        sys.stdout.flush()
        fd = os.dup(1)  # not inheritable (PEP 446): children never get the protocol stream
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        return cls(fd)

    def write(self, line: bytes) -> None:
        """Write ``line`` and a newline; a host that went away marks the stream closed."""
        if self.closed:
            return
        data = memoryview(line + b"\n")
        try:
            while data:
                written = os.write(self._fd, data)
                data = data[written:]
        except (BrokenPipeError, OSError):
            self.closed = True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self._fd)


READ_SIZE = 65536


def read_lines(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[bytes | None]) -> None:
    """Feed stdin's lines to ``queue`` from a daemon thread; ``None`` marks the end.

    A thread, not the event loop's pipe support: stdin may be a pipe, a socket, a file or
    a terminal, and a blocking read on a thread handles them all the same. It reads the
    descriptor itself, never ``sys.stdin``: a daemon thread blocked inside the buffered
    reader holds its lock, and an interpreter exiting on a signal while stdin is still
    open aborts ("could not acquire lock for <_io.BufferedReader name='<stdin>'>").
    """
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):  # no stdin at all (pythonw), or closed
        fd = -1

    def run() -> None:
        buffer = bytearray()
        try:
            while fd >= 0:
                chunk = os.read(fd, READ_SIZE)
                if not chunk:
                    break
                searched = len(buffer)  # a long line is searched once, not per chunk
                buffer += chunk
                while (end := buffer.find(b"\n", searched)) >= 0:
                    line = bytes(buffer[: end + 1])
                    del buffer[: end + 1]
                    searched = 0
                    if line.strip():
                        loop.call_soon_threadsafe(queue.put_nowait, line)
            if buffer.strip():  # a last line without its newline
                loop.call_soon_threadsafe(queue.put_nowait, bytes(buffer))
        except (OSError, RuntimeError):
            pass  # stdin failed, or the loop closed: the proxy is ending either way
        finally:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, None)
            except RuntimeError:
                pass  # the loop is already closed: the proxy is exiting anyway

    threading.Thread(target=run, name="grantkeeper proxy stdin", daemon=True).start()
