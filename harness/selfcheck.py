"""Prove the oidc-provider harness works: run ``python -m harness.selfcheck`` from the repo root.

Registers a public client, logs in with PKCE, refreshes once, replays the spent refresh token
and checks that the server answers invalid_grant and revokes the whole grant.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import sys
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx

from harness.authserver import AuthServer

REDIRECT_URI = "http://127.0.0.1:9/callback"
RESOURCE = "http://127.0.0.1:9/mcp"


def check(condition: bool, message: str, detail: object = "") -> None:
    """Print ``ok`` and the message, or fail with it; ``detail`` (which may hold tokens) is
    shown only on failure."""
    if not condition:
        raise AssertionError(f"{message}: {detail}" if detail else message)
    print(f"ok   {message}")


def token_request(http: httpx.Client, endpoint: str, form: dict[str, str]) -> httpx.Response:
    return http.post(endpoint, data=form, headers={"accept": "application/json"})


def run() -> dict[str, Any]:
    with AuthServer(access_ttl=5) as server, httpx.Client(timeout=10.0, trust_env=False) as http:
        print(f"issuer {server.issuer}")
        metadata = http.get(f"{server.issuer}/.well-known/openid-configuration").json()
        check(metadata["issuer"] == server.issuer, "discovery issuer matches")
        check(
            metadata.get("authorization_response_iss_parameter_supported") is True,
            "discovery advertises RFC 9207 iss",
        )

        registration = http.post(
            metadata["registration_endpoint"],
            json={
                "redirect_uris": [REDIRECT_URI],
                "token_endpoint_auth_method": "none",
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "client_name": "harness selfcheck",
            },
        )
        check(registration.status_code == 201, "registration answered 201", registration.text)
        client_id = registration.json()["client_id"]

        verifier = secrets.token_urlsafe(48)
        challenge = (
            base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
            .rstrip(b"=")
            .decode()
        )
        state = secrets.token_urlsafe(16)
        authorize_url = (
            metadata["authorization_endpoint"]
            + "?"
            + urlencode(
                {
                    "response_type": "code",
                    "client_id": client_id,
                    "redirect_uri": REDIRECT_URI,
                    "scope": "openid offline_access mcp",
                    "state": state,
                    "code_challenge": challenge,
                    "code_challenge_method": "S256",
                    "resource": RESOURCE,
                }
            )
        )
        callback = server.approve(authorize_url, REDIRECT_URI)
        query = {k: v[0] for k, v in parse_qs(urlsplit(callback).query).items()}
        check("code" in query, f"callback carries a code (keys: {sorted(query)})")
        check(query.get("state") == state, "callback state matches")
        check(query.get("iss") == server.issuer, "callback iss is the issuer (RFC 9207)")

        token_endpoint = metadata["token_endpoint"]
        first = token_request(
            http,
            token_endpoint,
            {
                "grant_type": "authorization_code",
                "code": query["code"],
                "redirect_uri": REDIRECT_URI,
                "client_id": client_id,
                "code_verifier": verifier,
                "resource": RESOURCE,
            },
        )
        check(first.status_code == 200, "code exchange answered 200", first.text)
        tokens = first.json()
        check("refresh_token" in tokens, "code exchange issued a refresh token")
        check(tokens.get("expires_in") == 5, "access token lives 5s", tokens.get("expires_in"))
        print(f"     code exchange scope={tokens.get('scope')!r} token_type={tokens['token_type']}")

        introspection = http.post(
            metadata["introspection_endpoint"],
            data={"token": tokens["access_token"]},
            auth=("introspector", "introspector-secret"),
        ).json()
        check(introspection.get("active") is True, "introspector sees the access token active")
        check(
            introspection.get("aud") == RESOURCE, "access token aud is the resource", introspection
        )
        check(introspection.get("sub") == "alice", "access token sub is alice")

        old_refresh = tokens["refresh_token"]
        second = token_request(
            http,
            token_endpoint,
            {"grant_type": "refresh_token", "refresh_token": old_refresh, "client_id": client_id},
        )
        check(second.status_code == 200, "refresh answered 200", second.text)
        refreshed = second.json()
        new_refresh = refreshed["refresh_token"]
        check(new_refresh != old_refresh, "refresh token rotated")
        check(refreshed["access_token"] != tokens["access_token"], "new access token")
        again = http.post(
            metadata["introspection_endpoint"],
            data={"token": refreshed["access_token"]},
            auth=("introspector", "introspector-secret"),
        ).json()
        check(again.get("aud") == RESOURCE, "refreshed access token keeps the granted resource")

        replay = token_request(
            http,
            token_endpoint,
            {"grant_type": "refresh_token", "refresh_token": old_refresh, "client_id": client_id},
        )
        check(replay.status_code == 400, "replay answered 400", replay.text)
        check(replay.json().get("error") == "invalid_grant", "replay is invalid_grant", replay.text)
        stats = server.stats()
        check(stats["replays"] == 1, "stats replays == 1", stats)

        dead = token_request(
            http,
            token_endpoint,
            {"grant_type": "refresh_token", "refresh_token": new_refresh, "client_id": client_id},
        )
        check(
            dead.status_code == 400 and dead.json().get("error") == "invalid_grant",
            "the new refresh token died with the grant",
            dead.text,
        )
        stats = server.stats()
        check(stats["refresh_success"] == 1, "exactly one successful refresh")
        check(stats["code_success"] == 1, "exactly one code exchange")
        check(stats["grant_revoked"] == 1, "the server revoked the grant once", stats)
        return stats


def main() -> int:
    stats = run()
    print(json.dumps(stats, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
