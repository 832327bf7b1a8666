"""A kept client registration that the authorization server no longer knows (it restarted
without its state) is found out before a browser opens, and replaced once: by a pushed
authorization request (RFC 9126) where the server takes them, else by reading the
registration (RFC 7592) where it handed out a management URI, else on the first failure
(no redirect came back, and the authorization endpoint now refuses the client).

The same three ways against the real oidc-provider: restarted knowing nothing, the next
login opens one browser window and succeeds."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from grantkeeper import (
    CallbackTimeout,
    ClientRegistrationInvalid,
    FileStore,
    ProtocolError,
    ServerConfig,
    login,
)
from grantkeeper._oauth.auth_server_metadata import parse_metadata
from grantkeeper._oauth.authorization import parse_pushed_response, pushed_request
from grantkeeper._oauth.discovery import Discovery
from grantkeeper._oauth.kept_registrations import KeptRegistrations
from grantkeeper._oauth.registration import ClientRegistration, parse_registration, read_verdict
from harness.authserver import AuthServer
from harness.resource_server import ResourceServer
from tests.fake_authserver import FOUND, ISSUER, META, PAR_ENDPOINT, REDIRECT, SERVER, FakeAS
from tests.login_helpers import Browser, remember

PUSHING = Discovery(
    SERVER, SERVER, replace(META, pushed_authorization_request_endpoint=PAR_ENDPOINT)
)
PUSH_ONLY = Discovery(SERVER, SERVER, replace(PUSHING.metadata, require_pushed_requests=True))


def run(
    home: Path,
    fake: FakeAS,
    windows: list[str],
    discovery: Discovery = FOUND,
    *,
    authorize: Callable[[str], str] | None = None,
    http: httpx.Client | None = None,
) -> object:
    """A login to :data:`SERVER` at ``fake``, through its browser (each window in
    ``windows``) unless ``authorize`` stands in, over ``http`` if given."""
    return login(
        ServerConfig(SERVER),
        store=FileStore(home),
        discovery=discovery,
        authorize=authorize or fake.browser(windows),
        redirect_uri=REDIRECT,
        http=http or fake.client(),
    )


# -- pushed authorization requests (RFC 9126) ---------------------------------------------


def test_a_pushed_request_finds_the_forgotten_client_before_the_browser_opens(
    tmp_path: Path,
) -> None:
    fake, windows = FakeAS(), list[str]()
    run(tmp_path, fake, windows, PUSHING)
    run(tmp_path, fake, windows, PUSHING)  # the server knows the kept client: reused
    fake.restart()
    run(tmp_path, fake, windows, PUSHING)
    assert fake.registered == ["client-1", "client-2"]
    # A push asks about a kept client; a client registered moments ago needs no asking.
    assert [form["client_id"] for form in fake.pushed] == [["client-1"], ["client-1"]]
    assert fake.pushed[0]["resource"] == [SERVER] and fake.pushed[0]["redirect_uri"] == [REDIRECT]
    assert len(windows) == 3  # one per login: none for the client the server forgot
    assert parse_qs(urlsplit(windows[2]).query)["client_id"] == ["client-2"]
    assert KeptRegistrations(tmp_path).find(ISSUER, REDIRECT) == ClientRegistration("client-2")


def test_where_pushing_is_optional_the_browser_gets_the_whole_request(tmp_path: Path) -> None:
    """A pushed reference expires within a minute or so (oidc-provider: 60 s): a URL
    printed for a person to open elsewhere must outlive that."""
    fake, windows = FakeAS(), list[str]()
    run(tmp_path, fake, windows, PUSHING)
    query = parse_qs(urlsplit(windows[0]).query)
    assert "request_uri" not in query and query["redirect_uri"] == [REDIRECT]


def test_where_pushing_is_required_the_browser_sees_only_a_reference(tmp_path: Path) -> None:
    fake, windows = FakeAS(), list[str]()
    run(tmp_path, fake, windows, PUSH_ONLY)
    [url] = windows
    assert sorted(parse_qs(urlsplit(url).query)) == ["client_id", "request_uri"]
    [pushed] = fake.pushed
    assert pushed["redirect_uri"] == [REDIRECT]
    assert pushed["resource"] == [SERVER]
    assert pushed["code_challenge_method"] == ["S256"]
    assert pushed["response_type"] == ["code"]
    assert "state" in pushed and "code_challenge" in pushed


def test_where_pushing_is_required_the_push_itself_finds_a_forgotten_client(
    tmp_path: Path,
) -> None:
    fake, windows = FakeAS(), list[str]()
    run(tmp_path, fake, windows, PUSH_ONLY)
    fake.restart()
    run(tmp_path, fake, windows, PUSH_ONLY)
    assert fake.registered == ["client-1", "client-2"]
    assert [form["client_id"] for form in fake.pushed] == [["client-1"], ["client-1"], ["client-2"]]
    assert len(windows) == 2


def test_a_push_that_says_nothing_of_the_client_keeps_it(tmp_path: Path) -> None:
    """A push endpoint that is down, or refuses for another reason, costs no registration:
    the kept client is used, and the login goes on."""
    fake, windows = FakeAS(), list[str]()
    run(tmp_path, fake, windows, PUSHING)
    for answer in (httpx.Response(503), httpx.Response(400, json={"error": "invalid_request"})):

        def refusing(request: httpx.Request, answer: httpx.Response = answer) -> httpx.Response:
            return answer if request.url.path == "/par" else fake.handle(request)

        run(
            tmp_path,
            fake,
            windows,
            PUSHING,
            http=httpx.Client(transport=httpx.MockTransport(refusing)),
        )
    assert fake.registered == ["client-1"]
    assert len(windows) == 3


def test_no_check_follows_a_redirect(tmp_path: Path) -> None:
    """A push, a registration read and the authorization endpoint that answer with a
    redirect to another host: nothing is sent there (a token must not travel on)."""
    fake = FakeAS(management=True)
    run(tmp_path, fake, [], PUSHING)
    fake.restart()
    elsewhere: list[httpx.Request] = []

    def redirecting(request: httpx.Request) -> httpx.Response:
        if request.url.host == "elsewhere.example.com":
            elsewhere.append(request)
            return httpx.Response(200)
        if request.url.path in ("/par", "/authorize") or request.url.path.startswith("/reg/"):
            return httpx.Response(307, headers={"location": "https://elsewhere.example.com/x"})
        return fake.handle(request)

    def nobody(url: str) -> str:
        raise CallbackTimeout("no redirect")

    with (
        pytest.raises(CallbackTimeout),
        httpx.Client(transport=httpx.MockTransport(redirecting), follow_redirects=True) as http,
    ):
        run(tmp_path, fake, [], PUSHING, authorize=nobody, http=http)
    assert elsewhere == []
    assert fake.registered == ["client-1"]  # no answer about the client: it is kept


def test_a_pushed_request_carries_a_confidential_clients_authentication() -> None:
    params = {"client_id": "c", "redirect_uri": REDIRECT, "state": "s"}
    basic = pushed_request(PAR_ENDPOINT, params, ClientRegistration("c", "the-secret-value"))
    assert basic.headers["Authorization"].startswith("Basic ")
    assert basic.form["client_id"] == "c" and "client_secret" not in basic.form
    public = pushed_request(PAR_ENDPOINT, params, ClientRegistration("c"))
    assert public.headers == {} and public.form["client_id"] == "c"
    assert "the-secret-value" in basic.secret_values()  # scrubbed from any error message


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (401, b'{"error": "invalid_client"}', ClientRegistrationInvalid),
        (400, b'{"error": "invalid_client"}', ClientRegistrationInvalid),
        (400, b'{"error": "invalid_request"}', ProtocolError),
        (503, b"<html>busy</html>", ProtocolError),
        (201, b"not json", ProtocolError),
        (201, b'{"expires_in": 60}', ProtocolError),
        (201, b'{"request_uri": 7}', ProtocolError),
        (201, b'{"request_uri": "' + b"u" * 5000 + b'"}', ProtocolError),
        (201, b"[" * 100_000, ProtocolError),
        (201, b'{"request_uri": "' + b"u" * 20_000 + b'"}', ProtocolError),
    ],
)
def test_a_pushed_response_is_read_or_refused_with_a_typed_error(
    status: int, body: bytes, error: type[Exception]
) -> None:
    with pytest.raises(error):
        parse_pushed_response(status, body)


def test_a_pushed_response_gives_its_request_uri() -> None:
    body = b'{"request_uri": "urn:ietf:params:oauth:request_uri:abc", "expires_in": 60}'
    assert parse_pushed_response(201, body) == "urn:ietf:params:oauth:request_uri:abc"


def test_the_push_endpoint_is_read_from_metadata_and_must_be_secure() -> None:
    def doc(endpoint: str) -> bytes:
        return json.dumps(
            {
                "issuer": "https://a.example.com",
                "authorization_endpoint": "https://a.example.com/a",
                "token_endpoint": "https://a.example.com/t",
                "pushed_authorization_request_endpoint": endpoint,
            }
        ).encode()

    parsed = parse_metadata(
        doc("https://a.example.com/par"), expected_issuer="https://a.example.com"
    )
    assert parsed.pushed_authorization_request_endpoint == "https://a.example.com/par"
    with pytest.raises(ProtocolError, match="HTTPS"):
        parse_metadata(doc("http://a.example.com/par"), expected_issuer="https://a.example.com")


# -- reading the registration (RFC 7592) --------------------------------------------------


def test_a_registration_read_finds_the_forgotten_client_before_the_browser_opens(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="grantkeeper")
    fake, windows = FakeAS(management=True), list[str]()
    run(tmp_path, fake, windows)
    run(tmp_path, fake, windows)  # the server still knows it: read, and reused
    fake.restart()
    run(tmp_path, fake, windows)
    assert fake.registered == ["client-1", "client-2"]
    assert fake.reads == [("client-1", "Bearer registration-token-of-client-1")] * 2
    assert len(windows) == 3  # one per login
    assert "registration-token-of" not in caplog.text


def test_a_registration_token_rotated_by_a_read_is_kept_for_the_next(tmp_path: Path) -> None:
    """RFC 7592 §3: a server may issue a new registration access token on a read; the old
    one is then refused, so the new one is what the next read must send."""
    fake, windows = FakeAS(management=True, rotate=True), list[str]()
    for _ in range(3):
        run(tmp_path, fake, windows)
    assert fake.registered == ["client-1"]  # known at every read: never replaced
    assert [auth for _, auth in fake.reads] == [
        "Bearer registration-token-of-client-1",
        "Bearer registration-token-of-client-1-again",
    ]
    kept = KeptRegistrations(tmp_path).find(ISSUER, REDIRECT)
    assert kept is not None
    assert kept.registration_access_token == "registration-token-of-client-1-again-again"


def test_a_registration_read_without_an_answer_keeps_the_client(tmp_path: Path) -> None:
    """An outage at the management URI says nothing about the client: it costs no
    registration, and the login goes on with the kept one."""
    fake, windows = FakeAS(management=True), list[str]()
    run(tmp_path, fake, windows)

    def down(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/reg/"):
            return httpx.Response(503)
        return fake.handle(request)

    run(tmp_path, fake, windows, http=httpx.Client(transport=httpx.MockTransport(down)))
    assert fake.registered == ["client-1"]
    assert len(windows) == 2


@pytest.mark.parametrize(
    ("status", "verdict"), [(200, True), (401, False), (404, False), (403, None), (500, None)]
)
def test_what_a_registration_read_says(status: int, verdict: bool | None) -> None:
    assert read_verdict(status) is verdict


def test_a_management_uri_is_kept_only_with_its_token_and_only_if_secure() -> None:
    def parsed(**extra: str) -> ClientRegistration:
        return parse_registration(201, json.dumps({"client_id": "c", **extra}).encode())

    full = parsed(
        registration_client_uri="https://a.example.com/reg/c", registration_access_token="t0k"
    )
    assert full.registration_client_uri == "https://a.example.com/reg/c"
    assert full.registration_access_token == "t0k" and "t0k" not in repr(full)
    alone = parsed(registration_client_uri="https://a.example.com/reg/c")
    assert alone.registration_client_uri is None
    plain = parsed(
        registration_client_uri="http://a.example.com/reg/c", registration_access_token="t0k"
    )
    assert plain.registration_client_uri is None and plain.registration_access_token is None


# -- the first failure --------------------------------------------------------------------


def test_without_a_way_to_ask_the_first_failure_replaces_the_client_once(tmp_path: Path) -> None:
    """No push, no management URI: the browser shows the server's refusal and no redirect
    comes back. The authorization endpoint, asked then, refuses the client: a new one is
    registered and the person asked again, in the same login."""
    fake, windows = FakeAS(), list[str]()
    run(tmp_path, fake, windows)
    fake.restart()
    run(tmp_path, fake, windows)
    assert fake.registered == ["client-1", "client-2"]
    assert fake.authorize_probes == ["client-1"]
    assert [parse_qs(urlsplit(url).query)["client_id"] for url in windows] == [
        ["client-1"],
        ["client-1"],
        ["client-2"],
    ]


def test_a_timeout_for_a_client_the_server_knows_keeps_it(tmp_path: Path) -> None:
    """The person walked away: the server still knows the client, so the next login
    reuses it rather than registering another."""
    fake = FakeAS()
    run(tmp_path, fake, [])

    def gone(url: str) -> str:
        raise CallbackTimeout("no redirect")

    with pytest.raises(CallbackTimeout):
        run(tmp_path, fake, [], authorize=gone)
    assert fake.authorize_probes == ["client-1"]
    assert KeptRegistrations(tmp_path).find(ISSUER, REDIRECT) == ClientRegistration("client-1")
    assert fake.registered == ["client-1"]


def test_a_replacement_that_times_out_too_is_final(tmp_path: Path) -> None:
    fake = FakeAS()
    run(tmp_path, fake, [])
    fake.restart()
    attempts: list[str] = []

    def nobody(url: str) -> str:
        attempts.append(url)
        raise CallbackTimeout("no redirect")

    with pytest.raises(CallbackTimeout):
        run(tmp_path, fake, [], authorize=nobody)
    assert len(attempts) == 2  # the forgotten client, then its replacement: no loop
    assert fake.registered == ["client-1", "client-2"]


# -- against the real oidc-provider -------------------------------------------------------


class CountingBrowser(Browser):
    """A :class:`Browser` that counts the windows it opens and can give up on a page."""

    def __init__(self, server: AuthServer) -> None:
        super().__init__(server)
        self.opened: list[str] = []
        self.refused: list[str] = []

    def __call__(self, url: str) -> bool:
        self.opened.append(url)
        try:
            return super().__call__(url)
        except RuntimeError as exc:
            # The server's error page: a person reads it, and no redirect ever comes.
            assert " 400" in str(exc), exc
            self.refused.append(url)
            return True


@pytest.mark.realserver
@pytest.mark.parametrize(
    ("pushed", "asked"), [("offered", "pushed"), ("required", ""), ("off", "read")]
)
def test_a_restarted_server_that_lost_its_clients_costs_one_window(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, pushed: str, asked: str
) -> None:
    """Offered pushes ask before the browser opens; required ones find out in the flow's
    own push; without them, the registration is read (oidc-provider hands out the URI)."""
    caplog.set_level(logging.INFO, logger="grantkeeper")
    with (
        AuthServer(pushed_requests=pushed) as auth,
        ResourceServer(issuer=auth.issuer) as resource,
    ):
        browser = CountingBrowser(auth)
        first = remember(login(resource.url, store=FileStore(tmp_path), open_browser=browser))
        kept = KeptRegistrations(tmp_path).find(auth.issuer, *_redirects(browser))
        assert kept is not None and kept.client_id == first.client_id
        assert kept.registration_client_uri is not None
        auth.restart_forgetting()
        assert auth.stats()["registrations"] == 0
        browser.opened.clear()
        caplog.clear()
        second = remember(login(resource.url, store=FileStore(tmp_path), open_browser=browser))
        assert len(browser.opened) == 1 and not browser.refused
        assert second.client_id != first.client_id
        assert auth.stats()["registrations"] == 1
        assert auth.is_active(second.access_token)
        query = parse_qs(urlsplit(browser.opened[0]).query)
        assert ("request_uri" in query) is (pushed == "required")
        if asked:
            assert f"login.registration_forgotten key={resource.url} asked={asked}" in caplog.text
        else:
            assert "login.reregistering" in caplog.text  # the flow's own push was refused
        assert (kept.registration_access_token or "unset") not in caplog.text


@pytest.mark.realserver
def test_the_first_failure_replaces_a_client_nothing_could_vouch_for(tmp_path: Path) -> None:
    """No push, and a kept client without a management URI (kept by an older version): the
    first window shows oidc-provider's refusal; the login then registers anew and asks once
    more, and succeeds."""
    with (
        AuthServer(pushed_requests="off") as auth,
        ResourceServer(issuer=auth.issuer) as resource,
    ):
        browser = CountingBrowser(auth)
        first = remember(login(resource.url, store=FileStore(tmp_path), open_browser=browser))
        [redirect] = _redirects(browser)
        kept = KeptRegistrations(tmp_path)
        kept.keep(auth.issuer, redirect, ClientRegistration(first.client_id or ""))
        auth.restart_forgetting()
        browser.opened.clear()
        second = remember(
            login(
                resource.url,
                store=FileStore(tmp_path),
                open_browser=browser,
                callback_timeout=2.0,  # what the person waits before the login looks again
            )
        )
        assert len(browser.opened) == 2 and browser.refused == browser.opened[:1]
        assert second.client_id != first.client_id
        assert auth.stats()["registrations"] == 1
        assert auth.is_active(second.access_token)


def _redirects(browser: CountingBrowser) -> list[str]:
    """The redirect URIs the browser was sent back to (the listener's)."""
    return sorted({callback.split("?", 1)[0] for callback in browser.callbacks})
