"""The per-server opt-out of the RFC 8707 ``resource`` parameter (issue 39).

Microsoft Entra ID v2 refuses ``resource`` next to ``scope`` (AADSTS9010010). A server
logged in with ``resource_indicator=False`` (``grantkeeper login --no-resource``) sends it
in no request of the login, nor at any refresh, in any process: the choice is kept in the
credential record. Against the real oidc-provider behind a recording proxy (what each
request carried, on the wire), and against a scripted provider that refuses the pair as
Entra does.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from grantkeeper import (
    AuthorizationDenied,
    Credential,
    FileStore,
    Keeper,
    ProviderError,
    ServerConfig,
    StoreCorrupt,
    login,
)
from grantkeeper._oauth.grants import (
    JWT_BEARER,
    EnterpriseIdentity,
    renewal_request,
    token_exchange_request,
)
from grantkeeper._oauth.workload import WorkloadIdentity
from grantkeeper._record import CLIENT_CREDENTIALS, record_from_json, record_to_json
from grantkeeper._servers import load_servers
from grantkeeper._status import UNBOUND_WARNING, AuthState, status_of
from grantkeeper.testing import sample_record
from harness import remember_secret
from harness.authserver import AuthServer
from harness.fault_proxy import FaultProxy, Mode, Request
from harness.resource_server import ResourceServer
from tests.fake_authserver import CODE, FOUND, ISSUER, REDIRECT, SERVER, FakeAS
from tests.helpers import T0
from tests.login_helpers import CLI_TIMEOUT, FAR_FUTURE, Browser, cli, remember

# -- what went over the wire --------------------------------------------------------------


@dataclass
class Recorder:
    """Keeps every request the proxy reads (its ``arm`` predicate, never matching: every
    request passes through unchanged)."""

    requests: list[Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, request: Request) -> bool:
        with self.lock:
            self.requests.append(request)
        return False

    def params(self) -> list[dict[str, list[str]]]:
        """Each request's query and form parameters, together."""
        with self.lock:
            seen = list(self.requests)
        return [
            {**parse_qs(urlsplit(r.target).query), **parse_qs(r.body.decode("latin-1"))}
            for r in seen
        ]

    def grants(self) -> list[dict[str, list[str]]]:
        return [p for p in self.params() if "grant_type" in p]


@dataclass
class EntraLike:
    """oidc-provider behind a recording proxy it announces as its issuer, and a resource
    that accepts the tokens whose audience is that resource. Like Entra, the provider
    issues for the resource without being told: it picks the audience itself."""

    proxy: FaultProxy
    auth: AuthServer
    resource: ResourceServer

    def record(self) -> Recorder:
        recorder = Recorder()
        self.proxy.arm(Mode.PASS, recorder)
        return recorder

    def works(self, token: str) -> bool:
        answer = httpx.post(
            self.resource.url,
            headers={"Authorization": f"Bearer {token}"},
            json={"jsonrpc": "2.0", "id": 0, "method": "ping"},
            trust_env=False,
            timeout=10.0,
        )
        return answer.status_code == 200


@pytest.fixture(scope="module")
def entra_like() -> Iterator[EntraLike]:
    with FaultProxy() as proxy, ResourceServer(issuer=proxy.url) as resource:
        with AuthServer(issuer=proxy.url, resources=[resource.url]) as auth:
            proxy.upstream = auth.port

            def accept(token: str) -> bool:
                info = auth.introspect(token)
                return info.get("active") is True and info.get("aud") == resource.url

            resource.accept = accept
            yield EntraLike(proxy, auth, resource)


def carried_resource(params: list[dict[str, list[str]]]) -> list[dict[str, list[str]]]:
    return [p for p in params if "resource" in p]


@pytest.mark.realserver
def test_a_login_and_a_refresh_with_the_opt_out_send_no_resource(
    entra_like: EntraLike, tmp_path: Path
) -> None:
    server = entra_like.resource.url
    home = tmp_path / "home"
    home.mkdir()
    recorder = entra_like.record()
    record = remember(
        login(
            ServerConfig(server, resource_indicator=False),
            store=FileStore(home),
            open_browser=Browser(entra_like.auth),
        )
    )
    sent = recorder.params()
    authorization = [p for p in sent if p.get("response_type") == ["code"]]
    assert authorization and "scope" in authorization[0], "a scope went without the resource"
    assert [g["grant_type"] for g in recorder.grants()] == [["authorization_code"]]
    assert carried_resource(sent) == []
    # The record still names the server: the key, identity checks and status use it.
    assert record.resource == server and record.resource_indicator is False
    assert entra_like.auth.introspect(record.access_token)["aud"] == server
    assert entra_like.works(record.access_token)

    # Another process, given only the store: it never reads servers.json (there is none).
    assert not (home / "servers.json").exists()
    recorder = entra_like.record()
    key = ServerConfig(server).key
    with Keeper(FileStore(home), key, clock=lambda: FAR_FUTURE) as later:
        fresh = remember(later.credential())
    assert [g["grant_type"] for g in recorder.grants()] == [["refresh_token"]]
    assert carried_resource(recorder.params()) == []
    assert fresh.access_token != record.access_token
    assert entra_like.works(fresh.access_token)
    stored = FileStore(home).read(key)
    assert stored is not None and stored.record.resource_indicator is False


@pytest.mark.realserver
def test_without_the_opt_out_the_same_login_sends_resource(
    entra_like: EntraLike, tmp_path: Path
) -> None:
    """The recorder sees what the opt-out removes: the default names the resource."""
    recorder = entra_like.record()
    record = remember(
        login(
            entra_like.resource.url,
            store=FileStore(tmp_path),
            open_browser=Browser(entra_like.auth),
        )
    )
    assert record.resource_indicator is True
    sent = recorder.params()
    [authorization] = [p for p in sent if p.get("response_type") == ["code"]]
    [exchange] = recorder.grants()
    assert authorization["resource"] == exchange["resource"] == [entra_like.resource.url]


def cli_login(entra_like: EntraLike, home: Path, server: str, *args: str) -> dict[str, object]:
    """``grantkeeper login SERVER --no-browser --json ARGS`` in a process of its own, with
    a browser that consents; its JSON answer."""
    env = {**os.environ, "GRANTKEEPER_HOME": str(home), "GRANTKEEPER_STORE": "file"}
    process = subprocess.Popen(
        [sys.executable, "-m", "grantkeeper", "login", server, "--no-browser", "--json", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        url = next((line.strip() for line in process.stderr if line.startswith("http")), "")
        assert url, "login printed no authorization URL"
        Browser(entra_like.auth)(url)
        stdout, stderr = process.communicate(timeout=CLI_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    answer: dict[str, object] = json.loads(stdout)
    return answer


@pytest.mark.realserver
def test_cli_no_resource_is_saved_and_status_warns(entra_like: EntraLike, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    recorder = entra_like.record()
    url = entra_like.resource.url
    assert cli_login(entra_like, home, url, "--name", "entra", "--no-resource")["state"] == "oauth"
    assert carried_resource(recorder.params()) == []
    [saved] = load_servers(home)
    assert saved.name == "entra" and saved.resource_indicator is False

    status = cli("status", "--json", home=home)
    assert status.returncode == 0, status.stderr
    [entry] = json.loads(status.stdout)
    assert entry["state"] == "oauth" and entry["action"] is None
    assert entry["warnings"] == [UNBOUND_WARNING]
    text = cli("status", home=home)
    assert text.returncode == 0
    assert f"warning: entra: {UNBOUND_WARNING}" in " ".join(text.stderr.split())

    # --resource turns it back on: saved, sent, and the warning gone.
    recorder = entra_like.record()
    cli_login(entra_like, home, "entra", "--resource")
    # Each authorization request (the check of the kept client's too) and the exchange.
    asked = [p for p in recorder.params() if "response_type" in p or "grant_type" in p]
    assert len(asked) >= 2 and all(p.get("resource") == [url] for p in asked)
    [saved] = load_servers(home)
    assert saved.resource_indicator is True
    [entry] = json.loads(cli("status", "--json", home=home).stdout)
    assert entry["warnings"] == [] and entry["state"] == "oauth"
    token = cli("token", "entra", home=home)
    assert token.returncode == 0, token.stderr
    remember_secret(token.stdout.strip())


# -- a provider that refuses resource next to scope, as Entra does -------------------------

AADSTS = (
    "AADSTS9010010: The resource parameter provided in the request doesn't match with the "
    "requested scopes."
)


class RefusesResourceWithScope(FakeAS):
    """Answers ``invalid_target`` to any request naming both ``resource`` and ``scope``:
    at the authorization endpoint by an error redirect, at the token endpoint with 400."""

    def handle(self, request: httpx.Request) -> httpx.Response:
        form = parse_qs(request.content.decode())
        if request.url.path == "/token" and "resource" in form and "scope" in form:
            self.token_forms.append(form)
            return httpx.Response(
                400, json={"error": "invalid_target", "error_description": AADSTS}
            )
        return super().handle(request)

    def browser(self, windows: list[str] | None = None) -> Callable[[str], str]:
        consent = super().browser(windows)

        def authorize(url: str) -> str:
            query = parse_qs(urlsplit(url).query)
            if "resource" in query and "scope" in query:
                return f"{query['redirect_uri'][0]}?" + urlencode(
                    {
                        "error": "invalid_target",
                        "error_description": AADSTS,
                        "state": query["state"][0],
                        "iss": self.issuer,
                    }
                )
            return consent(url)

        return authorize


def person_login(
    home: Path, fake: FakeAS, windows: list[str], resource_indicator: bool | None = None
) -> object:
    return login(
        ServerConfig(SERVER),
        store=FileStore(home),
        discovery=FOUND,
        authorize=fake.browser(windows),
        redirect_uri=REDIRECT,
        http=fake.client(),
        scope="mcp offline_access",
        resource_indicator=resource_indicator,
    )


def test_a_person_login_refused_for_resource_and_scope_names_the_opt_out(
    tmp_path: Path,
) -> None:
    fake, windows = RefusesResourceWithScope(), list[str]()
    with pytest.raises(AuthorizationDenied) as refused:
        person_login(tmp_path, fake, windows)
    message = str(refused.value)
    assert "invalid_target" in message and "AADSTS9010010" in message
    assert f"grantkeeper login {SERVER} --no-resource" in message
    assert CODE not in message
    assert fake.token_forms == []  # refused before any code existed
    assert FileStore(tmp_path).read(ServerConfig(SERVER).key) is None

    record = person_login(tmp_path, fake, windows, resource_indicator=False)
    assert not any("resource" in parse_qs(urlsplit(url).query) for url in windows[1:])
    assert [f["grant_type"] for f in fake.token_forms] == [["authorization_code"]]
    assert "resource" not in fake.token_forms[0]
    stored = FileStore(tmp_path).read(ServerConfig(SERVER).key)
    assert stored is not None and stored.record == record
    assert stored.record.resource == SERVER and stored.record.resource_indicator is False

    # Its refresh, in a Keeper that knows only the store, sends no resource either.
    with Keeper(
        FileStore(tmp_path),
        ServerConfig(SERVER).key,
        http_client=fake.client(),
        clock=lambda: FAR_FUTURE,
    ) as keeper:
        keeper.credential()
    assert [f["grant_type"] for f in fake.token_forms][-1] == ["refresh_token"]
    assert all("resource" not in form for form in fake.token_forms)

    # A login again from a process that knows only the URL keeps the stored choice.
    seen = len(windows)
    again = person_login(tmp_path, fake, windows)
    assert isinstance(again, Credential) and again.resource_indicator is False
    assert not any("resource" in parse_qs(urlsplit(url).query) for url in windows[seen:])
    assert all("resource" not in form for form in fake.token_forms)


def test_a_machine_login_refused_for_resource_and_scope_names_the_opt_out(
    tmp_path: Path,
) -> None:
    fake = RefusesResourceWithScope()
    secret = "machine-client-SECRET-0123456789"
    remember_secret(secret)
    config = ServerConfig(
        SERVER, client_id="machine", client_secret=secret, grant="client_credentials"
    )

    def machine(config: ServerConfig) -> object:
        return login(
            config, store=FileStore(tmp_path), discovery=FOUND, http=fake.client(), scope="mcp"
        )

    with pytest.raises(ProviderError) as refused:
        machine(config)
    assert refused.value.error == "invalid_target" and refused.value.status == 400
    assert "--no-resource" in str(refused.value) and "AADSTS9010010" in str(refused.value)
    assert secret not in str(refused.value)

    # The server's own setting, as servers.json would hold it.
    machine(dataclasses.replace(config, resource_indicator=False))
    with Keeper(
        FileStore(tmp_path),
        config.key,
        http_client=fake.client(),
        clock=lambda: FAR_FUTURE,
    ) as keeper:
        keeper.credential()  # renewed by asking again
    grants = [f["grant_type"] for f in fake.token_forms]
    assert grants == [["client_credentials"]] * 3
    assert [("resource" in f, "scope" in f) for f in fake.token_forms] == [
        (True, True),
        (False, True),
        (False, True),
    ]


def test_login_argument_overrides_the_server_setting(tmp_path: Path) -> None:
    fake, windows = RefusesResourceWithScope(), list[str]()
    with pytest.raises(AuthorizationDenied):
        login(
            ServerConfig(SERVER, resource_indicator=False),
            store=FileStore(tmp_path),
            discovery=FOUND,
            authorize=fake.browser(windows),
            redirect_uri=REDIRECT,
            http=fake.client(),
            scope="mcp",
            resource_indicator=True,
        )


# -- the record and status -----------------------------------------------------------------


@pytest.mark.portable
def test_the_record_keeps_the_choice_and_older_records_sent_it() -> None:
    record = sample_record("access-SECRET-0123456789", "refresh-SECRET-0123456789", now=T0)
    opted_out = record.replace(resource_indicator=False)
    data = json.loads(json.dumps(record_to_json(opted_out)))
    assert data["resource_indicator"] is False
    assert record_from_json(data) == opted_out
    assert record_from_json(data).sent_resource is None
    older = {k: v for k, v in record_to_json(record).items() if k != "resource_indicator"}
    assert record_from_json(older).resource_indicator is True
    assert record_from_json(older).sent_resource == record.resource
    with pytest.raises(StoreCorrupt, match="resource_indicator"):
        record_from_json({**data, "resource_indicator": "no"})


@pytest.mark.portable
def test_status_warns_without_changing_state_or_action() -> None:
    record = sample_record("access-SECRET-0123456789", "refresh-SECRET-0123456789", now=T0)
    key = ServerConfig(record.resource).key
    bound = status_of(key, record, now=T0)
    unbound = status_of(key, record.replace(resource_indicator=False), now=T0)
    assert bound.warnings == () and unbound.warnings == (UNBOUND_WARNING,)
    assert (unbound.state, unbound.action) == (bound.state, bound.action) == (AuthState.OAUTH, None)
    dead = record.replace(resource_indicator=False, reauth_reason="invalid_grant")
    needs_login = status_of(key, dead, now=T0)
    assert needs_login.state is AuthState.REAUTHENTICATION_REQUIRED
    assert needs_login.action is not None and "--no-resource" not in needs_login.action


@pytest.mark.portable
def test_every_renewal_and_the_token_exchange_leave_resource_out() -> None:
    """The requests no login test above reaches: a workload's and a machine client's
    renewal, and the cross-app token exchange at the enterprise IdP (``audience`` still
    names the authorization server there)."""
    record = sample_record("access-SECRET-0123456789", "refresh-SECRET-0123456789", now=T0).replace(
        resource_indicator=False, client_secret="client-SECRET-0123456789"
    )
    # A compact JWS with no exp: its signature is the authorization server's to check.
    claims = base64.urlsafe_b64encode(b'{"sub":"pod"}').rstrip(b"=").decode()
    workload = WorkloadIdentity(token=lambda: f"e30.{claims}.signature-SECRET-0123456789")
    kinds = {
        "refresh": record,
        "client credentials": record.replace(grant=CLIENT_CREDENTIALS, scope_requested="mcp"),
        "workload": record.replace(grant=JWT_BEARER, workload_source="callable"),
    }
    for kind, opted_out in kinds.items():
        form = renewal_request(opted_out, T0, workload=workload).form
        assert "resource" not in form, kind
        sent = renewal_request(opted_out.replace(resource_indicator=True), T0, workload=workload)
        assert sent.form["resource"] == record.resource, kind

    identity = EnterpriseIdentity("https://idp.example.com/token", "app", "id-token-SECRET-01")
    exchange = token_exchange_request(identity, audience=ISSUER, resource=None, scope="mcp")
    assert "resource" not in exchange.form and exchange.form["audience"] == ISSUER
