"""Dynamic registrations are kept per issuer and redirect URI and reused by later logins; a
registration the server forgot (invalid_client) is replaced once. Client ID metadata
documents (SEP-991) replace registration where the server takes them."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from grantkeeper import (
    CallbackTimeout,
    ClientRegistrationInvalid,
    FileStore,
    ServerConfig,
    ServerConfigError,
    login,
)
from grantkeeper._oauth.auth_server_metadata import parse_metadata
from grantkeeper._oauth.discovery import Discovery
from grantkeeper._oauth.kept_registrations import KeptRegistrations
from grantkeeper._oauth.registration import metadata_document_client
from grantkeeper._stores.admin import diagnose_store
from harness.authserver import AuthServer
from harness.resource_server import ResourceServer
from tests.fake_authserver import FOUND, ISSUER, META, REDIRECT, SERVER, FakeAS, browser
from tests.login_helpers import Browser, remember

CIMD_URL = "https://app.example.com/oauth/client.json"


def run(home: Path, fake: FakeAS, authorize: Callable[[str], str], **kw: object) -> object:
    return login(
        ServerConfig(SERVER),
        store=FileStore(home),
        discovery=kw.pop("discovery", FOUND),  # type: ignore[arg-type]
        authorize=authorize,
        redirect_uri=kw.pop("redirect_uri", REDIRECT),  # type: ignore[arg-type]
        http=fake.client(),
        **kw,  # type: ignore[arg-type]
    )


def client_ids(fake: FakeAS) -> list[str]:
    return [form["client_id"][0] for form in fake.token_forms]


def test_a_second_login_reuses_the_kept_registration(tmp_path: Path) -> None:
    fake = FakeAS()
    run(tmp_path, fake, browser())
    run(tmp_path, fake, browser())
    assert fake.registered == ["client-1"]
    assert client_ids(fake) == ["client-1", "client-1"]


def test_kept_registrations_are_not_taken_for_a_credential(tmp_path: Path) -> None:
    # They sit beside the credential files; doctor once called the first login's side file
    # "not a grantkeeper record" and exited 1.
    run(tmp_path, FakeAS(), browser())
    store = FileStore(tmp_path)
    assert store.problems() == []
    assert len(store.keys()) == 1
    assert diagnose_store(store).healthy


def test_another_redirect_uri_gets_its_own_registration(tmp_path: Path) -> None:
    fake = FakeAS()
    run(tmp_path, fake, browser())
    run(tmp_path, fake, browser(), redirect_uri="http://127.0.0.1:9999/callback")
    assert fake.registered == ["client-1", "client-2"]
    kept = KeptRegistrations(tmp_path)
    assert kept.find(ISSUER, REDIRECT) is not None
    assert kept.ports(ISSUER) == [9999, 8765]


def test_an_attempt_that_timed_out_leaves_its_registration_for_the_next(tmp_path: Path) -> None:
    fake = FakeAS()

    def gone(url: str) -> str:
        raise CallbackTimeout("no redirect")

    with pytest.raises(CallbackTimeout):
        run(tmp_path, fake, gone)
    with pytest.raises(CallbackTimeout):
        run(tmp_path, fake, gone)
    run(tmp_path, fake, browser())
    assert fake.registered == ["client-1"]


def test_a_forgotten_kept_registration_is_replaced_once_and_the_new_one_kept(
    tmp_path: Path,
) -> None:
    fake = FakeAS()
    run(tmp_path, fake, browser())
    fake.forget = 1  # the server restarted and lost client-1
    run(tmp_path, fake, browser())
    run(tmp_path, fake, browser())
    assert fake.registered == ["client-1", "client-2"]
    assert client_ids(fake) == ["client-1", "client-1", "client-2", "client-2"]


def test_a_replacement_the_server_refuses_too_is_final(tmp_path: Path) -> None:
    fake = FakeAS()
    run(tmp_path, fake, browser())
    fake.forget = 2
    with pytest.raises(ClientRegistrationInvalid):
        run(tmp_path, fake, browser())
    assert fake.registered == ["client-1", "client-2"]  # one replacement, no loop


def test_a_client_with_a_secret_is_not_kept(tmp_path: Path) -> None:
    from grantkeeper._oauth.registration import ClientRegistration

    kept = KeptRegistrations(tmp_path)
    kept.keep(ISSUER, REDIRECT, ClientRegistration("c", "a-client-secret-value"))
    assert kept.find(ISSUER, REDIRECT) is None
    assert not (tmp_path / "credentials" / ".registrations").exists()


def test_the_loopback_listener_takes_the_kept_port_again(tmp_path: Path) -> None:
    """Without a configured port, the second login listens where the first one did, so its
    redirect URI (and client) match."""
    fake = FakeAS()
    redirects: list[str] = []

    def open_browser(url: str) -> None:
        query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
        redirects.append(query["redirect_uri"])
        callback = browser()(url)
        assert httpx.get(callback, trust_env=False, timeout=10).status_code == 200

    for _ in range(2):
        login(
            ServerConfig(SERVER),
            store=FileStore(tmp_path),
            discovery=FOUND,
            open_browser=open_browser,
            http=fake.client(),
        )
    assert redirects[0] == redirects[1]
    assert fake.registered == ["client-1"]


# -- client ID metadata documents ------------------------------------------------------


def test_metadata_document_flag_is_parsed() -> None:
    doc = (
        b'{"issuer": "https://a.example.com", "authorization_endpoint": '
        b'"https://a.example.com/a", "token_endpoint": "https://a.example.com/t", '
        b'"client_id_metadata_document_supported": true}'
    )
    assert parse_metadata(
        doc, expected_issuer="https://a.example.com"
    ).client_id_metadata_document_supported


@pytest.mark.parametrize(
    "url",
    ["http://app.example.com/c.json", "https://app.example.com", "https://app.example.com/", "x"],
)
def test_a_metadata_url_must_be_https_with_a_path(url: str) -> None:
    with pytest.raises(ServerConfigError, match="https URL with a path"):
        metadata_document_client(url, META)


def test_cimd_is_used_as_client_id_without_registering(tmp_path: Path) -> None:
    from dataclasses import replace

    fake = FakeAS()
    supporting = Discovery(
        SERVER, SERVER, replace(META, client_id_metadata_document_supported=True)
    )
    run(tmp_path, fake, browser(), discovery=supporting, client_metadata_url=CIMD_URL)
    assert fake.registered == []
    assert client_ids(fake) == [CIMD_URL]
    assert "client_secret" not in fake.token_forms[0]


def test_without_server_support_cimd_falls_back_to_registration(tmp_path: Path) -> None:
    fake = FakeAS()
    run(tmp_path, fake, browser(), client_metadata_url=CIMD_URL)
    assert fake.registered == ["client-1"]


def test_a_cimd_client_the_server_refuses_is_not_replaced_by_registration(
    tmp_path: Path,
) -> None:
    from dataclasses import replace

    fake = FakeAS(forget=1)
    supporting = Discovery(
        SERVER, SERVER, replace(META, client_id_metadata_document_supported=True)
    )
    with pytest.raises(ClientRegistrationInvalid):
        run(tmp_path, fake, browser(), discovery=supporting, client_metadata_url=CIMD_URL)
    assert fake.registered == []


def test_a_cli_login_with_a_metadata_document_leaves_kept_ports_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI logs in by the library's rule, not a copy of it: a kept registration's port is
    worth listening on only for a client that would register (issue 32)."""
    import socket
    from dataclasses import replace

    from click.testing import CliRunner

    from grantkeeper._cli import cli
    from grantkeeper._oauth.registration import ClientRegistration

    monkeypatch.setenv("GRANTKEEPER_HOME", str(tmp_path))
    monkeypatch.setenv("GRANTKEEPER_STORE", "file")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        kept_port = probe.getsockname()[1]
    KeptRegistrations(tmp_path).keep(
        ISSUER, f"http://127.0.0.1:{kept_port}/callback", ClientRegistration("client-1")
    )
    supporting = Discovery(
        SERVER, SERVER, replace(META, client_id_metadata_document_supported=True)
    )
    for module in ("grantkeeper._login", "grantkeeper._oauth.discovery"):
        monkeypatch.setattr(f"{module}.discover", lambda url, **kw: supporting)
    args = ["login", SERVER, "--client-metadata-url", CIMD_URL, "--no-browser", "--timeout", "1"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0 and "Traceback" not in result.stderr  # nobody came back
    [url] = [line for line in result.stderr.splitlines() if line.startswith("https://")]
    query = parse_qs(urlsplit(url).query)
    assert query["client_id"] == [CIMD_URL]
    assert urlsplit(query["redirect_uri"][0]).port != kept_port


# -- against the real oidc-provider ----------------------------------------------------


@pytest.mark.realserver
def test_repeated_logins_register_one_client_at_the_real_server(
    auth_server: AuthServer, resource: ResourceServer, tmp_path: Path
) -> None:
    before = auth_server.stats()["registrations"]
    first = remember(
        login(resource.url, store=FileStore(tmp_path), open_browser=Browser(auth_server))
    )
    second = remember(
        login(resource.url, store=FileStore(tmp_path), open_browser=Browser(auth_server))
    )
    assert auth_server.stats()["registrations"] == before + 1
    assert first.client_id == second.client_id


def cli_login(auth_server: AuthServer, url: str, home: Path) -> str:
    """``grantkeeper login URL --no-browser --json``, with a browser approving the URL."""
    env = {**os.environ, "GRANTKEEPER_HOME": str(home), "GRANTKEEPER_STORE": "file"}
    process = subprocess.Popen(
        [sys.executable, "-m", "grantkeeper", "login", url, "--no-browser", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    authorize_url = next((line.strip() for line in process.stderr if line.startswith("http")), "")
    assert authorize_url, "login printed no authorization URL"
    Browser(auth_server)(authorize_url)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    return parse_qs(urlsplit(authorize_url).query)["client_id"][0]


@pytest.mark.realserver
def test_repeated_cli_logins_register_one_client_at_the_real_server(
    auth_server: AuthServer, resource: ResourceServer, tmp_path: Path
) -> None:
    before = auth_server.stats()["registrations"]
    first = cli_login(auth_server, resource.url, tmp_path)
    second = cli_login(auth_server, resource.url, tmp_path)
    assert auth_server.stats()["registrations"] == before + 1
    assert first == second


# -- the order, and what a registration asks for (SEP-837, SEP-2207) ---------------------


@pytest.mark.parametrize(
    ("client_id", "cimd", "expected"),
    [
        ("pre-registered", True, "pre-registered"),  # the operator's client comes first
        (None, True, CIMD_URL),  # then the metadata document, where the server takes one
        (None, False, "client-1"),  # then dynamic registration
    ],
)
def test_registration_order(
    tmp_path: Path, client_id: str | None, cimd: bool, expected: str
) -> None:
    from dataclasses import replace

    fake = FakeAS()
    discovery = Discovery(SERVER, SERVER, replace(META, client_id_metadata_document_supported=cimd))
    run(
        tmp_path,
        fake,
        browser(),
        discovery=discovery,
        client_id=client_id,
        client_metadata_url=CIMD_URL,
    )
    assert client_ids(fake) == [expected]
    assert fake.registered == ([expected] if expected == "client-1" else [])


def test_a_registration_asks_for_a_native_client_that_may_refresh() -> None:
    from grantkeeper._oauth.registration import registration_body

    body = registration_body(redirect_uris=[REDIRECT], client_name="grantkeeper", scope="mcp")
    assert body["application_type"] == "native"  # SEP-837: a loopback redirect
    assert body["grant_types"] == ["authorization_code", "refresh_token"]  # SEP-2207
    assert body["token_endpoint_auth_method"] == "none"


def test_a_login_without_a_refresh_token_assumes_none(tmp_path: Path) -> None:
    """SEP-2207: asking for refresh_token does not promise one. Without it the credential
    says it cannot be renewed, and nothing later tries to refresh it."""
    fake = FakeAS()

    def no_refresh(request: httpx.Request) -> httpx.Response:
        response = fake.handle(request)
        if request.url.path != "/token":
            return response
        body = response.json()
        body.pop("refresh_token")
        return httpx.Response(response.status_code, json=body)

    record = login(
        ServerConfig(SERVER),
        store=FileStore(tmp_path),
        discovery=FOUND,
        authorize=browser(),
        redirect_uri=REDIRECT,
        http=httpx.Client(transport=httpx.MockTransport(no_refresh)),
    )
    assert record.refresh_token is None and not record.renewable
