"""A refreshed credential never leaves with the process: every way a process ends.

Against the real oidc-provider (rotation and reuse detection on) and a real 64 KiB tmpfs
holding the file store. A Keeper asked once in the stale window serves the valid token A
at once and refreshes in the background; the provider answers B. When the disk fills during
that call, B cannot be stored, and the process then ends without ``close()``: a plain
script, or a ``multiprocessing`` worker of each kind returning from its target (fork and
forkserver workers end in ``os._exit``, where ``atexit`` never runs). B must survive as a
rescue copy, and the next ``grantkeeper token`` adopts it: no replay of A, no new login.
With space, B is simply stored. A Keeper dropped while its refresh is in flight is held
until its B is stored: a sibling in the same process adopts B instead of taking the note
for a dead process's and spending A again.
"""

from __future__ import annotations

import gc
import hashlib
import subprocess
import sys
import threading
import uuid
import weakref
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import grantkeeper._keeper as keeper_module
from grantkeeper import Credential, CredentialKey, FileStore, Keeper
from grantkeeper._oauth.token_client import send_token_request as sent
from harness.authserver import AuthServer
from harness.real_login import age, log_in
from tests.tiny_disk import environment, fill, free, mounted, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.realserver]

RESOURCE = "http://127.0.0.1:9/mcp"
EXITS = ("script", "spawn", "fork", "forkserver")
WAIT = 120.0


AUTH_SERVER = {"resources": [RESOURCE], "access_ttl": 3600}


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with mounted(tmp_path) as mount:
        yield mount


def _stale_login(auth_server: AuthServer, home: Path) -> tuple[CredentialKey, Credential]:
    """A fresh grant whose access token is still valid for 45 s: inside the 60 s refresh
    margin, so the first question is served at once and refreshes in the background."""
    key = CredentialKey.for_server(RESOURCE, f"t{uuid.uuid4().hex[:8]}")
    store = FileStore(home)
    a = log_in(auth_server, store, key, resource=RESOURCE)
    age(store, key, expires_in=timedelta(seconds=45))
    auth_server.reset_stats()
    return key, a


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _end(mode: str, home: Path, rescue: Path, key: CredentialKey, *, fill_at: str) -> str:
    """Run the exit worker; return the digest of the token it was served."""
    command = [sys.executable, "-m", "tests.exit_worker", mode, str(home), fill_at]
    command += [key.server_url, key.profile or ""]
    done = subprocess.run(
        command, capture_output=True, text=True, env=environment(home, rescue), timeout=WAIT
    )
    assert done.returncode == 0, done.stderr
    served = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("served")]
    assert len(served) == 1, done.stdout
    return served[0]


def _next_process_keeps_b(
    auth_server: AuthServer, home: Path, rescue: Path, key: CredentialKey, a: Credential
) -> None:
    """The next ``grantkeeper token`` is served a valid token (A is still valid, so it may
    get A at once) and leaves B stored: adopted, not refreshed again, nothing replayed."""
    after = run_cli(home, rescue, key, "token")
    assert after.returncode == 0, after.stderr
    printed = after.stdout.strip()
    stored = FileStore(home).read(key)
    assert stored is not None and stored.record.intent is None
    b = stored.record.access_token
    assert b != a.access_token
    assert printed in (a.access_token, b)
    stats = auth_server.stats()
    assert stats["replays"] == 0, stats
    assert stats["refresh_success"] == 1, stats
    assert not stats["refresh_errors"], stats
    assert stats["code_success"] == 0, stats  # no new login
    assert auth_server.is_active(b)
    assert auth_server.is_active(printed)
    assert not list(rescue.glob("*.json"))


@pytest.mark.parametrize("full", [True, False], ids=["disk-full", "with-space"])
@pytest.mark.parametrize("mode", EXITS)
def test_a_background_refreshs_b_never_leaves_with_the_process(
    auth_server: AuthServer, disk: Path, tmp_path: Path, mode: str, full: bool
) -> None:
    key, a = _stale_login(auth_server, disk)
    rescue = tmp_path / "rescue"
    served = _end(mode, disk, rescue, key, fill_at=str(disk) if full else "")
    assert served == _digest(a.access_token)  # the valid token, at once
    assert auth_server.stats()["refresh_success"] == 1  # the background refresh ran
    if full:
        assert list(rescue.glob("*.json")), f"B left with the {mode} process"
        free(disk)
    else:
        stored = FileStore(disk).read(key)
        assert stored is not None and stored.record.access_token != a.access_token
    _next_process_keeps_b(auth_server, disk, rescue, key, a)


def test_a_keeper_dropped_mid_flight_hands_b_to_its_sibling(
    auth_server: AuthServer, disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, a = _stale_login(auth_server, disk)
    answered = threading.Event()

    def send_then_fill(*args: Any, **kwargs: Any) -> Any:
        answer = sent(*args, **kwargs)
        fill(disk)  # the disk fills while the provider answers
        answered.set()
        return answer

    monkeypatch.setattr(keeper_module, "send_token_request", send_then_fill)
    first = Keeper(FileStore(disk), key)
    assert first.credential().access_token == a.access_token  # served at once
    refreshing = [t for t in threading.enumerate() if t.name == f"grantkeeper {key}"]
    assert refreshing, "no background refresh started"
    dropped = weakref.ref(first)
    del first  # dropped mid-flight, never closed
    assert answered.wait(WAIT)
    for thread in refreshing:
        thread.join(WAIT)
        assert not thread.is_alive()
    gc.collect()
    monkeypatch.setattr(keeper_module, "send_token_request", sent)
    free(disk)

    sibling = Keeper(FileStore(disk), key)
    try:
        b = sibling.credential(rejected=a.access_token).access_token
    finally:
        sibling.close()
    assert b != a.access_token
    stats = auth_server.stats()
    assert stats["replays"] == 0, stats
    assert stats["refresh_success"] == 1, stats
    assert auth_server.is_active(b)
    stored = FileStore(disk).read(key)
    assert stored is not None and stored.record.access_token == b
    gc.collect()
    assert dropped() is None  # let go once its B was stored
