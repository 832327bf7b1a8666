"""Log in to a server end to end: discover, register, authorize, exchange, store.

The pieces are in their own modules; this one only orders them and decides the two
policies that span them: which scope to ask for, and when to register again.
"""

from __future__ import annotations

import logging
import webbrowser
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import httpx

from ._callback_server import DEFAULT_CALLBACK_TIMEOUT, CallbackServer
from ._discovery import Discovery, choose_scope, discover
from ._errors import ClientRegistrationInvalid
from ._freshness import Clock, utc_now
from ._log import event
from ._login import Authorize
from ._login import login as run_code_flow
from ._record import Credential
from ._registration import ClientRegistration
from ._servers import ServerConfig, resolve_server
from ._store import DEFAULT_LOCK_TIMEOUT, Store

LOGIN_HTTP_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
"""Bounds each request of a login (metadata, registration, code exchange)."""


def loopback_authorizer(
    listener: CallbackServer,
    present: Callable[[str], object],
    *,
    timeout: float = DEFAULT_CALLBACK_TIMEOUT,
) -> Authorize:
    """An :data:`Authorize` that shows the URL with ``present`` and waits on ``listener``."""

    def authorize(url: str) -> str:
        # One redirect per authorization request; the state lets the listener's page say
        # at once whether a redirect belongs to this request.
        listener.rearm(parse_qs(urlsplit(url).query).get("state", [None])[0])
        present(url)
        return listener.wait(timeout)

    return authorize


def login(
    server: str | ServerConfig,
    *,
    store: Store | None = None,
    scope: str | None = None,
    client_id: str | None = None,
    client_secret: str | None = None,
    authorize: Authorize | None = None,
    redirect_uri: str | None = None,
    open_browser: Callable[[str], object] = webbrowser.open,
    callback_timeout: float = DEFAULT_CALLBACK_TIMEOUT,
    discovery: Discovery | None = None,
    http: httpx.Client | None = None,
    clock: Clock = utc_now,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
) -> Credential:
    """Log in to ``server`` (a URL, a configured name, or a :class:`ServerConfig`).

    By default a browser opens and a loopback listener takes the redirect. An application
    that presents the authorization URL itself passes ``authorize`` (given the URL, returns
    the callback URL the user reached) together with its ``redirect_uri``.

    Scope precedence: ``scope``, the server's 401 challenge, the resource's
    ``scopes_supported``, then the authorization server's; ``offline_access`` is added when
    supported. The credential is written under the same lock refresh takes.
    """
    config = server if isinstance(server, ServerConfig) else resolve_server(server)
    if (authorize is None) != (redirect_uri is None):
        raise ValueError("pass authorize and redirect_uri together, or neither")
    if store is None:
        from ._open_store import open_store

        store = open_store()
    own = http is None
    client = http or httpx.Client(
        follow_redirects=False, trust_env=False, timeout=LOGIN_HTTP_TIMEOUT
    )
    try:
        found = discovery or discover(config.url, http=client)
        chosen_scope = choose_scope(
            scope or config.scope, found.challenge, found.resource_metadata, found.metadata
        )
        fixed_id = client_id or config.client_id
        registration = (
            ClientRegistration(fixed_id, client_secret or config.client_secret)
            if fixed_id
            else None
        )

        def attempt(authorize: Authorize, redirect_uri: str) -> Credential:
            return _with_reregistration(
                lambda: run_code_flow(
                    store,
                    config.key,
                    metadata=found.metadata,
                    resource=found.resource,
                    redirect_uri=redirect_uri,
                    authorize=authorize,
                    http=client,
                    scope=chosen_scope,
                    client=registration,
                    clock=clock,
                    lock_timeout=lock_timeout,
                ),
                dynamic=registration is None,
                key=str(config.key),
            )

        if authorize is not None and redirect_uri is not None:
            return attempt(authorize, redirect_uri)
        with CallbackServer(port=config.callback_port or 0) as listener:
            browser = loopback_authorizer(listener, open_browser, timeout=callback_timeout)
            return attempt(browser, listener.redirect_uri)
    finally:
        if own:
            client.close()


def _with_reregistration(run: Callable[[], Credential], *, dynamic: bool, key: str) -> Credential:
    """Run the code flow; if the server forgot a client we registered, register once more.

    A pre-registered client is the user's to fix, so its ``invalid_client`` is final.
    """
    try:
        return run()
    except ClientRegistrationInvalid:
        if not dynamic:
            raise
        event(logging.WARNING, "login.reregistering", key=key)
        return run()
