"""A provider refusing every refresh in the stale window: the fleet backs off as one.

Against the real oidc-provider behind the fault proxy, 3 processes × 2 threads share one
login and ask for credentials in a loop. Once every caller has been served (the token
still fresh: no refresh yet), the proxy answers every ``/token`` request
``400 invalid_request`` and then the workers' clocks move into the token's refresh margin,
all at once (a value in shared memory). The token is stale but valid for the whole window,
so every caller must be served it, nothing may mark the record dead, and a stale request
must not cost a call to the provider: a refusal is noted in the shared record with a time
to retry, so the whole fleet follows one backoff schedule. Then the provider answers
again and the fleet gets a new token, with nothing replayed.

Issue 30 measured the unbounded version: 50 token-endpoint calls in a 2 s stale window,
244 in 6 s. About 10 s:

    cd /work/main && ../shared/contain --mem 8G --time 900 scripts/with-keyring \\
        .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_refusing_provider.py -s
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from grantkeeper import Credential, CredentialKey, FileStore
from grantkeeper._freshness import DEFAULT_SKEW
from grantkeeper._status import AuthState, status_of
from harness import remember_secret
from harness.authserver import AuthServer
from harness.fault_proxy import FaultProxy, Mode
from harness.outage_fleet import OutageFleet, Plan, StoreWatch, Tally, unreported
from harness.real_login import log_in

pytestmark = [pytest.mark.slow, pytest.mark.realserver]

RESOURCE = "http://127.0.0.1:9/mcp"

PROCESSES = 3
THREADS = 2
"""The issue's fleet: 3 processes × 2 threads, each process one Keeper."""

ACCESS_TTL = 3600
"""Seconds an access token lives: long enough that the refresh margin is the full
:data:`DEFAULT_SKEW` (it is capped at a quarter of the lifetime) and that the server
accepts the token for the whole test, whatever the workers' clocks say."""

LEFT_IN_MARGIN = timedelta(seconds=55)
"""How long the token has left on the workers' clocks once they are moved: inside the
60 s margin (stale), and longer than the window and the recovery wait together, so it is
valid on every clock from the shift to the end of the run."""

WINDOW = 6.0
"""Seconds the provider refuses every refresh while the token is stale: the issue's 6 s."""

MAX_REFUSED_REFRESHES = 6
"""The most refresh requests the fleet may send the refusing provider in :data:`WINDOW`.

A refused answer is noted in the shared record with its time to retry, so a peer's
backoff binds every process and the fleet's refreshes follow one schedule (1 s, doubling,
capped at 10 s): attempts at about t = 0, 1, 3 (and 7, just past the window), 3 or 4 in
6 s. 6 leaves room for a process that tried in the instant before the note landed. A
backoff kept by each process alone gives about 3 per process (9); no backoff gives one
per stale request, hundreds."""

RECOVERY_TIMEOUT = 30.0
"""Seconds for a new token to be stored once the provider answers again: generous, as the
fleet may be backing off (at most 10 s) when it returns."""

START_TIMEOUT = 60.0
"""Seconds for the workers to start and have each caller served once (spawned children
import grantkeeper afresh on 2 cores)."""

TEST_TIMEOUT = 120
"""The whole run's bound: start, window and a full recovery wait fit well inside."""


def hold(seconds: float) -> None:
    """Keep the fault in place for ``seconds``: the length of the window under test."""
    threading.Event().wait(seconds)


def wait_for_new_token(
    store: FileStore, key: CredentialKey, old: str, timeout: float
) -> Credential | None:
    """The stored credential once its access token is no longer ``old`` (within
    ``timeout``), else ``None``."""
    deadline = time.monotonic() + timeout
    while True:
        stored = store.read(key)
        if stored is not None and stored.record.access_token != old:
            return stored.record
        if time.monotonic() >= deadline:
            return None
        threading.Event().wait(0.1)  # polling a bounded condition: a worker's refresh


@dataclass
class Figures:
    """What the run shows, and every promise it breaks (see :meth:`problems`)."""

    ready: int
    refused: int = 0
    window: float = 0.0
    tallies: list[Tally] = field(default_factory=list)
    dead_reasons: list[str] = field(default_factory=list)
    status_in_window: str = ""
    final_reauth_reason: str | None = None
    final_status: str = ""
    renewed: bool = False
    renewed_active: bool = False
    forwarded: int = 0
    """Refresh requests the proxy forwarded to the server after the window."""
    rotations: int = 0
    refresh_errors: list[str] = field(default_factory=list)
    replays: int = 0
    logins: int = 0

    def total(self, name: str) -> int:
        return sum(int(getattr(tally, name)) for tally in self.tallies)

    def summary(self) -> str:
        errors = sum((sum(t.errors.values()) for t in self.tallies), 0)
        return (
            f"refused refresh requests in the {self.window:.1f} s stale window: "
            f"{self.refused} (bound {MAX_REFUSED_REFRESHES}); calls {self.total('calls')}, "
            f"served {self.total('served')}, errors {errors}; dead marks "
            f"{self.dead_reasons}; status in the window {self.status_in_window}, at the end "
            f"{self.final_status}; renewed {self.renewed}; refreshes forwarded after the "
            f"window {self.forwarded}, rotations {self.rotations}, refresh errors "
            f"{len(self.refresh_errors)}, replays {self.replays}, logins {self.logins}"
        )

    def problems(self) -> list[str]:
        """Every broken promise, in words; empty when the run kept them all."""
        found = unreported(self.tallies, PROCESSES)
        failed = [e for t in self.tallies for e in t.errors.elements()]
        if failed:
            found.append(f"{len(failed)} call(s) failed with a valid token: {sorted(failed)[:5]}")
        for name in ("served_expired", "login_demanded", "failed_while_valid"):
            if self.total(name):
                found.append(f"{name}: {self.total(name)}")
        if self.dead_reasons or self.final_reauth_reason:
            found.append(f"marked dead: {self.dead_reasons or [self.final_reauth_reason]}")
        statuses = (("in the window", self.status_in_window), ("at the end", self.final_status))
        for when, state in statuses:
            if state != AuthState.OAUTH.value:
                found.append(f"status {when} is {state}, not oauth")
        if self.refused == 0:
            found.append("no refresh reached the refusing provider (harness defect)")
        if self.refused > MAX_REFUSED_REFRESHES:
            found.append(
                f"{self.refused} refresh requests in the {self.window:.1f} s window, over "
                f"{MAX_REFUSED_REFRESHES}: the fleet does not follow one backoff schedule"
            )
        if not (self.renewed and self.renewed_active):
            found.append(
                f"no new, active token stored within {RECOVERY_TIMEOUT:g} s of the provider's "
                f"return (stored {self.renewed}, active {self.renewed_active})"
            )
        if self.rotations != self.forwarded or self.refresh_errors:
            found.append(
                f"{self.forwarded} refreshes reached the server but {self.rotations} "
                f"rotated: {self.refresh_errors[:5]}"
            )
        if self.replays or self.logins:
            found.append(f"{self.replays} replay(s), {self.logins} new login(s)")
        return found


@pytest.mark.timeout(TEST_TIMEOUT)
def test_refused_refreshes_in_the_stale_window_follow_one_backoff(tmp_path: Path) -> None:
    assert timedelta(seconds=WINDOW + RECOVERY_TIMEOUT) < LEFT_IN_MARGIN < DEFAULT_SKEW
    key = CredentialKey.for_server(RESOURCE)
    store = FileStore(tmp_path)
    with (
        FaultProxy(paths=["/token"]) as proxy,
        AuthServer(access_ttl=ACCESS_TTL, issuer=proxy.url) as auth,
    ):
        proxy.upstream = auth.port
        login = log_in(auth, store, key, resource=RESOURCE)
        assert login.expires_at is not None
        auth.reset_stats()  # the login's code exchange is not a re-login
        exchanges = proxy.counts[("/token", Mode.PASS)]  # the login's own, through the proxy
        # Shared memory every worker's clock reads: moved once, for all of them at once.
        offset = multiprocessing.get_context("spawn").Value("d", 0.0)
        plan = Plan(str(tmp_path), key, threads=THREADS, clock_offset=offset)
        with (
            StoreWatch(tmp_path, key) as watch,
            OutageFleet(plan, processes=PROCESSES) as fleet,
        ):
            figures = Figures(fleet.wait_ready(START_TIMEOUT))
            assert figures.ready == fleet.callers, f"only {figures.ready} callers were served"
            # A fresh token so far: no caller had a reason to refresh before the window.
            assert proxy.counts[("/token", Mode.PASS)] == exchanges

            # The fault first, then the clocks: the first stale request starts a refresh
            # ahead, which must meet the refusing provider (t = 0 of the schedule). Until
            # the switch back no refresh reaches the server, so the login's token is the
            # only one any caller can be served in the window.
            proxy.set_mode(Mode.INVALID_REQUEST)
            started = time.monotonic()
            offset.value = (login.expires_at - datetime.now(UTC) - LEFT_IN_MARGIN).total_seconds()
            hold(WINDOW)
            # The record as the refusals left it, judged on the workers' clock (stale).
            shifted_now = datetime.now(UTC) + timedelta(seconds=offset.value)
            stored = store.read(key)
            in_window = status_of(key, stored.record if stored else None, now=shifted_now)
            figures.status_in_window = in_window.state.value
            proxy.set_mode(Mode.PASS)
            figures.window = time.monotonic() - started
            # Read after the switch: every request counted as refused arrived before it.
            figures.refused = proxy.counts[("/token", Mode.INVALID_REQUEST)]
            print(f"refused refresh requests in the stale window: {figures.refused}")

            renewed = wait_for_new_token(store, key, login.access_token, RECOVERY_TIMEOUT)
            figures.tallies = fleet.stop()
        figures.forwarded = proxy.counts[("/token", Mode.PASS)] - exchanges
        figures.dead_reasons = watch.dead_reasons
        if renewed is not None:
            remember_secret(renewed.access_token)
            remember_secret(renewed.refresh_token)
            figures.renewed = True
            figures.renewed_active = auth.is_active(renewed.access_token)
        final = store.read(key)
        figures.final_reauth_reason = final.record.reauth_reason if final else "record missing"
        end_now = datetime.now(UTC) + timedelta(seconds=offset.value)
        final_status = status_of(key, final.record if final else None, now=end_now)
        figures.final_status = final_status.state.value
        stats = auth.stats()
    figures.rotations = int(stats["refresh_success"])
    figures.refresh_errors = [f"{e['error']}: {e['detail']}" for e in stats["refresh_errors"]]
    figures.replays = int(stats["replays"])
    figures.logins = int(stats["code_success"])
    print(figures.summary())  # the closing note's figures: run with -s to see them
    problems = figures.problems()
    assert not problems, "\n".join([figures.summary(), *problems])
