"""``grantkeeper headers`` and ``grantkeeper token --format``: credentials for hosts that speak
HTTP themselves (Claude Code's ``headersHelper``, a host that takes a header line or an
environment variable).

The contract a host relies on: stdout is exactly what it asked for (one JSON object of
headers, one header line, one ``NAME=value``), holding a valid token refreshed under the
lock every refresh takes; when a person must act, stdout is empty, stderr is one line naming
the command to run, and the exit code is 3. The second half runs against the real
oidc-provider and a real MCP server, the command in processes of its own as a host runs it.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from grantkeeper import (
    Credential,
    CredentialKey,
    FileStore,
    ServerConfig,
    login,
    save_server,
)
from grantkeeper._cli import cli
from grantkeeper.testing import sample_record
from harness import remember_secret
from harness.authserver import AuthServer
from harness.mcp_server import INITIALIZE, McpServer
from harness.real_login import age, reroute
from tests.helpers import RESOURCE
from tests.login_helpers import CLI_TIMEOUT, introspect

MCP_HEADERS = {"accept": "application/json, text/event-stream"}
REDIRECT_URI = "http://127.0.0.1:9/callback"
AUTH_SERVER = {"access_ttl": 3600}
"""One-hour tokens: a slow machine refreshes nothing the test did not ask for (each test
ages the credential itself)."""


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def store(home: Path, access: str, *, profile: str | None = None, **fields: Any) -> None:
    record = sample_record(access, f"{access}-refresh", now=datetime.now(UTC), **fields)
    key = CredentialKey.for_server(RESOURCE, profile)
    FileStore(home).write(key, record, expected_version=None)


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# -- the output formats, on a stored credential ---------------------------------------------


def test_headers_is_one_json_object_with_the_bearer_token(home: Path) -> None:
    save_server(ServerConfig(RESOURCE, name="demo"))
    store(home, "headers-access-1")
    code, out, err = invoke("headers", "demo")
    assert (code, err) == (0, "")
    assert out.count("\n") == 1 and json.loads(out) == {"Authorization": "Bearer headers-access-1"}
    assert invoke("headers", RESOURCE)[:2] == (0, out)  # by URL, the same credential


def test_headers_names_the_profile_s_credential(home: Path) -> None:
    save_server(ServerConfig(RESOURCE, name="demo"))
    store(home, "default-access-tok")
    store(home, "work-access-tok", profile="work")
    code, out, _ = invoke("headers", "demo", "--profile", "work")
    assert code == 0 and json.loads(out) == {"Authorization": "Bearer work-access-tok"}
    code, out, err = invoke("headers", "demo", "--profile", "home")
    assert code == 3 and out == ""
    assert one_line(err).endswith("run: grantkeeper login demo --profile home"), err


def test_headers_adds_the_server_s_configured_headers_read_from_the_environment(
    home: Path,
) -> None:
    save_server(ServerConfig(RESOURCE, name="demo", headers={"X-Api-Key": "${TEAM_KEY}"}))
    store(home, "headers-access-2")
    code, out, _ = invoke("headers", "demo", env={"TEAM_KEY": "team-key-secret"})
    assert code == 0
    assert list(json.loads(out).items()) == [
        ("Authorization", "Bearer headers-access-2"),
        ("X-Api-Key", "team-key-secret"),
    ]
    code, out, err = invoke("headers", "demo", env={"TEAM_KEY": ""})
    assert code == 1 and out == "" and "${TEAM_KEY}" in one_line(err)


def test_a_static_token_server_gets_its_own_header_and_no_store_is_read(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_server(ServerConfig("https://b.example/mcp", name="b", bearer_token_env="B_TOKEN"))
    save_server(
        ServerConfig("https://k.example/mcp", name="k", headers={"Authorization": "Key k1"})
    )
    monkeypatch.setenv("GRANTKEEPER_STORE", "postgresql://127.0.0.1:9/nowhere")  # never opened
    code, _, err = invoke("headers", "b")
    assert code == 1 and "$B_TOKEN" in one_line(err)
    monkeypatch.setenv("B_TOKEN", "static-bearer-secret")
    code, out, _ = invoke("headers", "b")
    assert code == 0 and json.loads(out) == {"Authorization": "Bearer static-bearer-secret"}
    code, out, _ = invoke("headers", "k")
    assert code == 0 and json.loads(out) == {"Authorization": "Key k1"}
    # A static token replaces a configured Authorization of any case, as call and proxy
    # send it; the server's other headers stay.
    both = {"authorization": "Key k1", "X-Team": "blue"}
    save_server(
        ServerConfig("https://c.example/mcp", name="c", bearer_token="c-static", headers=both)
    )
    code, out, _ = invoke("headers", "c")
    assert code == 0
    assert list(json.loads(out).items()) == [
        ("Authorization", "Bearer c-static"),
        ("X-Team", "blue"),
    ]
    code, out, _ = invoke("token", "b", "--format", "header")
    assert (code, out) == (0, "Authorization: Bearer static-bearer-secret\n")


def test_when_a_person_must_act_stdout_is_empty_and_stderr_names_the_command(home: Path) -> None:
    code, out, err = invoke("headers", RESOURCE)
    assert (code, out) == (3, "")
    assert one_line(err).endswith(f"run: grantkeeper login {RESOURCE}"), err
    # A stored token grantkeeper cannot present (DPoP-typed, no key): never sent as Bearer.
    save_server(ServerConfig(RESOURCE, name="demo"))
    store(home, "dpop-typed-access", token_type="DPoP")
    code, out, err = invoke("headers", "demo")
    assert (code, out) == (3, "") and "dpop-typed-access" not in err
    assert one_line(err).endswith("run: grantkeeper login demo"), err


def test_token_formats(home: Path) -> None:
    save_server(ServerConfig(RESOURCE, name="demo"))
    store(home, "format-access-1")
    assert invoke("token", "demo")[:2] == (0, "format-access-1\n")
    assert invoke("token", "demo", "--format", "plain")[:2] == (0, "format-access-1\n")
    assert invoke("token", "demo", "--format", "env")[:2] == (
        0,
        "GRANTKEEPER_TOKEN=format-access-1\n",
    )
    assert invoke("token", "demo", "--format", "env", "--env-name", "MCP_TOKEN")[:2] == (
        0,
        "MCP_TOKEN=format-access-1\n",
    )
    assert invoke("token", "demo", "--format", "header")[:2] == (
        0,
        "Authorization: Bearer format-access-1\n",
    )
    code, out, _ = invoke("token", "demo", "--format", "json")
    document = json.loads(out)
    assert code == 0 and document["token"] == "format-access-1"
    assert document["type"] == "oauth" and document["token_type"] == "Bearer"
    assert document["expires_at"].endswith("Z") and document["scope"] == "mcp"
    assert invoke("token", "demo", "--json")[:2] == (0, out)  # --json is --format json


def test_env_format_reads_the_same_in_a_shell_and_in_env(home: Path) -> None:
    save_server(ServerConfig(RESOURCE, name="demo"))
    token = "abc.DEF-ghi_jkl+mno/pq~rs=="  # every RFC 6750 token character
    store(home, token)
    code, line, _ = invoke("token", "demo", "--format", "env")
    assert (code, line) == (0, f"GRANTKEEPER_TOKEN={token}\n")  # as it is: no quotes
    shell = f'{line.strip()}\nprintf %s "$GRANTKEEPER_TOKEN"'
    assert subprocess.run(["sh", "-c", shell], capture_output=True, text=True).stdout == token
    printed = ["env", line.strip(), "sh", "-c", 'printf %s "$GRANTKEEPER_TOKEN"']
    assert subprocess.run(printed, capture_output=True, text=True).stdout == token


@pytest.mark.parametrize("token", ["~leading-tilde", "has space", "quote'd", "dollar$x"])
def test_env_format_refuses_a_token_every_reader_would_not_read_the_same(
    home: Path, monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    """A static token is any text: one a shell would expand, or another reader would keep
    quotes of, is refused with a way out, rather than printed for one reader only."""
    save_server(ServerConfig("https://b.example/mcp", name="b", bearer_token_env="B_TOKEN"))
    monkeypatch.setenv("B_TOKEN", token)
    code, out, err = invoke("token", "b", "--format", "env")
    assert (code, out) == (1, "") and "use --format json" in one_line(err)
    assert token not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--json", "--format", "env"), "--json is --format json"),
        (("--env-name", "X"), "--env-name names the variable of --format env"),
        (("--format", "env", "--env-name", "NOT-A-NAME"), "--env-name takes a variable name"),
        (("--format", "yaml"), "'yaml' is not one of"),
    ],
)
def test_token_format_usage_errors(home: Path, args: tuple[str, ...], message: str) -> None:
    code, out, err = invoke("token", RESOURCE, *args)
    assert (code, out) == (2, "") and message in err


# -- against the real authorization server and MCP server -----------------------------------


def run(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    """``grantkeeper ARGS`` as a host runs a helper: a process of its own, through a shell."""
    env = {**os.environ, "GRANTKEEPER_HOME": str(home), "GRANTKEEPER_STORE": "file"}
    command = shlex.join([sys.executable, "-m", "grantkeeper", *args])
    return subprocess.run(
        ["sh", "-c", command],
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )


def log_in(auth: AuthServer, url: str, home: Path, name: str = "demo") -> Credential:
    """grantkeeper's own login at the real server (the browser played), saved as ``name``."""
    config = ServerConfig(url, name=name)
    save_server(config, home)
    credential = login(
        config,
        store=FileStore(home),
        authorize=lambda authorize_url: auth.approve(authorize_url, REDIRECT_URI),
        redirect_uri=REDIRECT_URI,
    )
    remember_secret(credential.access_token)
    remember_secret(credential.refresh_token)
    return credential


def stored(home: Path, url: str) -> Credential:
    held = FileStore(home).read(ServerConfig(url).key)
    assert held is not None
    return held.record


def initialize(url: str, headers: dict[str, str]) -> int:
    """The first request a host sends with the headers it was given; its status."""
    with httpx.Client(trust_env=False, timeout=30) as http:
        return http.post(url, json=INITIALIZE, headers={**MCP_HEADERS, **headers}).status_code


def printed_headers(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    assert result.returncode == 0 and result.stderr == "", result.stderr
    headers = json.loads(result.stdout)
    assert isinstance(headers, dict) and all(isinstance(v, str) for v in headers.values())
    for value in headers.values():
        remember_secret(value.partition(" ")[2] or value)
    return headers


@pytest.mark.realserver
def test_a_host_connects_with_the_headers_and_the_token_formats(
    auth: AuthServer, server: McpServer, home: Path
) -> None:
    first = log_in(auth, server.url, home)
    headers = printed_headers(run("headers", "demo", home=home))
    assert headers == {"Authorization": f"Bearer {first.access_token}"}
    assert initialize(server.url, headers) == 200
    line = run("token", "demo", "--format", "header", home=home)
    name, _, value = line.stdout.strip().partition(": ")
    assert line.returncode == 0 and initialize(server.url, {name: value}) == 200
    env = run("token", "demo", "--format", "env", home=home).stdout
    assert env == f"GRANTKEEPER_TOKEN={first.access_token}\n"
    assert auth.stats()["refresh_success"] == 0  # a fresh token is served as it is


@pytest.mark.realserver
def test_an_expired_token_is_refreshed_once_for_hosts_connecting_together(
    auth: AuthServer, server: McpServer, home: Path
) -> None:
    """Four hosts run the helper at once on an expired credential: one refresh, under the
    lock; every host prints the same new token, the one stored; nothing is replayed."""
    first = log_in(auth, server.url, home)
    age(FileStore(home), ServerConfig(server.url).key, expires_in=timedelta(seconds=-1))
    env = {**os.environ, "GRANTKEEPER_HOME": str(home), "GRANTKEEPER_STORE": "file"}
    # Each process loads the command, says so, and runs it once the test answers: all four
    # are released together, past the interpreter start that would otherwise spread them.
    at_barrier = (
        "import sys\n"
        "import grantkeeper._cli._auth\n"
        "from grantkeeper._cli import main\n"
        "print('ready', file=sys.stderr, flush=True)\n"
        "sys.stdin.readline()\n"
        "main(['headers', 'demo'])\n"
    )
    command = [sys.executable, "-c", at_barrier]
    processes = [
        subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results: list[subprocess.CompletedProcess[str]] = []
    try:
        for process in processes:
            assert process.stderr is not None
            assert process.stderr.readline() == "ready\n"  # bounded by the test's timeout
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        for process in processes:
            out, err = process.communicate(timeout=CLI_TIMEOUT)
            results.append(subprocess.CompletedProcess(command, process.returncode, out, err))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    printed = [printed_headers(result) for result in results]
    renewed = stored(home, server.url)
    assert renewed.access_token != first.access_token
    assert printed == [{"Authorization": f"Bearer {renewed.access_token}"}] * 4
    stats = auth.stats()
    assert stats["refresh_success"] == 1 and stats["replays"] == 0
    assert stats["refresh_errors"] == []
    assert initialize(server.url, printed[0]) == 200


@pytest.mark.realserver
def test_a_token_inside_its_refresh_margin_is_replaced_before_a_host_keeps_it(
    auth: AuthServer, server: McpServer, home: Path
) -> None:
    """A host keeps the headers for its session: a token with 30 s left would fail it
    within a minute. ``headers`` waits for the refresh ahead; ``token`` serves at once.
    (``--wait 60``: a loaded machine's refresh takes what it takes; the default is 5 s.)"""
    first = log_in(auth, server.url, home)
    key = ServerConfig(server.url).key
    age(FileStore(home), key, expires_in=timedelta(seconds=30))
    token = run("token", "demo", home=home)
    assert (token.returncode, token.stdout) == (0, f"{first.access_token}\n")
    assert auth.stats()["refresh_success"] == 1  # ahead, before that process ended
    age(FileStore(home), key, expires_in=timedelta(seconds=30))
    second = stored(home, server.url)
    headers = printed_headers(run("headers", "demo", "--wait", "60", home=home))
    third = stored(home, server.url)
    assert third.access_token != second.access_token
    assert headers == {"Authorization": f"Bearer {third.access_token}"}
    assert introspect(auth, third.access_token)["active"] is True
    stats = auth.stats()
    assert stats["refresh_success"] == 2 and stats["replays"] == 0


@pytest.mark.realserver
def test_without_a_wait_the_valid_token_is_printed_and_the_refresh_ends_before_exit(
    auth: AuthServer, server: McpServer, home: Path
) -> None:
    log_in(auth, server.url, home)
    age(FileStore(home), ServerConfig(server.url).key, expires_in=timedelta(seconds=30))
    valid = stored(home, server.url)
    headers = printed_headers(run("headers", "demo", "--wait", "0", home=home))
    assert headers == {"Authorization": f"Bearer {valid.access_token}"}
    assert introspect(auth, valid.access_token)["active"] is True
    renewed = stored(home, server.url)  # the refresh ahead, stored before the process ended
    assert renewed.access_token != valid.access_token
    assert auth.stats()["refresh_success"] == 1 and auth.stats()["replays"] == 0


@pytest.mark.realserver
def test_an_outage_never_ends_the_grant_and_a_valid_token_is_still_printed(
    auth: AuthServer, server: McpServer, home: Path
) -> None:
    log_in(auth, server.url, home)
    key = ServerConfig(server.url).key
    # The token endpoint unreachable: a closed port on loopback.
    reroute(FileStore(home), key, auth.issuer, to="http://127.0.0.1:9")
    age(FileStore(home), key, expires_in=timedelta(seconds=30))
    valid = stored(home, server.url)
    headers = printed_headers(run("headers", "demo", home=home))
    assert headers == {"Authorization": f"Bearer {valid.access_token}"}  # still valid
    age(FileStore(home), key, expires_in=timedelta(seconds=-1))
    expired = run("headers", "demo", home=home)
    assert expired.returncode == 1 and expired.stdout == ""  # an error, not "log in again"
    assert "run: grantkeeper login" not in one_line(expired.stderr)
    assert valid.access_token not in expired.stderr
    assert valid.refresh_token is not None and valid.refresh_token not in expired.stderr
    status = run("status", "demo", "--json", home=home)
    assert json.loads(status.stdout)[0]["state"] == "oauth"  # the grant lives on
    assert auth.stats()["refresh_success"] == 0


@pytest.mark.realserver
def test_an_ended_grant_prints_nothing_and_names_the_login(
    auth: AuthServer, server: McpServer, home: Path
) -> None:
    first = log_in(auth, server.url, home)
    auth.revoke_all()
    age(FileStore(home), ServerConfig(server.url).key, expires_in=timedelta(seconds=-1))
    result = run("headers", "demo", home=home)
    assert (result.returncode, result.stdout) == (3, "")
    line = one_line(result.stderr)
    assert line.startswith("error: ") and line.endswith("run: grantkeeper login demo"), line
    assert first.refresh_token is not None and first.refresh_token not in line
    assert first.access_token not in line
    assert auth.stats()["replays"] == 0


@pytest.mark.realserver
def test_a_grant_ended_while_the_token_is_in_its_refresh_margin_asks_for_the_login(
    auth: AuthServer, server: McpServer, home: Path
) -> None:
    """The refresh ahead hears the grant ended: a host would keep a token with under a
    minute left, so the person is told to log in now instead."""
    log_in(auth, server.url, home)
    auth.revoke_all()
    age(FileStore(home), ServerConfig(server.url).key, expires_in=timedelta(seconds=30))
    result = run("headers", "demo", home=home)
    assert (result.returncode, result.stdout) == (3, "")
    assert one_line(result.stderr).endswith("run: grantkeeper login demo")
    assert auth.stats()["replays"] == 0


@pytest.fixture(scope="module")
def keyed_mcp() -> Iterator[McpServer]:
    """An MCP server that offers no OAuth (reached with an API key, say)."""
    with McpServer(auth_server=None) as running:
        yield running


@pytest.mark.realserver
def test_with_nothing_stored_the_configured_headers_serve_a_server_without_oauth_only(
    auth: AuthServer, server: McpServer, keyed_mcp: McpServer, home: Path
) -> None:
    save_server(ServerConfig(keyed_mcp.url, name="keyed", headers={"X-Api-Key": "key-1"}), home)
    result = run("headers", "keyed", home=home)
    assert result.returncode == 0 and json.loads(result.stdout) == {"X-Api-Key": "key-1"}
    assert initialize(keyed_mcp.url, json.loads(result.stdout)) == 200
    # A server that offers OAuth: its configured headers are not enough, a login is missing.
    save_server(ServerConfig(server.url, name="oauth", headers={"X-Team": "blue"}), home)
    result = run("headers", "oauth", home=home)
    assert (result.returncode, result.stdout) == (3, "")
    assert one_line(result.stderr).endswith("run: grantkeeper login oauth")
    # One that cannot be asked (a closed port): an error saying so, not a login that
    # could not succeed either.
    closed = ServerConfig("http://127.0.0.1:9/mcp", name="down", headers={"X-Api-Key": "k"})
    save_server(closed, home)
    result = run("headers", "down", home=home)
    assert (result.returncode, result.stdout) == (1, "")
    assert "grantkeeper login" not in one_line(result.stderr)


# -- DPoP: a proof for one request ----------------------------------------------------------


@pytest.fixture(scope="module")
def dpop_auth() -> Iterator[AuthServer]:
    with AuthServer(access_ttl=3600, dpop="on") as running:
        yield running


@pytest.fixture(scope="module")
def dpop_mcp(dpop_auth: AuthServer) -> Iterator[McpServer]:
    with McpServer(auth_server=dpop_auth) as running:
        yield running


@pytest.mark.realserver
def test_a_dpop_bound_credential_gets_its_token_and_a_proof_for_one_request(
    dpop_auth: AuthServer, dpop_mcp: McpServer, home: Path
) -> None:
    """The proof is for one POST to the server's URL, as RFC 9449 makes every proof: the
    server takes it once, and refuses the same headers sent again (docs/dpop.md)."""
    credential = log_in(dpop_auth, dpop_mcp.url, home)
    assert credential.dpop
    dpop_mcp.proofs.reset_counts()
    headers = printed_headers(run("headers", "demo", home=home))
    assert list(headers) == ["Authorization", "DPoP"]
    assert headers["Authorization"] == f"DPoP {credential.access_token}"
    assert initialize(dpop_mcp.url, headers) == 200
    assert initialize(dpop_mcp.url, headers) == 401  # the same proof again
    assert dpop_mcp.proofs.accepted == 1 and dpop_mcp.proofs.rejected == ["jti replayed"]
    # Each run makes a new proof; --format header prints the two lines.
    lines = run("token", "demo", "--format", "header", home=home).stdout.splitlines()
    assert [line.partition(": ")[0] for line in lines] == ["Authorization", "DPoP"]
    assert initialize(dpop_mcp.url, dict(line.split(": ", 1) for line in lines)) == 200
    document = json.loads(run("token", "demo", "--format", "json", home=home).stdout)
    assert document["token_type"] == "DPoP"
    assert dpop_auth.stats()["refresh_success"] == 0
