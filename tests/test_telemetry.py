"""A fleet you can watch: what grantkeeper reports through OpenTelemetry.

Read through the SDK's in-memory readers (``tests/otel_readers.py``): in this process, where
the suite installs them for every test, and in two processes of their own that share a
credential, each with its own SDK as two applications would have. Without the API, nothing
of OpenTelemetry is imported and a refresh works as before.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path

import httpx
import pytest
from opentelemetry import trace

from grantkeeper import FileStore, HttpxAuth, Keeper
from grantkeeper._observe import telemetry as gk_telemetry
from grantkeeper.testing import sample_record
from harness.authserver import AuthServer
from harness.children import reap
from harness.fake_provider import FakeProvider
from tests.helpers import KEY, RESOURCE, World
from tests.otel_readers import Readers, Report, SpanData

REFRESHES = "grantkeeper.refreshes"
STALE_SERVES = "grantkeeper.stale_serves"
ADOPTIONS = "grantkeeper.adoptions"
RECOVERIES = "grantkeeper.recoveries"
FORCED_LOGINS = "grantkeeper.forced_logins"
LOCK_WAIT = "grantkeeper.lock.wait.duration"
TOKEN_REQUEST = "grantkeeper.token_request.duration"
OUTCOME = "grantkeeper.refresh.outcome"
RESULT = "grantkeeper.transaction.result"
WAIT = 60.0
"""Upper bound on every wait for a child process: a hung child fails the test, not CI."""

tracer = trace.get_tracer("tests.test_telemetry")


def linked_to(span: SpanData, request: trace.Span) -> bool:
    """Whether transaction ``span`` has a link to the ``request`` span that waited on it."""
    context = request.get_span_context()
    return any(
        (trace_id, span_id) == (context.trace_id, context.span_id)
        and attrs.get("grantkeeper.link.waited")
        for trace_id, span_id, attrs in span.links
    )


def expired(world: World) -> Keeper:
    """A Keeper that loaded a fresh login, an hour later: its token has expired."""
    world.login()
    keeper = world.keeper()
    keeper.access_token()
    world.clock.advance(3600)
    return keeper


def test_a_refresh_is_counted_timed_and_traced_as_a_root_linked_to_the_waiting_request(
    world: World, telemetry: Readers
) -> None:
    keeper = expired(world)
    with tracer.start_as_current_span("request") as request:
        keeper.credential()
    report = telemetry.report()
    assert report.count(REFRESHES, {OUTCOME: "answered", "grantkeeper.credential.key": RESOURCE})
    assert report.count(REFRESHES) == 1 == world.provider.refresh_calls
    (timed,) = report.matching(TOKEN_REQUEST)
    assert timed.count == 1
    assert timed.attributes["server.address"] == "auth.example.test"  # the record's endpoint
    assert timed.attributes["server.port"] == 443
    assert report.recorded(LOCK_WAIT, {"grantkeeper.lock.result": "acquired"}) == 1
    assert report.matching(LOCK_WAIT)[0].attributes["grantkeeper.store"] == world.store.name
    refreshed = [s for s in report.transactions() if s.attributes.get(RESULT) == "refreshed"]
    (span,) = refreshed
    assert span.parent is None and span.trace_id != request.get_span_context().trace_id
    assert linked_to(span, request)
    assert span.attributes[OUTCOME] == "answered" and span.status == "UNSET"
    assert span.attributes["grantkeeper.transaction.background"] is False


def test_every_request_that_joins_a_transaction_is_linked_to_it(
    world: World, telemetry: Readers
) -> None:
    keeper = expired(world)
    release = world.provider.lock  # the provider answers once both requests have joined
    requests: list[trace.Span] = []
    with release:
        first = keeper._join(None)[0]
        for _ in range(2):
            with tracer.start_as_current_span("request") as request:
                requests.append(request)
                assert keeper._join(None)[0] is first
    first.result(WAIT)
    (span,) = [
        s for s in telemetry.report().transactions() if s.attributes.get(RESULT) == "refreshed"
    ]
    assert all(linked_to(span, request) for request in requests)


@pytest.mark.parametrize(
    ("answer", "outcome", "error"),
    [
        (httpx.Response(503), "not_processed", "ProviderUnavailable"),
        (httpx.Response(500), "unknown", "RefreshOutcomeUnknown"),
        (httpx.Response(400, json={"error": "invalid_request"}), "refused", "ProviderError"),
    ],
    ids=["503", "500", "invalid_request"],
)
def test_a_failed_refresh_is_counted_by_its_outcome_class(
    world: World, telemetry: Readers, answer: httpx.Response, outcome: str, error: str
) -> None:
    keeper = expired(world)
    world.provider.faults.append(lambda form: answer)
    with pytest.raises(Exception) as raised:
        keeper.credential()
    assert type(raised.value).__name__ == error
    report = telemetry.report()
    assert report.count(REFRESHES, {OUTCOME: outcome, "error.type": error}) == 1
    assert report.count(REFRESHES) == 1
    (span,) = [s for s in report.transactions() if s.attributes.get(OUTCOME) == outcome]
    assert span.status == "ERROR" and span.attributes[RESULT] == "failed"
    assert span.attributes["error.type"] == error


def test_a_refused_grant_is_a_definitive_outcome(world: World, telemetry: Readers) -> None:
    world.login()
    keeper = world.keeper()
    keeper.access_token()
    world.provider.grants[0].revoked = True
    world.clock.advance(3600)
    with pytest.raises(Exception, match="log in again"):
        keeper.credential()
    assert telemetry.report().count(REFRESHES, {OUTCOME: "definitive"}) == 1


def test_an_outage_with_a_valid_token_serves_it_and_says_so(
    world: World, telemetry: Readers
) -> None:
    world.login()
    keeper = world.keeper()
    held = keeper.access_token()
    world.clock.advance(3600 - 30)  # inside the refresh margin: still valid
    world.provider.faults.append(lambda form: httpx.Response(503))
    assert keeper.access_token() == held
    assert keeper.settle(WAIT)
    report = telemetry.report()
    assert report.count(STALE_SERVES) >= 1
    assert report.count(REFRESHES, {OUTCOME: "not_processed"}) == 1
    (span,) = [s for s in report.transactions() if s.attributes.get(OUTCOME)]
    assert span.attributes["grantkeeper.transaction.background"] is True
    assert span.attributes[RESULT] == "served_valid_token"


def test_stale_window_serves_are_counted_and_fresh_ones_are_not(
    world: World, telemetry: Readers
) -> None:
    world.login()
    keeper = world.keeper()
    for _ in range(5):
        keeper.access_token()
    assert telemetry.report().count(STALE_SERVES) == 0
    world.provider.lock.acquire()  # the refresh ahead waits, so the window stays open
    try:
        world.clock.advance(3600 - 30)
        for _ in range(3):
            assert keeper.cached() is not None
    finally:
        world.provider.lock.release()
    assert keeper.settle(WAIT)
    report = telemetry.report()
    assert report.count(STALE_SERVES, {"grantkeeper.credential.key": RESOURCE}) == 3
    assert report.count(REFRESHES, {OUTCOME: "answered"}) == 1


def test_adopting_a_peers_refresh_is_counted_and_spends_nothing(
    world: World, telemetry: Readers
) -> None:
    world.login()
    first, second = world.keeper(), world.keeper()
    first.access_token()
    second.access_token()
    assert telemetry.report().count(ADOPTIONS) == 0  # loading is not adopting
    world.clock.advance(3600)
    first.credential()
    second.credential()
    report = telemetry.report()
    assert report.count(ADOPTIONS, {"grantkeeper.adoption.locked": False}) == 1
    assert report.count(REFRESHES) == 1 == world.provider.refresh_calls
    results = sorted(str(s.attributes.get(RESULT)) for s in report.transactions()[-2:])
    assert results == ["adopted", "refreshed"]


def test_an_adoption_under_the_lock_is_counted_as_locked(world: World, telemetry: Readers) -> None:
    """The second Keeper read A without the lock, then finds B once it holds the lock."""
    world.login()
    first = world.keeper()

    def peer_refreshes_first(stage: str) -> None:
        if stage == "lock_wait":  # A read, lock not taken yet: the peer refreshes now
            first.credential()

    second = world.keeper(checkpoint=peer_refreshes_first)
    first.access_token()
    second.access_token()
    world.clock.advance(3600)
    second.credential()
    report = telemetry.report()
    assert report.count(ADOPTIONS, {"grantkeeper.adoption.locked": True}) == 1
    assert report.count(ADOPTIONS) == 1 and world.provider.refresh_calls == 1
    assert report.recorded(LOCK_WAIT, {"grantkeeper.lock.result": "acquired"}) == 2


def test_an_answer_the_store_refused_is_marked_unpersisted(
    world: World, telemetry: Readers
) -> None:
    world.login()
    world.refuse_b()
    (span,) = [s for s in telemetry.report().transactions() if s.attributes.get(OUTCOME)]
    assert span.attributes[RESULT] == "refreshed"
    assert span.attributes["grantkeeper.refresh.persisted"] is False
    world.store.fail_writes = lambda record: False


def test_a_401_recovery_is_counted_once_per_rejected_request(
    world: World, telemetry: Readers
) -> None:
    a = world.login().access_token
    keeper = world.keeper()

    def resource(request: httpx.Request) -> httpx.Response:
        if request.url.host == "127.0.0.1":
            return world.provider.mock_handler(request)
        token = request.headers.get("authorization", "")[7:]
        ok = token != a and world.provider.is_active(token)
        return httpx.Response(200 if ok else 401)

    with httpx.Client(auth=HttpxAuth(keeper), transport=httpx.MockTransport(resource)) as client:
        assert client.get(RESOURCE).status_code == 200  # A refused, B renewed, sent again
        assert client.get(RESOURCE).status_code == 200  # B: no recovery
    report = telemetry.report()
    assert report.count(RECOVERIES, {"http.response.status_code": 401}) == 1
    assert report.count(REFRESHES) == 1


def test_a_forced_login_is_counted_with_its_reason(
    tmp_path: Path, provider: FakeProvider, telemetry: Readers
) -> None:
    store = FileStore(tmp_path)
    logins: list[object] = []

    def log_in(need: object) -> None:
        logins.append(need)
        access, refresh = provider.issue()
        record = sample_record(access, refresh, now=datetime.now(UTC))
        current = store.read(KEY)
        store.write(KEY, record, expected_version=current.version if current else None)

    http = httpx.Client(transport=provider.transport())
    with Keeper(store, KEY, http_client=http, recover=log_in) as keeper:
        assert keeper.access_token()
    http.close()
    assert len(logins) == 1
    report = telemetry.report()
    assert report.count(FORCED_LOGINS, {"grantkeeper.login.reason": "LoginRequired"}) == 1


def test_a_key_attribute_keeps_no_query_user_or_fragment_of_the_server_url() -> None:
    key = gk_telemetry.key_attribute
    assert key("https://user:pw@mcp.example.test:8443/mcp?api_key=s3cret") == (
        "https://mcp.example.test:8443/mcp"
    )
    assert key("https://mcp.example.test/mcp#work") == "https://mcp.example.test/mcp#work"
    assert key("http://[::1]:9/mcp") == "http://[::1]:9/mcp"
    assert key("http://[::1/broken") == "<unparsable>"


@pytest.mark.realserver
def test_a_refresh_at_the_real_authorization_server_is_reported(
    keeper: Keeper, auth: AuthServer, telemetry: Readers
) -> None:
    """The same report, with oidc-provider (rotation, reuse detection) answering."""
    held = keeper.access_token()
    with tracer.start_as_current_span("request") as request:
        renewed = keeper.credential(rejected=held).access_token
    assert renewed != held
    assert (auth.stats()["refresh_success"], auth.stats()["replays"]) == (1, 0)
    report = telemetry.report()
    assert report.count(REFRESHES, {OUTCOME: "answered"}) == 1 == report.count(REFRESHES)
    (timed,) = report.matching(TOKEN_REQUEST)
    assert timed.attributes["server.address"] == httpx.URL(auth.issuer).host
    (span,) = [s for s in report.transactions() if s.attributes.get(RESULT) == "refreshed"]
    assert linked_to(span, request) and span.status == "UNSET"


# -- without the API --------------------------------------------------------------------

WITHOUT_THE_API = textwrap.dedent(
    """
    import sys

    class NoOpenTelemetry:  # as if grantkeeper[otel] (and all that needs it) were absent
        def find_spec(self, name, path=None, target=None):
            if name == "opentelemetry" or name.startswith("opentelemetry."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    if sys.argv[2] == "no API":
        sys.meta_path.insert(0, NoOpenTelemetry())

    import httpx
    from grantkeeper import FileStore, Keeper
    from grantkeeper._observe import telemetry
    from grantkeeper.testing import KEY, FakeProvider, StepClock, sample_record

    provider, clock, store = FakeProvider(), StepClock(), FileStore(sys.argv[1])
    access, refresh = provider.issue()
    store.write(KEY, sample_record(access, refresh, now=clock()), expected_version=None)
    http = httpx.Client(transport=provider.transport())
    with Keeper(store, KEY, http_client=http, clock=clock) as keeper:
        keeper.access_token()
        clock.advance(3600)
        renewed = keeper.access_token()
    assert renewed != access and provider.refresh_calls == 1
    print("enabled:", telemetry.enabled())
    print("sdk:", any(m.startswith("opentelemetry.sdk") for m in sys.modules))
    print("loaded:", any(m.startswith("opentelemetry") for m in sys.modules))
    """
)


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("no API", "enabled: False\nsdk: False\nloaded: False"),
        ("API, no SDK", "enabled: True\nsdk: False\nloaded: True"),
    ],
)
def test_without_the_api_or_an_sdk_a_refresh_works_and_nothing_is_recorded(
    tmp_path: Path, setting: str, expected: str
) -> None:
    """Without the API nothing of OpenTelemetry is imported; with the API and no SDK set
    (the mcp extra brings the API) grantkeeper reports to its no-op providers."""
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_THE_API, str(tmp_path), setting],
        capture_output=True,
        text=True,
        timeout=WAIT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(["src", "."])},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == expected


# -- two processes sharing a credential ---------------------------------------------------


def _process(
    home: Path,
    start: multiprocessing.synchronize.Barrier,
    answer: Connection,
) -> None:
    """One application: its own SDK readers and a Keeper of the shared credential. It loads
    the credential, then (with the other process, at once) has its request's token refused
    and asks for a renewed one; it reports what its readers collected."""
    os.setsid()  # its own session: reap() signals it, and nothing else
    readers = Readers().install()
    try:
        with Keeper(FileStore(home), KEY) as keeper:
            refused = keeper.access_token()
            start.wait(WAIT)
            with trace.get_tracer("app").start_as_current_span("request") as request:
                renewed = keeper.credential(rejected=refused, timeout=WAIT).access_token
            context = request.get_span_context()
        answer.send(("ok", renewed, (context.trace_id, context.span_id), readers.report()))
    except Exception as exc:  # reported to the parent, which fails the test
        answer.send(("error", f"{type(exc).__name__}: {exc}", None, None))
    finally:
        answer.close()


def test_two_processes_sharing_a_credential_report_one_refresh_and_one_adoption(
    tmp_path: Path, served_provider: FakeProvider
) -> None:
    access, refresh = served_provider.issue()
    record = sample_record(
        access, refresh, now=datetime.now(UTC), token_endpoint=served_provider.url
    )
    FileStore(tmp_path).write(KEY, record, expected_version=None)
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    pipes = [context.Pipe(duplex=False) for _ in range(2)]
    children = [
        context.Process(target=_process, args=(tmp_path, start, sender), daemon=True)
        for _, sender in pipes
    ]
    try:
        for child in children:
            child.start()
        answers = []
        for receiver, sender in pipes:
            sender.close()
            assert receiver.poll(WAIT), "a process did not answer"
            answers.append(receiver.recv())
    finally:
        for child in children:
            reap(child)
    assert [a[0] for a in answers] == ["ok", "ok"], answers
    assert answers[0][1] == answers[1][1] != access  # both serve the one renewed token
    assert served_provider.refresh_calls == 1 and served_provider.replays == 0
    reports: list[Report] = [a[3] for a in answers]
    (refresher,) = [r for r in reports if r.count(REFRESHES)]
    (adopter,) = [r for r in reports if r is not refresher]
    assert refresher.count(REFRESHES, {OUTCOME: "answered"}) == 1
    assert refresher.recorded(TOKEN_REQUEST) == 1
    assert refresher.recorded(LOCK_WAIT, {"grantkeeper.lock.result": "acquired"}) == 1
    assert adopter.count(REFRESHES) == 0 and adopter.recorded(TOKEN_REQUEST) == 0
    assert adopter.count(ADOPTIONS) == 1 and refresher.count(ADOPTIONS) == 0
    total = refresher + adopter
    assert total.count(REFRESHES) == 1 and total.count(ADOPTIONS) == 1
    # Each process's transaction span is linked to the request in that process that waited.
    for report, (_, _, request, _) in zip(reports, answers, strict=True):
        waited = [s for s in report.transactions() if s.attributes.get(RESULT) != "loaded"]
        (span,) = waited
        assert [(t, s) for t, s, _ in span.links] == [tuple(request)]
    (refreshed,) = [s for s in refresher.transactions() if s.attributes.get(RESULT) == "refreshed"]
    (adopted,) = [s for s in adopter.transactions() if s.attributes.get(RESULT) == "adopted"]
    assert refreshed.attributes[OUTCOME] == "answered" and OUTCOME not in adopted.attributes
