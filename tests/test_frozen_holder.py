"""A peer frozen mid-refresh holds the lock indefinitely: no caller ever gets a dead token.

The holder is a real ``grantkeeper token`` in its own session whose background refresh has
written its in-flight note and taken the lock, then stopped itself (SIGSTOP) where the
token request would go out: frozen inside its provider call, as a laptop lid or a debugger
freezes one. It stays frozen until the test ends (``reap`` sends SIGCONT, then SIGKILL).

With the access token A still valid but inside its refresh margin, ``token`` and ``tools``
are served A at once and end while the holder is still frozen, before A expires. Before,
``token`` waited a whole lock timeout (60 s) for its own refresh ahead to give up, then
printed A, expired by then, with exit 0. With A expired, a caller gets the typed
``LockTimeout`` within its lock timeout, never A.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from grantkeeper import Credential, CredentialKey, FileStore, Keeper, LockTimeout
from harness.authserver import AuthServer
from harness.children import reap
from harness.mcp_demo import login
from harness.mcp_server import McpServer
from harness.real_login import age
from tests.tiny_disk import cli_command, environment, run_cli, start_cli

pytestmark = pytest.mark.realserver

WAIT = 60.0

_FREEZE_IN_THE_PROVIDER_CALL = """
import os
import signal
import sys
import grantkeeper._keeper as keeper_module
from grantkeeper._cli import main

def frozen(*args, **kwargs):
    os.write(2, b"frozen\\n")  # the note is written and the lock held: the call goes out now
    os.kill(os.getpid(), signal.SIGSTOP)
    raise SystemExit("thawed: the test should have killed this process")

vars(keeper_module)["send_token_request"] = frozen
sys.argv[0] = "grantkeeper"
main()
"""


AUTH_SERVER = {"access_ttl": 3600}
"""The server takes A for an hour however the tests age its record: only the record's expiry
says when a refresh is due."""


@contextlib.contextmanager
def _frozen_holder(
    home: Path, rescue: Path, key: CredentialKey
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``token`` for ``key`` until its refresh holds the lock, frozen; on the way out,
    thaw and kill it (SIGCONT, then SIGKILL)."""
    command = cli_command(key, "token", run=["-c", _FREEZE_IN_THE_PROVIDER_CALL])
    holder = start_cli(home, rescue, command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert holder.stderr is not None
        said = _read_until(holder.stderr, b"frozen\n")
        assert said.endswith(b"frozen\n"), said.decode(errors="replace")
        # Stopped, not merely about to be: waitid returns once it is (or has exited).
        state = os.waitid(os.P_PID, holder.pid, os.WSTOPPED | os.WEXITED | os.WNOWAIT)
        assert state is not None and state.si_code == os.CLD_STOPPED, state
        yield holder
    finally:
        reap(holder)
        if holder.stderr is not None:
            holder.stderr.close()


def _read_until(stream: object, marker: bytes) -> bytes:
    """What ``stream`` says until ``marker`` or its end, read on a thread: bounded by WAIT."""
    seen = bytearray()
    done = threading.Event()

    def pump() -> None:
        while not seen.endswith(marker):
            chunk = os.read(stream.fileno(), 1)  # type: ignore[attr-defined]
            if not chunk:
                break
            seen.extend(chunk)
        done.set()

    threading.Thread(target=pump, daemon=True).start()
    done.wait(WAIT)
    return bytes(seen)


_LIBRARY_USER = """
import logging
import sys
from grantkeeper import CredentialKey, FileStore, Keeper

logging.basicConfig(level=logging.INFO, format="%(message)s")
store = FileStore(sys.argv[1])
keeper = Keeper(store, CredentialKey.for_server(sys.argv[2], sys.argv[3]))
print(keeper.access_token(), flush=True)
# Ends without close(): the exit hook must not wait for the lock the frozen peer holds.
"""


def _stale_login(
    auth: AuthServer, mcp: McpServer, home: Path
) -> tuple[FileStore, CredentialKey, Credential]:
    """A new login whose access token A is valid for 55 s more: inside the 60 s refresh
    margin, so every process serves it at once and refreshes ahead."""
    store = FileStore(home)
    profile = f"t{uuid.uuid4().hex[:8]}"
    a = login(auth, mcp.url, store, profile=profile)
    key = CredentialKey.for_server(mcp.url, profile)
    age(store, key, expires_in=timedelta(seconds=55))
    return store, key, a


@pytest.mark.parametrize("command", ["token", "tools", "library"])
def test_a_valid_token_is_served_at_once_while_a_peer_is_frozen_in_its_refresh(
    auth_server: AuthServer, mcp_server: McpServer, tmp_path: Path, command: str
) -> None:
    auth, mcp = auth_server, mcp_server
    home, rescue = tmp_path / "home", tmp_path / "rescue"
    store, key, a = _stale_login(auth, mcp, home)
    aged = store.read(key)
    assert aged is not None and aged.record.expires_at is not None
    expires_at = aged.record.expires_at

    with _frozen_holder(home, rescue, key) as holder:
        if command == "library":
            result = subprocess.run(
                [sys.executable, "-c", _LIBRARY_USER, str(home), mcp.url, key.profile or ""],
                capture_output=True,
                text=True,
                env=environment(home, rescue),
                timeout=120,
            )
        else:
            result = run_cli(home, rescue, key, command, "-v")
        finished = datetime.now(UTC)
        still_frozen = holder.poll() is None
    assert still_frozen
    assert result.returncode == 0, result.stderr
    # What it used was valid when it finished: it did not sit out the peer's lock.
    assert finished < expires_at, (finished, expires_at)
    # Its refresh ahead, waiting for that lock, was given up once (by close() or at exit),
    # not waited for again.
    assert result.stderr.count("transaction.abandoned") == 1, result.stderr
    if command in ("token", "library"):
        assert result.stdout.strip() == a.access_token
    else:
        assert "echo" in result.stdout, result.stdout
    assert auth.is_active(a.access_token)
    assert auth.stats()["replays"] == 0


def test_an_expired_token_gives_a_typed_timeout_while_a_peer_is_frozen_never_the_token(
    auth_server: AuthServer, mcp_server: McpServer, tmp_path: Path
) -> None:
    auth, mcp = auth_server, mcp_server
    home, rescue = tmp_path / "home", tmp_path / "rescue"
    store, key, _ = _stale_login(auth, mcp, home)
    with _frozen_holder(home, rescue, key) as holder:
        # A expires while the peer stays frozen; this process has never seen a valid token.
        age_note(store, key)
        keeper = Keeper(store, key, lock_timeout=2.0)
        with pytest.raises(LockTimeout) as info:
            keeper.credential()
        assert info.value.retryable
        assert keeper.current is None  # nothing served, the expired A least of all
        keeper.close()
        still_frozen = holder.poll() is None
    assert still_frozen
    assert auth.stats()["replays"] == 0


def age_note(store: FileStore, key: CredentialKey) -> None:
    """Make the stored A expired, keeping the frozen holder's in-flight note on it."""
    stored = store.read(key)
    assert stored is not None and stored.record.intent is not None
    expired = datetime.now(UTC) - timedelta(seconds=1)
    store.write(
        key,
        stored.record.replace(expires_at=expired, obtained_at=expired - timedelta(hours=1)),
        expected_version=stored.version,
    )
