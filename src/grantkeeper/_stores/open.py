"""Choose a store from a spec: ``--store`` or ``GRANTKEEPER_STORE``."""

from __future__ import annotations

import os

from .._errors import StoreConfigError
from .auto import AutoStore
from .base import Store
from .file import FileStore
from .keyring import KeyringStore
from .postgresql import PostgresStore

STORE_ENV = "GRANTKEEPER_STORE"
"""Environment variable naming the store when ``--store`` is not given."""

SPECS = "auto, file, keyring or postgresql://user@host/db"


def open_store(spec: str | None = None, *, home: str | os.PathLike[str] | None = None) -> Store:
    """Open the store ``spec`` names: ``None`` reads ``GRANTKEEPER_STORE``, default ``auto``.

    Raises :class:`StoreConfigError` for a spec it does not know. Opening connects to
    nothing: the first read or write does.
    """
    if spec is None:
        spec = os.environ.get(STORE_ENV) or "auto"
    chosen = spec.strip()
    lowered = chosen.lower()
    if lowered == "auto":
        return AutoStore(home)
    if lowered == "file":
        return FileStore(home)
    if lowered == "keyring":
        return KeyringStore(home)
    if lowered.startswith(("postgresql://", "postgres://")):
        return PostgresStore(chosen)
    # Echo only the part before any colon: a mistyped URL may carry a password.
    shown = chosen.split(":", 1)[0][:40]
    raise StoreConfigError(f"unknown store {shown!r}: use {SPECS}")
