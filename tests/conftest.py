"""The suite's shared world, and its guards (httpx's tests/conftest.py is the model).

Fixtures any test may ask for:

- ``home``: a private ``GRANTKEEPER_HOME`` on the file store;
- ``provider``, ``served_provider``: a :class:`FakeProvider`, in memory or also on loopback;
- ``world``: a :class:`tests.helpers.World` (provider, counting file store, stepping clock);
- one per module, the real authorization server ``auth_server`` (a module sets its arguments
  in ``AUTH_SERVER``), the real MCP server ``mcp_server`` and the bare ``resource`` it
  protects; ``auth`` and ``server`` hand out the pair reset; ``keeper`` holds a credential
  logged in there, in ``store`` (a file store in ``tmp_path``);
- ``cluster``: a PostgreSQL cluster, one per module;
- ``tiny_disk``: a 64 KiB tmpfs to fill; ``ec_key``: a private key for private_key_jwt;
  ``zombie``: a killed, unreaped process.

- ``telemetry``: what grantkeeper reported through OpenTelemetry during the test, read
  through the SDK's in-memory readers the whole test process runs with.

Guards every test gets: every log line, metric and span attribute is checked for secrets,
and rescue copies go to a directory of the test's own, never to the user's runtime
directory or /dev/shm."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from grantkeeper import CredentialKey, FileStore, Keeper
from grantkeeper._redact import forget_all
from grantkeeper._rescue_copies import RESCUE_DIR_ENV
from harness import secrets_seen
from harness.authserver import AuthServer
from harness.fake_provider import FakeProvider
from harness.mcp_demo import login
from harness.mcp_server import McpServer
from harness.resource_server import ResourceServer
from tests.helpers import LogLines, World, signal_own_child
from tests.otel_readers import Readers
from tests.tiny_disk import mounted

if TYPE_CHECKING:
    from harness.postgres import PostgresCluster

ONLY_ON_LINUX = (
    "needs the Linux test machine (oidc-provider, PostgreSQL, Secret Service, network "
    "namespaces, procfs, fork); on macOS and Windows only tests marked portable run"
)


_not_collected: list[str] = []
"""Test modules left out on this platform (see :func:`pytest_ignore_collect`)."""


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Off Linux, a test module without the portable marker is not even imported: many
    import Linux-only modules (``pwd``, ``fcntl``, ``pty``) or name Linux-only signals at
    import time. The summary names how many, and why (issue 38)."""
    if sys.platform.startswith("linux") or not collection_path.name.startswith("test_"):
        return None
    if collection_path.suffix != ".py":
        return None
    if "pytest.mark.portable" in collection_path.read_text(encoding="utf-8"):
        return None
    _not_collected.append(collection_path.name)
    return True


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip, with the reason, what macOS and Windows CI cannot run (issue 38): a test
    without the portable marker in a module that has it."""
    if sys.platform.startswith("linux"):
        return
    skip = pytest.mark.skip(reason=ONLY_ON_LINUX)
    for item in items:
        if item.get_closest_marker("portable") is None:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _not_collected:
        terminalreporter.write_line(
            f"{len(_not_collected)} test modules not collected on {sys.platform}: {ONLY_ON_LINUX}"
        )


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


@pytest.fixture(scope="session", autouse=True)
def loopback_goes_direct() -> None:
    """The suite's servers are on loopback: a developer's company proxy (grantkeeper honours
    ``HTTP_PROXY`` everywhere) must not stand between them, while the tests that download
    (pip, uvx) still go through it. Tests of proxies (tests/test_network.py) set their own."""
    for name in ("NO_PROXY", "no_proxy"):
        named = [host for host in os.environ.get(name, "").split(",") if host.strip()]
        os.environ[name] = ",".join([*named, *(h for h in LOOPBACK_NAMES if h not in named)])


@pytest.fixture(scope="session", autouse=True)
def session_rescue_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where a Keeper still holding B when the interpreter exits keeps its copy: its flush
    runs after every test's fixtures are undone, so this is set for good, not restored."""
    rescue = tmp_path_factory.mktemp("rescue-at-exit")
    os.environ[RESCUE_DIR_ENV] = str(rescue)
    return rescue


@pytest.fixture(autouse=True)
def own_rescue_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point rescue copies (and those of every child that inherits the environment) at
    ``tmp_path / "rescue"``: a store refusing B must not leave a copy in a shared place."""
    rescue = tmp_path / "rescue"
    monkeypatch.setenv(RESCUE_DIR_ENV, str(rescue))
    return rescue


@pytest.fixture(autouse=True)
def no_remembered_secrets() -> None:
    """Start each test with no known secrets (``grantkeeper._redact``): one test's fixture
    token, say ``the-authorization-code-secret``, must not hide another's ordinary words."""
    forget_all()


READERS = Readers().install()
"""The OpenTelemetry SDK every test runs with, as an application using grantkeeper[otel]
would: grantkeeper's metrics and spans are collected in memory (see :func:`telemetry`)."""


@pytest.fixture(autouse=True)
def no_secret_in_logs() -> Iterator[None]:
    """Capture grantkeeper's DEBUG logs and its metrics and spans, and fail the test if any
    issued secret shows up in either."""
    handler = LogLines()
    logger = logging.getLogger("grantkeeper")
    previous = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    READERS.reset()
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
    leaked = [s for s in secrets_seen() for line in handler.lines if s in line]
    assert not leaked, f"{len(leaked)} secret(s) appeared in grantkeeper's logs"
    texts = list(READERS.report().texts())
    leaked = [s for s in secrets_seen() for text in texts if s in text]
    assert not leaked, f"{len(leaked)} secret(s) appeared in grantkeeper's metrics or spans"


@pytest.fixture
def telemetry() -> Readers:
    """The process's OpenTelemetry readers, holding what this test's grantkeeper reported
    so far (:meth:`Readers.report`)."""
    return READERS


# -- the shared world ----------------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``GRANTKEEPER_HOME`` of the test's own (``tmp_path / "home"``, created) on the file
    store, with none of the settings a developer's shell may carry."""
    path = tmp_path / "home"
    path.mkdir(mode=0o700)  # as grantkeeper makes it: doctor checks who may read it
    monkeypatch.setenv("GRANTKEEPER_HOME", str(path))
    monkeypatch.setenv("GRANTKEEPER_STORE", "file")
    for setting in ("GRANTKEEPER_STORE_KEY", "GRANTKEEPER_RETRY_UNKNOWN_OUTCOME", "NO_COLOR"):
        monkeypatch.delenv(setting, raising=False)
    return path


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    """A token endpoint that rotates refresh tokens and detects reuse, reached in process
    through ``provider.transport()``."""
    fake = FakeProvider()
    yield fake
    fake.close()


@pytest.fixture
def served_provider(provider: FakeProvider) -> FakeProvider:
    """:func:`provider`, also served on loopback (``provider.url``) for other processes."""
    provider.serve()
    return provider


@pytest.fixture
def world(tmp_path: Path, provider: FakeProvider) -> Iterator[World]:
    """:class:`World` on a file store in ``tmp_path / "store"``."""
    w = World(provider, FileStore(tmp_path / "store"))
    yield w
    w.close()


@pytest.fixture(scope="module")
def auth_server(request: pytest.FixtureRequest) -> Iterator[AuthServer]:
    """The real authorization server, one per module: oidc-provider with rotation and reuse
    detection. A module that needs other settings than one-minute access tokens names them
    in ``AUTH_SERVER``, a dict of :class:`AuthServer` arguments."""
    options = getattr(request.module, "AUTH_SERVER", {"access_ttl": 60})
    with AuthServer(**options) as running:
        yield running


@pytest.fixture(scope="module")
def mcp_server(auth_server: AuthServer) -> Iterator[McpServer]:
    """A real MCP server built with ``mcp``, protected by :func:`auth_server`."""
    with McpServer(auth_server=auth_server) as running:
        yield running


@pytest.fixture
def auth(auth_server: AuthServer) -> AuthServer:
    """:func:`auth_server`, its counts reset."""
    auth_server.reset_stats()
    return auth_server


@pytest.fixture
def server(mcp_server: McpServer, auth: AuthServer) -> McpServer:
    """:func:`mcp_server`, what it saw forgotten (and :func:`auth`'s counts reset with it)."""
    mcp_server.reset()
    return mcp_server


@pytest.fixture
def resource(auth_server: AuthServer) -> Iterator[ResourceServer]:
    """A bare protected resource (no MCP) that trusts :func:`auth_server`."""
    with ResourceServer(issuer=auth_server.issuer) as running:
        yield running


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    """An empty file store in ``tmp_path``: the one :func:`keeper` logs in to."""
    return FileStore(tmp_path)


@pytest.fixture
def keeper(auth: AuthServer, server: McpServer, store: FileStore) -> Iterator[Keeper]:
    """A Keeper of a credential logged in at :func:`auth` for :func:`server`, on
    :func:`store`; the login is not in :func:`auth`'s counts."""
    login(auth, server.url, store)
    auth.reset_stats()
    keeper = Keeper(store, CredentialKey.for_server(server.url))
    yield keeper
    keeper.close()


@pytest.fixture(scope="module")
def cluster() -> Iterator[PostgresCluster]:
    """A PostgreSQL cluster of the module's own, on loopback (give each test a schema)."""
    from harness.postgres import PostgresCluster  # pwd: not importable on Windows

    with PostgresCluster() as running:
        yield running


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs of the test's own, the only kind a test may fill (see tests.tiny_disk)."""
    with mounted(tmp_path) as disk:
        yield disk


# -- keys ---------------------------------------------------------------------------------


@pytest.fixture
def ec_key(tmp_path: Path) -> tuple[ec.EllipticCurvePrivateKey, Path]:
    """A P-256 private key for private_key_jwt, and the PEM file (mode 0600) holding it."""
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "client.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return key, path


# -- processes ----------------------------------------------------------------------------


@pytest.fixture
def zombie() -> Iterator[int]:
    """A process that was SIGKILLed and is not reaped yet (its parent has not waited)."""
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True
    )
    signal_own_child(child.pid, signal.SIGKILL)
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # dead, still in the table
    yield child.pid
    child.wait()
