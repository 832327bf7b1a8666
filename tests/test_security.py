"""Threat-model tests (docs/security.md): each item there names its test here or elsewhere."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from grantkeeper import FileStore, ProtocolError, RefreshOutcomeUnknown
from grantkeeper._oauth.authorization import parse_callback
from grantkeeper._oauth.pkce import new_verifier, s256_challenge
from grantkeeper._oauth.token_client import send_token_request
from grantkeeper._oauth.token_endpoint import refresh_request
from grantkeeper._oauth.urls import require_secure
from grantkeeper.testing import sample_record
from tests.helpers import KEY, T0


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_store_files_are_born_private_without_any_chmod(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, umask: int
) -> None:
    # Created 0600/0700 by open(2)/mkdir(2) themselves: no window where a chmod is pending.
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("the store must not chmod after creating")

    monkeypatch.setattr(os, "chmod", forbidden)
    monkeypatch.setattr(os, "fchmod", forbidden)
    previous = os.umask(umask)
    try:
        store = FileStore(tmp_path / "home")
        store.write(KEY, sample_record("a", "r", now=T0), expected_version=None)
        with store.lock(KEY, timeout=1):
            pass
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(store.directory).st_mode) == 0o700
    for path in store.directory.iterdir():
        assert stat.S_IMODE(path.lstat().st_mode) == 0o600, path.name


def test_a_token_request_is_never_redirected_even_by_a_following_client() -> None:
    # A 307 would re-send the form (the refresh token) to wherever Location points.
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(307, headers={"location": "https://evil.example/steal"})

    record = sample_record(
        "a", "rt-secret", token_endpoint="https://as.example/token", now=T0
    ).replace(client_secret="cs-secret", token_endpoint_auth_method="client_secret_basic")
    with httpx.Client(transport=httpx.MockTransport(handler), follow_redirects=True) as client:
        with pytest.raises(RefreshOutcomeUnknown):
            send_token_request(client, refresh_request(record), now=lambda: datetime.now(UTC))
    assert seen == ["https://as.example/token"]


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://as.example/token", True),
        ("http://127.0.0.1:8080/token", True),
        ("http://[::1]:8080/token", True),
        ("http://localhost/token", True),
        ("http://as.example/token", False),
        ("http://127.0.0.1.evil.example/token", False),
        ("ftp://as.example/token", False),
        ("https://as.example/token#f", False),
    ],
)
def test_https_is_required_off_loopback(url: str, ok: bool) -> None:
    if ok:
        assert require_secure(url, "token endpoint") == url
    else:
        with pytest.raises(ProtocolError):
            require_secure(url, "token endpoint")


ISSUER = "https://as.example"


@pytest.mark.parametrize(
    ("query", "require_iss", "error"),
    [
        ("state=other&code=c&iss=https%3A%2F%2Fas.example", True, "CSRF"),
        ("code=c&iss=https%3A%2F%2Fas.example", True, "CSRF"),
        ("state=s&state=s&code=c", False, "repeats"),
        ("state=s&code=c&iss=https%3A%2F%2Fevil.example", False, "mix-up"),
        ("state=s&code=c", True, "no iss"),
        ("state=s&iss=https%3A%2F%2Fas.example", True, "no authorization code"),
    ],
)
def test_callback_checks_state_and_iss(query: str, require_iss: bool, error: str) -> None:
    with pytest.raises(ProtocolError, match=error):
        parse_callback(
            f"http://127.0.0.1:9/cb?{query}",
            expected_state="s",
            issuer=ISSUER,
            require_iss=require_iss,
        )
    assert (
        parse_callback(
            "http://127.0.0.1:9/cb?state=s&code=c&iss=https%3A%2F%2Fas.example",
            expected_state="s",
            issuer=ISSUER,
            require_iss=True,
        )
        == "c"
    )


def test_pkce_is_s256_and_verifiers_are_fresh() -> None:
    verifiers = {new_verifier() for _ in range(100)}
    assert len(verifiers) == 100
    for verifier in verifiers:
        assert 43 <= len(verifier) <= 128
        digest = hashlib.sha256(verifier.encode("ascii")).digest()
        assert s256_challenge(verifier) == base64.urlsafe_b64encode(digest).decode().rstrip("=")
