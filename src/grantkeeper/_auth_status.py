"""Auth status of configured servers: from the store alone, or probed with ``check``."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import httpx

from ._errors import OAuthUnsupported, ProtocolError, StoreCorrupt
from ._freshness import DEFAULT_SKEW, Clock, utc_now
from ._record import CredentialKey
from ._servers import ServerConfig, load_servers
from ._status import AuthState, AuthStatus, status_of
from ._stores.auto import AutoStore
from ._stores.base import Store


def known_servers(store: Store, home: str | None = None) -> list[ServerConfig]:
    """Configured servers, then any stored credential no configured server names."""
    configured = load_servers(home)
    keys = {config.key for config in configured}
    unnamed = [_settings_for(key, configured) for key in store.keys() if key not in keys]
    return configured + unnamed


def _settings_for(key: CredentialKey, configured: list[ServerConfig]) -> ServerConfig:
    """A stored credential no entry names: another profile of a configured server carries
    that server's name and settings (as ``NAME --profile P`` resolves), else its URL alone."""
    for config in configured:
        if config.profile is None and not config.static and config.key.server_url == key.server_url:
            return dataclasses.replace(config, profile=key.profile)
    return ServerConfig(url=key.server_url, profile=key.profile)


def _holder(store: Store, key: CredentialKey) -> str:
    """The backend that holds ``key``: Auto mode names keyring or file, not itself."""
    if isinstance(store, AutoStore):
        placed = store.placement(key)
        if placed is not None:
            return placed
    return store.name


def auth_status(
    server: ServerConfig,
    store: Store,
    *,
    check: bool = False,
    http: httpx.Client | None = None,
    clock: Clock = utc_now,
    skew: timedelta = DEFAULT_SKEW,
    retry_unknown_outcome: bool = True,
) -> AuthStatus:
    """``server``'s status. Offline it reads only the store; ``check`` also runs discovery,
    which tells ``login_required`` from ``unsupported`` and finds broken metadata.
    ``retry_unknown_outcome`` is the policy of the Keepers that use this credential."""
    key = server.key
    if server.static:
        return status_of(key, None, now=clock(), store=None, bearer=True)
    try:
        stored = store.read(key)
    except StoreCorrupt as exc:
        detail = f"{exc.message}; log in again"
        return AuthStatus(key, AuthState.REAUTHENTICATION_REQUIRED, detail, store=store.name)
    status = status_of(
        key,
        stored.record if stored else None,
        now=clock(),
        skew=skew,
        store=_holder(store, key) if stored else None,
        retry_unknown_outcome=retry_unknown_outcome,
    )
    if not check:
        return status
    from ._discovery import discover

    try:
        discover(server.url, http=http)
    except OAuthUnsupported as exc:
        return dataclasses.replace(status, state=AuthState.UNSUPPORTED, detail=exc.message)
    except ProtocolError as exc:
        detail = f"check failed: {exc.message}"
        return dataclasses.replace(status, detail=f"{status.detail}; {detail}".lstrip("; "))
    return status
