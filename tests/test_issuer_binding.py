"""Registrations and credentials are bound to the issuer that made them (SEP-2352).

When the server moves to another authorization server, the next login (a Keeper's
recovery) discovers afresh, registers there and logs in there; no client ID, token or
refresh token of the old issuer ever reaches the new one, and the old grant is revoked at
its own issuer. A configured client ID is bound to its issuer the same way.

The conformance suite's ``auth/authorization-server-migration`` shows the same against its
own servers, through the library and through the proxy (``conformance/run.py``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from grantkeeper import (
    AccountChanged,
    Credential,
    FileStore,
    Keeper,
    ReauthenticationRequired,
    ServerConfig,
    ServerConfigError,
    login,
    login_recovery,
    resolve_server,
    save_server,
)
from grantkeeper._oauth.auth_server_metadata import AuthServerMetadata
from grantkeeper._oauth.discovery import Discovery
from grantkeeper._oauth.kept_registrations import KeptRegistrations
from harness.authserver import AuthServer, play_browser
from harness.resource_server import ResourceServer
from tests.fake_authserver import ISSUER, META, REDIRECT, SERVER, FakeAS
from tests.login_helpers import remember

MOVED = "https://moved.example.com"
OLD = Discovery(SERVER, SERVER, replace(META, revocation_endpoint=f"{ISSUER}/revoke"))
NEW = Discovery(
    SERVER,
    SERVER,
    AuthServerMetadata(
        issuer=MOVED,
        authorization_endpoint=f"{MOVED}/authorize",
        token_endpoint=f"{MOVED}/token",
        registration_endpoint=f"{MOVED}/register",
        revocation_endpoint=f"{MOVED}/revoke",
        pushed_authorization_request_endpoint=f"{MOVED}/par",
        iss_parameter_supported=True,
        grant_types_supported=("authorization_code", "refresh_token", "client_credentials"),
    ),
)


class Servers:
    """The old authorization server and the one the resource moved to, on one transport."""

    def __init__(self) -> None:
        self.old = FakeAS(name="old-")
        self.new = FakeAS(issuer=MOVED, name="new-")
        self.opened: list[str] = []
        self.to_new: list[str] = []  # everything the new server received, as text

    def at(self, url: str) -> FakeAS:
        return self.new if url.startswith(MOVED) else self.old

    def handle(self, request: httpx.Request) -> httpx.Response:
        server = self.at(str(request.url))
        if server is self.new:
            self.to_new += [str(request.url), str(request.headers), request.content.decode()]
        return server.handle(request)

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self.handle))

    def authorize(self, url: str) -> str:
        self.opened.append(url)
        if url.startswith(MOVED):
            self.to_new.append(url)
        return self.at(url).browser()(url)

    def seen_at_new(self) -> list[str]:
        """Every URL, header and body the new server (or a browser sent to it) received."""
        return self.to_new

    def login(
        self, config: ServerConfig, store: FileStore, discovery: Discovery, http: httpx.Client
    ) -> Credential:
        """A browser login through these servers' browser."""
        return login(
            config,
            store=store,
            discovery=discovery,
            authorize=self.authorize,
            redirect_uri=REDIRECT,
            http=http,
        )

    def leaked(self) -> list[str]:
        """What of the old server's clients and tokens reached the new one."""
        return [text for text in self.to_new if "old-" in text]


def test_a_recovery_follows_the_server_to_its_new_authorization_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    servers, store = Servers(), FileStore(tmp_path)
    config = ServerConfig(SERVER)
    with servers.client() as http:
        servers.login(config, store, OLD, http)
        looked: list[str] = []

        def discover(url: str, **_: object) -> Discovery:
            looked.append(url)
            return NEW  # the resource's metadata now names the new issuer

        monkeypatch.setattr("grantkeeper._relogin.discover", discover)
        hook = login_recovery(
            config, store=store, authorize=servers.authorize, redirect_uri=REDIRECT, http=http
        )
        with Keeper(store, config.key, recover=hook) as keeper:
            held = keeper.credential()
            assert held.issuer == ISSUER
            rejected = ReauthenticationRequired("the server rejected the access token (HTTP 401)")
            moved = keeper.recover(rejected, rejected=held.access_token)
            assert moved.issuer == MOVED
            assert moved.access_token == "new-access-token-secret-value"
            # The lifecycle serves the new issuer's credential from now on.
            assert keeper.credential().access_token == moved.access_token
    assert looked == [SERVER]
    assert servers.new.registered == ["new-client-1"]
    assert servers.seen_at_new() and servers.leaked() == []
    # The old grant is revoked where it was issued, and nowhere else.
    assert [form["token"] for form in servers.old.revoked] == [
        ["old-refresh-token-secret-value"],
        ["old-access-token-secret-value"],
    ]
    assert servers.new.revoked == []
    kept = KeptRegistrations(tmp_path)
    found_old, found_new = kept.find(ISSUER, REDIRECT), kept.find(MOVED, REDIRECT)
    assert found_old is not None and found_old.client_id == "old-client-1"
    assert found_new is not None and found_new.client_id == "new-client-1"


def test_a_configured_client_is_not_presented_to_another_issuer(tmp_path: Path) -> None:
    servers = Servers()
    config = ServerConfig(SERVER, client_id="old-pre-registered", client_issuer=ISSUER)
    with servers.client() as http:
        record = servers.login(config, FileStore(tmp_path), NEW, http)
    assert record.client_id == "new-client-1"  # registered where the server now points
    assert servers.seen_at_new() and servers.leaked() == []


def test_an_entry_without_client_issuer_is_bound_by_where_its_client_was_used(
    tmp_path: Path,
) -> None:
    """An entry from before ``client_issuer``: the credential stored with its client says
    where the client belongs, and that is kept, so the client stays away from the new
    issuer on every login after the move, not only on the first."""
    servers, store = Servers(), FileStore(tmp_path)
    config = ServerConfig(SERVER, client_id="old-pre-registered")
    servers.old.registered.append("old-pre-registered")
    with servers.client() as http:
        servers.login(config, store, OLD, http)
        first = servers.login(config, store, NEW, http)
        second = servers.login(config, store, NEW, http)
    assert first.client_id == second.client_id == "new-client-1"
    assert servers.new.registered == ["new-client-1"]  # one registration, then reused
    assert servers.seen_at_new() and servers.leaked() == []


def test_a_configured_client_is_used_at_its_own_issuer(tmp_path: Path) -> None:
    servers = Servers()
    config = ServerConfig(SERVER, client_id="old-pre-registered", client_issuer=ISSUER)
    servers.old.registered.append("old-pre-registered")  # what its operator registered
    with servers.client() as http:
        record = servers.login(config, FileStore(tmp_path), OLD, http)
    assert record.client_id == "old-pre-registered"
    assert servers.old.registered == ["old-pre-registered"]  # nothing registered


def test_a_machine_client_of_another_issuer_stops_with_what_to_do(tmp_path: Path) -> None:
    servers = Servers()
    config = ServerConfig(
        SERVER,
        client_id="old-machine",
        client_secret="old-machine-secret-value",
        client_issuer=ISSUER,
        grant="client_credentials",
    )
    with servers.client() as http, pytest.raises(ServerConfigError) as caught:
        login(config, store=FileStore(tmp_path), discovery=NEW, http=http)
    assert ISSUER in str(caught.value) and MOVED in str(caught.value)
    assert "old-machine-secret-value" not in str(caught.value)
    assert servers.seen_at_new() == []


def test_a_login_another_process_stored_for_another_account_is_not_adopted(
    tmp_path: Path,
) -> None:
    """Only the Keeper's own recovery (its hook ran, a person logged in) takes a new
    identity: a recovery that finds another account's login already stored refuses it."""
    servers, store = Servers(), FileStore(tmp_path)
    config = ServerConfig(SERVER)
    with servers.client() as http:
        servers.login(config, store, OLD, http)
        first = store.read(config.key)
        assert first is not None
        store.write(
            config.key, first.record.replace(subject="alice"), expected_version=first.version
        )
        ran: list[object] = []
        with Keeper(store, config.key, recover=ran.append) as keeper:
            held = keeper.credential()
            stored = store.read(config.key)
            assert stored is not None
            other = stored.record.replace(subject="bob", access_token="bobs-access-token-value")
            store.write(config.key, other, expected_version=stored.version)
            rejected = ReauthenticationRequired("the server rejected the access token (HTTP 401)")
            with pytest.raises(AccountChanged):
                keeper.recover(rejected, rejected=held.access_token)
            assert ran == []  # adopted, not logged in: the hook never ran


def test_the_client_issuer_is_kept_in_the_servers_file(tmp_path: Path) -> None:
    saved = save_server(
        ServerConfig(SERVER, name="moved", client_id="c", client_issuer=ISSUER), tmp_path
    )
    assert resolve_server(saved.name or "", tmp_path).client_issuer == ISSUER


@pytest.mark.realserver
def test_a_move_between_two_real_authorization_servers(tmp_path: Path) -> None:
    """Two oidc-providers: logged in at the first, the resource then names the second. The
    Keeper's recovery registers and logs in at the second, and the first grant is revoked
    at the first."""
    with (
        AuthServer() as first,
        AuthServer() as second,
        ResourceServer(issuer=first.issuer) as resource,
    ):
        store = FileStore(tmp_path)
        config = ServerConfig(resource.url)
        opened: list[str] = []

        def browser(url: str) -> bool:
            opened.append(url)
            callback = play_browser(url)
            assert httpx.get(callback, trust_env=False, timeout=10.0).status_code == 200
            return True

        hook = login_recovery(config, store=store, open_browser=browser, callback_timeout=60)
        with Keeper(store, config.key, recover=hook) as keeper:
            old = remember(keeper.credential())  # nothing stored: the first login
            assert old.issuer == first.issuer and first.is_active(old.access_token)
            resource.issuer = second.issuer  # the move (its metadata names the second now)
            new = remember(
                keeper.recover(ReauthenticationRequired("rejected"), rejected=old.access_token)
            )
        assert new.issuer == second.issuer and second.is_active(new.access_token)
        assert [urlsplit(url).netloc for url in opened] == [
            urlsplit(first.issuer).netloc,
            urlsplit(second.issuer).netloc,
        ]
        assert first.stats()["registrations"] == 1 and second.stats()["registrations"] == 1
        assert new.client_id != old.client_id
        assert not first.is_active(old.access_token)  # the old grant, revoked where it lives
        assert first.stats()["replays"] == 0 and second.stats()["replays"] == 0
