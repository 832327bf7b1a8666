"""The CLI in daily use (issue 14): profiles, every kind of server, one exit-code and hint
policy, protected secrets, plain output, and the unknown-outcome policy from the CLI."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from grantkeeper import (
    CredentialKey,
    FileStore,
    ServerConfig,
    ServerConfigError,
    load_servers,
    resolve_server,
    save_server,
)
from grantkeeper._cli import cli
from grantkeeper.testing import sample_record
from harness import terminal
from harness.mcp_server import McpServer
from tests.helpers import RESOURCE


def invoke(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), input=stdin)
    return result.exit_code, result.stdout, result.stderr


def store_two_profiles(home: Path) -> Path:
    """``demo`` saved without a profile; credentials for the default and ``work``. Returns
    the work credential's file."""
    save_server(ServerConfig(RESOURCE, name="demo"))
    store = FileStore(home)
    files: set[Path] = set()
    for profile, access in ((None, "default-access-tok"), ("work", "work-access-tok")):
        key = CredentialKey.for_server(RESOURCE, profile)
        record = sample_record(access, f"{access}-refresh", now=datetime.now(UTC))
        store.write(key, record, expected_version=None)
        [new] = set((home / "credentials").glob("*.json")) - files
        files.add(new)
    return new


# -- 1. profiles everywhere ---------------------------------------------------------------


def test_a_profile_with_a_name_acts_on_that_profile_only(home: Path) -> None:
    store_two_profiles(home)
    store = FileStore(home)
    assert invoke("token", "demo", "--profile", "work")[:2] == (0, "work-access-tok\n")
    assert invoke("token", "demo")[:2] == (0, "default-access-tok\n")
    code, out, _ = invoke("logout", "demo", "--profile", "work", "--no-revoke")
    assert code == 0 and "profile work" in out
    assert store.read(CredentialKey.for_server(RESOURCE, "work")) is None
    default = store.read(CredentialKey.for_server(RESOURCE))
    assert default is not None and default.record.access_token == "default-access-tok"
    code, out, _ = invoke("status", "demo", "--profile", "work", "--json")
    [entry] = json.loads(out)
    assert code == 3 and entry["profile"] == "work" and entry["state"] == "login_required"
    assert entry["action"] == "grantkeeper login demo --profile work"


def test_a_profile_saved_in_servers_json_is_the_credential_its_name_means(home: Path) -> None:
    store_two_profiles(home)
    save_server(ServerConfig(RESOURCE, name="work-demo", profile="work"))
    assert invoke("token", "work-demo")[:2] == (0, "work-access-tok\n")
    assert invoke("token", "work-demo", "--profile", "work")[:2] == (0, "work-access-tok\n")
    assert invoke("token", RESOURCE, "--profile", "work")[:2] == (0, "work-access-tok\n")


def test_a_url_with_a_profile_keeps_the_named_servers_settings(home: Path) -> None:
    save_server(ServerConfig(RESOURCE, name="demo", client_id="pre-registered", scope="mcp"))
    config = resolve_server(RESOURCE, profile="work")
    assert (config.profile, config.client_id, config.scope) == ("work", "pre-registered", "mcp")
    assert config.key == CredentialKey.for_server(RESOURCE, "work")


def test_a_profile_login_never_overwrites_the_entry_it_came_from(home: Path) -> None:
    from grantkeeper._cli._auth import _saved_under

    save_server(ServerConfig(RESOURCE, name="demo"))
    saved = save_server(_saved_under(resolve_server("demo", profile="work")))
    by_name = {c.name: c for c in load_servers()}
    assert by_name["demo"].profile is None and by_name[saved.name].profile == "work"
    assert saved.name == "demo-work"  # named after what the user typed, not the host
    assert resolve_server("demo", profile="work").name == saved.name  # found again later
    again = save_server(_saved_under(resolve_server("demo", profile="work")))
    assert again.name == "demo-work" and len(load_servers()) == 2  # no second entry
    # A name that is taken by another credential is left alone.
    save_server(ServerConfig(RESOURCE, name="demo-home", profile="other"))
    other = save_server(_saved_under(resolve_server("demo", profile="home")))
    assert other.name not in ("demo", "demo-home") and other.profile == "home"


def test_acting_on_another_credential_than_the_one_named_is_refused(home: Path) -> None:
    save_server(ServerConfig(RESOURCE, name="work-demo", profile="work"))
    save_server(ServerConfig("https://static.example.test/mcp", name="api", bearer_token="t0k"))
    with pytest.raises(ServerConfigError, match="saved with profile 'work'"):
        resolve_server("work-demo", profile="home")
    with pytest.raises(ServerConfigError, match="static bearer token"):
        resolve_server("api", profile="other")
    code, out, err = invoke("logout", "work-demo", "--profile", "home")
    assert code == 1 and out == "" and "saved with profile 'work'" in err


# -- 2. static bearer and no auth -----------------------------------------------------------


@pytest.fixture
def public_mcp() -> Iterator[McpServer]:
    with McpServer(auth_server=None) as server:
        yield server


def test_login_with_token_reads_stdin_and_tools_send_it(home: Path, public_mcp: McpServer) -> None:
    code, out, _ = invoke(
        "login", public_mcp.url, "--name", "api", "--with-token", stdin="static-bearer-value\n"
    )
    assert code == 0 and "api" in out and "static-bearer-value" not in out
    assert stat.S_IMODE(os.stat(home / "servers.json").st_mode) == 0o600
    assert invoke("token", "api")[:2] == (0, "static-bearer-value\n")
    code, out, err = invoke("call", "api", "echo", "--arg", "text=hi")
    assert code == 0 and json.loads(out) == {"result": "hi"}, err
    tokens = {seen.token for seen in public_mcp.seen() if seen.method == "POST"}
    assert tokens == {"static-bearer-value"}
    assert invoke("login", "api", "--with-token", "--profile", "x", stdin="t\n")[0] == 2


def test_with_token_on_a_new_name_says_how_to_save_one(home: Path) -> None:
    code, _, err = invoke("login", "api", "--with-token", stdin="static-bearer-value\n")
    assert code == 1
    assert "grantkeeper login URL --name api --with-token" in err  # not a browser login
    assert "static-bearer-value" not in err


def test_a_rejected_static_token_needs_a_person_and_says_with_token(
    home: Path, public_mcp: McpServer
) -> None:
    invoke("login", public_mcp.url, "--name", "api", "--with-token", stdin="old-bearer-value\n")
    public_mcp.fail_next("POST", status=401)
    code, _, err = invoke("call", "api", "echo", "--arg", "text=x")
    assert code == 3, err
    assert err.rstrip().endswith("run: grantkeeper login api --with-token")
    assert "old-bearer-value" not in err


def test_a_public_server_works_without_any_login(home: Path, public_mcp: McpServer) -> None:
    code, out, err = invoke("tools", public_mcp.url)
    assert code == 0 and "echo\t" in out, err
    assert {seen.token for seen in public_mcp.seen()} == {None}


def test_a_protected_server_without_a_login_says_exactly_what_to_type(
    home: Path, public_mcp: McpServer
) -> None:
    save_server(ServerConfig(public_mcp.url, name="prot"))
    public_mcp.fail_next("POST", status=401)
    code, out, err = invoke("call", "prot", "echo", "--arg", "text=x", "--profile", "w")
    assert code == 3 and out == ""
    assert err.strip().endswith("run: grantkeeper login prot --profile w"), err
    assert "Traceback" not in err


def test_a_missing_scope_hint_asks_for_it(home: Path, public_mcp: McpServer) -> None:
    invoke("login", public_mcp.url, "--name", "api", "--with-token", stdin="tok-value\n")
    public_mcp.fail_next("POST", status=403, scope="mcp:write", skip=2)  # after initialize
    code, _, err = invoke("call", "api", "echo", "--arg", "text=x")
    assert code == 3 and err.strip().endswith("run: grantkeeper login api --scope mcp:write"), err


def test_login_to_a_server_without_oauth_is_no_dead_end(home: Path, public_mcp: McpServer) -> None:
    code, out, err = invoke("login", public_mcp.url, "--no-browser", "--timeout", "5")
    assert code == 1 and out == "" and "Traceback" not in err
    assert f"grantkeeper tools {public_mcp.url}" in err and "--with-token" in err
    assert load_servers() == []


def test_status_with_only_a_profile_lists_that_profile(home: Path) -> None:
    store_two_profiles(home)
    code, out, _ = invoke("status", "--profile", "work", "--json")
    assert code == 0 and [(e["name"], e["profile"]) for e in json.loads(out)] == [("demo", "work")]


# -- 4. no tracebacks; a missing extra is named ----------------------------------------------


def test_an_unknown_server_is_one_line_for_every_command(home: Path) -> None:
    for args in (("tools", "nosuch"), ("call", "nosuch", "echo"), ("token", "nosuch")):
        code, out, err = invoke(*args)
        assert code == 1 and out == "" and "Traceback" not in err, args
        assert err.startswith("error: no server named 'nosuch'") and err.count("\n") == 1


MISSING_SDK = (
    "import sys\n"
    "for name in ('httpx2', 'mcp'):\n"
    "    sys.modules[name] = None  # as on an install without the [mcp] extra\n"
)


def test_without_the_mcp_extra_the_error_names_it(home: Path) -> None:
    probe = MISSING_SDK + (
        "import grantkeeper.mcp\n"
        "from grantkeeper import MissingExtra\n"
        "try:\n    grantkeeper.mcp.connect\n"
        "except MissingExtra as exc:\n"
        "    print(exc.extra, exc.module, isinstance(exc, ImportError))\n"
        "from grantkeeper._cli import main\n"
        "main(['tools', 'https://mcp.example.test/mcp'])\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.stdout.splitlines() == ["mcp httpx2 True"], done.stderr
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "pip install 'grantkeeper[mcp]'" in done.stderr


# -- 9. one exit-code and hint policy ------------------------------------------------------


def corrupt_work_credential(home: Path) -> Path:
    path = store_two_profiles(home)
    path.write_text("{not json")
    return path


def test_a_corrupt_credential_needs_a_person_in_every_command(home: Path) -> None:
    corrupt_work_credential(home)
    hint = "run: grantkeeper login demo --profile work"
    for args in (("token", "demo"), ("call", "demo", "echo"), ("tools", "demo")):
        code, out, err = invoke(*args, "--profile", "work")
        assert code == 3 and out == "" and err.strip().endswith(hint), (args, err)
    code, out, _ = invoke("status", "demo", "--profile", "work", "--json")
    assert code == 3 and json.loads(out)[0]["action"] == "grantkeeper login demo --profile work"


def test_log_lines_reach_stderr_only_with_verbose(home: Path) -> None:
    path = corrupt_work_credential(home)
    args = [sys.executable, "-m", "grantkeeper", "logout", "demo", "--profile", "work"]
    quiet = subprocess.run([*args, "--no-revoke"], capture_output=True, text=True)
    assert "logout.unreadable" not in quiet.stderr and quiet.returncode == 0, quiet.stderr
    path.write_text("{not json")
    loud = subprocess.run([*args, "-v", "--no-revoke"], capture_output=True, text=True)
    assert "warning: logout.unreadable" in loud.stderr and "work-access" not in loud.stderr


def test_a_bad_store_in_the_environment_names_the_variable(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRANTKEEPER_STORE", "bogus")
    code, _, err = invoke("status")
    assert code == 2 and "$GRANTKEEPER_STORE" in err
    code, _, err = invoke("status", "--store", "bogus")
    assert code == 2 and "--store" in err


# -- 7. servers.json secrets ---------------------------------------------------------------


def test_a_servers_file_with_secrets_others_can_read_is_refused(home: Path) -> None:
    save_server(ServerConfig(RESOURCE, name="demo", client_id="c", client_secret="cs-secret"))
    path = home / "servers.json"
    path.chmod(0o644)
    code, out, err = invoke("token", "demo")
    assert code == 1 and f"run: chmod 600 {path}" in err and "cs-secret" not in err
    code, out, _ = invoke("doctor", "--json")
    check = [c for c in json.loads(out)["checks"] if c["name"] == "servers file"]
    assert code == 1 and not check[0]["ok"] and f"chmod 600 {path}" in check[0]["detail"]
    # On an 80-column terminal the fix is one whole line under the table, ready to copy.
    drawn = run_on_terminal(["doctor"], {"NO_COLOR": "1", "GRANTKEEPER_HOME": str(home)})
    assert f"servers file: run chmod 600 {path}" in drawn.replace("\r\n", "\n").splitlines()
    path.chmod(0o600)
    assert invoke("doctor")[0] == 0


# -- 6, 8, 10. output ----------------------------------------------------------------------


def test_piped_output_is_tab_separated_and_names_the_real_store(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store_two_profiles(home)
    monkeypatch.setenv("GRANTKEEPER_STORE", "auto")
    code, out, _ = invoke("status")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2 and all(line.count("\t") == 8 for line in lines)
    assert not any(c in out for c in "│┃━─") and "auto" not in out
    assert [line.split("\t")[5] for line in lines] == ["file", "file"]


def test_token_json_has_token_expiry_and_scope(home: Path) -> None:
    store_two_profiles(home)
    code, out, _ = invoke("token", "demo", "--profile", "work", "--json")
    document = json.loads(out)
    assert code == 0 and document["token"] == "work-access-tok"
    assert document["expires_at"].endswith("Z") and "scope" in document


def test_every_command_has_examples_in_its_help(home: Path) -> None:
    assert "Examples:" in invoke("--help")[1]
    for name in (
        "login",
        "logout",
        "status",
        "token",
        "headers",
        "list",
        "doctor",
        "tools",
        "call",
        "proxy",
    ):
        code, out, _ = invoke(name, "--help")
        assert code == 0 and "Examples" in out and "  grantkeeper " in out, name
    assert "Examples:" in invoke("store", "migrate", "--help")[1]
    assert "Examples:" in invoke("store", "--help")[1]


def run_on_terminal(args: list[str], env: dict[str, str], columns: int = 80) -> str:
    """Run the CLI with stdout on a pseudo-terminal ``columns`` wide; return what it drew."""
    drawn, _ = terminal.run_on_terminal(
        [sys.executable, "-m", "grantkeeper", *args], {**os.environ, **env}, columns=columns
    )
    return drawn


def test_an_80_column_table_cuts_nothing_and_prints_the_action_whole(home: Path) -> None:
    store_two_profiles(home)
    long_name = "a-server-with-a-rather-long-name"
    save_server(ServerConfig("https://x.example.test/mcp/with/a/long/path", name=long_name))
    assert "\x1b[33m" in run_on_terminal(["status"], {})  # login_required in yellow...
    drawn = run_on_terminal(["status"], {"NO_COLOR": "1"})
    assert "…" not in drawn and "\x1b[3" not in drawn  # ...but not with NO_COLOR; none cut
    assert "┃" in drawn or "│" in drawn
    hint = f"{long_name}: run grantkeeper login {long_name}"
    assert hint in drawn.replace("\r\n", "\n").splitlines()
    table = re.sub(r"\x1b\[[0-9;]*m", "", drawn).replace("\r\n", "\n").splitlines()[:-1]
    assert all(len(line) <= 80 and line[-1] in "┓┃┩│┘" for line in table)  # none cropped
    assert any("│ login_required │" in line for line in table)  # the state is never wrapped


def without_keyring_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a plain install (the wheel test shows it for real, in a clean venv): hiding the
    package in this process would leave the keyring half-imported for later tests."""
    from grantkeeper import KeyringStore
    from grantkeeper._stores import admin as store_admin

    monkeypatch.setattr(store_admin, "installed", lambda module: module != "keyring")
    monkeypatch.setattr(KeyringStore, "available", lambda self: False)


def test_markup_in_values_is_printed_as_typed(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from grantkeeper._cli import _output

    monkeypatch.setattr(_output, "is_terminal", lambda: True)
    monkeypatch.setenv("COLUMNS", "400")  # one line per row, whatever the temp path
    without_keyring_package(monkeypatch)
    code, out, _ = invoke("doctor", "--store", "auto")
    assert "pip install 'grantkeeper[keyring]'" in out and "AutoStore(" not in out, out


def test_doctor_names_the_keyring_extra_when_it_is_not_installed(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    without_keyring_package(monkeypatch)
    code, out, _ = invoke("doctor", "--store", "auto", "--json")
    [check] = [c for c in json.loads(out)["checks"] if c["name"] == "keyring"]
    assert "pip install 'grantkeeper[keyring]'" in check["detail"]
    assert "AutoStore(" not in out


def test_every_keeper_the_cli_builds_is_closed(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A regression guard (it passed before too): close() is where a pending write is retried.
    from grantkeeper import Keeper

    closed: list[str] = []
    original = Keeper.close

    def close(self: Keeper) -> None:
        closed.append("x")
        original(self)

    monkeypatch.setattr(Keeper, "close", close)
    store_two_profiles(home)
    assert invoke("token", "demo")[0] == 0
    assert invoke("tools", "demo", "--profile", "work")[0] == 1  # the server is unreachable
    assert closed == ["x", "x"]


# -- unknown-outcome policy from the CLI, env and servers.json -------------------------------


def store_unknown_outcome(home: Path, **server: object) -> None:
    """``demo``'s credential with one refresh of unknown outcome, expired an hour ago."""
    from grantkeeper import RefreshIntent

    save_server(ServerConfig(RESOURCE, name="demo", **server))  # type: ignore[arg-type]
    now = datetime.now(UTC)
    record = sample_record("old-access", "old-refresh", now=now - timedelta(hours=2))
    assert record.refresh_fingerprint is not None
    intent = RefreshIntent(
        token_fingerprint=record.refresh_fingerprint,
        started_at=now,
        pid=1,
        host="elsewhere",
        attempts=1,
    )
    store, key = FileStore(home), CredentialKey.for_server(RESOURCE)
    store.delete(key)
    store.write(key, record.replace(intent=intent), expected_version=None)


def test_the_unknown_outcome_policy_comes_from_flag_env_or_servers_file(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store_unknown_outcome(home)
    assert invoke("status", "demo")[0] == 0  # the default retries once
    code, out, _ = invoke("status", "demo", "--no-retry-unknown-outcome", "--json")
    assert code == 3 and "unknown" in json.loads(out)[0]["detail"]
    monkeypatch.setenv("GRANTKEEPER_RETRY_UNKNOWN_OUTCOME", "0")
    assert invoke("status", "demo")[0] == 3
    assert invoke("status", "demo", "--retry-unknown-outcome")[0] == 0  # the flag wins
    code, _, err = invoke("token", "demo")
    assert code == 3 and "run: grantkeeper login demo" in err  # no refresh was attempted
    monkeypatch.delenv("GRANTKEEPER_RETRY_UNKNOWN_OUTCOME")
    (home / "servers.json").unlink()
    store_unknown_outcome(home, retry_unknown_outcome=False)
    assert invoke("status", "demo")[0] == 3
    assert load_servers()[0].retry_unknown_outcome is False


def test_a_login_on_a_plain_install_names_the_keyring_extra(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from grantkeeper import AutoStore, FileStore
    from grantkeeper._cli._auth import _keyring_missing

    assert not _keyring_missing(AutoStore(home))  # the keyring package is installed here
    without_keyring_package(monkeypatch)
    assert _keyring_missing(AutoStore(home))  # Auto fell back to files: say why, once
    assert not _keyring_missing(FileStore(home))  # files were asked for: nothing to say


def test_a_token_grantkeeper_cannot_present_needs_a_person_in_every_command(home: Path) -> None:
    """A stored DPoP token (kept: its refresh token is the live one) is never printed as a
    Bearer token: ``token`` and ``status`` both exit 3 and say what to do."""
    save_server(ServerConfig(RESOURCE, name="demo"))
    record = sample_record(
        "dpop-bound-access", "dpop-refresh", now=datetime.now(UTC), token_type="DPoP"
    )
    FileStore(home).write(CredentialKey.for_server(RESOURCE), record, expected_version=None)
    code, out, err = invoke("token", "demo")
    assert code == 3 and out == "" and "dpop-bound-access" not in err
    assert "'DPoP'" in err and err.strip().endswith("run: grantkeeper login demo"), err
    code, out, _ = invoke("status", "demo", "--json")
    [entry] = json.loads(out)
    assert code == 3 and entry["state"] == "reauthentication_required"
    assert "Bearer" in entry["detail"]
