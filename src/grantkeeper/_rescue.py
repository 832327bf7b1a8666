"""A last copy of a refreshed credential that its store would not take.

Once the provider has answered a refresh, the old refresh token is spent: losing the answer
means a forced login, and a process that later retries the old token replays it. When the
store refuses the answer (a full disk, a read-only mount) through a process's exit, the
answer goes here: a 0600 file in a 0700 directory of the user's own, on another file system
than the store where one exists (the runtime directory, a tmpfs). The next transaction for
the credential adopts it, under the lock, before anything else.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ._errors import StoreCorrupt
from ._record import Credential, CredentialKey, record_from_json, record_to_json

RESCUE_DIR_ENV = "GRANTKEEPER_RESCUE_DIR"
"""Overrides where rescued credentials are kept (tried first)."""

FORMAT = "grantkeeper-rescue-1"


@dataclass(frozen=True)
class Rescued:
    """A rescued credential: ``record`` replaces the one whose refresh token it spent."""

    record: Credential
    spent: str
    """Fingerprint of the refresh token the provider's answer replaced."""
    path: Path


def _candidates() -> Iterator[Path]:
    override = os.environ.get(RESCUE_DIR_ENV)
    if override:
        yield Path(override)
    uid = os.getuid()
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        yield Path(runtime) / "grantkeeper"
    yield Path(f"/run/user/{uid}/grantkeeper")
    yield Path(f"/dev/shm/grantkeeper-{uid}")
    yield Path(tempfile.gettempdir()) / f"grantkeeper-rescue-{uid}"


def _usable_dir(path: Path, *, create: bool) -> bool:
    """Whether ``path`` is a directory only we can use (created 0700 if ``create``)."""
    if create:
        with contextlib.suppress(OSError):
            path.mkdir(mode=0o700, exist_ok=True)
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return (
        stat.S_ISDIR(info.st_mode)
        and info.st_uid == os.getuid()
        and not info.st_mode & (stat.S_IRWXG | stat.S_IRWXO)
    )


def _name(key: CredentialKey, spent: str) -> str:
    # Named by the key and the spent token's fingerprint: a copy can only ever apply to a
    # store that still holds exactly that spent token, whichever store that is.
    digest = hashlib.sha256(f"{key}\0{spent}".encode()).hexdigest()[:32]
    return f"{digest}.json"


def save(key: CredentialKey, spent: str, record: Credential) -> Path | None:
    """Keep ``record`` in the first usable place; return where, or ``None`` if nowhere."""
    payload = json.dumps(
        {"format": FORMAT, "key": str(key), "spent": spent, "record": record_to_json(record)}
    ).encode("utf-8")
    for directory in _candidates():
        if not _usable_dir(directory, create=True):
            continue
        target = directory / _name(key, spent)
        temporary = directory / f".{target.name}.{os.getpid()}.tmp"
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, payload)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, target)
        except OSError:
            with contextlib.suppress(OSError):
                temporary.unlink()
            continue
        return target
    return None


def load(key: CredentialKey, spent: str) -> Rescued | None:
    """The rescued answer that replaced the refresh token fingerprinted ``spent``, if any."""
    name = _name(key, spent)
    for directory in _candidates():
        if not _usable_dir(directory, create=False):
            continue
        path = directory / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        with os.fdopen(fd, "rb") as handle:
            raw = handle.read()
        try:
            document = json.loads(raw)
            if not isinstance(document, dict) or document.get("format") != FORMAT:
                raise ValueError
            if document.get("key") != str(key) or document.get("spent") != spent:
                raise ValueError
            record = record_from_json(document["record"], key=str(key))
        except (ValueError, KeyError, RecursionError, StoreCorrupt):
            discard_path(path)  # a torn or foreign file is no credential of ours
            continue
        return Rescued(record, document["spent"], path)
    return None


def discard_path(path: Path) -> None:
    """Remove a rescued copy once it is stored or superseded."""
    with contextlib.suppress(OSError):
        path.unlink()
