"""A refresh whose process died: who counts as dead, and the two retry policies."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from grantkeeper import FileStore, Keeper, ReauthenticationRequired
from grantkeeper._record import RefreshIntent
from grantkeeper.testing import sample_record
from harness.fake_provider import FakeProvider
from tests.helpers import KEY, T0, StepClock


def _noted_by(pid: int, home: Path, provider: FakeProvider) -> FileStore:
    """A stored credential whose refresh by ``pid`` was interrupted after the note."""
    access, refresh = provider.issue()
    record = sample_record(access, refresh, now=T0)
    fingerprint = record.refresh_fingerprint
    assert fingerprint is not None
    intent = RefreshIntent(fingerprint, pid, socket.gethostname(), T0, holder="dead")
    store = FileStore(home)
    store.write(KEY, record.replace(intent=intent), expected_version=None)
    return store


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="procfs")
def test_an_unreaped_holder_does_not_block_the_credential_forever(
    zombie: int, tmp_path: Path
) -> None:
    # Before the fix, kill(pid, 0) on the zombie said "alive", and every process failed
    # with PersistencePending until the holder's parent reaped it (never, for some hosts).
    provider = FakeProvider()
    store = _noted_by(zombie, tmp_path, provider)
    http = httpx.Client(transport=provider.transport())
    clock = StepClock()
    clock.advance(7200)
    keeper = Keeper(store, KEY, http_client=http, clock=clock)
    fresh = keeper.credential()  # the documented one retry of the unspent token
    assert provider.refresh_calls == 1 and provider.replays == 0
    assert provider.is_active(fresh.access_token)


def test_without_the_retry_an_unknown_outcome_requires_reauthentication_and_spends_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    provider = FakeProvider()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store = _noted_by(dead.pid, tmp_path, provider)
    http = httpx.Client(transport=provider.transport())
    clock = StepClock()
    clock.advance(7200)
    caplog.set_level("WARNING", logger="grantkeeper")
    keeper = Keeper(store, KEY, http_client=http, clock=clock, retry_unknown_outcome=False)
    with pytest.raises(ReauthenticationRequired, match="outcome of a refresh .* is unknown"):
        keeper.credential()
    assert provider.refresh_calls == 0
    assert "refresh.outcome_unknown" in caplog.text
    stored = store.read(KEY)
    assert stored is not None and stored.record.reauth_reason
    assert stored.record.intent is None
