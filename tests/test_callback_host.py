"""Issue 39: a login redirect that names ``localhost`` (providers that register only
``http://localhost:PORT/...``) on a pinned port, from the library, ``servers.json``, ``login``
and ``proxy``; the listener stays on 127.0.0.1 whatever the redirect names."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import click
import httpx
import pytest
from click.testing import CliRunner

from grantkeeper import (
    CallbackServer,
    CallbackUnavailable,
    FileStore,
    ServerConfig,
    ServerConfigError,
    load_servers,
    login,
    save_server,
)
from grantkeeper._cli import cli
from grantkeeper._cli._proxy import login_settings, proxy
from grantkeeper._login import callback_ports
from grantkeeper._oauth.kept_registrations import KeptRegistrations
from grantkeeper._servers import resolve_server, servers_file
from harness import remember_secret
from harness.authserver import AuthServer
from harness.mcp_server import McpServer
from harness.resource_server import ResourceServer
from tests.login_helpers import CLI_TIMEOUT, Browser, introspect, remember

MCP_URL = "https://mcp.example.com/mcp"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def listening_addresses(port: int) -> set[str]:
    """The local addresses the kernel lists as listening on TCP ``port`` (Linux)."""
    found = set()
    for table, family in (("/proc/net/tcp", "v4"), ("/proc/net/tcp6", "v6")):
        if not os.path.exists(table):
            continue
        with open(table) as lines:
            for line in list(lines)[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.split(":")
                if int(hex_port, 16) == port and state == "0A":  # LISTEN
                    found.add(f"{family}:{address}")
    return found


def registered_redirect_uris(home: Path, issuer: str, redirect_uri: str) -> list[str]:
    """What the authorization server holds for the kept client (an RFC 7592 read)."""
    kept = KeptRegistrations(home).find(issuer, redirect_uri)
    assert kept is not None, f"no registration kept for {redirect_uri}"
    assert kept.registration_client_uri and kept.registration_access_token
    remember_secret(kept.registration_access_token)
    answer = httpx.get(
        kept.registration_client_uri,
        headers={"Authorization": f"Bearer {kept.registration_access_token}"},
        trust_env=False,
        timeout=10.0,
    )
    assert answer.status_code == 200, answer.text
    uris: list[str] = answer.json()["redirect_uris"]
    return uris


# -- the listener -----------------------------------------------------------------------------


def test_a_localhost_listener_names_localhost_but_listens_on_127_0_0_1_only() -> None:
    with CallbackServer(host="localhost", expected_state="s") as listener:
        assert listener.redirect_uri == f"http://localhost:{listener.port}/callback"
        assert listening_addresses(listener.port) == {"v4:0100007F"}  # 127.0.0.1, nothing else
        refused = httpx.get(
            f"{listener.redirect_uri}?code=c&state=s",
            headers={"Host": "evil.example"},
            trust_env=False,
            timeout=10.0,
        )
        assert refused.status_code == 400 and not listener.used
        answer = httpx.get(f"{listener.redirect_uri}?code=c&state=s", trust_env=False, timeout=10.0)
        assert answer.status_code == 200 and "Login complete" in answer.text
        assert listener.wait(0) == f"{listener.redirect_uri}?code=c&state=s"


def test_either_loopback_name_reaches_a_localhost_listener() -> None:
    with CallbackServer(host="localhost") as listener:
        numeric = f"http://127.0.0.1:{listener.port}/callback?code=c&state=s"
        assert httpx.get(numeric, trust_env=False, timeout=10.0).status_code == 200
        # What the login sees names the redirect URI it registered.
        assert listener.wait(0).startswith(f"http://localhost:{listener.port}/callback?")


def test_a_taken_port_names_the_address_actually_bound() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with (
            pytest.raises(CallbackUnavailable, match=f"port {port} on 127.0.0.1"),
            CallbackServer(port=port, host="localhost"),
        ):
            pass


def test_a_host_off_loopback_is_refused() -> None:
    with pytest.raises(ValueError, match="callback host"):
        CallbackServer(host="0.0.0.0")


# -- servers.json ----------------------------------------------------------------------------


def test_callback_host_and_port_round_trip_through_servers_json(home: Path) -> None:
    save_server(ServerConfig(MCP_URL, name="pinned", callback_host="localhost", callback_port=8765))
    [loaded] = load_servers()
    assert (loaded.callback_host, loaded.callback_port) == ("localhost", 8765)
    entry = json.loads(servers_file().read_text())["servers"]["pinned"]
    assert entry["callback_host"] == "localhost" and entry["callback_port"] == 8765
    save_server(ServerConfig(MCP_URL, name="plain"))
    assert "callback_host" not in json.loads(servers_file().read_text())["servers"]["plain"]
    assert resolve_server("plain").callback_host is None


@pytest.mark.parametrize("value", ["evil.example", "0.0.0.0", "::1", 5])
def test_a_callback_host_off_the_two_loopback_names_is_refused(home: Path, value: object) -> None:
    document = {"format": "grantkeeper-servers", "servers": {"odd": {"url": MCP_URL}}}
    document["servers"]["odd"]["callback_host"] = value  # type: ignore[index]
    servers_file().write_text(json.dumps(document))
    servers_file().chmod(0o600)
    with pytest.raises(ServerConfigError, match="'odd'.*callback_host"):
        load_servers()


def test_saving_a_bad_callback_host_writes_nothing(home: Path) -> None:
    with pytest.raises(ServerConfigError, match="callback_host"):
        save_server(ServerConfig(MCP_URL, name="odd", callback_host="example.com"))
    assert not servers_file().exists()


# -- which kept ports a listener tries first ----------------------------------------------------


def test_kept_ports_are_tried_only_for_the_same_loopback_name(home: Path) -> None:
    issuer = "https://as.example.com"
    kept = KeptRegistrations(home)
    from grantkeeper._oauth.registration import ClientRegistration

    kept.keep(issuer, "http://127.0.0.1:7001/callback", ClientRegistration("numeric"))
    kept.keep(issuer, "http://localhost:7002/callback", ClientRegistration("named"))
    store = FileStore(home)
    assert callback_ports(ServerConfig(MCP_URL), store, issuer, True) == [7001, 0]
    named = ServerConfig(MCP_URL, callback_host="localhost")
    assert callback_ports(named, store, issuer, True) == [7002, 0]
    numeric = ServerConfig(MCP_URL, callback_host="127.0.0.1")
    assert callback_ports(numeric, store, issuer, True) == [7001, 0]
    assert callback_ports(ServerConfig(MCP_URL, callback_port=9000), store, issuer, True) == [9000]


# -- against the real oidc-provider -------------------------------------------------------------


@pytest.mark.realserver
def test_a_localhost_login_registers_and_redeems_a_localhost_redirect(
    auth_server: AuthServer, resource: ResourceServer, home: Path
) -> None:
    before = auth_server.stats()["registrations"]
    config = ServerConfig(resource.url, callback_host="localhost")
    browser = Browser(auth_server)
    record = remember(login(config, store=FileStore(home), open_browser=browser))

    # The authorization server sent the browser to localhost: the redirect URI it holds.
    [callback] = browser.callbacks
    port = urlsplit(callback).port
    redirect_uri = f"http://localhost:{port}/callback"
    assert callback.startswith(f"{redirect_uri}?")
    assert registered_redirect_uris(home, auth_server.issuer, redirect_uri) == [redirect_uri]
    assert auth_server.stats()["registrations"] == before + 1

    stored = FileStore(home).read(config.key)
    assert stored is not None and stored.record.access_token == record.access_token
    assert introspect(auth_server, record.access_token)["active"] is True

    # The next localhost login listens there again and reuses that client; a 127.0.0.1
    # login is another redirect URI, so another client.
    again = Browser(auth_server)
    remember(login(config, store=FileStore(home), open_browser=again))
    assert again.callbacks[0].startswith(f"{redirect_uri}?")
    assert auth_server.stats()["registrations"] == before + 1
    numeric = Browser(auth_server)
    remember(login(ServerConfig(resource.url), store=FileStore(home), open_browser=numeric))
    assert numeric.callbacks[0].startswith("http://127.0.0.1:")
    assert auth_server.stats()["registrations"] == before + 2


@pytest.mark.realserver
def test_cli_login_saves_callback_host_and_port_and_listens_there(
    auth_server: AuthServer, resource: ResourceServer, home: Path
) -> None:
    port = free_port()
    env = {**os.environ, "GRANTKEEPER_HOME": str(home), "GRANTKEEPER_STORE": "file"}
    process = subprocess.Popen(
        [sys.executable, "-m", "grantkeeper", "login", resource.url, "--no-browser"]
        + ["--name", "pinned", "--callback-host", "localhost", "--callback-port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    url = next((line.strip() for line in process.stderr if line.startswith("http")), "")
    assert url, "login printed no authorization URL"
    browser = Browser(auth_server)
    browser(url)
    _, stderr = process.communicate(timeout=CLI_TIMEOUT)
    assert process.returncode == 0, stderr

    redirect_uri = f"http://localhost:{port}/callback"
    assert browser.callbacks[0].startswith(f"{redirect_uri}?")
    assert registered_redirect_uris(home, auth_server.issuer, redirect_uri) == [redirect_uri]
    [saved] = load_servers()
    assert (saved.name, saved.callback_host, saved.callback_port) == ("pinned", "localhost", port)
    assert FileStore(home).read(saved.key) is not None


@pytest.mark.realserver
def test_a_proxy_logs_in_through_a_pinned_localhost_redirect_without_saving_it(
    auth: AuthServer, server: McpServer, home: Path
) -> None:
    # The desktop host's way in (tests/test_proxy.py): a stdio session, a fake $BROWSER.
    from tests.test_proxy import browser_windows, host, text_of

    port = free_port()

    async def run() -> str:
        flags = ("--callback-host", "localhost", "--callback-port", str(port))
        async with host(server.url, home, *flags) as session:
            await session.initialize()
            return text_of(await session.call_tool("echo", {"text": "via localhost"}))

    assert asyncio.run(run()) == "via localhost"
    assert len(browser_windows(home)) == 1
    # The client was registered for, and the code redeemed with, the pinned localhost URI.
    issuer = auth.issuer
    redirect_uri = f"http://localhost:{port}/callback"
    assert KeptRegistrations(home).ports(issuer, host="localhost") == [port]
    assert registered_redirect_uris(home, issuer, redirect_uri) == [redirect_uri]
    assert load_servers() == []  # for the run only


# -- the command lines ----------------------------------------------------------------------------


def test_login_port_is_a_hidden_alias_that_must_agree(home: Path) -> None:
    runner = CliRunner()
    both = runner.invoke(
        cli, ["login", MCP_URL, "--callback-port", "8001", "--port", "8002", "--no-browser"]
    )
    assert both.exit_code == 2 and "--port is the old name of --callback-port" in both.stderr
    odd = runner.invoke(cli, ["login", MCP_URL, "--callback-host", "example.com"])
    assert odd.exit_code == 2 and "callback-host" in odd.stderr
    usage = runner.invoke(cli, ["login", "--help"])
    assert "--callback-host [localhost|127.0.0.1]" in usage.stdout
    assert "--callback-port" in usage.stdout and "--port " not in usage.stdout
    assert load_servers() == []


def test_proxy_flags_apply_to_its_logins_for_the_run_only(home: Path) -> None:
    save_server(ServerConfig(MCP_URL, name="desk", callback_port=7000))
    saved = servers_file().read_bytes()
    args = ["desk", "--callback-host", "localhost", "--callback-port", "8123"]
    with proxy.make_context("proxy", args) as ctx:
        params = ctx.params
    config = login_settings(
        resolve_server(params["server"]), params["callback_host"], params["callback_port"]
    )
    assert (config.name, config.callback_host, config.callback_port) == ("desk", "localhost", 8123)
    assert servers_file().read_bytes() == saved  # nothing written

    with proxy.make_context("proxy", ["desk"]) as ctx:
        params = ctx.params
    unchanged = login_settings(
        resolve_server(params["server"]), params["callback_host"], params["callback_port"]
    )
    assert (unchanged.callback_host, unchanged.callback_port) == (None, 7000)
    with pytest.raises(click.BadParameter, match="127.0.0.1"):
        proxy.make_context("proxy", ["desk", "--callback-host", "example.com"])


def test_login_refuses_a_bad_callback_host_before_any_network(home: Path) -> None:
    """From the library, where no servers.json check ran: typed, and nothing is asked of
    the network (the URL does not resolve)."""
    config = ServerConfig("https://mcp.invalid/mcp", callback_host="Localhost")
    with pytest.raises(ServerConfigError, match="callback_host must be"):
        login(config, store=FileStore(home), open_browser=lambda _: True)


def test_the_cli_offers_the_hosts_the_listener_takes() -> None:
    """The CLI writes its choices out (parsing a command line imports no HTTP server)."""
    from grantkeeper._cli._policy import CALLBACK_HOSTS as OFFERED
    from grantkeeper._oauth.callback_server import CALLBACK_HOSTS as TAKEN

    assert sorted(OFFERED) == sorted(TAKEN)
