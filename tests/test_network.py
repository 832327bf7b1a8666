"""Corporate networks: every request grantkeeper makes goes through the proxy the
environment names, ``.netrc`` never adds credentials, and TLS trusts the system's store plus
``SSL_CERT_FILE``, shown against a real forwarding proxy (``harness.forward_proxy``) and the
real authorization server behind a private CA (``trustme``)."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import trustme
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from grantkeeper import (
    FileStore,
    GrantkeeperError,
    Keeper,
    ServerConfig,
    ServerConfigError,
    login,
    logout,
)
from grantkeeper._cli._stores import network_checks
from grantkeeper._network import settings, tls_context, without_password
from grantkeeper.mcp import connect
from harness.authserver import AuthServer
from harness.forward_proxy import ForwardProxy
from harness.mcp_server import McpServer
from harness.resource_server import ResourceServer
from tests.login_helpers import CLI_TIMEOUT, FAR_FUTURE, Browser, remember

pytestmark = pytest.mark.realserver

ROOT = Path(__file__).resolve().parent.parent
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
NETRC_USER = "netrc-user"
NETRC_PASSWORD = "netrc-password-never-sent"


@pytest.fixture
def network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[ForwardProxy]:
    """A forwarding proxy named by ``HTTP_PROXY`` and ``HTTPS_PROXY`` (no ``NO_PROXY``), and
    a ``.netrc`` holding a password for the loopback host, which must never be sent."""
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login {NETRC_USER} password {NETRC_PASSWORD}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    with ForwardProxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        yield proxy


def since(proxy: ForwardProxy, mark: int) -> list[str]:
    return proxy.paths()[mark:]


def no_netrc_credentials(proxy: ForwardProxy) -> None:
    netrc_basic = base64.b64encode(f"{NETRC_USER}:{NETRC_PASSWORD}".encode()).decode()
    for value in proxy.authorizations:
        assert value is None or (netrc_basic not in value and NETRC_PASSWORD not in value)


async def list_tools_through_the_proxy_command(url: str, home: Path, proxy: str) -> list[str]:
    env = {
        "GRANTKEEPER_HOME": str(home),
        "GRANTKEEPER_STORE": "file",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        "HTTP_PROXY": proxy,
        "HTTPS_PROXY": proxy,
        "NETRC": os.environ["NETRC"],
    }
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "grantkeeper", "proxy", url, "--ping-interval", "0", "--no-browser"],
        env=env,
        cwd=str(ROOT),
    )
    with (home.parent / "proxy.err").open("w") as stderr:  # noqa: ASYNC230
        async with (
            stdio_client(params, errlog=stderr) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            return [tool.name for tool in (await session.list_tools()).tools]


def test_every_phase_goes_through_the_proxy_and_netrc_adds_nothing(
    network: ForwardProxy, auth: AuthServer, server: McpServer, home: Path
) -> None:
    store = FileStore(home)
    config = ServerConfig(server.url)

    # Login: the probe, discovery, registration and the code exchange.
    mark = len(network.paths())
    record = remember(login(server.url, store=store, open_browser=Browser(auth)))
    phase = since(network, mark)
    assert "POST /mcp" in phase  # the unauthenticated probe
    assert any(p.startswith("GET /.well-known/oauth-protected-resource") for p in phase), phase
    assert any(
        p.startswith(("GET /.well-known/oauth-authorization-server", "GET /.well-known/openid"))
        for p in phase
    ), phase
    assert phase.count("POST /reg") == 1
    assert phase.count("POST /token") == 1

    # Refresh, in a process that only knows the store and the key.
    mark = len(network.paths())
    with Keeper(store, config.key, clock=lambda: FAR_FUTURE) as keeper:
        fresh = remember(keeper.credential())
    assert fresh.access_token != record.access_token
    assert since(network, mark) == ["POST /token"]

    # MCP through the library (httpx2).
    mark = len(network.paths())

    async def tools() -> list[str]:
        with Keeper(store, config.key) as keeper:
            async with connect(server.url, keeper=keeper, mode="legacy") as session:
                return [tool.name for tool in (await session.list_tools()).tools]

    assert "echo" in asyncio.run(tools())
    assert "POST /mcp" in since(network, mark)

    # The desktop proxy, a process of its own given the same environment.
    mark = len(network.paths())
    assert "echo" in asyncio.run(
        list_tools_through_the_proxy_command(server.url, home, network.url)
    )
    assert "POST /mcp" in since(network, mark)

    # Logout revokes through it too.
    mark = len(network.paths())
    result = logout(store, config.key)
    assert result.removed and result.revoked, result.problems
    assert any(p.startswith("POST /token/revocation") for p in since(network, mark))

    # Nothing reached the authorization server around the proxy: each token grant it
    # counted passed through.
    stats = auth.stats()
    assert network.paths().count("POST /token") == stats["code_success"] + stats["refresh_success"]
    no_netrc_credentials(network)


def test_no_proxy_reaches_its_hosts_directly(
    network: ForwardProxy,
    auth: AuthServer,
    resource: ResourceServer,
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    remember(login(resource.url, store=FileStore(home), open_browser=Browser(auth)))
    assert network.seen == []


def test_the_cli_logs_in_through_the_proxy(
    network: ForwardProxy, auth: AuthServer, resource: ResourceServer, home: Path
) -> None:
    """``grantkeeper login`` in a process of its own: discovery, registration and the code
    exchange all pass through the proxy (they used to go around it)."""
    env = {**os.environ, "GRANTKEEPER_HOME": str(home), "GRANTKEEPER_STORE": "file"}
    process = subprocess.Popen(
        [sys.executable, "-m", "grantkeeper", "login", resource.url, "--manual"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        url = next(line.strip() for line in process.stderr if line.startswith("http"))
        stdout, stderr = process.communicate(auth.approve(url) + "\n", timeout=CLI_TIMEOUT)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 0, stderr
    phase = network.paths()
    assert any(p.startswith("GET /.well-known/") for p in phase), phase
    assert "POST /reg" in phase and "POST /token" in phase, phase
    no_netrc_credentials(network)


# -- a private CA --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def private_ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AuthServer, Path]]:
    """The real authorization server over HTTPS, its certificate issued by a CA of the
    test's own (in no trust store), and that CA's certificate file."""
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    directory = tmp_path_factory.mktemp("private-ca")
    chain, key, ca_file = directory / "chain.pem", directory / "key.pem", directory / "ca.pem"
    issued.private_key_pem.write_to_path(str(key))
    chain.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    ca.cert_pem.write_to_path(str(ca_file))
    with AuthServer(access_ttl=60, tls=(chain, key, ca_file)) as server:
        yield server, ca_file


def test_login_refresh_and_logout_trust_a_private_ca_from_ssl_cert_file(
    private_ca: tuple[AuthServer, Path], home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    auth, ca_file = private_ca
    assert auth.issuer.startswith("https://")
    for name in (*PROXY_VARS, "SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)
    store = FileStore(home)
    with ResourceServer(issuer=auth.issuer) as resource:
        # Not trusted: the login stops at the authorization server, typed, nothing stored.
        with pytest.raises(GrantkeeperError) as refused:
            login(resource.url, store=store, open_browser=Browser(auth))
        message = str(refused.value)
        assert "certificate is not trusted" in message and "SSL_CERT_FILE" in message, message
        key = ServerConfig(resource.url).key
        assert store.read(key) is None

        monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
        record = remember(login(resource.url, store=store, open_browser=Browser(auth)))
        assert record.token_endpoint and record.token_endpoint.startswith("https://")
        with Keeper(store, key, clock=lambda: FAR_FUTURE) as keeper:
            fresh = remember(keeper.credential())
        assert fresh.refresh_token != record.refresh_token
        assert logout(store, key).revoked
    assert auth.stats()["refresh_success"] >= 1


def test_https_goes_through_the_proxy_as_a_tunnel(
    private_ca: tuple[AuthServer, Path],
    network: ForwardProxy,
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    auth, ca_file = private_ca
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    monkeypatch.setenv("NO_PROXY", "")
    with ResourceServer(issuer=auth.issuer) as resource:
        remember(login(resource.url, store=FileStore(home), open_browser=Browser(auth)))
    tunnels = network.targets("CONNECT")
    assert tunnels and set(tunnels) == {f"127.0.0.1:{auth.port}"}
    assert any(p.startswith("POST /mcp") for p in network.paths())  # the http resource


# -- what doctor shows, and bad settings ------------------------------------------------------


def test_doctor_shows_the_proxy_without_its_password_and_the_trust_store(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://alice:s3cret-proxy-pass@proxy.corp.example:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,.corp.example")
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    proxy, trust = network_checks()
    assert proxy.ok and "alice:***@proxy.corp.example:3128" in proxy.detail
    assert "localhost,.corp.example" in proxy.detail
    assert "s3cret-proxy-pass" not in repr(settings()) + proxy.detail
    assert trust.ok and "truststore" in trust.detail and str(ca_file) in trust.detail
    assert "NO_PROXY" not in proxy.detail  # plain HTTP (loopback) is not proxied

    # A plain-HTTP proxy takes loopback requests too unless NO_PROXY says otherwise.
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.corp.example:3128")
    proxy, _ = network_checks()
    assert proxy.ok and "add localhost,127.0.0.1 to NO_PROXY" in proxy.detail
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    proxy, _ = network_checks()
    assert "to NO_PROXY" not in proxy.detail

    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "missing.pem"))
    _, trust = network_checks()
    assert not trust.ok and "SSL_CERT_FILE" in trust.detail
    with pytest.raises(ServerConfigError, match="SSL_CERT_FILE"):
        tls_context()


def test_doctor_in_a_process_prints_the_network_lines(home: Path) -> None:
    env = {
        **os.environ,
        "GRANTKEEPER_HOME": str(home),
        "GRANTKEEPER_STORE": "file",
        "HTTPS_PROXY": "http://bob:hunter2-proxy@proxy.example:8080",
    }
    done = subprocess.run(
        [sys.executable, "-m", "grantkeeper", "doctor"],
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )
    assert "proxy.example:8080" in done.stdout, done.stdout + done.stderr
    assert "hunter2-proxy" not in done.stdout + done.stderr
    assert "trust store" in done.stdout


def test_without_password_keeps_everything_else() -> None:
    assert without_password("http://u:p@h:1") == "http://u:***@h:1"
    assert without_password("http://h:1") == "http://h:1"
    assert without_password("proxy.local:3128") == "http://proxy.local:3128"
    assert without_password("http://u:p@[::1]:8") == "http://u:***@[::1]:8"


def test_one_context_per_trust_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    import truststore

    assert isinstance(tls_context(), truststore.SSLContext)
    assert tls_context() is tls_context()
    with httpx.Client(verify=tls_context(), trust_env=False) as client:  # httpx takes it
        assert client is not None


def test_the_suite_reaches_loopback_directly() -> None:
    """conftest adds loopback to ``NO_PROXY``: the suite's servers are on loopback, and a
    developer's company proxy must not stand in between."""
    assert {"127.0.0.1", "localhost"} <= set(os.environ["NO_PROXY"].split(","))
    assert not settings().loopback_proxied


def test_a_proxy_that_refuses_is_named_in_the_error(network: ForwardProxy, home: Path) -> None:
    """The test proxy serves loopback only: a tunnel anywhere else is refused (403), as a
    company proxy refuses a host it does not allow. Nothing leaves the machine."""
    with pytest.raises(GrantkeeperError) as refused:
        login("https://mcp.example.com/mcp", store=FileStore(home), open_browser=lambda _: True)
    assert "the proxy refused the request" in str(refused.value), refused.value
    assert network.targets("CONNECT") == ["mcp.example.com:443"]


@pytest.mark.parametrize("setting", ["ftp://proxy.example:21", "socks4://proxy.example:1080"])
def test_a_proxy_setting_no_request_could_use_is_a_typed_error(
    setting: str, monkeypatch: pytest.MonkeyPatch, home: Path
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", setting)
    with pytest.raises(
        ServerConfigError, match="HTTPS_PROXY names a socks4|HTTPS_PROXY names a ftp"
    ):
        login("https://mcp.example.com/mcp", store=FileStore(home), open_browser=lambda _: True)


def test_an_unusable_trust_setting_spends_nothing_and_ends_no_grant(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A refresh that cannot even make its client is no provider call whose outcome was lost:
    nothing is noted as in flight, and the next attempt (once fixed) refreshes."""
    from grantkeeper.testing import sample_record

    store = FileStore(tmp_path)
    key = ServerConfig("https://mcp.example.com/mcp").key
    due = sample_record(
        "old-access-token-0001", "old-refresh-token-0001", now=datetime.now(UTC), lifetime=-60
    )
    store.write(key, due, expected_version=None)
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "missing.pem"))
    for _ in range(2):  # the second time as the first: nothing was marked unknown
        with (
            Keeper(store, key, retry_unknown_outcome=False) as keeper,
            pytest.raises(ServerConfigError, match="SSL_CERT_FILE"),
        ):
            keeper.credential()
        stored = store.read(key)
        assert stored is not None and stored.record == due  # no intent, no reauth_reason


def test_logout_with_an_unusable_proxy_setting_logs_out_and_reports_the_revocation(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from grantkeeper.testing import sample_record

    store = FileStore(tmp_path)
    key = ServerConfig("https://mcp.example.com/mcp").key
    record = sample_record(revocation_endpoint="https://as.example.com/revoke")
    store.write(key, record, expected_version=None)
    monkeypatch.setenv("HTTPS_PROXY", "http://alice:s3cret-pass@proxy:notaport")
    result = logout(store, key)
    assert result.removed and result.revoked == ()
    assert result.problems and all("HTTPS_PROXY is not a URL" in p for p in result.problems)
    assert "s3cret-pass" not in repr(result)
    assert store.read(key) is None


@pytest.mark.parametrize(
    ("setting", "says"),
    [
        ("http://alice:s3cret-pass@proxy:notaport", "HTTPS_PROXY is not a URL"),
        ("http://[bad", "HTTPS_PROXY is not a URL"),
        ("http://:3128", "HTTPS_PROXY names no host"),
    ],
)
def test_a_malformed_proxy_url_is_typed_and_never_quoted(
    setting: str, says: str, monkeypatch: pytest.MonkeyPatch, home: Path
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", setting)
    with pytest.raises(ServerConfigError, match=says.replace("[", r"\[")) as refused:
        login("https://mcp.example.com/mcp", store=FileStore(home), open_browser=lambda _: True)
    assert "s3cret-pass" not in str(refused.value)
    proxy, _ = network_checks()
    assert not proxy.ok and says in proxy.detail and "s3cret-pass" not in proxy.detail
