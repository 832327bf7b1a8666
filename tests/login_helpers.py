"""Helpers for tests against the real authorization server: a browser that consents, token
introspection, and a login through them (the fixtures are in conftest.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx

from grantkeeper import Credential, FileStore, login
from harness import remember_secret
from harness.authserver import AuthServer
from harness.resource_server import ResourceServer

FAR_FUTURE = datetime(2100, 1, 1, tzinfo=UTC)


class Browser:
    """Plays the user's browser: consent at the AS, then the redirect to our listener."""

    def __init__(self, server: AuthServer) -> None:
        self.server = server
        self.callbacks: list[str] = []

    def __call__(self, url: str) -> bool:
        redirect_uri = parse_qs(urlsplit(url).query)["redirect_uri"][0]
        callback = self.server.approve(url, redirect_uri)
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
