"""Log in to a server end to end: discover, register, authorize, exchange, store.

The pieces are in their own modules; this one only orders them and decides the two
policies that span them: which scope to ask for, and when to register again.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import webbrowser
from collections.abc import Callable, Iterator
from urllib.parse import parse_qs, urlsplit

import httpx

from ._errors import (
    AuthorizationDenied,
    CallbackTimeout,
    CallbackUnavailable,
    ClientRegistrationInvalid,
    GrantkeeperError,
    ProviderError,
    ServerConfigError,
)
from ._freshness import Clock, utc_now
from ._network import client_options
from ._oauth.authorization import denied_code
from ._oauth.callback_server import DEFAULT_CALLBACK_TIMEOUT, DEFAULT_HOST, CallbackServer
from ._oauth.client_assertion import key_source
from ._oauth.code_flow import Authorize, register_client, run_code_flow
from ._oauth.discovery import Discovery, choose_scope, discover
from ._oauth.dpop import DPoPKey, available, choose_algorithm
from ._oauth.forgotten_clients import Asked, authorization_refused, check_client
from ._oauth.grants import (
    EnterpriseIdentity,
    choose_auth_method,
    cross_app_access,
    obtain,
    workload_login,
)
from ._oauth.kept_registrations import KeptRegistrations
from ._oauth.registration import ClientRegistration, metadata_document_client
from ._oauth.workload import WorkloadIdentity
from ._observe.log import event
from ._record import CLIENT_CREDENTIALS, Credential
from ._servers import ServerConfig, require_callback_host, resolve_server
from ._stores.base import DEFAULT_LOCK_TIMEOUT, Store

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
    authorizer_for: Callable[[CallbackServer], Authorize] | None = None,
    discovery: Discovery | None = None,
    http: httpx.Client | None = None,
    clock: Clock = utc_now,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    client_metadata_url: str | None = None,
    client_credentials: bool | None = None,
    client_auth_method: str | None = None,
    client_key_file: str | None = None,
    client_key_env: str | None = None,
    enterprise: EnterpriseIdentity | None = None,
    dpop: bool | None = None,
    workload: WorkloadIdentity | None = None,
    resource_indicator: bool | None = None,
) -> Credential:
    """Log in to ``server`` (a URL, a configured name, or a :class:`ServerConfig`).

    Which client logs in: ``client_id`` (pre-registered), else ``client_metadata_url`` when
    the authorization server supports client ID metadata documents (SEP-991), else a client
    registered dynamically (RFC 7591). A client is bound to its issuer (SEP-2352): a
    configured one is not presented to another authorization server (its ``client_issuer``,
    else where it was last used), and a dynamic one is kept and found per issuer. Before a
    kept dynamic client is reused, the server is asked whether it still knows it.

    ``client_credentials=True`` logs in a machine client instead (RFC 6749 §4.4): no
    browser, ``client_id`` with ``client_secret`` (``client_secret_basic`` or
    ``client_secret_post``) or with a PEM private key from ``client_key_file`` or the
    environment variable ``client_key_env`` (``private_key_jwt``, RFC 7523). The Keeper
    renews such a credential by asking again. Each of these may come from servers.json.

    ``enterprise`` (an :class:`EnterpriseIdentity`: the user's ID token at their enterprise
    IdP) logs in by cross-app access instead: an RFC 8693 token exchange at the IdP, then
    the RFC 7523 jwt-bearer grant at the server's authorization server, as ``client_id``.

    By default a browser opens and a loopback listener takes the redirect. An application
    that presents the authorization URL itself passes ``authorize`` (given the URL, returns
    the callback URL the user reached) together with its ``redirect_uri``. One that keeps the
    loopback listener but presents the URL its own way passes ``authorizer_for``: given the
    listener login opened, it returns the :data:`Authorize` that presents the URL and waits
    for the redirect (the CLI's prints it, or reads a pasted redirect), and ``open_browser``
    and ``callback_timeout`` go unused.

    ``workload`` (a :class:`WorkloadIdentity`: a file, an environment variable or a function
    holding the workload's own JWT), or the server's ``workload_identity_file`` /
    ``workload_identity_env``, logs a workload in by workload identity federation
    (SEP-1933): the RFC 7523 jwt-bearer grant with that JWT, as ``client_id`` (a public
    client, or with ``client_secret``). No browser; the Keeper renews by asking again with
    the token read anew, and a refusal is a :class:`WorkloadTokenRejected`.

    ``dpop`` binds the tokens to a new DPoP key pair (RFC 9449), kept with the credential so
    that every process and host sharing it signs with that key: ``None`` (the server's
    ``dpop`` setting, else) where the authorization server advertises DPoP, ``True``
    always, ``False`` never. Browser and machine logins use it; a cross-app login's grant
    is Bearer.

    ``resource_indicator=False`` (default: the server's ``resource_indicator`` setting,
    else the stored credential's, else ``True``) sends no RFC 8707 ``resource`` parameter
    in any request of this login, nor at any renewal of its credential, which keeps the
    choice (and so does a login again without one): for an authorization
    server that refuses it next to ``scope`` (Microsoft Entra ID v2, AADSTS9010010). The
    tokens are then not bound to this server by the request; ``status`` says so. Where a
    login sending it is refused with ``invalid_target``, the :class:`ProviderError` says
    to try this.

    Scope precedence: ``scope``, the server's 401 challenge, the resource's
    ``scopes_supported``, then the authorization server's; ``offline_access`` is added when
    supported. The credential is written under the same lock refresh takes.
    """
    config = server if isinstance(server, ServerConfig) else resolve_server(server)
    require_callback_host(config, config.label)  # before any network
    if (authorize is None) != (redirect_uri is None):
        raise ValueError("pass authorize and redirect_uri together, or neither")
    if authorize is not None and authorizer_for is not None:
        raise ValueError("pass authorize or authorizer_for, not both")
    if store is None:
        from ._stores.open import open_store

        store = open_store()
    workload = workload or _configured_workload(config)
    machine = client_credentials or (
        client_credentials is None and config.grant == CLIENT_CREDENTIALS
    )
    if workload is not None and (machine or enterprise is not None):
        # Two ways for a machine to log in: which one the operator meant is theirs to say.
        raise ServerConfigError(
            f"{config.label}: a workload logs in with its own identity token alone, not with "
            "client credentials or an enterprise identity as well"
        )
    if resource_indicator is None:
        resource_indicator = config.resource_indicator
    if resource_indicator is None:
        resource_indicator = _stored_resource_indicator(store, config)
    indicated = resource_indicator is not False
    with contextlib.ExitStack() as held:
        held.enter_context(_resource_refusal_hint(indicated, config.label))
        client = http or held.enter_context(
            httpx.Client(follow_redirects=False, timeout=LOGIN_HTTP_TIMEOUT, **client_options())
        )
        # A configured port is bound before any network, so a taken one is reported at once
        # rather than after discovery; the listener's port needs nothing discovery finds.
        listener = (
            held.enter_context(listen_first_free([config.callback_port], config.callback_host))
            if config.callback_port
            and authorize is None
            and enterprise is None
            and workload is None
            and not machine
            else None
        )
        found = discovery or discover(config.url, http=client)
        chosen_scope = choose_scope(
            scope or config.scope, found.challenge, found.resource_metadata, found.metadata
        )
        issuer = found.metadata.issuer
        kept = KeptRegistrations(getattr(store, "home", None))
        fixed_id = client_id or config.client_id
        # The configured secret goes only with the configured client.
        secret = client_secret or (config.client_secret if fixed_id == config.client_id else None)
        bound_to = _client_issuer(config, store, kept) if client_id is None else None
        if fixed_id and bound_to and bound_to != issuer:
            # SEP-2352: a client is bound to the issuer that made it. Its id (let alone its
            # secret) never goes to another authorization server.
            if machine or enterprise is not None or workload is not None:
                raise ServerConfigError(
                    f"the client id configured for {config.label} was issued by {bound_to}, "
                    f"but the server now uses {issuer}: register a client there and log in "
                    "with it (grantkeeper login ... --client-id)"
                )
            event(
                logging.WARNING,
                "login.client_of_other_issuer",
                key=str(config.key),
                configured=bound_to,
                issuer=issuer,
            )
            fixed_id = secret = None

        def bound(record: Credential) -> Credential:
            # The client the operator gave is used at this issuer from now on: remember it.
            if fixed_id and record.client_id == fixed_id and record.issuer:
                kept.bind(str(config.key), fixed_id, record.issuer)
            return record

        def proof_key() -> DPoPKey | None:
            # One key pair per credential, made for this login and stored with its record.
            wanted = dpop if dpop is not None else config.dpop
            offered = found.metadata.dpop_signing_alg_values_supported
            algorithm = choose_algorithm(offered, wanted=wanted)
            if algorithm is None and offered is not None and wanted is None:
                event(logging.INFO, "login.dpop_skipped", key=str(config.key), signs=available())
            return DPoPKey.generate(algorithm) if algorithm is not None else None

        if machine:
            return bound(
                _machine_login(
                    config,
                    found,
                    store=store,
                    http=client,
                    client_id=fixed_id,
                    client_secret=secret,
                    auth_method=client_auth_method or config.client_auth_method,
                    key_file=client_key_file or config.client_key_file,
                    key_env=client_key_env or config.client_key_env,
                    scope=scope or config.scope,
                    clock=clock,
                    lock_timeout=lock_timeout,
                    dpop=proof_key(),
                    resource_indicator=indicated,
                )
            )
        if workload is not None:
            if not fixed_id:
                raise ServerConfigError("workload identity needs this client's client id")
            return bound(
                workload_login(
                    store,
                    config.key,
                    workload=workload,
                    metadata=found.metadata,
                    resource=found.resource,
                    http=client,
                    client_id=fixed_id,
                    client_secret=secret,
                    scope=_machine_scope(scope or config.scope, found),
                    clock=clock,
                    lock_timeout=lock_timeout,
                    dpop=proof_key(),
                    resource_indicator=indicated,
                )
            )
        if enterprise is not None:
            if not fixed_id:
                raise ServerConfigError("cross-app access needs this client's client id")
            return bound(
                cross_app_access(
                    store,
                    config.key,
                    identity=enterprise,
                    metadata=found.metadata,
                    resource=found.resource,
                    http=client,
                    client_id=fixed_id,
                    client_secret=secret,
                    scope=scope or config.scope,
                    clock=clock,
                    lock_timeout=lock_timeout,
                    resource_indicator=indicated,
                )
            )
        registration = (
            ClientRegistration(fixed_id, secret)
            if fixed_id
            else metadata_document_client(
                client_metadata_url or config.client_metadata_url, found.metadata
            )
        )

        def asked(redirect_uri: str) -> Asked:
            return Asked(redirect_uri, found.resource if indicated else None, chosen_scope)

        def attempt(authorize: Authorize, redirect_uri: str) -> Credential:
            key = proof_key()

            def run(client_registration: ClientRegistration | None) -> Credential:
                return run_code_flow(
                    store,
                    config.key,
                    metadata=found.metadata,
                    resource=found.resource,
                    redirect_uri=redirect_uri,
                    authorize=authorize,
                    http=client,
                    scope=chosen_scope,
                    client=client_registration,
                    clock=clock,
                    lock_timeout=lock_timeout,
                    dpop=key,
                    resource_indicator=indicated,
                )

            if registration is not None:
                # Pre-registered or a metadata document: the user's to fix, so invalid_client
                # is final.
                return run(registration)

            def register() -> ClientRegistration:
                # Kept before the browser opens: an attempt that times out must not cost the
                # next one a registration of its own.
                new = register_client(client, found.metadata, redirect_uri, chosen_scope)
                kept.keep(issuer, redirect_uri, new)
                return new

            reused = kept.find(issuer, redirect_uri)
            verdict = None
            if reused is not None:
                # A server that lost its state forgot this client; find out before a browser
                # opens (a push where required finds out within the flow itself).
                if not found.metadata.pushes_only:
                    verdict = check_client(client, found.metadata, reused, asked(redirect_uri))
                    if verdict.registration != reused:
                        kept.keep(issuer, redirect_uri, verdict.registration)  # a rotated token
                    reused = verdict.registration
                if verdict is not None and verdict.known is False:
                    kept.forget(issuer, redirect_uri)
                    event(
                        logging.WARNING,
                        "login.registration_forgotten",
                        key=str(config.key),
                        asked=verdict.asked,
                    )
                    reused = None
            try:
                return run(reused or register())
            except ClientRegistrationInvalid:
                # The server forgot the client (a restart, an expiry): replace it, once.
                kept.forget(issuer, redirect_uri)
                event(logging.WARNING, "login.reregistering", key=str(config.key))
                return run(register())
            except CallbackTimeout:
                # The first failure tells where nothing else could: no redirect came back
                # for a kept client nothing vouched for. If the authorization endpoint now
                # refuses that client, the person was looking at the server's error page:
                # replace the client, once, and ask again.
                unvouched = verdict is not None and verdict.known is None
                if reused is None or not unvouched:
                    raise
                if not authorization_refused(client, found.metadata, reused, asked(redirect_uri)):
                    raise
                kept.forget(issuer, redirect_uri)
                event(logging.WARNING, "login.reregistering", key=str(config.key))
                return run(register())

        if authorize is not None and redirect_uri is not None:
            return bound(attempt(authorize, redirect_uri))
        if listener is None:
            dynamic = registration is None
            ports = callback_ports(config, store, issuer, dynamic)
            listener = held.enter_context(listen_first_free(ports, config.callback_host))
        browser = (
            authorizer_for(listener)
            if authorizer_for is not None
            else loopback_authorizer(listener, open_browser, timeout=callback_timeout)
        )
        return bound(attempt(browser, listener.redirect_uri))


def _machine_login(
    config: ServerConfig,
    found: Discovery,
    *,
    store: Store,
    http: httpx.Client,
    client_id: str | None,
    client_secret: str | None,
    auth_method: str | None,
    key_file: str | None,
    key_env: str | None,
    scope: str | None,
    clock: Clock,
    lock_timeout: float,
    dpop: DPoPKey | None,
    resource_indicator: bool,
) -> Credential:
    """The client credentials grant: the scope asked for is the caller's, else the
    resource's (a machine has no challenge to answer)."""
    if not client_id:
        raise ServerConfigError("client credentials need a client id")
    has_key = key_file is not None or key_env is not None
    method = choose_auth_method(
        found.metadata, explicit=auth_method, has_secret=bool(client_secret), has_key=has_key
    )
    source = key_source(file=key_file, env=key_env) if method == "private_key_jwt" else None
    scope = _machine_scope(scope, found)
    return obtain(
        store,
        config.key,
        metadata=found.metadata,
        resource=found.resource,
        http=http,
        client_id=client_id,
        auth_method=method,
        client_secret=client_secret,
        key_source=source,
        scope=scope,
        clock=clock,
        lock_timeout=lock_timeout,
        dpop=dpop,
        resource_indicator=resource_indicator,
    )


@contextlib.contextmanager
def _resource_refusal_hint(sending: bool, label: str) -> Iterator[None]:
    """Name the opt-out when a login that sent ``resource`` is refused with
    ``invalid_target``, by the token endpoint or in the authorization redirect: a provider
    that refuses it next to ``scope`` (Microsoft Entra ID v2, AADSTS9010010) says nothing
    else that points at it."""
    hint = (
        ". If this authorization server refuses the resource parameter next to scope "
        "(Microsoft Entra ID v2: AADSTS9010010), log in without it: "
        f"grantkeeper login {shlex.quote(label)} --no-resource"
    )
    try:
        yield
    except ProviderError as exc:
        # Only the plain refusal: an outage or an unknown outcome is about something else.
        if not sending or exc.error != "invalid_target" or type(exc) is not ProviderError:
            raise
        raise ProviderError(
            exc.message + hint, key=exc.key, status=exc.status, error=exc.error
        ) from None
    except AuthorizationDenied as exc:
        if not sending or denied_code(exc) != "invalid_target":
            raise
        raise AuthorizationDenied(exc.message.rstrip() + hint, key=exc.key) from None


def _machine_scope(scope: str | None, found: Discovery) -> str | None:
    """What a login without a person asks for: the caller's scope, else the resource's (a
    machine has no challenge to answer)."""
    if scope is None and found.resource_metadata is not None:
        scope = " ".join(found.resource_metadata.scopes_supported) or None
    return scope


def _stored_resource_indicator(store: Store, config: ServerConfig) -> bool | None:
    """The choice the stored credential was made with, for a login that names none (a
    re-login from a process that knows only the URL): a server that refused ``resource``
    at the first login refuses it at the next."""
    try:
        stored = store.read(config.key)
    except GrantkeeperError:
        return None
    return None if stored is None else stored.record.resource_indicator


def _configured_workload(config: ServerConfig) -> WorkloadIdentity | None:
    """The workload identity the server's entry names, if any."""
    if config.workload_identity_file is None and config.workload_identity_env is None:
        return None
    return WorkloadIdentity(file=config.workload_identity_file, env=config.workload_identity_env)


def _client_issuer(config: ServerConfig, store: Store, kept: KeptRegistrations) -> str | None:
    """The issuer ``config``'s client id belongs to: as configured, else where it was last
    used (kept since), else the issuer of the credential stored with it (an entry from
    before either was kept; the binding is kept from then on)."""
    if config.client_issuer or not config.client_id:
        return config.client_issuer
    key = str(config.key)
    known = kept.bound(key, config.client_id)
    if known is not None:
        return known
    try:
        stored = store.read(config.key)
    except GrantkeeperError:
        return None
    if stored is None or stored.record.client_id != config.client_id or not stored.record.issuer:
        return None
    kept.bind(key, config.client_id, stored.record.issuer)
    return stored.record.issuer


def callback_ports(config: ServerConfig, store: Store, issuer: str, dynamic: bool) -> list[int]:
    """Ports for the loopback listener, in order: the configured one, else (for a client
    registered dynamically) those of registrations kept for ``issuer`` with the configured
    callback host, then any."""
    if config.callback_port:
        return [config.callback_port]
    if not dynamic:
        return [0]
    # Registrations are kept by redirect URI: a port kept for the other loopback name
    # would give a redirect URI no kept client has, so it is not worth trying first.
    kept = KeptRegistrations(getattr(store, "home", None))
    return [*kept.ports(issuer, host=config.callback_host or DEFAULT_HOST), 0]


@contextlib.contextmanager
def listen_first_free(ports: list[int], host: str | None = None) -> Iterator[CallbackServer]:
    """A listener on the first free port of ``ports``, its redirect URI naming ``host``
    (``None``: 127.0.0.1): a kept registration's port is worth trying first (its client can
    be reused); the last one (0: any free port) must bind."""
    name = host or DEFAULT_HOST
    listener = None
    for port in ports[:-1]:
        try:
            listener = CallbackServer(port=port, host=name).__enter__()
            break
        except CallbackUnavailable:
            continue
    if listener is None:
        listener = CallbackServer(port=ports[-1], host=name).__enter__()
    try:
        yield listener
    finally:
        listener.close()
