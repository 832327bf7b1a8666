"""The auth flow for httpx; ``httpx2_auth`` is its httpx2 twin, both on ``driver``."""

from __future__ import annotations

import httpx

from .driver import HttpxShapedAuth


class HttpxAuth(HttpxShapedAuth, httpx.Auth):
    """Authenticate httpx requests to one MCP server with a grantkeeper credential.

    ``HttpxAuth(keeper)`` sends the Keeper's token, refreshes it before it expires, and
    after a 401 renews it once (or adopts a newer one, without refreshing) and retries
    once. ``HttpxAuth.bearer(url, token)`` sends a fixed token (or, with ``token=None``,
    the request's own ``Authorization`` header): OAuth is off and a 401 is final.
    ``HttpxAuth.anonymous(url)`` sends none, for servers that need none: a 401 raises
    :class:`LoginRequired`. :meth:`choose` picks one of the three from a client's settings.

    Requests to any other origin pass through untouched. Errors are grantkeeper's:
    :class:`AuthenticationRequired` (and subclasses such as :class:`InsufficientScope`),
    :class:`RetryRequired`, :class:`DeadlineExceeded` and the Keeper's own.
    """

    @staticmethod
    def _replayable(stream: object) -> bool:
        return isinstance(stream, httpx.ByteStream)
