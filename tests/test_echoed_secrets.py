"""A server that echoes a secret never gets it printed (issue 29, item 2).

Every CLI command and the proxy run against ``tests/echo_server.py``, a loopback server that
repeats a secret of each kind (static bearer, OAuth access and refresh token, client secret,
client assertion) in each place a server can put text: the reason phrase, the JSON body,
``WWW-Authenticate`` parameters and scheme, other headers, and an MCP result. No output may
hold the secret or any eight characters of it, in any case; ordinary words stay readable.

The CLI runs in this process: the registry of known secrets is emptied after each test's
setup, so the command must learn every secret the way it would in a process of its own.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import select
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from grantkeeper import (
    CredentialKey,
    FileStore,
    InsufficientScope,
    ServerConfig,
    save_server,
)
from grantkeeper._cli import cli
from grantkeeper._record import CLIENT_CREDENTIALS
from grantkeeper._redact import MAX_REMEMBERED, forget_all, remember, scrub_known
from grantkeeper.testing import sample_record
from harness import remember_secret
from tests.echo_server import PLACES, Echo, Place, echo_server
from tests.helpers import ROOT

BEARER = "bearer-ECHO-5f1c9a7e0b3d4c2a77"
ACCESS = "access-ECHO-8e2d7c1b9a0f3e4d11"
REFRESH = "refresh-ECHO-3a9c1e7f5b2d8c0e22"
CLIENT_SECRET = "secret-ECHO-6b0e2d9f1c7a4e3b33"
CLIENT_ID = "client-echo-1"
KEY_ENV = "GK_ECHO_CLIENT_KEY"
"""The environment variable the private_key_jwt client's PEM key is read from."""

KINDS = ("bearer", "access", "refresh", "client_secret", "assertion")
"""Every kind of secret that authenticates. A new kind (a DPoP key) is a row here and in
:func:`setup`."""

TOKEN_KINDS = ("access", "refresh", "client_secret", "assertion")
"""The kinds a token request carries or concerns (a static bearer is never refreshed)."""

RENEWED = ("refresh", "client_secret", "assertion")
"""The kinds a token request carries: stored expired, so that a command renews first and
the server has seen the secret before it echoes it."""

OAUTH_PLACES: tuple[Place, ...] = ("reason", "body", "challenge", "headers")
"""The places a token, revocation or discovery answer can put text."""

KNOWN = {"bearer": BEARER, "access": ACCESS, "refresh": REFRESH, "client_secret": CLIENT_SECRET}

SHOWN = {
    "challenge": "--scope mcp:read",
    "body": "rejected",
    "stream": "rejected",
    "headers": "Unexpected content type",
    "result": "says",
}
"""What ``tools`` and ``call`` must still show, per place: the words around the echo."""


@pytest.fixture(scope="module")
def pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@pytest.fixture(autouse=True)
def client_key(monkeypatch: pytest.MonkeyPatch, pem: str) -> None:
    """The client's signing key where its servers' configs name it; the suite's log guard
    watches for the known secrets too."""
    monkeypatch.setenv(KEY_ENV, pem)
    for secret in KNOWN.values():
        remember_secret(secret)


def setup(kind: str, origin: str, home: Path, *, expired: bool) -> str:
    """Configure a credential of ``kind`` for ``origin``'s MCP endpoint; return the server
    argument for the CLI. Expired, so that a command first renews it at the token endpoint."""
    url = f"{origin}/mcp"
    if kind == "bearer":
        save_server(ServerConfig(url, name="echo", bearer_token=BEARER))
        return "echo"
    record = sample_record(
        ACCESS,
        REFRESH,
        now=datetime.now(UTC) - timedelta(hours=2),
        lifetime=3600 if expired else 3 * 3600,  # expired an hour ago, or good for an hour
        resource=url,
        issuer=origin,
        token_endpoint=f"{origin}/token",
        revocation_endpoint=f"{origin}/revoke",
        client_id=CLIENT_ID,
        scope=None,
        subject=None,
    )
    if kind == "client_secret":
        record = record.replace(
            client_secret=CLIENT_SECRET, token_endpoint_auth_method="client_secret_basic"
        )
    elif kind == "assertion":
        record = record.replace(
            refresh_token=None,
            grant=CLIENT_CREDENTIALS,
            token_endpoint_auth_method="private_key_jwt",
            client_key_source=f"env:{KEY_ENV}",
        )
    FileStore(home).write(CredentialKey.for_server(url), record, expected_version=None)
    return url


def invoke(*args: str) -> tuple[int, str]:
    """Run the CLI in this process, with only what it learns itself; exit code and output."""
    forget_all()
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout + result.stderr


def json_flag(as_json: bool) -> list[str]:
    return ["--json"] if as_json else []


def invoke_at(
    echo: Echo, home: Path, command: str, *args: str, expired: bool = False
) -> tuple[str, int, str]:
    """Run ``command`` for a server at a new echo server, with a credential of ``echo.kind``
    stored (``args`` follow the server's name); the server's origin, exit code and output."""
    with echo_server(echo) as origin:
        server = setup(echo.kind, origin, home, expired=expired)
        code, output = invoke(command, server, *args)
    return origin, code, output


def each_oauth_echo(test: Callable[..., None]) -> Callable[..., None]:
    """Run ``test`` for each secret an OAuth endpoint may echo, in each place, with the
    output plain and as JSON."""
    for mark in (
        pytest.mark.parametrize("as_json", [False, True], ids=["plain", "json"]),
        pytest.mark.parametrize("place", OAUTH_PLACES),
        pytest.mark.parametrize("kind", ["access", "refresh", "client_secret"]),
    ):
        test = mark(test)
    return test


def assert_hidden(output: str, echo: Echo) -> None:
    """No secret the server knows, nor eight characters of one in any case, nor its last
    four characters as a stand-in (``…cdef``), is in ``output``."""
    secrets = {*KNOWN.values(), *echo.known.values(), *echo.issued}
    for secret in secrets:
        remember_secret(secret)
    lowered = output.lower()
    for secret in secrets:
        assert f"…{secret[-4:]}" not in output, (secret[-4:], output)
        for i in range(len(secret) - 8 + 1):
            assert secret[i : i + 8].lower() not in lowered, (secret[i : i + 8], output)


# -- the registry of known secrets ----------------------------------------------------------


def test_known_secrets_are_hidden_and_ordinary_words_stay() -> None:
    remember(ACCESS, CLIENT_SECRET, "short", None)
    text = (
        f"scope mcp:read mcp:write offline_access for https://mcp.example.test/mcp as "
        f"{CLIENT_ID} ({CLIENT_ID}:{CLIENT_SECRET}); got {ACCESS[:12]}, {ACCESS.lower()}, "
        f"Bearer {ACCESS} and short"
    )
    assert scrub_known(text) == (
        "scope mcp:read mcp:write offline_access for https://mcp.example.test/mcp as "
        f"{CLIENT_ID} ({CLIENT_ID}:…); got …, …, Bearer … and short"
    )
    error = InsufficientScope(f"needs {ACCESS}", scope=f"mcp:read {ACCESS} mcp:write")
    assert error.scope == "mcp:read mcp:write" and ACCESS not in repr(error)
    assert InsufficientScope("needs", scope=ACCESS).scope is None


def test_the_registry_is_bounded_and_forgets_the_least_recent_first() -> None:
    values = [hashlib.sha256(str(i).encode()).hexdigest()[:24] for i in range(MAX_REMEMBERED)]
    remember(*values)
    remember(values[0])  # seen again: now the most recent
    remember(ACCESS)
    assert scrub_known(values[0]) == scrub_known(ACCESS) == "…"
    assert scrub_known(values[1]) == values[1]  # the least recently seen went
    assert scrub_known(values[2]) == "…"


def test_configured_secrets_outlive_any_number_of_tokens_and_a_huge_one() -> None:
    bearer = "static-" + hashlib.sha256(b"bearer").hexdigest()
    remember(bearer, pinned=True)
    for i in range(MAX_REMEMBERED + 10):  # a long-running proxy's rotations
        remember(hashlib.sha256(f"token {i}".encode()).hexdigest())
    huge = "eyJ" + hashlib.sha256(b"id").hexdigest() * 2500  # a 160 KB ID token
    remember(huge)
    assert scrub_known(f"echo {bearer} and {huge}") == "echo … and …"
    assert scrub_known(f"echo {bearer[:20]}") == "echo …"  # a truncated echo too


def test_a_short_secret_hides_only_itself_not_the_words_it_shares_characters_with() -> None:
    remember("contoso-production", "theme=dark")  # say, header values of a config
    remember(ACCESS)
    assert scrub_known("deployed to production-eu at https://mcp.example.test/mcp") == (
        "deployed to production-eu at https://mcp.example.test/mcp"
    )
    assert scrub_known("x contoso-production y theme=dark") == "x … y …"


def test_secrets_remembered_from_many_threads_are_all_hidden() -> None:
    threads, each = 8, 20
    barrier = threading.Barrier(threads)
    values = [[f"thread{t}-{i:03d}-{ACCESS}" for i in range(each)] for t in range(threads)]

    def work(mine: list[str]) -> None:
        barrier.wait()
        for value in mine:
            remember(value)
            assert scrub_known(f"got {value}") == "got …"

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, values))
    assert all(scrub_known(v) == "…" for mine in values for v in mine)


# -- tools and call -------------------------------------------------------------------------

TOOL_CASES = [(place, False) for place in PLACES if place != "result"] + [
    ("result", False),
    ("result", True),
]


@pytest.mark.parametrize("command", ["tools", "call"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("place", "as_json"),
    TOOL_CASES,
    ids=[f"{place}{'-json' if as_json else ''}" for place, as_json in TOOL_CASES],
)
def test_tools_and_call_never_print_an_echoed_secret(
    home: Path, command: str, kind: str, place: Place, as_json: bool
) -> None:
    echo = Echo(kind, place, known=dict(KNOWN))
    args = (["echo", "--arg", "text=hi"] if command == "call" else []) + json_flag(as_json)
    _, code, output = invoke_at(echo, home, command, *args, expired=kind in RENEWED)
    assert_hidden(output, echo)
    assert kind not in RENEWED or echo.issued, "the credential was renewed"
    assert (code == 0) == (place == "result"), output
    if place in SHOWN and not (place == "result" and command == "call"):
        assert SHOWN[place] in output, output
    if place == "result" and command == "call":
        assert "you sent" in output, output


def environment(home: Path, pem: str) -> dict[str, str]:
    """The environment of a ``grantkeeper`` process of its own."""
    return {
        **os.environ,
        "GRANTKEEPER_HOME": str(home),
        "GRANTKEEPER_STORE": "file",
        KEY_ENV: pem,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
    }


def test_a_command_in_a_process_of_its_own_prints_no_library_warning_with_a_secret(
    home: Path, pem: str
) -> None:
    # No log handler there: Python's last-resort one prints the mcp SDK's error, which
    # quotes the server's Content-Type.
    echo = Echo("bearer", "headers", known=dict(KNOWN))
    with echo_server(echo) as origin:
        server = setup("bearer", origin, home, expired=False)
        done = subprocess.run(
            [sys.executable, "-m", "grantkeeper", "tools", server],
            env=environment(home, pem),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert_hidden(done.stdout + done.stderr, echo)
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("Unexpected content type") >= 2, done.stderr  # SDK's, and ours


# -- token: its failures (it prints the token only when it succeeds) ------------------------


@pytest.mark.parametrize("kind", TOKEN_KINDS)
@pytest.mark.parametrize("place", OAUTH_PLACES)
def test_token_never_prints_a_secret_the_token_endpoint_echoes(
    home: Path, kind: str, place: Place
) -> None:
    echo = Echo(kind, place, fail_token=True, known=dict(KNOWN))
    _, code, output = invoke_at(echo, home, "token", expired=True)
    assert_hidden(output, echo)
    assert code != 0 and "error:" in output, output
    assert kind in echo.known, "the token endpoint was asked"


# -- login: a machine client's token request ------------------------------------------------


@pytest.mark.parametrize("kind", ["client_secret", "assertion"])
@pytest.mark.parametrize("place", OAUTH_PLACES)
@pytest.mark.parametrize("as_json", [False, True], ids=["plain", "json"])
def test_login_never_prints_a_secret_the_token_endpoint_echoes(
    home: Path, kind: str, place: Place, as_json: bool
) -> None:
    echo = Echo(kind, place, fail_token=True, known=dict(KNOWN))
    credentials = (
        ["--client-secret", CLIENT_SECRET]
        if kind == "client_secret"
        else ["--client-key-env", KEY_ENV]
    )
    with echo_server(echo) as origin:
        code, output = invoke(
            "login",
            f"{origin}/mcp",
            "--client-credentials",
            "--client-id",
            CLIENT_ID,
            *credentials,
            *json_flag(as_json),
        )
    assert_hidden(output, echo)
    assert code != 0 and "error:" in output, output
    assert kind in echo.known, "the token endpoint was asked"


# -- logout: the revocation endpoint --------------------------------------------------------


@each_oauth_echo
def test_logout_never_prints_a_secret_the_revocation_endpoint_echoes(
    home: Path, kind: str, place: Place, as_json: bool
) -> None:
    echo = Echo(kind, place, known=dict(KNOWN))
    _, code, output = invoke_at(echo, home, "logout", *json_flag(as_json))
    assert_hidden(output, echo)
    assert code == 0, output
    assert "refresh_token" in output and "revocation endpoint" in output, output  # the problems


# -- status --check: discovery ---------------------------------------------------------------


@each_oauth_echo
def test_status_check_never_prints_a_secret_discovery_echoes(
    home: Path, kind: str, place: Place, as_json: bool
) -> None:
    echo = Echo(kind, place, fail_mcp=False, fail_discovery=True, known=dict(KNOWN))
    origin, code, output = invoke_at(echo, home, "status", "--check", *json_flag(as_json))
    assert_hidden(output, echo)
    assert code == 0, output
    assert f"{origin}/mcp" in output, output  # URLs stay readable


# -- the proxy: JSON-RPC errors to the host, and its log ------------------------------------

PROXY_PLACES = [place for place in PLACES if place != "result"]
"""Results are relayed as they came: the proxy is a pipe, and scrubs only errors."""


def read_answers(proc: subprocess.Popen[bytes], ids: set[int], timeout: float) -> bytes:
    """What the proxy wrote to its stdout until each of ``ids`` was answered, each chunk
    within ``timeout`` seconds. Read from the descriptor itself: a buffered reader could
    hold a second answer that ``select`` then never reports."""
    assert proc.stdout is not None
    fd, data = proc.stdout.fileno(), b""
    while not ids <= {line.get("id") for line in _lines(data) if isinstance(line, dict)}:
        ready, _, _ = select.select([fd], [], [], timeout)
        assert ready, f"no answer within {timeout} s; got {data!r}"
        chunk = os.read(fd, 1 << 16)
        assert chunk, f"the proxy closed stdout; got {data!r}"
        data += chunk
    return data


def _lines(data: bytes) -> list[Any]:
    """The complete JSON lines in ``data``."""
    return [json.loads(line) for line in data.split(b"\n")[:-1] if line.strip()]


@pytest.mark.parametrize("kind", KINDS)
def test_the_proxy_never_relays_or_logs_an_echoed_secret(home: Path, kind: str, pem: str) -> None:
    echo = Echo(kind, "body", known=dict(KNOWN))
    with echo_server(echo) as origin:
        server = setup(kind, origin, home, expired=kind in RENEWED)
        args = ["proxy", server, "--no-browser", "--ping-interval", "0", "-v"]
        with subprocess.Popen(  # closes the pipes and reaps the proxy, whatever happens
            [sys.executable, "-m", "grantkeeper", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=environment(home, pem),
            cwd=ROOT,
        ) as proc:
            try:
                assert proc.stdin is not None
                # One request per place, at once: the server answers each by the tool's name.
                for number, place in enumerate(PROXY_PLACES, start=1):
                    request = {
                        "jsonrpc": "2.0",
                        "id": number,
                        "method": "tools/call",
                        "params": {"name": place, "arguments": {}},
                    }
                    proc.stdin.write(json.dumps(request).encode() + b"\n")
                proc.stdin.flush()
                ids = set(range(1, len(PROXY_PLACES) + 1))
                answered = read_answers(proc, ids, timeout=60)
                rest, stderr = proc.communicate(timeout=60)  # closes stdin: the host is done
            finally:
                if proc.poll() is None:
                    proc.kill()
    lines, log = _lines(answered + rest), stderr.decode()
    assert_hidden((answered + rest).decode() + log, echo)
    by_place = {PROXY_PLACES[line["id"] - 1]: line for line in lines if line.get("id") in ids}
    assert all("error" in answer for answer in by_place.values()), lines
    for place in ("body", "stream"):  # the server's own errors, relayed: the words stay
        assert "rejected" in by_place[place]["error"]["message"], lines
    assert "'mcp:read …'" in by_place["challenge"]["error"]["message"], lines
    assert "proxy.start" in log and "mcp:read" in log, log
