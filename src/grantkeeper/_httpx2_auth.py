"""The auth flow for httpx2, the HTTP client of ``mcp`` 2.x (an httpx fork with its own classes)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator

import httpx2

from ._http_auth import AuthDriver
from ._keeper import Keeper


class Httpx2Auth(httpx2.Auth):
    """:class:`~grantkeeper.HttpxAuth` for httpx2: the same policy, the same errors.

    Give it to ``httpx2.AsyncClient(auth=...)`` and that client to ``mcp``'s
    ``streamable_http_client(url, http_client=...)``: every request of the transport (its
    POSTs, the GET event stream and its reconnects, the closing DELETE) then follows it.
    """

    def __init__(self, keeper: Keeper, *, recovery_timeout: float | None = None) -> None:
        self._driver = AuthDriver(
            keeper,
            server_url=None,
            token=None,
            recovery_timeout=recovery_timeout,
            replayable=_replayable,
        )

    @classmethod
    def bearer(cls, server_url: str, token: str | None = None) -> Httpx2Auth:
        """Send ``token`` (or the request's own header) to ``server_url``; never refresh."""
        auth = cls.__new__(cls)
        auth._driver = AuthDriver(
            None, server_url=server_url, token=token, recovery_timeout=None, replayable=_replayable
        )
        return auth

    def sync_auth_flow(self, request: httpx2.Request) -> Generator[httpx2.Request, httpx2.Response]:
        return self._driver.sync_flow(request)

    def async_auth_flow(
        self, request: httpx2.Request
    ) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        return self._driver.async_flow(request)


def _replayable(request: httpx2.Request) -> bool:
    return isinstance(request.stream, httpx2.ByteStream)
