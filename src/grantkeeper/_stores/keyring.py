"""Credentials as secrets in the OS keyring (Secret Service, Keychain, Credential Manager).

The record's JSON is the secret. Keyrings cannot list their entries, so an index of keys
(no secrets) lives in ``GRANTKEEPER_HOME``.

A keyring entry belongs to the user account, not to one ``GRANTKEEPER_HOME``: two homes
(two tools, a test run, a container sharing the session) read and write the same entries.
So the locks (the transaction lock and the short write lock) are ``flock`` files in a
directory keyed by the service name under the user's runtime directory
(:func:`~grantkeeper._paths.user_runtime_dir`), which every process of the user resolves
alike whatever its ``GRANTKEEPER_HOME``. The runtime directory, rather than the state
directory, because it is local, private and per user like the keyring daemon's own
sockets, and emptied at logout, so lock files never pile up. Auto mode takes the file
store's lock and then this one, so it excludes both a file-store and a keyring-store peer.

Windows limits a secret to 2560 bytes, so a long record is split into parts written under
a fresh generation name; the head entry (version, and where the parts are) is replaced
last, so a reader sees the old record or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

from .._errors import StoreCorrupt, StoreError, StoreUnavailable
from .._paths import user_runtime_dir
from .._record import Credential, CredentialKey, record_from_json, record_to_json
from ._fs import PrivateDir, SideFile, key_slug, locked_file
from .base import (
    DEFAULT_LOCK_TIMEOUT,
    PROCESS_LOCK,
    ProcessLock,
    Stored,
    envelope,
    may_delete,
    next_version,
    open_envelope,
    written_past,
)
from .file import CAS_LOCK_TIMEOUT, FileStore
from .secret_service import SecretService

SERVICE = "grantkeeper"
"""The keyring service name every entry is filed under."""

HEAD_FORMAT = "grantkeeper-keyring"
"""Marks our head entries, so a foreign secret under our service is never misread."""

INDEX_FORMAT = "grantkeeper-keyring-index"

PART_CHARS = 1200
"""Longest secret we write, in characters. Windows stores UTF-16 (2 bytes a character) in at
most 2560 bytes; JSON with ``ensure_ascii`` keeps every character one UTF-16 unit."""

READ_ATTEMPTS = 5
"""Re-reads of a chunked record whose parts a concurrent writer replaced under us."""

WATCH_POLL = 0.02
"""How often a waiter reads a record's head for a write: one lookup on the keyring's open
connection (~1 ms), so a waiter costs the daemon little and adopts within this."""

_T = TypeVar("_T")


class KeyringBackend(Protocol):
    """The three calls we need from a ``keyring`` backend."""

    def get_password(self, service: str, username: str) -> str | None: ...

    def set_password(self, service: str, username: str, password: str) -> None: ...

    def delete_password(self, service: str, username: str) -> None: ...


def default_backend() -> KeyringBackend:
    """The keyring the ``keyring`` package resolves for this platform and configuration;
    its Secret Service backend is replaced by ours, which keeps one connection."""
    try:
        import keyring
    except ImportError:
        raise StoreUnavailable(
            "the OS keyring store needs the keyring package: pip install 'grantkeeper[keyring]'"
        ) from None
    backend: KeyringBackend = keyring.get_keyring()
    from keyring.backends import SecretService as keyring_secret_service

    if type(backend) is keyring_secret_service.Keyring:
        # The same entries over one connection per process: keyring's connection per call
        # crashes gnome-keyring (see grantkeeper._stores.secret_service).
        return SecretService(backend)
    return backend


def _unavailable(exc: Exception, action: str) -> StoreUnavailable:
    """Translate a keyring failure into an actionable error; keyring messages are not shown,
    because some backends echo what they were asked to store."""
    kind = type(exc).__name__
    if kind == "KeyringLocked":
        hint = "the OS keyring is locked: unlock it (log in to the desktop session) and retry"
    elif kind == "NoKeyringError":
        hint = "no OS keyring is available (on Linux, run a Secret Service such as gnome-keyring)"
    else:
        hint = "the OS keyring is locked or unavailable: unlock it, or check its service is running"
    return StoreUnavailable(f"cannot {action} the OS keyring ({kind}); {hint}, or use --store file")


class KeyringStore:
    """Credentials in the OS keyring; see the module docstring."""

    name = "keyring"
    plaintext_at_rest = False
    """The keyring encrypts its secrets: see :func:`~.base.plaintext_at_rest`."""

    def __init__(
        self,
        home: str | os.PathLike[str] | None = None,
        *,
        service: str = SERVICE,
        backend: KeyringBackend | None = None,
    ) -> None:
        # The index lives in the file store's directory, with its checks (0700, owner, no
        # symlinks); the locks live in the keyring's namespace (see the module docstring).
        files = FileStore(home)
        self.home = files.home
        self.service = service
        self._backend = backend
        tag = hashlib.sha256(service.encode()).hexdigest()[:12]
        self._index = SideFile(files.directory, f".keyring-{tag}.index", INDEX_FORMAT)
        self._lock_name = f"keyring-{tag}"
        self._locks: PrivateDir | None = None

    def __repr__(self) -> str:
        return f"KeyringStore(service={self.service!r}, home={str(self.home)!r})"

    # -- keyring calls ------------------------------------------------------------------

    def _call(self, action: str, call: Callable[[KeyringBackend], _T]) -> _T:
        try:
            if self._backend is None:
                self._backend = default_backend()
            return call(self._backend)
        except StoreError:
            raise
        except Exception as exc:  # keyring, D-Bus and platform errors alike
            raise _unavailable(exc, action) from None

    def _get(self, username: str) -> str | None:
        def get(backend: KeyringBackend) -> str | None:
            for _ in range(READ_ATTEMPTS - 1):
                try:
                    return backend.get_password(self.service, username)
                except Exception as exc:
                    # Secret Service replaces an item by a new object: a read that found the
                    # old one just before a peer's write sees it vanish. Look it up again.
                    if type(exc).__name__ != "ItemNotFoundException":
                        raise
            return backend.get_password(self.service, username)

        return self._call("read from", get)

    def _set(self, username: str, secret: str) -> None:
        self._call("write to", lambda b: b.set_password(self.service, username, secret))

    def _delete(self, username: str) -> None:
        def delete(backend: KeyringBackend) -> None:
            try:
                backend.delete_password(self.service, username)
            except Exception as exc:
                # Deleting what is already gone is success; anything else is not.
                if type(exc).__name__ != "PasswordDeleteError":
                    raise

        self._call("delete from", delete)

    def available(self) -> bool:
        """Whether the keyring answers a read right now (used by Auto mode and doctor)."""
        try:
            self._get("grantkeeper-probe")
        except StoreUnavailable:
            return False
        return True

    def backend_name(self) -> str:
        """The keyring backend as a person knows it (``SecretService Keyring``), for
        ``doctor``: keyring's own ``name``, else the class name, never a module path."""
        try:
            backend = self._backend or default_backend()
        except StoreUnavailable:
            return "none"
        name = getattr(backend, "name", None)
        return name if isinstance(name, str) and name else type(backend).__qualname__

    # -- entries ------------------------------------------------------------------------

    @staticmethod
    def _head_name(key: CredentialKey) -> str:
        return str(key)

    @staticmethod
    def _part_name(key: CredentialKey, generation: str, n: int) -> str:
        return f"{key} (part {generation}.{n})"

    def _read_head(self, key: CredentialKey) -> dict[str, Any] | None:
        raw = self._get(self._head_name(key))
        if raw is None:
            return None
        try:
            head = json.loads(raw)
        except (ValueError, RecursionError):
            raise StoreCorrupt("keyring entry is not valid JSON", key=str(key)) from None
        open_envelope(head, HEAD_FORMAT, what="keyring entry", key=key)
        assert isinstance(head, dict)
        return head

    @staticmethod
    def _parts(head: dict[str, Any]) -> tuple[str, int] | None:
        parts = head.get("parts")
        if parts is None:
            return None
        generation, count = (
            (parts.get("generation"), parts.get("count"))
            if isinstance(parts, dict)
            else (None, None)
        )
        if not isinstance(generation, str) or not isinstance(count, int) or count < 1:
            raise StoreCorrupt("keyring entry has a malformed parts list")
        return generation, count

    def _load(self, key: CredentialKey) -> tuple[dict[str, Any], Stored] | None:
        for _ in range(READ_ATTEMPTS):
            head = self._read_head(key)
            if head is None:
                return None
            parts = self._parts(head)
            if parts is None:
                data = head.get("record")
            else:
                pieces = [self._get(self._part_name(key, parts[0], n)) for n in range(parts[1])]
                if any(piece is None for piece in pieces):
                    continue  # a writer replaced the parts after we read the head
                try:
                    data = json.loads("".join(p for p in pieces if p is not None))
                except (ValueError, RecursionError):
                    raise StoreCorrupt(
                        "keyring parts do not form valid JSON", key=str(key)
                    ) from None
            return head, Stored(record_from_json(data, key=str(key)), head["version"])
        raise StoreCorrupt("keyring record parts keep vanishing mid-read", key=str(key))

    def read(self, key: CredentialKey) -> Stored | None:
        """Return the stored record for ``key`` with its version, or ``None``."""
        loaded = self._load(key)
        return loaded[1] if loaded else None

    # -- watching -----------------------------------------------------------------------

    def wait_for_change(self, key: CredentialKey, version: int | None, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for ``key``'s record to be written past
        ``version`` (see :class:`~.base.Watchable`): the entry's head, which carries the
        version, is read every :data:`WATCH_POLL` seconds (a keyring offers no way to be
        told of a change)."""
        deadline = time.monotonic() + timeout
        while True:
            head = self._read_head(key)
            if head is not None and (version is None or int(head["version"]) > version):
                if written_past(self.read(key), version):
                    return True
                version = int(head["version"])  # a note of a refresh in flight: wait on
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(WATCH_POLL, left))

    # -- writing ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _cas(self, key: CredentialKey) -> Iterator[None]:
        """Hold ``key``'s short write lock for a compare-and-swap."""
        with self._locked(f"{key_slug(key)}.cas", CAS_LOCK_TIMEOUT, f"write {key}"):
            yield

    def write(self, key: CredentialKey, record: Credential, *, expected_version: int | None) -> int:
        """Replace ``key``'s record if it is at ``expected_version`` (``None``: absent)."""
        with self._cas(key):
            try:
                current = self._read_head(key)
            except StoreCorrupt:
                if expected_version is not None:
                    raise
                current = None  # a new login may replace a corrupt entry
            version = next_version(key, current["version"] if current else None, expected_version)
            # Index first: a secret the index misses could never be listed or migrated.
            self._update_index(add=key)
            head = envelope(HEAD_FORMAT, key, version)
            body = json.dumps(record_to_json(record), ensure_ascii=True, separators=(",", ":"))
            inline = json.dumps({**head, "record": json.loads(body)}, ensure_ascii=True)
            if len(inline) <= PART_CHARS:
                self._set(self._head_name(key), inline)
            else:
                generation = secrets.token_hex(8)
                pieces = [body[i : i + PART_CHARS] for i in range(0, len(body), PART_CHARS)]
                for n, piece in enumerate(pieces):
                    self._set(self._part_name(key, generation, n), piece)
                head["parts"] = {"generation": generation, "count": len(pieces)}
                self._set(self._head_name(key), json.dumps(head, ensure_ascii=True))
            self._drop_parts(key, current)
            return version

    def _drop_parts(self, key: CredentialKey, head: dict[str, Any] | None) -> None:
        try:
            parts = self._parts(head) if head else None
        except StoreCorrupt:
            return
        if parts:
            for n in range(parts[1]):
                self._delete(self._part_name(key, parts[0], n))

    def delete(self, key: CredentialKey, *, expected_version: int | None = None) -> bool:
        """Remove ``key``'s record (only at ``expected_version``, if given)."""
        with self._cas(key):
            try:
                current = self._read_head(key)
            except StoreCorrupt:
                if expected_version is not None:
                    raise
                current = {}  # exists but unreadable: a logout still removes it
            if current is None:
                self._update_index(remove=key)
                return False
            if current:  # readable (an unreadable one, {}, has no version to compare)
                may_delete(key, current["version"], expected_version)
            self._delete(self._head_name(key))
            self._drop_parts(key, current)
            self._update_index(remove=key)
            return True

    # -- the index ----------------------------------------------------------------------

    def _indexed(self) -> list[CredentialKey]:
        entries = self._index.load().get("keys", [])
        try:
            return [CredentialKey(e["server_url"], e["profile"]) for e in entries]
        except (KeyError, TypeError):
            raise StoreCorrupt(f"{self._index.path} is malformed; delete it") from None

    def _update_index(
        self, *, add: CredentialKey | None = None, remove: CredentialKey | None = None
    ) -> None:
        def change(document: dict[str, Any]) -> dict[str, Any] | None:
            keys = {CredentialKey(e["server_url"], e["profile"]) for e in document.get("keys", [])}
            after = (keys | ({add} if add else set())) - ({remove} if remove else set())
            if after == keys:
                return None
            entries = [{"server_url": k.server_url, "profile": k.profile} for k in sorted(after)]
            return {"service": self.service, "keys": entries}

        self._index.update(change)

    def indexed(self, key: CredentialKey) -> bool:
        """Whether this home's index lists ``key``: answered without the keyring, so it tells
        whether an unreachable keyring may hold a copy written from this home."""
        return key in self._indexed()

    def keys(self) -> list[CredentialKey]:
        """Every indexed key whose record is in the keyring, sorted."""
        return sorted(k for k in self._indexed() if self._get(self._head_name(k)) is not None)

    # -- locking ------------------------------------------------------------------------

    @property
    def lock_directory(self) -> Path:
        """Where this service's locks live, shared by every home of this user account."""
        return self._lock_dir().path

    def _lock_dir(self) -> PrivateDir:
        # Resolved on first use: opening a store touches nothing.
        if self._locks is None:
            self._locks = PrivateDir(user_runtime_dir() / self._lock_name)
        return self._locks

    @contextlib.contextmanager
    def _locked(self, name: str, timeout: float, what: str) -> Iterator[None]:
        with self._lock_dir().open(create=True) as dirh:
            assert dirh is not None
            with locked_file(dirh, name, timeout=timeout, what=what):
                yield

    @contextlib.contextmanager
    def lock(
        self, key: CredentialKey, *, timeout: float = DEFAULT_LOCK_TIMEOUT
    ) -> Iterator[ProcessLock]:
        """Hold ``key``'s transaction lock, in the keyring's namespace for this user: an
        ``flock``, which cannot be lost while this process holds it."""
        with self._locked(f"{key_slug(key)}.lock", timeout, f"the lock of {key}"):
            yield PROCESS_LOCK
