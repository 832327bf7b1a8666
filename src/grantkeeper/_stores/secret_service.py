"""The Secret Service over one D-Bus connection per process, for the keyring store.

``keyring``'s SecretService backend opens a new D-Bus connection and a new encrypted
session for every call and closes them right after: a grantkeeper write is a read and a
write, a long record a dozen calls, and a test run or a busy host thousands. gnome-keyring
(42.1 here; the same crash is reported against 50.0) aborts on that churn: a property read
from a connection the daemon has no client record for makes the getter return NULL without
an error, and GDBus kills the whole daemon (``gkd_secret_service_get_pkcs11_session:
assertion 'client' failed``, then ``invoke_get_property_in_idle_cb: assertion failed:
(error != NULL)``). D-Bus activation then starts a fresh daemon with the keyring locked or,
outside a desktop session, without the login keyring at all, so every keyring client of
the user fails, not just grantkeeper. One long-lived connection per process gives the
daemon one client to track, and spares the ~10 ms of connecting and key exchange a call.

Entries are those ``keyring`` writes (same attributes, label and collection, read from the
resolved ``keyring`` backend), so either reads what the other wrote.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

_T = TypeVar("_T")


class _Connection:
    """The process's connection and session; a forked child opens its own."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.owner: tuple[int, str | None] | None = None
        self.connection: Any = None
        self.session: Any = None


_shared = _Connection()


def _forget_after_fork() -> None:
    # The child must not talk over its parent's socket, nor wait on a lock some other
    # thread of the parent held at the fork.
    global _shared
    _shared = _Connection()


if hasattr(os, "register_at_fork"):  # not on Windows, which cannot fork
    os.register_at_fork(after_in_child=_forget_after_fork)


class SecretService:
    """``get_password``/``set_password``/``delete_password`` like ``keyring``'s
    SecretService backend (``resolved``), on the process's one connection."""

    name = "SecretService Keyring"
    """As keyring names its SecretService backend, for ``doctor``."""

    def __init__(self, resolved: Any) -> None:
        scheme = resolved.schemes[resolved.scheme]
        self._username_attribute: str = scheme["username"]
        self._service_attribute: str = scheme["service"]
        self._appid: str = resolved.appid
        self._collection_path: str | None = getattr(resolved, "preferred_collection", None)

    def _query(self, service: str, username: str) -> dict[str, str]:
        return {self._username_attribute: username, self._service_attribute: service}

    def _with_collection(self, call: Callable[[Any], _T]) -> _T:
        import secretstorage
        from keyring.errors import InitError, KeyringLocked, PasswordDeleteError

        shared = _shared
        with shared.lock:
            owner = (os.getpid(), os.environ.get("DBUS_SESSION_BUS_ADDRESS"))
            if shared.owner != owner:
                # A new session bus (a test's private one): this connection is of no use.
                if shared.connection is not None:
                    with contextlib.suppress(Exception):
                        shared.connection.close()
                shared.connection = secretstorage.dbus_init()
                shared.session = None
                shared.owner = owner
            try:
                try:
                    if shared.session is None:
                        shared.session = secretstorage.util.open_session(shared.connection)
                    path = self._collection_path or secretstorage.collection.DEFAULT_COLLECTION
                    try:
                        collection = secretstorage.Collection(
                            shared.connection, path, shared.session
                        )
                    except secretstorage.exceptions.ItemNotFoundException:
                        if self._collection_path:
                            raise
                        # No default collection yet: create it, as keyring does.
                        collection = secretstorage.get_default_collection(
                            shared.connection, shared.session
                        )
                except secretstorage.exceptions.SecretStorageException as exc:
                    raise InitError(f"Failed to create the collection: {exc}.") from exc
                if collection.is_locked():
                    collection.unlock()
                    if collection.is_locked():  # the prompt was dismissed
                        raise KeyringLocked("Failed to unlock the collection!")
                return call(collection)
            except (InitError, KeyringLocked, PasswordDeleteError):
                raise  # answers, not failures of the connection
            except Exception as exc:
                # The daemon may have restarted, which ends our session with it (its errors
                # look like "no such object" too), or the bus connection itself broke: the
                # next call opens them afresh. This call fails.
                shared.session = None
                if isinstance(exc, OSError | EOFError):
                    shared.owner = None
                raise

    @staticmethod
    def _unlocked(item: Any) -> Any:
        from keyring.errors import KeyringLocked

        if item.is_locked():
            item.unlock()
            if item.is_locked():
                raise KeyringLocked("Failed to unlock the item!")
        return item

    def get_password(self, service: str, username: str) -> str | None:
        def get(collection: Any) -> str | None:
            for item in collection.search_items(self._query(service, username)):
                secret: bytes = self._unlocked(item).get_secret()
                return secret.decode("utf-8")
            return None

        return self._with_collection(get)

    def set_password(self, service: str, username: str, password: str) -> None:
        attributes = {**self._query(service, username), "application": self._appid}
        label = f"Password for '{username}' on '{service}'"
        self._with_collection(
            lambda c: c.create_item(label, attributes, password.encode("utf-8"), replace=True)
        )

    def delete_password(self, service: str, username: str) -> None:
        from keyring.errors import PasswordDeleteError

        def delete(collection: Any) -> None:
            for item in collection.search_items(self._query(service, username)):
                item.delete()
                return
            raise PasswordDeleteError("No such password!")

        self._with_collection(delete)
