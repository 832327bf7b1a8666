"""The httpx and httpx2 adapters, driven through mock transports with a fake provider."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import httpx
import httpx2
import pytest

from grantkeeper import (
    AuthenticationRequired,
    DeadlineExceeded,
    HttpxAuth,
    Keeper,
    LoginRequired,
    RetryRequired,
)
from grantkeeper._http_auth.driver import origin
from grantkeeper.mcp import Httpx2Auth
from harness.fake_provider import FakeProvider
from tests.helpers import RESOURCE, World

OTHER = "https://elsewhere.example.test/collect"
CHALLENGE = 'Bearer error="invalid_token"'


@dataclass
class Resource:
    """The protected resource (the ``api`` fixture): accepts the tokens the provider issued,
    minus those refused."""

    provider: FakeProvider
    refused: set[str] = field(default_factory=set)
    seen: list[tuple[str, str | None]] = field(default_factory=list)
    before_answer: Callable[[str | None], None] = lambda token: None

    def answer(self, url: str, authorization: str | None) -> tuple[int, dict[str, str]]:
        self.seen.append((url, authorization))
        if url.startswith(OTHER):
            return 200, {}
        if url.endswith("/moved"):
            return 302, {"location": OTHER}
        token = authorization[7:] if authorization else None
        self.before_answer(token)
        if token and token not in self.refused and self.provider.is_active(token):
            return 200, {}
        return 401, {"www-authenticate": CHALLENGE}

    def httpx(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "127.0.0.1":
            return self.provider.mock_handler(request)
        status, headers = self.answer(str(request.url), request.headers.get("authorization"))
        return httpx.Response(status, headers=headers)

    def httpx2(self, request: httpx2.Request) -> httpx2.Response:
        status, headers = self.answer(str(request.url), request.headers.get("authorization"))
        return httpx2.Response(status, headers=headers)


@pytest.fixture
def api(world: World) -> Resource:
    return Resource(world.provider)


Get = Callable[[Resource, Keeper, str], int]


def logged_in(world: World) -> tuple[str, Keeper]:
    """Log in at the provider: the access token issued (A), and a Keeper of the credential."""
    a = world.login().access_token
    return a, world.keeper()


def driver(lib: ModuleType, auth: type[HttpxAuth | Httpx2Auth], asynchronous: bool) -> Get:
    """A GET through ``lib`` (httpx or httpx2): its Client, or its AsyncClient when
    ``asynchronous``, with ``auth`` of the keeper, over a mock transport to the resource."""

    def get(api: Resource, keeper: Keeper, url: str) -> int:
        handler = api.httpx if lib is httpx else api.httpx2
        if not asynchronous:
            with lib.Client(auth=auth(keeper), transport=lib.MockTransport(handler)) as client:
                return int(client.get(url).status_code)

        async def go() -> int:
            transport = lib.MockTransport(handler)
            async with lib.AsyncClient(auth=auth(keeper), transport=transport) as client:
                return int((await client.get(url)).status_code)

        return asyncio.run(go())

    return get


CLIENTS = pytest.mark.parametrize(
    "get",
    [
        driver(httpx, HttpxAuth, asynchronous=False),
        driver(httpx, HttpxAuth, asynchronous=True),
        driver(httpx2, Httpx2Auth, asynchronous=False),
        driver(httpx2, Httpx2Auth, asynchronous=True),
    ],
    ids=["httpx", "httpx-async", "httpx2", "httpx2-async"],
)


@CLIENTS
def test_healthy_requests_do_no_store_lock_or_provider_io(
    api: Resource, world: World, get: Get
) -> None:
    _, keeper = logged_in(world)
    keeper.access_token()
    world.store.calls.clear()
    for _ in range(20):
        assert get(api, keeper, RESOURCE) == 200
    assert world.store.calls == []
    assert world.provider.refresh_calls == 0


@CLIENTS
def test_a_401_for_the_current_token_refreshes_once_and_retries(
    api: Resource, world: World, get: Get
) -> None:
    a, keeper = logged_in(world)
    api.refused.add(a)
    assert get(api, keeper, RESOURCE) == 200
    assert world.provider.refresh_calls == 1
    tokens = [auth for _, auth in api.seen]
    assert tokens[0] == f"Bearer {a}" and tokens[1] != tokens[0]


@CLIENTS
def test_a_late_401_for_a_after_b_is_installed_retries_with_b_without_refreshing(
    api: Resource, world: World, get: Get
) -> None:
    a, keeper = logged_in(world)

    def peer_rotates_first(token: str | None) -> None:
        # While A's request is at the server, another caller renews: B is installed.
        if token == a and world.provider.refresh_calls == 0:
            keeper.credential(rejected=a)
            api.refused.add(a)

    api.before_answer = peer_rotates_first
    assert get(api, keeper, RESOURCE) == 200
    assert world.provider.refresh_calls == 1  # the peer's; the late 401 spent none


@CLIENTS
def test_a_401_on_the_retry_requires_authentication_without_a_second_refresh(
    api: Resource, world: World, get: Get
) -> None:
    _, keeper = logged_in(world)
    api.before_answer = lambda token: api.refused.add(token or "")
    with pytest.raises(AuthenticationRequired):
        get(api, keeper, RESOURCE)
    assert world.provider.refresh_calls == 1
    assert len(api.seen) == 2


@CLIENTS
def test_stale_credential_is_sent_at_once_and_refreshed_ahead(
    api: Resource, world: World, get: Get
) -> None:
    a, keeper = logged_in(world)
    world.clock.advance(3600 - 10)  # inside the refresh margin: still valid
    assert get(api, keeper, RESOURCE) == 200
    assert api.seen[0][1] == f"Bearer {a}"  # no request waits for the refresh
    assert keeper.settle(10)
    assert world.provider.refresh_calls == 1
    assert get(api, keeper, RESOURCE) == 200
    assert api.seen[-1][1] != f"Bearer {a}"


def test_other_origins_never_get_the_token_not_even_through_a_redirect(
    api: Resource, world: World
) -> None:
    _, keeper = logged_in(world)
    transport = httpx.MockTransport(api.httpx)
    with httpx.Client(auth=HttpxAuth(keeper), transport=transport, follow_redirects=True) as client:
        assert client.get(OTHER).status_code == 200
        assert client.get(f"{RESOURCE}/moved").status_code == 200
    assert [auth for url, auth in api.seen if url.startswith(OTHER)] == [None, None]
    assert api.seen[1][1] is not None  # our origin got it


@pytest.mark.parametrize("warm", [False, True], ids=["first-request", "healthy-path"])
def test_a_streamed_body_is_not_replayed_but_the_credential_is_renewed(
    api: Resource, world: World, warm: bool
) -> None:
    a, keeper = logged_in(world)

    def body() -> Iterator[bytes]:
        yield b"once"

    def buffering(request: httpx.Request) -> httpx.Response:
        # A transport that reads the body while sending makes the request's stream a
        # buffered one afterwards: replayability is judged as the request was sent.
        request.read()
        return api.httpx(request)

    transport = httpx.MockTransport(buffering)
    with httpx.Client(auth=HttpxAuth(keeper), transport=transport) as client:
        if warm:  # A in memory, the origin known: the POST goes out on the healthy path
            for _ in range(2):  # the first loads A, the second works out its freshness
                assert client.get(RESOURCE).status_code == 200
        api.refused.add(a)
        with pytest.raises(RetryRequired):
            client.post(RESOURCE, content=body())
        assert client.post(RESOURCE, content=b"again").status_code == 200
    assert world.provider.refresh_calls == 1


SPELLINGS = [
    RESOURCE,
    "https://MCP.Example.TEST/other/path?q=1",
    "https://mcp.example.test:443/mcp",
    "https://user:secret@mcp.example.test/mcp",
    "https://mcp.example.test:8443/mcp",
    "http://mcp.example.test/mcp",
    "http://mcp.example.test:443/mcp",
    "https://mcp.example.test.evil.test/mcp",
    "https://elsewhere.example.test/mcp",
]


@pytest.mark.parametrize(
    ("lib", "auth"), [(httpx, HttpxAuth), (httpx2, Httpx2Auth)], ids=["httpx", "httpx2"]
)
@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_the_healthy_path_sends_the_token_to_the_servers_origin_alone(
    api: Resource, world: World, lib: ModuleType, auth: Any, asynchronous: bool
) -> None:
    """Once a request to the server has gone out, later ones take the healthy path, which
    judges their origin by the HTTP library's parsed URL: it must agree with the full check
    (scheme, host and port, case and default port aside), spelling by spelling."""
    a, keeper = logged_in(world)
    handler = api.httpx if lib is httpx else api.httpx2
    urls = [RESOURCE, *(url for spelling in SPELLINGS for url in (spelling, RESOURCE))]
    if asynchronous:

        async def go() -> None:
            async with lib.AsyncClient(
                auth=auth(keeper), transport=lib.MockTransport(handler)
            ) as client:
                for url in urls:
                    await client.get(url)

        asyncio.run(go())
    else:
        with lib.Client(auth=auth(keeper), transport=lib.MockTransport(handler)) as client:
            for url in urls:
                client.get(url)
    assert len(api.seen) == len(urls)
    for url, (_, authorization) in zip(urls, api.seen, strict=True):
        same = origin(url) == origin(RESOURCE)
        assert authorization == (f"Bearer {a}" if same else None), url
    assert world.provider.refresh_calls == 0


def test_static_bearer_is_sent_as_is_and_a_401_is_final(api: Resource, world: World) -> None:
    transport = httpx.MockTransport(api.httpx)
    with httpx.Client(auth=HttpxAuth.bearer(RESOURCE, "static-token"), transport=transport) as c:
        with pytest.raises(AuthenticationRequired, match="static"):
            c.get(RESOURCE)
    assert api.seen == [(RESOURCE, "Bearer static-token")]
    assert world.provider.refresh_calls == 0

    a = world.login().access_token
    own = HttpxAuth.bearer(RESOURCE)  # the request's own Authorization header
    with httpx.Client(auth=own, transport=transport, headers={"Authorization": f"Bearer {a}"}) as c:
        assert c.get(RESOURCE).status_code == 200


def test_anonymous_sends_no_credential_and_a_401_says_a_login_is_needed(
    api: Resource, world: World
) -> None:
    transport = httpx.MockTransport(api.httpx)
    with httpx.Client(auth=HttpxAuth.anonymous(RESOURCE), transport=transport) as c:
        with pytest.raises(LoginRequired, match="without any"):
            c.get(RESOURCE)
    assert api.seen == [(RESOURCE, None)]
    assert world.provider.refresh_calls == 0


def test_choose_picks_one_of_three_policies(api: Resource, world: World) -> None:
    keeper = world.keeper()
    header = {"Authorization": "Bearer own"}
    for cls in (HttpxAuth, Httpx2Auth):
        assert cls.choose(RESOURCE, keeper=keeper).oauth
        assert not cls.choose(RESOURCE, keeper=keeper, token="static").oauth
        assert not cls.choose(RESOURCE, keeper=keeper, headers=header).oauth
        assert not cls.choose(RESOURCE).oauth
    transport = httpx.MockTransport(api.httpx)
    with httpx.Client(auth=HttpxAuth.choose(RESOURCE), transport=transport) as c:
        with pytest.raises(LoginRequired):
            c.get(RESOURCE)
    with httpx.Client(auth=HttpxAuth.choose(RESOURCE, token="static"), transport=transport) as c:
        with pytest.raises(AuthenticationRequired, match="static"):
            c.get(RESOURCE)
    assert api.seen == [(RESOURCE, None), (RESOURCE, "Bearer static")]


def test_deadline_ends_the_wait_but_not_the_refresh(api: Resource, world: World) -> None:
    a, keeper = logged_in(world)
    keeper.access_token()
    api.refused.add(a)
    at_provider, release = threading.Event(), threading.Event()

    def hold(form: dict[str, str]) -> httpx.Response | None:
        at_provider.set()
        release.wait(30)
        return None

    world.provider.faults.append(hold)
    transport = httpx.MockTransport(api.httpx)
    timeout = httpx.Timeout(5.0, pool=0.0)
    with httpx.Client(auth=HttpxAuth(keeper), transport=transport, timeout=timeout) as client:
        with pytest.raises(DeadlineExceeded):
            client.get(RESOURCE)
        assert at_provider.wait(30)  # the refresh is running, with nobody waiting for it
        release.set()
        keeper.close()  # waits for the refresh that outlived the caller
        assert keeper.current is not None and keeper.current.access_token != a
        world.store.calls.clear()
        assert client.get(RESOURCE).status_code == 200
    assert world.provider.refresh_calls == 1
    assert world.store.calls == []  # the next request was served from memory


def test_async_deadline_ends_the_wait_but_not_the_refresh(api: Resource, world: World) -> None:
    a, keeper = logged_in(world)
    keeper.access_token()
    api.refused.add(a)
    release = threading.Event()
    world.provider.faults.append(lambda form: None if release.wait(30) else None)

    async def go() -> None:
        transport = httpx2.MockTransport(api.httpx2)
        auth = Httpx2Auth(keeper, recovery_timeout=0.0)
        async with httpx2.AsyncClient(auth=auth, transport=transport) as client:
            with pytest.raises(DeadlineExceeded):
                await client.get(RESOURCE)
            release.set()
            await asyncio.to_thread(keeper.close)
            assert (await client.get(RESOURCE)).status_code == 200

    asyncio.run(go())
    assert world.provider.refresh_calls == 1


def test_concurrent_401s_for_the_same_token_cause_one_refresh(api: Resource, world: World) -> None:
    a, keeper = logged_in(world)
    keeper.access_token()
    api.refused.add(a)
    arrived = threading.Barrier(3)

    def all_at_once(token: str | None) -> None:
        if token == a:
            arrived.wait(30)  # every request has sent A before any 401 is answered

    api.before_answer = all_at_once
    transport = httpx.MockTransport(api.httpx)
    results: list[Any] = []
    with httpx.Client(auth=HttpxAuth(keeper), transport=transport) as client:
        threads = [
            threading.Thread(target=lambda: results.append(client.get(RESOURCE).status_code))
            for _ in range(3)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert results == [200, 200, 200]
    assert world.provider.refresh_calls == 1
    assert world.provider.replays == 0
