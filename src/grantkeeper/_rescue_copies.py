"""A last copy of a refreshed credential that its store would not take.

Once the provider has answered a refresh, the old refresh token is spent: losing the answer
means a forced login, and a process that later retries the old token replays it. When the
store refuses the answer (a full disk, a read-only mount) through a process's exit, the
answer goes here: a 0600 file in a 0700 directory of the user's own, on another file system
than the store where one exists (the runtime directory, a tmpfs). The next transaction for
the credential adopts it, under the lock, before anything else.

A copy is sealed with AES-256-GCM under a key derived (HKDF-SHA256) from the secret the
answer spent (the refresh token the store still holds), bound to the credential key and
that token's fingerprint. It only ever applies to a store that holds exactly that token, so
whoever can open it could already read the store's record: the copy is as well protected as
the record, with no key of its own to keep. Without the ``cryptography`` package a copy is
plaintext, which the caller allows only for a store whose records are plaintext too. A copy
goes once adopted, and once a login or logout replaces the record it applies to
(:func:`discard`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._errors import MissingExtra, StoreCorrupt
from ._observe.log import event
from ._platform import current, ours_alone
from ._record import Credential, CredentialKey, record_from_json, record_to_json, renewal_secret
from ._redact import fingerprint

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

RESCUE_DIR_ENV = "GRANTKEEPER_RESCUE_DIR"
"""Overrides where rescued credentials are kept (tried first)."""

PLAIN_FORMAT = "grantkeeper-rescue-1"
"""A plaintext copy: what earlier versions always wrote, and still adopted."""

SEALED_FORMAT = "grantkeeper-rescue-2"
"""A sealed copy: AES-256-GCM under a key derived from the spent token."""

NONCE_BYTES = 12


@dataclass(frozen=True)
class Rescued:
    """A rescued credential: ``record`` replaces the one whose refresh token it spent."""

    record: Credential
    spent: str
    """Fingerprint of the refresh token the provider's answer replaced."""
    path: Path


def sealing_available() -> bool:
    """Whether copies can be sealed: the ``cryptography`` package is installed."""
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: F401
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF  # noqa: F401
    except ImportError:
        return False
    return True


def _candidates() -> Iterator[Path]:
    override = os.environ.get(RESCUE_DIR_ENV)
    if override:
        yield Path(override)
    yield from current().rescue_dirs()


def _usable_dir(path: Path, *, create: bool) -> bool:
    """Whether ``path`` is a directory only we can use (created 0700 if ``create``)."""
    if create:
        with contextlib.suppress(OSError):
            path.mkdir(mode=0o700, exist_ok=True)
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and ours_alone(info)


def _name(key: CredentialKey, spent: str) -> str:
    # Named by the key and the spent token's fingerprint: a copy can only ever apply to a
    # store that still holds exactly that spent token, whichever store that is.
    digest = hashlib.sha256(f"{key}\0{spent}".encode()).hexdigest()[:32]
    return f"{digest}.json"


def _aead(key: CredentialKey, secret: str) -> AESGCM:
    """The cipher of a copy that replaced ``secret``: only a holder of that token opens it."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    derived = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=SEALED_FORMAT.encode(),
        info=f"{SEALED_FORMAT}\0{key}".encode(),
    ).derive(secret.encode("utf-8"))
    return AESGCM(derived)


def _bound_to(key: CredentialKey, spent: str) -> bytes:
    """The associated data of a sealed copy: it opens only as the copy of this name."""
    return f"{SEALED_FORMAT}\0{key}\0{spent}".encode()


def _payload(
    key: CredentialKey, secret: str, record: Credential, *, plaintext_ok: bool
) -> bytes | None:
    spent = fingerprint(secret)
    inner = {"key": str(key), "spent": spent, "record": record_to_json(record)}
    if not sealing_available():
        if not plaintext_ok:
            return None
        return json.dumps({"format": PLAIN_FORMAT, **inner}).encode("utf-8")
    nonce = os.urandom(NONCE_BYTES)
    sealed = _aead(key, secret).encrypt(
        nonce, json.dumps(inner).encode("utf-8"), _bound_to(key, spent)
    )
    return json.dumps(
        {"format": SEALED_FORMAT, "sealed": base64.b64encode(nonce + sealed).decode("ascii")}
    ).encode("utf-8")


def save(
    key: CredentialKey, replaced: Credential, record: Credential, *, plaintext_ok: bool
) -> Path | None:
    """Keep ``record``, the answer that replaced ``replaced``, in the first usable place;
    return where, or ``None`` if nowhere.

    Sealed where ``cryptography`` is installed; otherwise plaintext if ``plaintext_ok``
    (the store keeps its records in plaintext too), else nowhere.
    """
    secret = renewal_secret(replaced)
    if secret is None:
        return None
    payload = _payload(key, secret, record, plaintext_ok=plaintext_ok)
    if payload is None:
        return None
    name = _name(key, fingerprint(secret))
    for directory in _candidates():
        if _usable_dir(directory, create=True) and _write(directory, name, payload):
            return directory / name
    return None


def _write(directory: Path, name: str, payload: bytes) -> bool:
    """Write ``directory/name`` whole or not at all: a full file system leaves nothing."""
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    except OSError:
        return False
    try:
        try:
            view = memoryview(payload)
            while view:
                # A file system that fills up mid-write takes part of it and says how much.
                written = os.write(fd, view)
                if written <= 0:
                    raise OSError("no progress writing the rescue copy")
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, directory / name)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        return False
    with contextlib.suppress(OSError):
        opened = current().open_dir(directory)
        try:
            opened.fsync()
        finally:
            opened.close()
    return True


def load(key: CredentialKey, holder: Credential) -> Rescued | None:
    """The rescued answer that replaced ``holder``, the record the store holds, if any.

    Raise :class:`MissingExtra` for a sealed copy that this process cannot open (no
    ``cryptography``): the caller must spend nothing, since ``holder``'s token is spent."""
    secret = renewal_secret(holder)
    if secret is None:
        return None
    spent = fingerprint(secret)
    name = _name(key, spent)
    for directory in _candidates():
        if not _usable_dir(directory, create=False):
            continue
        path = directory / name
        try:
            opened = current().open_dir(directory)
            try:
                fd = opened.open(name, os.O_RDONLY)
            finally:
                opened.close()
        except OSError:
            continue
        with os.fdopen(fd, "rb") as handle:
            raw = handle.read()
        try:
            document = _contents(key, secret, spent, raw)
            if document is None:
                # Left for a process that can open it: deleting it would lose B, and
                # going on without it would spend the token B replaced (a replay).
                event(logging.ERROR, "rescue.unopenable", key=str(key), reason="no_cryptography")
                raise MissingExtra(
                    "a sealed rescue copy of this credential (its refreshed tokens) waits to"
                    " be adopted; opening it",
                    "encryption",
                    module="cryptography",
                )
            record = record_from_json(document["record"], key=str(key))
        except (ValueError, KeyError, TypeError, RecursionError, StoreCorrupt):
            discard_path(path)  # a torn, altered or foreign file is no credential of ours
            continue
        return Rescued(record, spent, path)
    return None


def _contents(key: CredentialKey, secret: str, spent: str, raw: bytes) -> dict[str, Any] | None:
    """What a copy holds, opened if sealed (``None``: sealed, and ``cryptography`` is
    missing); ``ValueError`` for a torn, altered or foreign file."""
    document = json.loads(raw)
    if not isinstance(document, dict):
        raise ValueError
    if document.get("format") == SEALED_FORMAT:
        if not sealing_available():
            return None
        document = json.loads(_unseal(key, secret, spent, document["sealed"]))
    elif document.get("format") != PLAIN_FORMAT:
        raise ValueError
    if not isinstance(document, dict):
        raise ValueError
    if document.get("key") != str(key) or document.get("spent") != spent:
        raise ValueError
    return document


def _unseal(key: CredentialKey, secret: str, spent: str, sealed: Any) -> bytes:
    from cryptography.exceptions import InvalidTag

    try:
        blob = base64.b64decode(sealed, validate=True)
        if len(blob) < NONCE_BYTES + 16:
            raise ValueError
        plain = _aead(key, secret).decrypt(
            blob[:NONCE_BYTES], blob[NONCE_BYTES:], _bound_to(key, spent)
        )
    except (binascii.Error, InvalidTag):
        raise ValueError from None
    return plain


def discard(key: CredentialKey, replaced: Credential) -> int:
    """Remove the copy of an answer that replaced ``replaced`` from every place: a login or
    logout moved the store past it, so it can never apply again. Return how many went."""
    secret = renewal_secret(replaced)
    if secret is None:
        return 0
    name = _name(key, fingerprint(secret))
    removed = 0
    for directory in _candidates():
        if not _usable_dir(directory, create=False):
            continue
        with contextlib.suppress(OSError):
            (directory / name).unlink()
            removed += 1
        # A writer killed before its rename leaves its temporary file behind.
        for temporary in directory.glob(f".{name}.*.tmp"):
            discard_path(temporary)
    return removed


def discard_path(path: Path) -> None:
    """Remove a rescued copy once it is stored or superseded."""
    with contextlib.suppress(OSError):
        path.unlink()
