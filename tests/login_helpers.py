"""Helpers for tests against the real authorization server: a browser that consents, token
introspection, a login through them, and the CLI in a process of its own (the fixtures are in
conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx

from grantkeeper import Credential, FileStore, login
from harness import remember_secret
from harness.authserver import AuthServer
from harness.resource_server import ResourceServer

FAR_FUTURE = datetime(2100, 1, 1, tzinfo=UTC)
CLI_TIMEOUT = 60.0
"""Bounds each CLI run: a hang fails the test instead of the suite."""


class Browser:
    """Plays the user's browser: consent at the AS, then the redirect to our listener."""

    def __init__(self, server: AuthServer) -> None:
        self.server = server
        self.callbacks: list[str] = []

    def __call__(self, url: str) -> bool:
        callback = self.server.approve(url)
        self.callbacks.append(callback)
        response = httpx.get(callback, trust_env=False, timeout=10.0)
        assert response.status_code == 200, response.text
        return True


def introspect(server: AuthServer, token: str) -> dict[str, object]:
    with httpx.Client(trust_env=False, timeout=10.0) as http:
        metadata = http.get(f"{server.issuer}/.well-known/openid-configuration").json()
        answer: dict[str, object] = http.post(
            metadata["introspection_endpoint"],
            data={"token": token},
            auth=("introspector", "introspector-secret"),
        ).json()
    return answer


def remember(record: Credential) -> Credential:
    remember_secret(record.access_token)
    remember_secret(record.refresh_token)
    return record


def do_login(server: AuthServer, resource: ResourceServer, home: Path) -> Credential:
    return remember(login(resource.url, store=FileStore(home), open_browser=Browser(server)))


def cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    """``grantkeeper ARGS`` in a process of its own, on the file store at ``home``."""
    env = {**os.environ, "GRANTKEEPER_HOME": str(home), "GRANTKEEPER_STORE": "file"}
    return subprocess.run(
        [sys.executable, "-m", "grantkeeper", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )
