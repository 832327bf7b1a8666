"""A TCP relay in front of PostgreSQL that can lose one reply: the statement runs and
commits on the server, its answer never reaches the client, and the connection is cut.

That is what a client sees when its network goes away between the server's commit and the
reply (or a proxy or load balancer drops the connection then): an error, though the write
landed. Nothing here fakes the database: the statement is the client's own, executed by the
real server, and the client's driver meets a really reset connection.

    cut = ReplyCut(("127.0.0.1", cluster.port))
    store = PostgresStore(cut.dsn(cluster.dsn))
    cut.arm()                  # the next statement on a data connection loses its reply
    ...
    assert cut.done.wait(60)   # it ran, committed, and its connection was cut

Bounded: loopback only, every connection closed by :meth:`close`.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from urllib.parse import urlsplit, urlunsplit

from harness.hosts import TcpRelay

READY_FOR_QUERY = b"Z" + struct.pack("!i", 5)
"""The start of PostgreSQL's ReadyForQuery message: the server sends it once the statement
has ended, committed in autocommit mode, so everything before it is the statement's reply."""


class ReplyCut(TcpRelay):
    """Relay 127.0.0.1:``port`` to ``target``; on command, swallow one reply and cut."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.done = threading.Event()
        """Set when an armed statement's reply was swallowed and its connection cut."""
        self._armed = False
        self._mutex = threading.Lock()
        self._sockets: set[socket.socket] = set()
        super().__init__(("127.0.0.1", 0), target)  # accepts from here on
        self.port: int = self._server.getsockname()[1]

    def dsn(self, dsn: str) -> str:
        """``dsn`` (a libpq URL) pointed at this relay."""
        parts = urlsplit(dsn)
        user = f"{parts.username}@" if parts.username else ""
        return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{self.port}"))

    def arm(self) -> None:
        """The next statement sent on a data connection (not a lock session) loses its reply.

        Statements are not matched by their text: the driver prepares a statement it runs
        often, and then sends only its name and parameters. A lock session is known by the
        server-side settings only the store's lock connections make, their first statement
        (``tcp_keepalives_idle`` among them, on every server version).
        """
        with self._mutex:
            self.done.clear()
            self._armed = True

    def _take(self) -> bool:
        with self._mutex:
            armed, self._armed = self._armed, False
            return armed

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        with self._mutex:
            self._sockets.update((client, upstream))
        doomed = threading.Event()
        threading.Thread(
            target=self._requests, args=(client, upstream, doomed), daemon=True
        ).start()
        threading.Thread(target=self._replies, args=(upstream, client, doomed), daemon=True).start()

    def _requests(
        self, client: socket.socket, upstream: socket.socket, doomed: threading.Event
    ) -> None:
        lock_session = False
        try:
            while chunk := client.recv(65536):
                lock_session = lock_session or b"tcp_keepalives_idle" in chunk
                # Only a statement (simple query, or the extended protocol's Parse or Bind),
                # never the startup packet of a connection opening meanwhile.
                statement = chunk[:1] in (b"Q", b"P", b"B")
                if statement and not lock_session and self._take():
                    doomed.set()  # before forwarding: its reply is the one to lose
                upstream.sendall(chunk)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                upstream.shutdown(socket.SHUT_WR)

    def _replies(
        self, upstream: socket.socket, client: socket.socket, doomed: threading.Event
    ) -> None:
        swallowed = b""
        try:
            while chunk := upstream.recv(65536):
                if not doomed.is_set():
                    client.sendall(chunk)
                    continue
                swallowed += chunk
                if READY_FOR_QUERY in swallowed:
                    # Committed and answered: the answer goes nowhere, the client is reset.
                    _reset(client)
                    upstream.close()
                    self.done.set()
                    return
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        super().close()
        with self._mutex:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the pump reading it
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> ReplyCut:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` with a reset (linger 0), as a dropped connection reaches a client."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # Wake the thread blocked reading it first: Linux frees (and resets) a socket only when
    # no call is in progress on it, so a bare close() would leave the client waiting forever.
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RD)
    with contextlib.suppress(OSError):
        sock.close()
