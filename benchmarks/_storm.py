"""One worker process of P3's refresh storm: T tasks calling an MCP tool for D seconds.

Every worker of a run shares one stored login, the way agents on one machine share a
user's login, through the store each client kind offers:

- ``grantkeeper``: a :class:`~grantkeeper.FileStore` and a :class:`~grantkeeper.Keeper`;
- ``mcp SDK``: ``OAuthClientProvider`` over a JSON file (the SDK ships no store; this one
  writes atomically, as a careful user would, and cannot lock, as the SDK offers no hook);
- ``fastmcp``: ``OAuth`` over py-key-value's ``FileTreeStore``, which fastmcp documents.

One auth object and one ``httpx2.AsyncClient`` per process, one MCP session per task. When
a peer wants a browser login, the harness plays the browser (``play_browser``) and the
authorization server counts it: a forced re-authentication. Nothing a peer raises stops
the worker; each failed call is recorded and the task carries on with a new session.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2

KINDS = ("grantkeeper", "mcp SDK", "fastmcp")
REDIRECT_URI = "http://127.0.0.1:9/callback"
BACKOFF = 0.2
"""Seconds a task waits after a failed call before it opens a new session: a client that
retried at once would spin on a dead credential and starve everyone else of the CPU."""

Call = tuple[float, float, str | None]
"""(started, ended) wall-clock seconds, and the error's name (``None`` for success)."""


@dataclass(frozen=True)
class Plan:
    """What every worker of one run does."""

    kind: str
    url: str
    store: str
    """The shared store: a directory (grantkeeper, fastmcp) or a JSON file (mcp SDK)."""
    tasks: int
    seconds: float
    pace: float = 0.0
    """Seconds from one call's start to the next's, per task (0: back to back)."""


class _ProviderCalls(logging.Handler):
    """Keeps the ``duration_ms`` of each successful ``refresh.provider_call`` (grantkeeper's
    own account of each refresh it made: the provider's latency, seen from the client)."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.durations: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "grantkeeper", None)
        if (
            isinstance(fields, dict)
            and fields.get("event") == "refresh.provider_call"
            and fields.get("outcome") == "ok"
        ):
            self.durations.append(float(fields["duration_ms"]) / 1000)


def work(plan: Plan, ready: Any, results: Any) -> None:
    """The process body: set up, wait for every peer at ``ready``, storm, report
    ``(pid, calls, error, provider call seconds)``."""
    # Peers log each failure at length (the SDK logs a traceback per failed OAuth flow):
    # nothing is logged, but grantkeeper's account of its provider calls is kept.
    warnings.simplefilter("ignore")
    provider = _ProviderCalls()
    if plan.kind == "grantkeeper":
        logging.getLogger().setLevel(logging.CRITICAL + 1)
        ours = logging.getLogger("grantkeeper")
        ours.setLevel(logging.INFO)
        ours.propagate = False
        ours.addHandler(provider)
    else:
        logging.disable(logging.CRITICAL)
    try:
        calls = asyncio.run(_work(plan, ready))
    except BaseException as exc:  # the parent counts it; never hang it
        ready.abort()
        results.put((os.getpid(), None, f"{type(exc).__name__}: {exc}"[:500], []))
        return
    results.put((os.getpid(), calls, None, provider.durations))


async def _work(plan: Plan, ready: Any) -> list[Call]:
    auth, close = await _auth(plan)
    try:
        async with httpx2.AsyncClient(
            auth=auth,
            timeout=httpx2.Timeout(30.0, read=300.0),
            limits=httpx2.Limits(max_connections=plan.tasks + 4),
        ) as http:
            start = _StartLine(plan.tasks)
            running = [
                asyncio.create_task(_task(http, plan.url, start, plan.pace))
                for _ in range(plan.tasks)
            ]
            # Every task opens its session first: 256 MCP handshakes at once are a start-up
            # queue of several seconds, which is not what the storm measures.
            await start.all_ready.wait()
            await asyncio.to_thread(ready.wait)
            start.go(plan.seconds)
            per_task = await asyncio.gather(*running)
    finally:
        close()
    return [call for calls in per_task for call in calls]


class _StartLine:
    """Holds a worker's tasks, sessions open, until every worker is ready."""

    def __init__(self, tasks: int) -> None:
        self.waiting = tasks
        self.all_ready = asyncio.Event()
        self.started = asyncio.Event()
        self.deadline = 0.0

    async def reached(self) -> None:
        self.waiting -= 1
        if self.waiting == 0:
            self.all_ready.set()
        await self.started.wait()

    def go(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.started.set()


async def _task(http: httpx2.AsyncClient, url: str, start: _StartLine, pace: float) -> list[Call]:
    from mcp.client.client import Client
    from mcp.client.streamable_http import streamable_http_client

    calls: list[Call] = []
    waiting = True
    due = 0.0
    while waiting or time.monotonic() < start.deadline:
        started = time.time()
        try:
            async with Client(streamable_http_client(url, http_client=http)) as client:
                if waiting:
                    waiting = False
                    await start.reached()
                    # Tasks start spread over one pace, like agents that were not all
                    # started in the same instant.
                    due = time.monotonic() + random.uniform(0, pace)
                while time.monotonic() < start.deadline:
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                    due = max(due + pace, time.monotonic())
                    started = time.time()
                    result = await client.call_tool("echo", {"text": "storm"})
                    calls.append((started, time.time(), "ToolError" if result.is_error else None))
        except Exception as exc:  # a peer's failure is a figure, not a crash
            if waiting:  # not even a session before the start: counted from the start on
                waiting = False
                await start.reached()
                started = time.time()
            calls.append((started, time.time(), _leaf(exc)))
            await asyncio.sleep(BACKOFF)
    return calls


async def log_in_once(plan: Plan) -> None:
    """The shared login, made by the client kind itself: one call against an empty store
    makes it discover, register, and (the harness playing the browser) log in."""
    from mcp.client.client import Client
    from mcp.client.streamable_http import streamable_http_client

    auth, close = await _auth(plan)
    try:
        async with (
            httpx2.AsyncClient(auth=auth, timeout=httpx2.Timeout(30.0)) as http,
            Client(streamable_http_client(plan.url, http_client=http)) as client,
        ):
            result = await client.call_tool("echo", {"text": "login"})
            if result.is_error:
                raise RuntimeError(f"{plan.kind}: the first call failed after logging in")
    finally:
        close()


def _leaf(exc: BaseException) -> str:
    """The name of the first error inside task groups, which is what actually went wrong."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return type(exc).__name__


# -- the three ways to authenticate ---------------------------------------------------------


async def _auth(plan: Plan) -> tuple[httpx2.Auth, Any]:
    if plan.kind == "grantkeeper":
        from grantkeeper import CredentialKey, FileStore, Keeper
        from grantkeeper.mcp import httpx2_auth

        keeper = Keeper(FileStore(plan.store), CredentialKey.for_server(plan.url))
        return httpx2_auth(plan.url, keeper=keeper), keeper.close
    if plan.kind == "mcp SDK":
        from mcp.client.auth import OAuthClientProvider

        browser = _Browser()
        provider = OAuthClientProvider(
            plan.url,
            client_metadata(),
            JsonFileTokens(Path(plan.store)),
            browser.redirect,
            browser.callback,
        )
        return provider, lambda: None
    if plan.kind == "fastmcp":
        return fastmcp_oauth(plan.url, plan.store), lambda: None
    raise ValueError(f"unknown client kind {plan.kind!r}")


def client_metadata() -> Any:
    """What an SDK user registers: a redirect URI; the SDK chooses the scope itself."""
    from mcp.shared.auth import OAuthClientMetadata
    from pydantic import AnyUrl

    return OAuthClientMetadata(redirect_uris=[AnyUrl(REDIRECT_URI)])


class _Browser:
    """The SDK's redirect and callback handlers, with the harness playing the user."""

    def __init__(self) -> None:
        self.url: str | None = None

    async def redirect(self, authorization_url: str) -> None:
        self.url = authorization_url

    async def callback(self) -> Any:
        from mcp.client.auth import AuthorizationCodeResult

        from harness.authserver import play_browser

        assert self.url is not None, "the SDK asked for the callback before redirecting"
        location = await asyncio.to_thread(play_browser, self.url, REDIRECT_URI)
        query = parse_qs(urlsplit(location).query)
        return AuthorizationCodeResult(
            code=query["code"][0],
            state=query.get("state", [None])[0],
            iss=query.get("iss", [None])[0],
        )


class JsonFileTokens:
    """The SDK's ``TokenStorage`` in one JSON file shared by every process."""

    _guard = threading.Lock()

    def __init__(self, path: Path) -> None:
        self.path = path

    def _load(self) -> dict[str, Any]:
        try:
            loaded: dict[str, Any] = json.loads(self.path.read_text(encoding="utf-8"))
            return loaded
        except (OSError, ValueError):
            return {}

    def _save(self, field: str, value: Any) -> None:
        with self._guard:
            data = self._load()
            data[field] = value.model_dump(mode="json", exclude_none=True)
            fd, temp = tempfile.mkstemp(dir=self.path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(data, out)
            os.replace(temp, self.path)

    async def get_tokens(self) -> Any:
        from mcp.shared.auth import OAuthToken

        raw = self._load().get("tokens")
        return OAuthToken.model_validate(raw) if raw else None

    async def set_tokens(self, tokens: Any) -> None:
        self._save("tokens", tokens)

    async def get_client_info(self) -> Any:
        from mcp.shared.auth import OAuthClientInformationFull

        raw = self._load().get("client")
        return OAuthClientInformationFull.model_validate(raw) if raw else None

    async def set_client_info(self, client_info: Any) -> None:
        self._save("client", client_info)


def fastmcp_oauth(url: str, directory: str) -> Any:
    """fastmcp's ``OAuth`` over a shared ``FileTreeStore``, the harness playing the browser."""
    from fastmcp.client.auth import OAuth
    from key_value.aio.stores.filetree import (
        FileTreeStore,
        FileTreeV1CollectionSanitizationStrategy,
        FileTreeV1KeySanitizationStrategy,
    )

    class HarnessOAuth(OAuth):
        browser = _Browser()

        async def redirect_handler(self, authorization_url: str) -> None:
            await self.browser.redirect(authorization_url)

        async def callback_handler(self) -> Any:
            return await self.browser.callback()

    Path(directory).mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return HarnessOAuth(
            url,
            # Configured as fastmcp configures it for its own OAuth proxy: keys are URLs.
            token_storage=FileTreeStore(
                data_directory=directory,
                key_sanitization_strategy=FileTreeV1KeySanitizationStrategy(Path(directory)),
                collection_sanitization_strategy=FileTreeV1CollectionSanitizationStrategy(
                    Path(directory)
                ),
            ),
            callback_port=9,
            callback_host="127.0.0.1",
        )
