"""``mcp`` 1.x with plain httpx, in the second environment, against the real servers.

``mcp`` 1.x and 2.x cannot share an environment, so ``scripts/bootstrap`` builds
``.venv-mcp1`` (``mcp`` 1.x, grantkeeper without the ``mcp`` extra) and these tests run
``harness/mcp1_client.py`` there, against the real oidc-provider and ``mcp`` 2.3 server
started here. The stored credential is a real login; what the client did is checked both
from its own report and from what the servers counted.
"""

from __future__ import annotations

import json
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from grantkeeper import CredentialKey, FileStore
from grantkeeper._freshness import utc_now
from harness.authserver import AuthServer
from harness.mcp_demo import login
from harness.mcp_server import McpServer
from tests.helpers import ROOT

ENVIRONMENTS = {
    # mcp >= 1.24: the helper builds the httpx client for streamable_http_client.
    "1.30": ROOT / ".venv-mcp1",
    # mcp < 1.24: the helper hands the auth to streamablehttp_client(url, auth=...).
    "1.23": ROOT / ".venv-mcp1-legacy",
}

pytestmark = pytest.mark.realserver


def run_client(version: str, url: str, home: Path) -> dict[str, Any]:
    python = ENVIRONMENTS[version] / "bin" / "python"
    assert python.exists(), f"{python} is missing: run scripts/bootstrap, which creates it"
    finished = subprocess.run(
        [str(python), str(ROOT / "harness" / "mcp1_client.py"), url, str(home)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert finished.returncode == 0, finished.stderr[-2000:]
    report: dict[str, Any] = json.loads(finished.stdout.strip().splitlines()[-1])
    return report


@pytest.mark.parametrize("version", sorted(ENVIRONMENTS))
def test_mcp1_refreshes_an_expired_token_then_recovers_a_401_once(
    auth: AuthServer, server: McpServer, tmp_path: Path, version: str
) -> None:
    store = FileStore(tmp_path)
    issued = login(auth, server.url, store)
    key = CredentialKey.for_server(server.url)
    stored = store.read(key)
    assert stored is not None
    # Expired as far as the client knows (the server would still take it): the client must
    # refresh before its first request rather than send it.
    past = utc_now() - timedelta(seconds=1)
    store.write(key, stored.record.replace(expires_at=past), expected_version=stored.version)
    auth.reset_stats()
    first = run_client(version, server.url, tmp_path)

    assert first["mcp"].startswith(version + "."), first
    assert "error" not in first, first
    assert "echo" in first["tools"] and first["echo"] == ["from mcp 1.x"]
    assert (auth.stats()["refresh_success"], auth.stats()["replays"]) == (1, 0)
    sent = {seen.token for seen in server.seen() if seen.token}
    assert issued.access_token not in sent and len(sent) == 1
    renewed = next(iter(sent))
    assert renewed.endswith(first["token_suffix"])
    assert all(seen.status != 401 for seen in server.seen())

    # Now the server refuses the (fresh) token once: one refresh, one retry, no browser.
    server.reset()
    server.fail_next("POST")
    second = run_client(version, server.url, tmp_path)

    assert "error" not in second, second
    assert second["echo"] == ["from mcp 1.x"]
    seen = server.seen()
    assert [s.status for s in seen if s.token == renewed] == [401]
    assert (auth.stats()["refresh_success"], auth.stats()["replays"]) == (2, 0)
    newest = store.read(key)
    assert newest is not None and newest.record.access_token.endswith(second["token_suffix"])
    assert all(s.status < 400 for s in seen if s.token != renewed)


@pytest.mark.parametrize("version", sorted(ENVIRONMENTS))
def test_mcp1_without_a_login_reports_login_required(
    server: McpServer, tmp_path: Path, version: str
) -> None:
    report = run_client(version, server.url, tmp_path)
    assert report["error"] == "LoginRequired" and report["token_suffix"] is None
