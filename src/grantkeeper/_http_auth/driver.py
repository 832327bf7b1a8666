"""Drive the auth flow for httpx-shaped clients; ``httpx_auth`` and ``httpx2_auth`` bind it.

httpx and httpx2 share one auth protocol (``sync_auth_flow`` / ``async_auth_flow``
generators that yield requests and receive responses) but not their classes, so the
driver is duck-typed and each library gets a three-line subclass. Sync and async differ
only in how a credential is awaited; the policy lives once, in ``flow``.

Nothing here holds a lock while a request is out, and a healthy request reads only the
Keeper's memory.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable, Generator, Mapping
from typing import Any, Protocol, Self
from urllib.parse import urlsplit

from .._errors import ProtocolError, RetryRequired
from .._keeper import NOT_READY, Keeper, Ready
from .._oauth.dpop import (
    NONCE_HEADER,
    PROOF_HEADER,
    RESOURCE_NONCES,
    USE_NONCE,
    DPoPKey,
    load_key,
    proof_refused,
)
from .._observe import telemetry as _telemetry
from .._record import Credential, canonical_url
from .._redact import remember
from .flow import (
    ACTIONABLE,
    Acquire,
    Flow,
    Recover,
    Reply,
    Send,
    anonymous_flow,
    oauth_flow,
    static_flow,
)

AUTHORIZATION = "Authorization"

_ORIGIN_CACHE_SIZE = 64
"""Origins remembered per auth object; a client talks to few, and the rest are judged anew."""

_PARSED = ("scheme", "userinfo", "host", "port")
"""The first fields of httpx's (and httpx2's) parsed URL, which ``_healthy`` compares."""


class _Headers(Protocol):
    def __setitem__(self, key: str, value: str) -> None: ...

    def get_list(self, key: str) -> list[str]: ...


class _Request(Protocol):
    @property
    def method(self) -> str: ...

    @property
    def url(self) -> Any: ...

    @property
    def headers(self) -> Any: ...

    @property
    def extensions(self) -> dict[str, Any]: ...

    @property
    def stream(self) -> Any: ...


class _Response(Protocol):
    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Any: ...


def origin(url: str) -> tuple[str, str]:
    """``(scheme, host[:port])`` with case and default ports normalised."""
    parts = urlsplit(canonical_url(url))
    return parts.scheme, parts.netloc


def _reply_of(response: _Response) -> Reply:
    status = response.status_code
    # Challenges matter only to a 401 or 403; other answers skip reading them.
    challenges = response.headers.get_list("www-authenticate") if status in ACTIONABLE else ()
    return Reply(status, tuple(challenges))


def _present(request: _Request, credential: Credential, key: DPoPKey, url: str) -> None:
    """Put ``credential``'s DPoP token and a fresh proof of ``key`` on ``request`` (RFC 9449
    §7.1), with the nonce the server last handed out, if any."""
    token = credential.access_token
    headers = request.headers
    headers[AUTHORIZATION] = "DPoP " + token
    headers[PROOF_HEADER] = key.proof(
        request.method, url, nonce=RESOURCE_NONCES.get(url), access_token=token
    )


class _NoMemory:
    """What a driver without a Keeper reads on the healthy path: never ready."""

    _ready = NOT_READY
    _now = staticmethod(time.time)


_NO_MEMORY = _NoMemory()


class AuthDriver:
    """The shared body of :class:`HttpxAuth` and ``Httpx2Auth``; see their docs."""

    def __init__(
        self,
        keeper: Keeper | None,
        *,
        server_url: str | None,
        token: str | None,
        recovery_timeout: float | None,
        replayable: Callable[[object], bool],
        anonymous: bool = False,
    ) -> None:
        if keeper is None and server_url is None:
            raise ValueError("give a Keeper, or the server URL a static bearer token is for")
        self._anonymous = anonymous
        self.keeper = keeper
        self._memory: Keeper | _NoMemory = keeper if keeper is not None else _NO_MEMORY
        url = server_url if server_url is not None else keeper.key.server_url  # type: ignore[union-attr]
        self._origin = origin(url)
        self._key = str(keeper.key) if keeper is not None else canonical_url(url)
        self._token = token
        remember(token, pinned=True)  # a static token a server may echo (see _redact)
        self._recovery_timeout = recovery_timeout
        self._replayable = replayable
        self._origins: dict[tuple[Any, Any, Any], bool] = {}
        # The parsed (scheme, userinfo, host, port) of a URL already judged to be of our
        # origin, as the HTTP library keeps it: the healthy path compares these, no more.
        self._known: tuple[Any, ...] = ()

    # -- the flow, shared by sync and async ---------------------------------------------

    def _flow(self, request: _Request, replayable: bool) -> Flow:
        if self.keeper is None:
            if self._anonymous:
                return anonymous_flow(key=self._key)
            return static_flow(token=self._token, key=self._key)
        return oauth_flow(replayable=replayable, key=self._key)

    def _healthy(self, ready: Ready, request: _Request) -> bool:
        """Whether ``ready`` (the Keeper's, read once) may go on ``request`` as it is: a
        fresh Bearer token, and a URL of our origin. The origin is judged first by the HTTP
        library's own parsed parts (httpx's and httpx2's, cheaper to read than the public
        properties) against those of a URL already judged ours; any other URL anew."""
        if self._memory._now() >= ready.bearer_stale_at:
            return False
        url = request.url
        try:
            if url._uri_reference[:4] == self._known:
                return True
        except AttributeError:
            pass
        return self._same_origin(url)

    def _same_origin(self, url: Any) -> bool:
        # Parsing the URL again costs more than the rest of a healthy request's auth, so the
        # verdict is kept per (scheme, host, port) as the HTTP library already parsed them.
        parts = (url.scheme, url.raw_host, url.port)
        verdict = self._origins.get(parts)
        if verdict is None:
            verdict = origin(str(url)) == self._origin
            if len(self._origins) < _ORIGIN_CACHE_SIZE:
                self._origins[parts] = verdict
        parsed = getattr(url, "_uri_reference", None)
        if verdict and getattr(parsed, "_fields", ())[:4] == _PARSED:
            self._known = parsed[:4]  # type: ignore[index]
        return verdict

    def steps(self, request: _Request) -> Generator[Acquire | Recover | _Request, Any, None]:
        """Yield ``Acquire`` or ``Recover`` (answer: a credential) or the request to send
        (answer: a response)."""
        if not self._same_origin(request.url):
            # Never send our credential to another origin, redirects included: httpx builds
            # a redirect's request without Authorization when it leaves the origin.
            yield request
            return
        # Judged before sending: a transport that buffers a streamed body while sending
        # would make it look replayable afterwards, and a real one consumes it.
        replayable = self._replayable(request.stream)
        hit = self.keeper.cached() if self.keeper is not None else None
        if hit is None:
            yield from self._run_flow(request, replayable, self._flow(request, replayable))
            return
        # Memory had a token: the flow's opening (Acquire, then Send that token) is answered
        # from it; the flow itself runs only on a 401 or 403.
        if not hit.dpop:
            request.headers[AUTHORIZATION] = "Bearer " + hit.access_token
            response: _Response = yield request
        else:
            # The same with a proof; a 401 goes on to _send_dpop (a nonce, a refusal).
            url = str(request.url)
            _present(request, hit, load_key(hit.dpop_key), url)
            response = yield request
            if response.status_code == 401:
                response = yield from self._send_dpop(request, hit, replayable, response)
            elif RESOURCE_NONCES.held:
                RESOURCE_NONCES.update(url, response.headers)
        if response.status_code in ACTIONABLE:
            yield from self._answered(request, replayable, hit, response)

    def _answered(
        self, request: _Request, replayable: bool, hit: Credential, response: _Response
    ) -> Generator[Acquire | Recover | _Request, Any, None]:
        """The flow, after ``request`` went out with ``hit`` (from memory) and got
        ``response``, a 401 or 403."""
        flow = self._flow(request, replayable)
        opening = (next(flow), flow.send(hit.access_token))
        assert opening == (Acquire(), Send(hit.access_token))
        yield from self._run_flow(request, replayable, flow, _reply_of(response), hit)

    def _run_flow(
        self,
        request: _Request,
        replayable: bool,
        flow: Flow,
        reply: Reply | None = None,
        hit: Credential | None = None,
    ) -> Generator[Acquire | Recover | _Request, Any, None]:
        """Play ``flow`` to its end: from its start, or (with ``reply``) from the answer
        to the request memory's ``hit`` was sent with."""
        try:
            step = next(flow) if reply is None else flow.send(reply)
        except StopIteration:
            return
        # The credential of each token the flow was given: a DPoP token goes with its key.
        given: dict[str, Credential] = {} if hit is None else {hit.access_token: hit}
        while True:
            answer: str | Reply
            if isinstance(step, Acquire | Recover):
                credential: Credential = yield step
                given[credential.access_token] = credential
                answer = credential.access_token
            else:
                assert isinstance(step, Send)
                held = given.get(step.token) if step.token is not None else None
                if held is not None and held.dpop:
                    answer = _reply_of((yield from self._send_dpop(request, held, replayable)))
                else:
                    if step.token is not None:
                        request.headers[AUTHORIZATION] = f"Bearer {step.token}"
                        request.headers.pop(PROOF_HEADER, None)  # an earlier DPoP try's
                    answer = _reply_of((yield request))
            try:
                step = flow.send(answer)
            except StopIteration:
                return

    def _send_dpop(
        self,
        request: _Request,
        credential: Credential,
        replayable: bool,
        answered: _Response | None = None,
    ) -> Generator[_Request, Any, _Response]:
        """Send ``request`` with ``credential``'s DPoP token and a fresh proof (RFC 9449
        §7.1); a server that asks for a nonce (§9) gets the request once more with it.
        ``answered`` is the answer to the request already sent so (the healthy path's)."""
        assert credential.dpop_key is not None
        key = load_key(credential.dpop_key)
        url = str(request.url)
        response: _Response
        if answered is None:
            _present(request, credential, key, url)
            response = yield request
        else:
            response = answered
        for attempt in range(2):
            status = response.status_code
            if status == 401 or RESOURCE_NONCES.held:
                # A server's first nonce comes with a 401 (RFC 9449 §9); after that any
                # answer may hand out the next (§8.2). Others are not searched for one.
                RESOURCE_NONCES.update(url, response.headers)
            refused = proof_refused(status, response.headers)
            if refused is None:
                return response  # an answer, or a token rejection: the flow's to judge
            if attempt or refused != USE_NONCE or NONCE_HEADER not in response.headers:
                break
            if not replayable:
                raise RetryRequired(
                    "the server asked for a DPoP nonce (HTTP 401), but the request body was "
                    "a stream and cannot be replayed: send it again, and it carries the nonce",
                    key=self._key,
                )
            _present(request, credential, key, url)
            response = yield request
        # The proof was refused, not the token: renewing the token cannot help, and would
        # spend a refresh token on every request.
        if refused == USE_NONCE:
            raise RetryRequired(
                "the server asked for a new DPoP nonce again (HTTP 401); send the request "
                "again, and it carries the latest one",
                key=self._key,
            )
        raise ProtocolError(
            "the server refused this client's DPoP proof (HTTP 401 invalid_dpop_proof): "
            "is this machine's clock far off the server's?",
            key=self._key,
        )

    # -- waiting for a credential ---------------------------------------------------------

    def deadline(self, request: _Request) -> float | None:
        """When to stop waiting for a credential (monotonic), or ``None`` for never.

        Waiting for a credential is like waiting for a pooled connection, so it is bounded
        by the request's ``pool`` timeout unless ``recovery_timeout`` says otherwise. The
        refresh itself is not bounded by it: it runs on and serves the next request.
        """
        limit = self._recovery_timeout
        if limit is None:
            timeout = request.extensions.get("timeout") or {}
            limit = timeout.get("pool") if isinstance(timeout, dict) else None
        return None if limit is None else time.monotonic() + limit

    def acquire(self, step: Acquire | Recover, request: _Request) -> Credential:
        assert self.keeper is not None
        if isinstance(step, Recover):
            return self.keeper.recover(step.error, rejected=step.sent)
        hit = self.keeper.cached(rejected=step.rejected)
        if hit is None:
            deadline = self.deadline(request)
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            hit = self.keeper.credential(rejected=step.rejected, timeout=remaining)
        return self._renewed(step, hit)

    async def aacquire(self, step: Acquire | Recover, request: _Request) -> Credential:
        assert self.keeper is not None
        if isinstance(step, Recover):
            return await self.keeper.arecover(step.error, rejected=step.sent)
        # The healthy path first: no deadline to compute, no timeout scope to enter.
        hit = self.keeper.cached(rejected=step.rejected)
        if hit is None:
            deadline = self.deadline(request)
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            # The deadline bounds the wait for a refresh, not a person's login (a recovery).
            hit = await self.keeper.acredential(rejected=step.rejected, timeout=remaining)
        return self._renewed(step, hit)

    def _renewed(self, step: Acquire, credential: Credential) -> Credential:
        """``credential``, answering ``step``; a renewed token after a 401 is a recovery."""
        if step.rejected is not None and credential.access_token != step.rejected:
            assert self.keeper is not None
            _telemetry.recovery(self.keeper.key)
        return credential

    # -- the two drivers ----------------------------------------------------------------

    def sync_flow(self, request: _Request) -> Generator[Any, Any, None]:
        # The healthy path, nearly every request (see async_flow).
        ready = self._memory._ready
        if self._healthy(ready, request):
            stream = request.stream
            request.headers[AUTHORIZATION] = ready.bearer
            response = yield request
            if response.status_code not in ACTIONABLE:
                return
            assert ready.credential is not None
            replayable = self._replayable(stream)
            steps = self._answered(request, replayable, ready.credential, response)
        else:
            steps = self.steps(request)
        try:
            item = next(steps)
        except StopIteration:
            return
        while True:
            answer: Any
            if isinstance(item, Acquire | Recover):
                answer = self.acquire(item, request)
            else:
                answer = yield item
            try:
                item = steps.send(answer)
            except StopIteration:
                return

    async def async_flow(self, request: _Request) -> AsyncGenerator[Any, Any]:
        # The healthy path, nearly every request: a fresh Bearer token in memory, sent at
        # once, with no generator between this one and the HTTP library. What it costs over
        # a static header is one comparison of a timestamp and one of the origin (P2 in
        # docs/benchmarks.md). Anything else goes through steps(). This is _healthy()
        # written out: the call would cost a tenth of the difference.
        memory = self._memory
        ready = memory._ready
        if memory._now() < ready[2]:  # ready.bearer_stale_at, [3] its .bearer
            try:
                ours = request.url._uri_reference[:4] == self._known
            except AttributeError:
                ours = False
            if ours or self._same_origin(request.url):
                stream = request.stream  # judged on a 401 only, as it was when sent
                request.headers[AUTHORIZATION] = ready[3]
                response = yield request
                if response.status_code not in ACTIONABLE:
                    return
                assert ready.credential is not None
                replayable = self._replayable(stream)
                steps = self._answered(request, replayable, ready.credential, response)
            else:
                steps = self.steps(request)
        else:
            steps = self.steps(request)
        try:
            item = next(steps)
        except StopIteration:
            return
        while True:
            answer: Any
            if isinstance(item, Acquire | Recover):
                answer = await self.aacquire(item, request)
            else:
                answer = yield item
            try:
                item = steps.send(answer)
            except StopIteration:
                return


class HttpxShapedAuth:
    """The plumbing both auth classes share: a Keeper (or a static token) behind an
    :class:`AuthDriver`. Subclasses add the HTTP library's ``Auth`` base and say which of
    its request bodies can be sent twice."""

    _driver: AuthDriver

    @staticmethod
    def _replayable(stream: object) -> bool:
        """Whether a request body of this ``stream`` (the request's as it was sent) can be
        sent a second time."""
        raise NotImplementedError

    def __init__(self, keeper: Keeper, *, recovery_timeout: float | None = None) -> None:
        self._driver = AuthDriver(
            keeper,
            server_url=None,
            token=None,
            recovery_timeout=recovery_timeout,
            replayable=self._replayable,
        )
        self._bind_flows()

    def _bind_flows(self) -> None:
        # The driver's flows themselves, not methods that call them: every request goes
        # through one, and the call between costs a tenth of the healthy path.
        self.sync_auth_flow = self._driver.sync_flow  # type: ignore[method-assign]
        self.async_auth_flow = self._driver.async_flow  # type: ignore[method-assign]

    @classmethod
    def bearer(cls, server_url: str, token: str | None = None) -> Self:
        """Send ``token`` (or the request's own header) to ``server_url``; never refresh."""
        return cls._without_keeper(server_url, token=token, anonymous=False)

    @classmethod
    def anonymous(cls, server_url: str) -> Self:
        """Send no credential to ``server_url``, for servers that need none; a 401 then
        raises :class:`~grantkeeper.LoginRequired`."""
        return cls._without_keeper(server_url, token=None, anonymous=True)

    @classmethod
    def _without_keeper(cls, server_url: str, *, token: str | None, anonymous: bool) -> Self:
        auth = cls.__new__(cls)
        auth._driver = AuthDriver(
            None,
            server_url=server_url,
            token=token,
            recovery_timeout=None,
            replayable=cls._replayable,
            anonymous=anonymous,
        )
        auth._bind_flows()
        return auth

    @classmethod
    def choose(
        cls,
        server_url: str,
        *,
        keeper: Keeper | None = None,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Self:
        """The policy for a client, one of three: a static ``token``, or an ``Authorization``
        header among the client's ``headers``, turns OAuth off (:meth:`bearer`); else
        ``keeper`` supplies OAuth credentials; with neither, no credential is sent
        (:meth:`anonymous`)."""
        configured = any(name.lower() == "authorization" for name in (headers or {}))
        if token is not None or configured:
            return cls.bearer(server_url, token)
        if keeper is None:
            return cls.anonymous(server_url)
        return cls(keeper)

    @property
    def oauth(self) -> bool:
        """Whether this auth sends a Keeper's OAuth credentials (not a static or no token)."""
        return self._driver.keeper is not None

    def sync_auth_flow(self, request: Any) -> Generator[Any, Any, None]:
        return self._driver.sync_flow(request)

    def async_auth_flow(self, request: Any) -> AsyncGenerator[Any, Any]:
        return self._driver.async_flow(request)
