"""Credentials in PostgreSQL, shared by workers on many hosts.

One row per credential holds the record, a version counter for compare-and-swap, the
fence of the last lock holder that wrote it, and timestamps. The transaction lock is a
session advisory lock on a connection of its own, held across the provider call: the
server drops it when that connection closes, so a worker that dies (or whose host
vanishes, via TCP keepalives) never leaves it behind. After a clean unlock the
connection is kept for the next transaction.

A session can also end under a holder that runs on (a cut connection, a failover,
``pg_terminate_backend``, an idle timeout), and the holder learns of it only at its next
statement on that session. So every acquisition bumps a per-key fencing counter in the
``fences`` table; every write made while this store holds the key's lock carries that
fence, and the row refuses, in the same single UPDATE, a fence older than the one it was
last written with. Before a refresh token is spent, :meth:`_AdvisoryLock.ensure_held`
asks ``pg_locks`` on the lock's own session whether the lock is still there.

Every connection has TCP keepalives and ``tcp_user_timeout`` (:data:`TCP_USER_TIMEOUT_MS`):
a vanished peer is noticed within ~25 s whether the connection is idle or waiting for an
answer. Without the latter, a statement sent into a cut network waits for the kernel's
retransmissions, about 15 minutes, holding the store's mutex (and a refreshed credential's
write) all along. Lock connections also set ``idle_session_timeout`` of
:data:`LOCK_IDLE_SESSION_TIMEOUT_MS` rather than inherit the server's (longer than any
transaction, so a server-wide shorter one cannot cut a holder mid-call; a holder frozen
longer than that loses the lock, and its fence keeps it from writing).

A pooler in transaction mode (PgBouncer ``pool_mode = transaction``) cannot keep a
session lock at all: the first lock of each store probes for that and refuses with
:class:`SessionLocksUnsupported`. The store creates and migrates its schema itself,
serialized by an advisory lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from .._errors import (
    LockLost,
    LockTimeout,
    SessionLocksUnsupported,
    StoreConfigError,
    StoreCorrupt,
    StoreUnavailable,
    VersionConflict,
)
from .._record import Credential, CredentialKey, record_from_json, record_to_json
from .base import DEFAULT_LOCK_TIMEOUT, Stored, conflict, written_past
from .sealing import KEY_ENV, Sealer

if TYPE_CHECKING:
    import psycopg

DEFAULT_SCHEMA = "grantkeeper"

SCHEMA_VERSION = 2
"""Version of the tables this code reads and writes; a newer database is refused. A fleet
upgrades together: version 1 workers do not fence, so they are refused by version 2."""

CONNECT_TIMEOUT = 5
"""Seconds to reach the server: a worker should fail fast and serve from memory."""

KEEPALIVE: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}
"""TCP keepalives, so the server notices a lock holder whose host died within ~25 s."""

TCP_USER_TIMEOUT_MS = 25_000
"""Every connection gives up on data the server has not acknowledged after this long (libpq
``tcp_user_timeout``): a statement on a cut network fails within it instead of retrying for
~15 minutes, and a lock holder whose network vanished learns it as fast as the server does
(keepalives: 10 + 3 x 5 s). Longer than any retransmission a working network needs."""

LOCK_IDLE_SESSION_TIMEOUT_MS = 300_000
"""``idle_session_timeout`` of lock connections. A holder is idle on its lock session for
one provider call (30 s) and two writes; five minutes never cuts a healthy one, whatever the
server's default, and ends the session (releasing the lock) of one frozen that long."""

NOTIFY_CHANNEL = "grantkeeper"
"""The channel every write NOTIFYs on; the payload names the schema and the key's digest."""

HEARD_KEYS = 10_000
"""Keys whose newest heard version a store remembers at most; past that it starts over."""

IDLE_LOCK_CONNECTIONS = 4
"""Lock connections kept open after their lock is released, for the next transaction."""

STATEMENT_MARGIN_MS = 5000
"""Slack beyond a lock wait before the server cancels the statement that waits."""

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

_MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            """CREATE TABLE {schema}.credentials (
                key_id text PRIMARY KEY,
                server_url text NOT NULL,
                profile text,
                version bigint NOT NULL CHECK (version >= 1),
                record bytea NOT NULL,
                sealed_with text,
                created_at timestamptz NOT NULL DEFAULT now(),
                updated_at timestamptz NOT NULL DEFAULT now()
            )""",
        ],
    ),
    (
        2,
        [
            "ALTER TABLE {schema}.credentials ADD COLUMN fence bigint NOT NULL DEFAULT 0",
            """CREATE TABLE {schema}.fences (
                key_id text PRIMARY KEY,
                fence bigint NOT NULL
            )""",
        ],
    ),
]
"""Schema steps in order; each runs once, in one transaction with its version bump."""


def _key_id(key: CredentialKey) -> str:
    return json.dumps([key.server_url, key.profile], ensure_ascii=False)


def network_options(dsn: str) -> dict[str, Any]:
    """Keepalives and ``tcp_user_timeout`` for every connection, except those ``dsn`` sets
    itself: a deployment that knows its network better keeps its own values."""
    from psycopg.conninfo import conninfo_to_dict

    given = conninfo_to_dict(dsn)  # describe_dsn has already refused a malformed one
    ours = {**KEEPALIVE, "tcp_user_timeout": TCP_USER_TIMEOUT_MS}
    return {name: value for name, value in ours.items() if name not in given}


def describe_dsn(dsn: str) -> str:
    """``user@host:port/dbname`` for messages: the password never appears."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        parts = conninfo_to_dict(dsn)
    except Exception:
        raise StoreConfigError("the PostgreSQL connection string is malformed") from None
    user = parts.get("user") or ""
    host = parts.get("host") or "localhost"
    port = parts.get("port") or 5432
    return f"{user}{'@' if user else ''}{host}:{port}/{parts.get('dbname') or user}"


_stores: weakref.WeakSet[PostgresStore] = weakref.WeakSet()
"""Every store of this process, for :func:`_forget_after_fork`."""

_inherited: list[Any] = []
"""Connections a forked child inherited: kept, never used, closed or collected there."""


def _forget_after_fork() -> None:
    """In a child just forked: drop the parent's sessions without a word on their sockets.

    A session's socket is shared with the parent after a fork. The child talking on it
    would interleave with the parent's queries, and closing it (or collecting it) would
    send the server a Terminate that ends the parent's session, and with it any advisory
    lock the parent holds there. So each inherited socket is pointed at ``/dev/null``
    (whatever libpq may still write goes nowhere), the connection objects are kept for
    the child's life, and the child's stores open sessions of their own when first used.
    """
    for store in list(_stores):
        store._forked()


if hasattr(os, "register_at_fork"):  # not on Windows, which cannot fork
    os.register_at_fork(after_in_child=_forget_after_fork)


class PostgresStore:
    """Credentials in a PostgreSQL table; see the module docstring."""

    name = "postgresql"

    def __init__(
        self, dsn: str, *, schema: str = DEFAULT_SCHEMA, sealer: Sealer | None = None
    ) -> None:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise StoreConfigError(
                "the PostgreSQL store needs psycopg: pip install 'grantkeeper[postgresql]'"
            ) from None
        if not _SCHEMA_NAME.match(schema):
            raise StoreConfigError(f"schema name {schema!r} is not a plain lower-case identifier")
        self._dsn = dsn
        self.where = describe_dsn(dsn)
        self._network = network_options(dsn)
        self.schema = schema
        self._sealer = sealer if sealer is not None else Sealer.from_environment()
        self._mutex = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._idle_lock_connections: list[psycopg.Connection[Any]] = []
        self._schema_ready = False
        self._session_locks_checked = False
        # The fence of each lock this store holds now, by key id: every write to that key
        # from this store (any thread: the lease renewer too) carries it.
        self._held_fences: dict[str, int] = {}
        # Lock connections in use by a ``lock()`` body now (forgotten by a forked child).
        self._busy_lock_connections: set[psycopg.Connection[Any]] = set()
        # Watching (wait_for_change): the LISTEN connection, whether a thread reads it now,
        # and the newest version heard of each key, by notice.
        self._watch = threading.Condition()
        self._listen_conn: psycopg.Connection[Any] | None = None
        self._hearing = False
        self._heard: dict[str, int] = {}
        # Keys read since the listener started: a write to any of them is heard from then.
        self._watched: set[str] = set()
        _stores.add(self)

    def _forked(self) -> None:
        """See :func:`_forget_after_fork`."""
        self._mutex = threading.Lock()
        connections = [
            self._conn,
            self._listen_conn,
            *self._idle_lock_connections,
            *self._busy_lock_connections,
        ]
        self._conn, self._idle_lock_connections = None, []
        self._busy_lock_connections = set()
        self._held_fences = {}
        self._watch = threading.Condition()
        self._listen_conn, self._hearing, self._heard, self._watched = None, False, {}, set()
        for conn in connections:
            if conn is None:
                continue
            with contextlib.suppress(Exception):
                fd = conn.fileno()
                null = os.open(os.devnull, os.O_RDWR)
                try:
                    os.dup2(null, fd, inheritable=False)
                finally:
                    os.close(null)
            _inherited.append(conn)

    def __repr__(self) -> str:
        return f"PostgresStore({self.where!r}, schema={self.schema!r})"

    @property
    def encrypted(self) -> bool:
        """Whether records written by this store are sealed."""
        return self._sealer is not None

    @property
    def plaintext_at_rest(self) -> bool:
        """Whether records are written unsealed (no ``GRANTKEEPER_STORE_KEY``): see
        :func:`~.base.plaintext_at_rest`."""
        return self._sealer is None

    # -- connections --------------------------------------------------------------------

    def _unreachable(self, exc: Exception) -> StoreUnavailable:
        # libpq's first line names host, port and cause; the password is scrubbed anyway.
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        from psycopg.conninfo import conninfo_to_dict

        with contextlib.suppress(Exception):
            password = conninfo_to_dict(self._dsn).get("password")
            if password:
                reason = reason.replace(str(password), "***")
        return StoreUnavailable(f"PostgreSQL at {self.where} failed: {reason}")

    def _open(self, *, for_lock: bool = False) -> psycopg.Connection[Any]:
        import psycopg

        try:
            conn = psycopg.connect(
                self._dsn,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT,
                application_name="grantkeeper",
                **self._network,
            )
            if for_lock:
                self._lock_session_policy(conn)
            return conn
        except psycopg.Error as exc:
            raise self._unreachable(exc) from None

    @staticmethod
    def _lock_session_policy(conn: psycopg.Connection[Any]) -> None:
        """The server's side of a lock session: it must notice a holder whose host vanished
        as fast as the holder notices (keepalives and ``tcp_user_timeout`` are per side),
        and end the session, freeing the lock, instead of waiting for the OS's two hours.
        Each setting is one any user may make; none applies over a Unix socket."""
        version = conn.info.server_version
        settings = {
            "tcp_keepalives_idle": KEEPALIVE["keepalives_idle"],
            "tcp_keepalives_interval": KEEPALIVE["keepalives_interval"],
            "tcp_keepalives_count": KEEPALIVE["keepalives_count"],
        }
        if version >= 120000:
            settings["tcp_user_timeout"] = TCP_USER_TIMEOUT_MS
        if version >= 140000:
            settings["idle_session_timeout"] = LOCK_IDLE_SESSION_TIMEOUT_MS
        calls = ", ".join("set_config(%s, %s, false)" for _ in settings)
        params = [part for name, value in settings.items() for part in (name, str(value))]
        conn.execute(f"SELECT {calls}", params)

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        from psycopg import sql

        schema = sql.Identifier(self.schema)
        lock_id = _lock_id(f"migrate\0{self.schema}")
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_id,))
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
            conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {}.schema_version (version int NOT NULL)"
                ).format(schema)
            )
            row = conn.execute(
                sql.SQL("SELECT max(version) FROM {}.schema_version").format(schema)
            ).fetchone()
            current = (row[0] if row else None) or 0
            if current > SCHEMA_VERSION:
                raise StoreConfigError(
                    f"schema {self.schema} is at version {current}, written by a newer "
                    f"grantkeeper (this one knows up to {SCHEMA_VERSION}); upgrade grantkeeper"
                )
            for version, steps in _MIGRATIONS:
                if version <= current:
                    continue
                for step in steps:
                    conn.execute(sql.SQL(step).format(schema=schema))
                conn.execute(
                    sql.SQL("INSERT INTO {}.schema_version VALUES (%s)").format(schema), (version,)
                )

    def _query(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement on the shared connection (reconnecting if it was lost)."""
        import psycopg
        from psycopg import sql

        query = sql.SQL(statement).format(table=sql.Identifier(self.schema, "credentials"))
        with self._mutex:
            if self._conn is None or self._conn.closed:
                conn = self._open()
                try:
                    self._migrate(conn)
                except psycopg.Error as exc:
                    conn.close()
                    raise self._unreachable(exc) from None
                except BaseException:
                    conn.close()
                    raise
                self._conn = conn
                self._schema_ready = True
            try:
                cursor = self._conn.execute(query, params)
                return cursor.fetchall() if cursor.description else []
            except psycopg.Error as exc:
                if self._conn.broken:
                    self._conn = None
                raise self._unreachable(exc) from None

    def close(self) -> None:
        """Close the shared and kept lock connections (later calls open new ones)."""
        with self._mutex:
            connections = [self._conn, *self._idle_lock_connections]
            self._conn, self._idle_lock_connections = None, []
        with self._watch:
            # One a waiting thread reads now is closed by that thread when it returns.
            connections.append(None if self._hearing else self._listen_conn)
            self._listen_conn = None
        for conn in connections:
            if conn is not None:
                conn.close()

    def __del__(self) -> None:
        # A store usually lives as long as its process; closing here spares callers a
        # ResourceWarning when they drop it without close().
        connections = [
            getattr(self, "_conn", None),
            getattr(self, "_listen_conn", None),
            *getattr(self, "_idle_lock_connections", []),
        ]
        for conn in connections:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()

    # -- records ------------------------------------------------------------------------

    def _encode(self, key: CredentialKey, record: Credential) -> tuple[bytes, str | None]:
        plain = json.dumps(record_to_json(record), ensure_ascii=False).encode("utf-8")
        if self._sealer is None:
            return plain, None
        return self._sealer.seal(plain, bound_to=_key_id(key)), self._sealer.fingerprint

    def _decode(self, key: CredentialKey, raw: bytes, sealed_with: str | None) -> Credential:
        if sealed_with is not None:
            if self._sealer is None:
                raise StoreConfigError(
                    f"the record is encrypted; set {KEY_ENV} to the key it was written with",
                    key=str(key),
                )
            if sealed_with != self._sealer.fingerprint:
                raise StoreConfigError(
                    f"the record was encrypted with another key (fingerprint {sealed_with}); "
                    f"set {KEY_ENV} to that key",
                    key=str(key),
                )
            raw = self._sealer.open(raw, bound_to=_key_id(key))
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            raise StoreCorrupt("stored record is not valid JSON", key=str(key)) from None
        return record_from_json(data, key=str(key))

    def read(self, key: CredentialKey) -> Stored | None:
        """Return the stored record for ``key`` with its version, or ``None``."""
        rows = self._query(
            "SELECT version, record, sealed_with FROM {table} WHERE key_id = %s", (_key_id(key),)
        )
        if not rows:
            return None
        version, raw, sealed_with = rows[0]
        return Stored(self._decode(key, bytes(raw), sealed_with), int(version))

    def _version(self, key: CredentialKey) -> int | None:
        rows = self._query("SELECT version FROM {table} WHERE key_id = %s", (_key_id(key),))
        return int(rows[0][0]) if rows else None

    def write(self, key: CredentialKey, record: Credential, *, expected_version: int | None) -> int:
        """Replace ``key``'s record if it is at ``expected_version`` (``None``: absent).

        While this store holds ``key``'s lock the write carries its fence, and the row
        refuses it (:class:`LockLost`) if a later holder has written since.
        """
        raw, sealed_with = self._encode(key, record)
        key_id = _key_id(key)
        fence = self._held_fences.get(key_id)
        # Each write a waiter may adopt tells the waiters of its key in the same statement
        # (NOTIFY is sent when it commits, and only if it wrote): see wait_for_change. A
        # note of a refresh in flight wakes nobody: none could adopt it.
        heard = (record.intent is None, NOTIFY_CHANNEL, self._notice(key))
        if expected_version is None:
            rows = self._query(
                "WITH w AS (INSERT INTO {table} (key_id, server_url, profile, version, record,"
                " sealed_with, fence) VALUES (%s, %s, %s, 1, %s, %s, %s)"
                " ON CONFLICT (key_id) DO NOTHING RETURNING version)"
                " SELECT version, CASE WHEN %s THEN pg_notify(%s, %s || version::text) END FROM w",
                (key_id, key.server_url, key.profile, raw, sealed_with, fence or 0, *heard),
            )
        else:
            # The rule of base.next_version, in one statement: a holder that lost its lock
            # cannot slip in between a check and the write. Without a fence (no lock held)
            # only the version is compared.
            rows = self._query(
                "WITH w AS (UPDATE {table} SET version = version + 1, record = %s,"
                " sealed_with = %s, fence = COALESCE(%s, fence), updated_at = now()"
                " WHERE key_id = %s AND version = %s AND fence <= COALESCE(%s, fence)"
                " RETURNING version)"
                " SELECT version, CASE WHEN %s THEN pg_notify(%s, %s || version::text) END FROM w",
                (raw, sealed_with, fence, key_id, expected_version, fence, *heard),
            )
        if not rows:
            raise self._refused(key, expected_version, fence)
        return int(rows[0][0])

    def _refused(
        self, key: CredentialKey, expected_version: int | None, fence: int | None
    ) -> LockLost | VersionConflict:
        """Why a conditional statement matched no row (read after the fact, for the message:
        the refusal itself was decided atomically)."""
        rows = self._query("SELECT version, fence FROM {table} WHERE key_id = %s", (_key_id(key),))
        version, newest = (int(rows[0][0]), int(rows[0][1])) if rows else (None, None)
        if fence is not None and newest is not None and newest > fence:
            return LockLost(
                f"a later holder of the lock (fence {newest}) has written the record since "
                f"this one took it (fence {fence}): its session ended while held; "
                "not overwriting the newer record",
                key=str(key),
            )
        return conflict(key, version, expected_version)

    def delete(self, key: CredentialKey, *, expected_version: int | None = None) -> bool:
        """Remove ``key``'s record (only at ``expected_version``, if given)."""
        fence = self._held_fences.get(_key_id(key))
        rows = self._query(
            "WITH d AS (DELETE FROM {table} WHERE key_id = %s AND version = COALESCE(%s, version)"
            " AND fence <= COALESCE(%s, fence) RETURNING 1)"
            " SELECT 1, pg_notify(%s, %s || '0') FROM d",
            (_key_id(key), expected_version, fence, NOTIFY_CHANNEL, self._notice(key)),
        )
        if rows:
            return True
        if self._version(key) is None:
            return False
        raise self._refused(key, expected_version, fence)

    def keys(self) -> list[CredentialKey]:
        """Every key with a record, sorted."""
        rows = self._query("SELECT server_url, profile FROM {table}")
        return sorted(CredentialKey(url, profile) for url, profile in rows)

    # -- watching -----------------------------------------------------------------------

    def _notice(self, key: CredentialKey) -> str:
        """The start of a write's NOTIFY payload for ``key`` (the version follows): this
        schema and a digest of the key, short whatever the URL's length (a payload is
        limited to 8000 bytes), and telling no one who listens which server it is."""
        digest = hashlib.sha256(_key_id(key).encode("utf-8")).hexdigest()[:32]
        return f"{self.schema} {digest} "

    def wait_for_change(self, key: CredentialKey, version: int | None, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for ``key``'s record to be written past
        ``version`` (see :class:`~.base.Watchable`).

        Every write sends a NOTIFY when it commits (:meth:`write`); one connection per
        store LISTENs (a session of its own, as a session-pooling PgBouncer keeps it), and
        one waiting thread at a time reads it for all, recording the newest version heard
        of each key. A waiter returns as soon as a version past its own is heard, with no
        statement run on its behalf. Writes made before the listener started (or while it
        was reconnecting) were not heard: the record is read once then instead.
        """
        import psycopg

        notice = self._notice(key)
        deadline = time.monotonic() + timeout
        with self._watch:
            listening = self._listen_conn is not None and not self._listen_conn.closed
        if not listening:
            # Connected outside the condition: other waiters of the store hear on meanwhile.
            opened: psycopg.Connection[Any] | None = self._open_listener()
            with self._watch:
                if self._listen_conn is None or self._listen_conn.closed:
                    self._listen_conn, opened = opened, None
                    self._watched = set()
            if opened is not None:  # another waiter's listener came first
                opened.close()
        with self._watch:
            first = notice not in self._watched
        if first:
            # Listening now: every later write is heard. One before it is read instead.
            stored = self.read(key)
            with self._watch:
                self._watched.add(notice)
                if written_past(stored, self._heard.get(notice, 0)):
                    assert stored is not None
                    self._heard[notice] = stored.version
        with self._watch:
            while True:
                if self._heard.get(notice, 0) > (version or 0):
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                conn = self._listen_conn
                if conn is None:
                    return False  # the listener was lost: the caller tries the lock
                if self._hearing:
                    # Another thread reads the connection and wakes us with what it hears.
                    self._watch.wait(left)
                    continue
                self._hearing = True
                self._watch.release()
                heard: list[str] = []
                broken = False
                try:
                    heard.extend(n.payload for n in conn.notifies(timeout=left, stop_after=1))
                except psycopg.Error:
                    broken = True
                finally:
                    self._watch.acquire()
                    self._hearing = False
                for payload in heard:
                    self._hear(payload)
                if broken or self._listen_conn is not conn:
                    # Broken, or dropped meanwhile by close() (which leaves a connection in
                    # use to its reader): closed here, by the only thread that used it.
                    if self._listen_conn is conn:  # not one opened since by another waiter
                        self._listen_conn = None
                        self._watched = set()
                    with contextlib.suppress(Exception):
                        conn.close()
                self._watch.notify_all()
                if broken:
                    return False

    def _open_listener(self) -> psycopg.Connection[Any]:
        import psycopg

        conn = self._open()
        try:
            conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        except psycopg.Error as exc:
            conn.close()
            raise self._unreachable(exc) from None
        return conn

    def _hear(self, payload: str) -> None:
        """Record one write's NOTIFY (``schema digest version``, version 0 for a delete), if
        it is this schema's."""
        head, _, version = payload.rpartition(" ")
        notice = head + " "  # as _notice() spells it
        if not notice.startswith(self.schema + " ") or not version.isdigit():
            return
        if len(self._heard) >= HEARD_KEYS and notice not in self._heard:
            # Start over: a key dropped is read again at its next wait.
            self._heard.clear()
            self._watched = set()
        number = int(version)
        if number == 0 or number > self._heard.get(notice, 0):
            self._heard[notice] = number  # 0: deleted, and versions start over

    # -- locking ------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(
        self, key: CredentialKey, *, timeout: float = DEFAULT_LOCK_TIMEOUT
    ) -> Iterator[_AdvisoryLock]:
        """Hold ``key``'s advisory lock on a connection of its own for the ``with`` body.

        Yields the acquisition's :class:`_AdvisoryLock`: its fence, and the check that the
        session still holds the lock.
        """
        import psycopg

        key_id = _key_id(key)
        lock_id = _lock_id(f"credential\0{self.schema}\0{key_id}")
        what = f"the lock of {key}"
        if not self._schema_ready:
            self._query("SELECT 1")  # the fences table must exist before the first lock
        if not self._session_locks_checked:
            self.check_session_locks()
        conn = self._lock_connection()
        # In use from now on: a child forked meanwhile must forget it (see _forked).
        self._busy_lock_connections.add(conn)
        released = False
        try:
            try:
                try:
                    self._take_lock(conn, lock_id, timeout, what, key)
                except psycopg.OperationalError:
                    if not conn.broken:
                        raise
                    # A kept connection the server has since dropped: nothing was locked on
                    # it, so a new one may try again.
                    self._busy_lock_connections.discard(conn)
                    with contextlib.suppress(Exception):
                        conn.close()
                    conn = self._open(for_lock=True)
                    self._busy_lock_connections.add(conn)
                    self._take_lock(conn, lock_id, timeout, what, key)
                fence = self._next_fence(conn, key_id)
            except psycopg.errors.LockNotAvailable:
                raise LockTimeout(
                    f"{what} was not released within {timeout:g} s; another worker holds it",
                    key=str(key),
                ) from None
            except LockTimeout:
                # A busy try (timeout 0): pg_try_advisory_lock said no, so nothing was taken
                # and the connection is kept for the next try (a waiter tries every
                # WATCH_SLICE, and connecting costs more than the try).
                released = not conn.broken
                raise
            except psycopg.Error as exc:
                raise self._unreachable(exc) from None
            self._held_fences[key_id] = fence
            try:
                yield _AdvisoryLock(conn, lock_id, fence, str(key))
            finally:
                self._held_fences.pop(key_id, None)
            with contextlib.suppress(Exception):
                row = conn.execute("SELECT pg_advisory_unlock(%s)", (lock_id,)).fetchone()
                released = bool(row and row[0])
        finally:
            self._busy_lock_connections.discard(conn)
            if released:
                self._keep_lock_connection(conn)
            else:
                # Ending the session releases the lock, whatever state the connection is in.
                with contextlib.suppress(Exception):
                    conn.close()

    def _next_fence(self, conn: psycopg.Connection[Any], key_id: str) -> int:
        """Bump and return ``key_id``'s fencing counter (on the lock's session, lock held)."""
        from psycopg import sql

        row = conn.execute(
            sql.SQL(
                "INSERT INTO {} AS f (key_id, fence) VALUES (%s, 1) ON CONFLICT (key_id)"
                " DO UPDATE SET fence = f.fence + 1 RETURNING fence"
            ).format(sql.Identifier(self.schema, "fences")),
            (key_id,),
        ).fetchone()
        assert row is not None
        return int(row[0])

    def check_session_locks(self) -> None:
        """Refuse a server on which a session advisory lock does not last between statements
        (raise :class:`SessionLocksUnsupported`); the first lock of each store runs it, and
        ``grantkeeper doctor`` reports it.

        A pooler in transaction mode hands each statement of a client connection to any
        server connection: the lock statement's server session keeps the lock, the next
        statement runs elsewhere, and another client may be handed that locked session.
        Both symptoms are probed on a random lock id no one else uses.
        """
        import psycopg

        probe = _lock_id(f"probe\0{secrets.token_hex(16)}")
        first = self._open(for_lock=True)
        second: psycopg.Connection[Any] | None = None
        clean = False
        try:
            first.execute("SELECT pg_advisory_lock(%s)", (probe,))
            second = self._open(for_lock=True)
            row = second.execute("SELECT pg_try_advisory_lock(%s)", (probe,)).fetchone()
            shared = bool(row and row[0])
            kept = _holds(first, probe)
            first.execute("SELECT pg_advisory_unlock_all()")
            second.execute("SELECT pg_advisory_unlock_all()")
            clean = kept and not shared
        except psycopg.Error as exc:
            raise self._unreachable(exc) from None
        finally:
            if second is not None:
                second.close()
            if clean:
                # A lock session with nothing locked, its policy set: the store's first lock
                # takes it, instead of connecting once more (a first lock already connected
                # twice here, and under a storm every connection is felt by the holder).
                self._keep_lock_connection(first)
            else:
                first.close()
        if shared or not kept:
            raise SessionLocksUnsupported(
                f"PostgreSQL at {self.where} does not keep a session advisory lock from one "
                "statement to the next, so no lock would hold: this is a connection pooler in "
                "transaction mode (PgBouncer pool_mode = transaction). Point the store at a "
                "pool in session mode (pool_mode = session) or at PostgreSQL directly"
            )
        self._session_locks_checked = True

    def _take_lock(
        self,
        conn: psycopg.Connection[Any],
        lock_id: int,
        timeout: float,
        what: str,
        key: CredentialKey,
    ) -> None:
        if timeout <= 0:
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (lock_id,)).fetchone()
            if not (row and row[0]):
                raise LockTimeout(f"{what} is held by another worker", key=str(key))
            return
        # The server queues waiters and hands the lock over the moment it is free.
        wait_ms = max(1, round(timeout * 1000))
        conn.execute(f"SET lock_timeout = {wait_ms}")
        conn.execute(f"SET statement_timeout = {wait_ms + STATEMENT_MARGIN_MS}")
        try:
            conn.execute("SELECT pg_advisory_lock(%s)", (lock_id,))
        finally:
            if not conn.broken:
                conn.execute("RESET lock_timeout")
                conn.execute("RESET statement_timeout")

    def _lock_connection(self) -> psycopg.Connection[Any]:
        """A kept lock connection, or a new one: connecting costs more than the transaction."""
        with self._mutex:
            while self._idle_lock_connections:
                conn = self._idle_lock_connections.pop()
                if not conn.closed:
                    return conn
        return self._open(for_lock=True)

    def _keep_lock_connection(self, conn: psycopg.Connection[Any]) -> None:
        with self._mutex:
            if len(self._idle_lock_connections) < IDLE_LOCK_CONNECTIONS and not conn.closed:
                self._idle_lock_connections.append(conn)
                return
        with contextlib.suppress(Exception):
            conn.close()


def _lock_id(name: str) -> int:
    """A signed 64-bit advisory lock id for ``name``; a collision only serializes more."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big", signed=True)


def _advisory_parts(lock_id: int) -> tuple[int, int]:
    """``pg_locks``' (classid, objid) for a bigint advisory lock id: its high and low halves."""
    unsigned = lock_id & 0xFFFF_FFFF_FFFF_FFFF
    return unsigned >> 32, unsigned & 0xFFFF_FFFF


def _holds(conn: psycopg.Connection[Any], lock_id: int) -> bool:
    """Whether the session behind ``conn`` holds advisory lock ``lock_id`` now."""
    classid, objid = _advisory_parts(lock_id)
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND pid = pg_backend_pid() AND classid::bigint = %s AND objid::bigint = %s"
        " AND objsubid = 1)",
        (classid, objid),
    ).fetchone()
    return bool(row and row[0])


class _AdvisoryLock:
    """A held advisory lock (see :class:`grantkeeper.HeldLock`)."""

    def __init__(self, conn: psycopg.Connection[Any], lock_id: int, fence: int, key: str) -> None:
        self._conn = conn
        self._lock_id = lock_id
        self._fence = fence
        self._key = key

    @property
    def fence(self) -> int:
        """This acquisition's fencing token."""
        return self._fence

    def ensure_held(self) -> None:
        """Ask ``pg_locks``, on the lock's own session, whether it still holds the lock."""
        import psycopg

        try:
            held = _holds(self._conn, self._lock_id)
        except psycopg.Error:
            held = False  # the session is gone, and its lock with it
        if not held:
            raise LockLost(
                "the credential's lock was lost: its database session ended while held "
                f"(fence {self._fence}); not spending the refresh token",
                key=self._key,
            )
