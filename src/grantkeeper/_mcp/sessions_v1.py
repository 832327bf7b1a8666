"""``mcp`` 1.x's streamable HTTP client with grantkeeper's auth.

``mcp`` 1.x runs on httpx, so its requests get :class:`~grantkeeper.HttpxAuth`: the same
policy as under ``mcp`` 2.x. This module imports neither httpx2 nor ``mcp`` 2.x, so it
works in an environment that has ``mcp`` 1.x alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx

from .._http_auth.httpx_auth import HttpxAuth
from .._keeper import Keeper
from .._network import client_options


def httpx_client_factory(
    headers: dict[str, str] | None = None,
    timeout: httpx.Timeout | None = None,
    auth: httpx.Auth | None = None,
    follow_redirects: bool = True,
) -> httpx.AsyncClient:
    """``mcp`` 1.x's own client (``create_mcp_http_client``: its timeouts, and redirects
    followed as before 1.24; later 1.x transports send each request without), made with
    grantkeeper's proxies and trust store.

    An ``httpx_client_factory`` for whatever takes one on ``mcp`` 1.x (langchain-mcp-adapters,
    openai-agents under ``mcp`` 1.x): its requests then reach servers as grantkeeper's own do.
    Pair it with ``auth=grantkeeper.HttpxAuth(keeper)``.
    """
    return httpx.AsyncClient(
        headers=headers,
        timeout=timeout or httpx.Timeout(30.0, read=300.0),
        auth=auth,
        follow_redirects=follow_redirects,
        **client_options(),
    )


@contextlib.asynccontextmanager
async def streamablehttp_client_v1(
    url: str,
    *,
    keeper: Keeper | None = None,
    token: str | None = None,
    headers: Mapping[str, str] | None = None,
    http_timeout: float = 30.0,
    sse_read_timeout: float = 300.0,
    terminate_on_close: bool = True,
) -> AsyncIterator[Any]:
    """``mcp`` 1.x's streamable HTTP transport to ``url``, authenticated by grantkeeper.

    Yields what ``mcp`` 1.x's own client yields, ``(read, write, get_session_id)``, for a
    ``mcp.ClientSession``. ``keeper`` supplies an OAuth credential; ``token`` (or an
    ``Authorization`` header in ``headers``) sends a static one instead; with neither, no
    credential is sent (a 401 raises :class:`~grantkeeper.LoginRequired`). Under ``mcp`` 2.x
    use :func:`grantkeeper.mcp.connect`. ``http_timeout`` and ``sse_read_timeout`` are
    ``mcp``'s own ``timeout`` and ``sse_read_timeout``.
    """
    from mcp.client import streamable_http

    if not hasattr(streamable_http, "streamablehttp_client"):
        raise ImportError(
            "this is mcp 2.x, which runs on httpx2: use grantkeeper.mcp.connect instead"
        )
    auth = HttpxAuth.choose(url, keeper=keeper, token=token, headers=headers)
    modern = getattr(streamable_http, "streamable_http_client", None)
    if modern is None:
        # mcp before 1.24 takes the auth itself and builds its own httpx client.
        async with streamable_http.streamablehttp_client(
            url,
            headers=dict(headers or {}),
            timeout=http_timeout,
            sse_read_timeout=sse_read_timeout,
            terminate_on_close=terminate_on_close,
            auth=auth,
            httpx_client_factory=httpx_client_factory,
        ) as streams:
            yield streams
        return
    # Later 1.x deprecate that for a client of our own; these are mcp's defaults for it.
    async with (
        httpx.AsyncClient(
            auth=auth,
            headers=dict(headers or {}),
            timeout=httpx.Timeout(http_timeout, read=sse_read_timeout),
            follow_redirects=True,
            **client_options(),
        ) as http,
        modern(url, http_client=http, terminate_on_close=terminate_on_close) as streams,
    ):
        yield streams
