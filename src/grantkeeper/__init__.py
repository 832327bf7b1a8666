"""grantkeeper: OAuth credentials for MCP clients that never break.

This module is the public API; everything else is private and may change.
"""

from ._auto_store import AutoStore
from ._callback_server import CallbackServer
from ._classify import authentication_required
from ._decide import MAX_UNKNOWN_ATTEMPTS
from ._discovery import Discovery, ResourceMetadata, discover
from ._errors import (
    AccountChanged,
    AuthenticationRequired,
    AuthorizationDenied,
    CallbackTimeout,
    CallbackUnavailable,
    ClientRegistrationInvalid,
    DeadlineExceeded,
    GrantkeeperError,
    InsufficientScope,
    LockTimeout,
    LoginFailed,
    LoginRequired,
    MalformedResponse,
    MissingExtra,
    OAuthUnsupported,
    PersistencePending,
    ProtocolError,
    ProviderError,
    ProviderUnavailable,
    ReauthenticationRequired,
    RefreshOutcomeUnknown,
    RetryRequired,
    ServerConfigError,
    StoreConfigError,
    StoreCorrupt,
    StoreError,
    StoreUnavailable,
    UnsafeStorePath,
    VersionConflict,
)
from ._file_store import FileStore
from ._freshness import DEFAULT_SKEW, Clock, Freshness, freshness, refresh_margin
from ._http_auth import HttpxAuth
from ._keeper import Keeper
from ._keyring_store import KeyringStore
from ._login import Authorize
from ._login_flow import login
from ._logout import LogoutResult, logout
from ._open_store import open_store
from ._paths import grantkeeper_home
from ._postgres_store import PostgresStore
from ._record import Credential, CredentialKey, RefreshIntent
from ._redact import redact
from ._server_status import auth_status, known_servers
from ._servers import ServerConfig, load_servers, remove_server, resolve_server, save_server
from ._status import AuthState, AuthStatus
from ._store import DEFAULT_LOCK_TIMEOUT, Store, Stored

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_LOCK_TIMEOUT",
    "DEFAULT_SKEW",
    "MAX_UNKNOWN_ATTEMPTS",
    "AccountChanged",
    "AuthState",
    "AuthStatus",
    "AuthenticationRequired",
    "AuthorizationDenied",
    "Authorize",
    "AutoStore",
    "CallbackServer",
    "CallbackTimeout",
    "CallbackUnavailable",
    "ClientRegistrationInvalid",
    "Clock",
    "Credential",
    "CredentialKey",
    "DeadlineExceeded",
    "Discovery",
    "FileStore",
    "Freshness",
    "GrantkeeperError",
    "HttpxAuth",
    "InsufficientScope",
    "Keeper",
    "KeyringStore",
    "LockTimeout",
    "LoginFailed",
    "LoginRequired",
    "LogoutResult",
    "MalformedResponse",
    "MissingExtra",
    "OAuthUnsupported",
    "PersistencePending",
    "PostgresStore",
    "ProtocolError",
    "ProviderError",
    "ProviderUnavailable",
    "ReauthenticationRequired",
    "RefreshIntent",
    "RefreshOutcomeUnknown",
    "ResourceMetadata",
    "RetryRequired",
    "ServerConfig",
    "ServerConfigError",
    "Store",
    "StoreConfigError",
    "StoreCorrupt",
    "StoreError",
    "StoreUnavailable",
    "Stored",
    "UnsafeStorePath",
    "VersionConflict",
    "__version__",
    "auth_status",
    "authentication_required",
    "discover",
    "freshness",
    "grantkeeper_home",
    "known_servers",
    "load_servers",
    "login",
    "logout",
    "open_store",
    "redact",
    "refresh_margin",
    "remove_server",
    "resolve_server",
    "save_server",
]
