"""Real provider outages: only a definitive answer ends a grant, valid tokens keep serving.

Against the real oidc-provider (rotation and reuse detection on), 8 processes × 4 threads
share one login and ask for credentials in a loop while the provider goes away for 30 s,
three ways: a loopback proxy refusing connections, the server process really stopped and
restarted (its state kept on disk), and a gateway storm of 503 then 500. While it is away
callers see valid tokens or typed retryable errors, and no process marks the record dead.
Afterwards no one logs in again, nothing was replayed, every refresh that reached the
server rotated, and every caller is served again.

In the refresh margin a request gets the still-valid token at once while the provider
hangs, whether the process already held it or starts inside the margin. A provider that
sends no ``expires_in`` gets no refresh until a server rejects the token.

The harness: ``harness/fault_proxy.py`` (the proxy, switched from here), the state dir and
``--omit-expires-in`` of ``harness/oidc/server.mjs``, ``harness/outage_fleet.py`` (the
fleet and its tallies). About two minutes in all, three quarters of it the three outages:

    PYTHONPATH=src:. scripts/with-keyring .venv/bin/python -m pytest tests/test_outages.py -s
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from grantkeeper import CredentialKey, FileStore, GrantkeeperError, HttpxAuth, Keeper
from harness import remember_secret
from harness.authserver import AuthServer
from harness.fault_proxy import FaultProxy, Mode, Request
from harness.outage_fleet import SAMPLES, OutageFleet, Plan, StoreWatch, Tally, unreported
from harness.real_login import log_in
from harness.resource_server import ResourceServer

pytestmark = [pytest.mark.slow, pytest.mark.realserver]

RESOURCE = "http://127.0.0.1:9/mcp"

OUTAGE = 30.0
"""Seconds the provider stays away: the issue's figure."""

ACCESS_TTL = 10
"""Seconds an access token lives. Whatever token the fleet holds when the outage starts
turns stale and then expires inside it, so refreshes fall due while the provider is away."""

STORM_PHASE = 6.0
"""Seconds of 503, then seconds of 500: the 12 s gateway blip the issue measured."""

TRIGGER_TIMEOUT = 6.0 * ACCESS_TTL
"""Seconds to wait for the fleet's next refresh request, which one token lifetime brings."""

RECOVERY_TIMEOUT = 60.0
"""Seconds for every caller to be served again once the provider is back: generous, as
a retry may be backing off (capped) when the provider returns."""

FLEET_TEST_TIMEOUT = 180
"""Per-test bound for the fleet runs: start, a 30 s outage and a full recovery wait fit,
so a broken run fails with its figures rather than at pytest-timeout's default."""


def hold(seconds: float) -> None:
    """Keep a fault in place for ``seconds``: the length of the outage under test."""
    threading.Event().wait(seconds)


@dataclass
class Figures:
    """What one outage run shows, and every promise it breaks (see :meth:`problems`)."""

    processes: int
    callers: int
    ready: int
    recovered: int = 0
    tallies: list[Tally] = field(default_factory=list)
    dead_reasons: list[str] = field(default_factory=list)
    store_reads: int = 0
    final_reauth_reason: str | None = None
    rotations: int = 0
    refresh_calls: int = 0
    replays: int = 0
    relogins: int = 0
    refresh_errors: list[str] = field(default_factory=list)
    inactive_recovered_tokens: int = 0

    def total(self, name: str) -> int:
        return sum(int(getattr(tally, name)) for tally in self.tallies)

    def samples(self, name: str) -> list[str]:
        return [s for tally in self.tallies for s in getattr(tally, name)][:SAMPLES]

    @property
    def errors(self) -> Counter[str]:
        return sum((tally.errors for tally in self.tallies), Counter())

    def summary(self) -> str:
        return (
            f"callers {self.callers}, ready {self.ready}, recovered {self.recovered}; "
            f"calls {self.total('calls')}, served {self.total('served')}, errors "
            f"{dict(self.errors)}; failed while valid {self.total('failed_while_valid')}; "
            f"served expired {self.total('served_expired')}; login demanded "
            f"{self.total('login_demanded')}; dead marks {self.dead_reasons} in "
            f"{self.store_reads} reads; refresh calls {self.refresh_calls}, rotations "
            f"{self.rotations}, replays {self.replays}, re-logins {self.relogins}"
        )

    def problems(self) -> list[str]:
        """Every broken promise, in words; empty when the run kept them all."""
        found = unreported(self.tallies, self.processes)
        if self.total("not_typed_retryable_count"):
            found.append(
                f"{self.total('not_typed_retryable_count')} call(s) raised something other "
                f"than a retryable grantkeeper error, e.g. {self.samples('not_typed_retryable')}"
            )
        if self.total("failed_while_valid"):
            found.append(
                f"{self.total('failed_while_valid')} call(s) failed while the process held "
                f"a valid token, e.g. {self.samples('failed_while_valid_samples')}"
            )
        if self.total("served_expired"):
            found.append(f"{self.total('served_expired')} expired token(s) served")
        if self.total("login_demanded"):
            found.append(f"{self.total('login_demanded')} call(s) demanded a new login")
        if self.dead_reasons or self.final_reauth_reason:
            found.append(
                f"the record was marked dead: {self.dead_reasons or [self.final_reauth_reason]}"
            )
        if self.relogins:
            found.append(f"{self.relogins} forced re-login(s)")
        if self.replays:
            found.append(f"{self.replays} replay(s) of a spent refresh token")
        if self.refresh_calls != self.rotations:
            found.append(
                f"{self.refresh_calls} refresh calls reached the server but only "
                f"{self.rotations} rotated: {self.refresh_errors[:SAMPLES]}"
            )
        if self.rotations == 0:
            found.append("no rotation at all: the run never refreshed after the outage")
        if self.recovered < self.callers:
            found.append(
                f"only {self.recovered} of {self.callers} callers were served again "
                f"within {RECOVERY_TIMEOUT:g} s of the provider's return"
            )
        if self.inactive_recovered_tokens:
            found.append(
                f"{self.inactive_recovered_tokens} caller(s) were served again with a token "
                "the server does not accept"
            )
        if not self.errors:
            found.append("no call failed at all: the outage did not happen (harness defect)")
        return found


def dead_tokens(auth: AuthServer, served: list[tuple[str, datetime | None]]) -> int:
    """How many of the tokens callers were served since recovery the server rejects,
    leaving out any that have merely expired since they were served."""
    dead = 0
    for token, expires_at in served:
        remember_secret(token)
        if not auth.is_active(token):
            dead += expires_at is None or expires_at > datetime.now(UTC)
    return dead


def run_outage(
    auth: AuthServer, home: Path, key: CredentialKey, outage: Callable[[], object]
) -> Figures:
    """Start the fleet on the stored login, run ``outage`` once every caller is served,
    then let the fleet recover and collect the figures."""
    auth.reset_stats()  # the initial login is not a forced re-login
    plan = Plan(str(home), key)
    with StoreWatch(home, key) as watch, OutageFleet(plan) as fleet:
        figures = Figures(fleet.processes, fleet.callers, fleet.wait_ready())
        if figures.ready == fleet.callers:
            outage()
            figures.recovered = fleet.recover(RECOVERY_TIMEOUT)
            figures.inactive_recovered_tokens = dead_tokens(auth, fleet.recovered_tokens)
        figures.tallies = fleet.stop()
    assert figures.ready == figures.callers, f"the fleet never got going: {figures.summary()}"
    figures.dead_reasons = watch.dead_reasons
    figures.store_reads = watch.reads
    stored = FileStore(home).read(key)
    figures.final_reauth_reason = stored.record.reauth_reason if stored else "record missing"
    stats = auth.stats()
    figures.rotations = int(stats["refresh_success"])
    figures.refresh_calls = figures.rotations + len(stats["refresh_errors"])
    figures.refresh_errors = [f"{e['error']}: {e['detail']}" for e in stats["refresh_errors"]]
    figures.replays = int(stats["replays"])
    figures.relogins = int(stats["code_success"])
    print(figures.summary())  # the closing note's figures: run with -s to see them
    return figures


def check(figures: Figures) -> None:
    problems = figures.problems()
    assert not problems, "\n".join([figures.summary(), *problems])


@pytest.fixture
def key() -> CredentialKey:
    return CredentialKey.for_server(RESOURCE)


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[tuple[FaultProxy, AuthServer]]:
    """The authorization server behind a fault proxy that it announces as its issuer."""
    with FaultProxy() as proxy, AuthServer(access_ttl=ACCESS_TTL, issuer=proxy.url) as auth:
        proxy.upstream = auth.port
        yield proxy, auth


# -- the three outages ----------------------------------------------------------------------


@pytest.mark.timeout(FLEET_TEST_TIMEOUT)
def test_connections_refused_for_30_s(
    proxied: tuple[FaultProxy, AuthServer], tmp_path: Path, key: CredentialKey
) -> None:
    proxy, auth = proxied
    log_in(auth, FileStore(tmp_path), key, resource=RESOURCE)

    def outage() -> None:
        proxy.set_mode(Mode.REFUSE)
        hold(OUTAGE)
        proxy.set_mode(Mode.PASS)

    check(run_outage(auth, tmp_path, key, outage))


@pytest.mark.timeout(FLEET_TEST_TIMEOUT)
def test_server_stopped_for_30_s_and_restarted(tmp_path: Path, key: CredentialKey) -> None:
    state, home = tmp_path / "as-state", tmp_path / "home"
    state.mkdir()
    with AuthServer(access_ttl=ACCESS_TTL, state_dir=state) as auth:
        log_in(auth, FileStore(home), key, resource=RESOURCE)
        port = auth.port
        figures = run_outage(auth, home, key, lambda: auth.restart(downtime=OUTAGE))
        assert auth.port == port
    check(figures)


@pytest.mark.timeout(FLEET_TEST_TIMEOUT)
def test_503_then_500_storm(tmp_path: Path, key: CredentialKey) -> None:
    with (
        FaultProxy(paths=["/token"]) as proxy,
        AuthServer(access_ttl=ACCESS_TTL, issuer=proxy.url) as auth,
    ):
        proxy.upstream = auth.port
        log_in(auth, FileStore(tmp_path), key, resource=RESOURCE)

        def storm() -> None:
            # From the fleet's next refresh on: the storm starts when a refresh is due.
            proxy.arm(Mode.UNAVAILABLE)
            assert proxy.triggered.wait(TRIGGER_TIMEOUT), "no refresh came to start the storm"
            hold(STORM_PHASE)
            proxy.set_mode(Mode.SERVER_ERROR)
            hold(STORM_PHASE)
            proxy.set_mode(Mode.PASS)

        figures = run_outage(auth, tmp_path, key, storm)
        hit = {
            mode: proxy.counts[("/token", mode)] for mode in (Mode.UNAVAILABLE, Mode.SERVER_ERROR)
        }
    print(f"token requests answered by the storm: {hit}")
    check(figures)
    assert hit[Mode.UNAVAILABLE] > 0 and hit[Mode.SERVER_ERROR] > 0  # both phases bit


# -- the stale window ----------------------------------------------------------------------


class Clock:
    """Real time plus an offset the test moves: into the refresh margin, say."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


def serve_while_hanging(
    proxy: FaultProxy, auth: AuthServer, home: Path, key: CredentialKey, *, loaded: bool
) -> None:
    """A request in the refresh margin, the provider hanging, gets the valid token; once
    the provider answers again, the one background refresh lands. ``loaded``: whether the
    Keeper served the token before the margin (or starts inside it, a new process)."""
    store = FileStore(home)
    login = log_in(auth, store, key, resource=RESOURCE)
    assert login.expires_at is not None and login.obtained_at is not None
    auth.reset_stats()
    clock = Clock()
    with Keeper(store, key, clock=clock) as keeper:
        if loaded:
            assert keeper.credential().access_token == login.access_token
        # A refresh is due, and the token is still valid at the server for most of its life.
        clock.offset = login.expires_at - login.obtained_at - timedelta(seconds=1)
        proxy.set_mode(Mode.HANG)
        try:
            served = keeper.credential(timeout=5.0)  # a caller's own bound
            assert served.access_token == login.access_token
            assert auth.is_active(served.access_token)
            assert proxy.wait_for("/token", Mode.HANG), "no refresh was attempted in the margin"
        finally:
            proxy.set_mode(Mode.PASS)  # the hung request is dropped unanswered, never forwarded
        renewed = served
        deadline = time.monotonic() + RECOVERY_TIMEOUT
        while renewed.access_token == login.access_token and time.monotonic() < deadline:
            threading.Event().wait(0.2)  # polling a bounded condition: the background retry
            try:
                renewed = keeper.credential(timeout=5.0)
            except GrantkeeperError as exc:
                # The token had a second left on the Keeper's clock: once it expires before
                # the backed-off retry, callers get a typed retryable error until then.
                assert exc.retryable, exc
    remember_secret(renewed.access_token)
    stats = auth.stats()
    assert renewed.access_token != login.access_token and auth.is_active(renewed.access_token)
    assert (stats["refresh_success"], len(stats["refresh_errors"]), stats["replays"]) == (1, 0, 0)


def test_stale_window_serves_the_valid_token_while_the_provider_hangs(
    proxied: tuple[FaultProxy, AuthServer], tmp_path: Path, key: CredentialKey
) -> None:
    serve_while_hanging(*proxied, tmp_path, key, loaded=True)


def test_process_starting_in_the_stale_window_is_served_while_the_provider_hangs(
    proxied: tuple[FaultProxy, AuthServer], tmp_path: Path, key: CredentialKey
) -> None:
    serve_while_hanging(*proxied, tmp_path, key, loaded=False)


# -- a provider that never says when tokens expire -------------------------------------------


def test_token_without_expires_in_is_refreshed_only_when_rejected(tmp_path: Path) -> None:
    rejected: set[str] = set()
    with (
        AuthServer(access_ttl=3600, omit_expires_in=True) as auth,
        ResourceServer(
            issuer=auth.issuer, accept=lambda t: t not in rejected and auth.is_active(t)
        ) as resource,
    ):
        key = CredentialKey.for_server(resource.url)
        store = FileStore(tmp_path)
        login = log_in(auth, store, key, resource=resource.url)
        assert login.expires_at is None  # the login's answer really had no expires_in
        auth.reset_stats()

        def refresh_calls() -> int:
            stats = auth.stats()
            return int(stats["refresh_success"]) + len(stats["refresh_errors"])

        with Keeper(store, key) as keeper, httpx.Client(auth=HttpxAuth(keeper)) as http:
            statuses = Counter(http.get(resource.url).status_code for _ in range(100))
            assert (statuses, refresh_calls()) == (Counter({200: 100}), 0)

            assert keeper.current is not None
            rejected.add(keeper.current.access_token)  # the server now answers 401 for it
            assert http.get(resource.url).status_code == 200
            assert refresh_calls() == 1

            statuses = Counter(http.get(resource.url).status_code for _ in range(10))
            assert (statuses, refresh_calls()) == (Counter({200: 10}), 1)
        assert auth.stats()["replays"] == 0


# -- the harness itself ---------------------------------------------------------------------


def test_restarted_server_keeps_clients_grants_and_replay_detection(
    tmp_path: Path, key: CredentialKey
) -> None:
    state, home = tmp_path / "as-state", tmp_path / "home"
    state.mkdir()
    store = FileStore(home)
    with AuthServer(state_dir=state) as auth:
        first = log_in(auth, store, key, resource=RESOURCE)
        assert first.refresh_token is not None
        with Keeper(store, key, clock=lambda: datetime(2100, 1, 1, tzinfo=UTC)) as keeper:
            second = keeper.credential()  # spends the login's refresh token
        remember_secret(second.access_token)
        auth.restart()
        # Same client, grant and tokens: the new process knows them all.
        assert auth.is_active(second.access_token)
        with Keeper(store, key, clock=lambda: datetime(2101, 1, 1, tzinfo=UTC)) as keeper:
            third = keeper.credential()
        remember_secret(third.access_token)
        assert auth.is_active(third.access_token)
        # And the spent token is still known as spent: presenting it is a replay.
        assert second.token_endpoint is not None
        answer = httpx.post(
            second.token_endpoint,
            data={
                "grant_type": "refresh_token",
                "refresh_token": first.refresh_token,
                "client_id": second.client_id or "",
            },
            timeout=10.0,
        )
        stats = auth.stats()
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"
    assert (stats["code_success"], stats["refresh_success"], stats["replays"]) == (1, 2, 1)


def test_fault_proxy_modes(proxied: tuple[FaultProxy, AuthServer]) -> None:
    proxy, auth = proxied
    discovery = f"{proxy.url}/.well-known/openid-configuration"
    with httpx.Client(timeout=httpx.Timeout(10.0, read=1.0)) as http:
        assert http.get(discovery).json()["issuer"] == proxy.url  # the AS announces the proxy

        proxy.set_mode(Mode.UNAVAILABLE)
        answer = http.get(discovery)
        assert (answer.status_code, answer.headers["retry-after"]) == (503, "1")

        proxy.set_mode(Mode.SERVER_ERROR)
        answer = http.get(discovery)
        assert (answer.status_code, answer.json()) == (500, {"error": "server_error"})

        proxy.set_mode(Mode.INVALID_REQUEST)
        answer = http.get(discovery)
        assert (answer.status_code, answer.json()["error"]) == (400, "invalid_request")

        proxy.set_mode(Mode.HANG)
        with pytest.raises(httpx.ReadTimeout):
            http.get(discovery)

        proxy.set_mode(Mode.PASS)
        assert http.get(discovery).status_code == 200  # a kept-alive connection
        proxy.set_mode(Mode.REFUSE)  # closes it: no request gets through on it either
        with pytest.raises(httpx.ConnectError):
            http.get(discovery)

        proxy.set_mode(Mode.RESET)
        with pytest.raises(httpx.TransportError):
            http.get(discovery)

        proxy.set_mode(Mode.PASS)

        def is_token(request: Request) -> bool:
            return request.path == "/token"

        proxy.arm(Mode.UNAVAILABLE, when=is_token)
        assert http.get(discovery).status_code == 200 and not proxy.triggered.is_set()
        assert http.post(f"{proxy.url}/token").status_code == 503
        assert proxy.triggered.is_set() and proxy.mode is Mode.UNAVAILABLE
    assert proxy.counts[("/token", Mode.UNAVAILABLE)] == 1
