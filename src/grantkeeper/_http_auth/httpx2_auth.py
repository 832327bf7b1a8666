"""The auth flow for httpx2, the HTTP client of ``mcp`` 2.x (an httpx fork with its own classes)."""

from __future__ import annotations

import httpx2

from .driver import HttpxShapedAuth


class Httpx2Auth(HttpxShapedAuth, httpx2.Auth):
    """:class:`~grantkeeper.HttpxAuth` for httpx2: the same policy, the same errors.

    Give it to ``httpx2.AsyncClient(auth=...)`` and that client to ``mcp``'s
    ``streamable_http_client(url, http_client=...)``: every request of the transport (its
    POSTs, the GET event stream and its reconnects, the closing DELETE) then follows it.
    """

    @staticmethod
    def _replayable(stream: object) -> bool:
        return isinstance(stream, httpx2.ByteStream)
