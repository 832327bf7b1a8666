"""Log in to the harness servers, and the expiry demo the README shows.

``expiry_demo()`` starts an :class:`AuthServer` with short-lived access tokens and a
:class:`McpServer`, logs in (the browser is played by the harness), calls a tool, lets
the access token expire for real, calls again, and reports what happened: the second
call refreshed silently, exactly once, with no refresh token replayed.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from grantkeeper import Credential, CredentialKey, FileStore, Keeper, Store
from grantkeeper._freshness import utc_now
from grantkeeper._status import status_of
from grantkeeper.mcp import connect
from harness.authserver import AuthServer
from harness.mcp_server import McpServer
from harness.real_login import log_in


def login(
    auth: AuthServer, server_url: str, store: Store, *, profile: str | None = None
) -> Credential:
    """Log in to ``server_url`` as the harness's current account; store and return it."""
    key = CredentialKey.for_server(server_url, profile)
    return log_in(auth, store, key, resource=server_url)


@dataclass(frozen=True)
class ExpiryDemo:
    """What the expiry demo saw."""

    first: str
    """The tool's answer before the token expired."""
    second: str
    """Its answer after the token expired."""
    token_changed: bool
    """Whether the second call went out with a new access token."""
    refreshes: int
    """Refreshes the authorization server granted (expected: 1)."""
    replays: int
    """Refresh tokens presented twice (expected: 0)."""
    waited_s: float
    """How long the demo waited for the access token to expire."""
    status: str
    """``grantkeeper status`` of the credential afterwards."""


def expiry_demo(home: Path | None = None, *, access_ttl: int = 3) -> ExpiryDemo:
    """Run the demo against fresh servers; credentials go to ``home`` (a temp dir if None)."""
    with (
        tempfile.TemporaryDirectory() as scratch,
        AuthServer(access_ttl=access_ttl) as auth,
        McpServer(auth_server=auth) as server,
    ):
        store = FileStore(home or Path(scratch))
        credential = login(auth, server.url, store)
        # A skew shorter than the token's life, so the first call uses it as issued.
        keeper = Keeper(store, CredentialKey.for_server(server.url), skew=timedelta(seconds=1))

        async def call(text: str) -> str:
            async with connect(server.url, keeper=keeper) as session:
                result = await session.call_tool("echo", {"text": text})
            return str((result.structured_content or {}).get("result"))

        try:
            first = asyncio.run(call("before expiry"))
            assert credential.expires_at is not None
            started = time.monotonic()
            # The demo's point is real expiry, so it waits for it.
            time.sleep(max(0.0, (credential.expires_at - utc_now()).total_seconds()) + 0.5)
            waited = time.monotonic() - started
            second = asyncio.run(call("after expiry"))
        finally:
            keeper.close()
        stored = store.read(keeper.key)
        status = status_of(keeper.key, stored.record if stored else None, now=utc_now())
        stats = auth.stats()
        current = keeper.current
        return ExpiryDemo(
            first=first,
            second=second,
            token_changed=current is not None and current.access_token != credential.access_token,
            refreshes=int(stats["refresh_success"]),
            replays=int(stats["replays"]),
            waited_s=round(waited, 1),
            status=status.state.value,
        )


if __name__ == "__main__":
    print(expiry_demo())
