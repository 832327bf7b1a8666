"""grantkeeper: OAuth credentials for MCP clients that never break.

This module is the public API; everything else is private and may change.
"""

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
    LockLost,
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
    ServerRejectsToken,
    SessionLocksUnsupported,
    StaticTokenRejected,
    StoreConfigError,
    StoreCorrupt,
    StoreError,
    StoreUnavailable,
    UnsafeStorePath,
    UnsupportedTokenType,
    VersionConflict,
    WorkloadTokenRejected,
    WorkloadTokenUnavailable,
    authentication_required,
)
from ._exports import claim as _claim
from ._freshness import DEFAULT_SKEW, Clock, Freshness, freshness, refresh_margin
from ._http_auth.httpx_auth import HttpxAuth
from ._keeper import Keeper, Recovery
from ._login import login
from ._logout import LogoutResult, logout
from ._oauth.callback_server import CallbackServer
from ._oauth.code_flow import Authorize
from ._oauth.discovery import Discovery, ResourceMetadata, discover
from ._oauth.grants import EnterpriseIdentity
from ._oauth.workload import WorkloadIdentity
from ._paths import grantkeeper_home
from ._record import Credential, CredentialKey, RefreshIntent
from ._redact import redact
from ._relogin import login_recovery
from ._rules import Outcome, outcome_of
from ._servers import ServerConfig, load_servers, remove_server, resolve_server, save_server
from ._status import AuthState, AuthStatus, auth_status, known_servers
from ._stores.admin import (
    CredentialReport,
    MigrationResult,
    StoreCheck,
    StoreReport,
    diagnose_store,
    migrate_credential,
    migrate_store,
)
from ._stores.auto import AutoStore
from ._stores.base import DEFAULT_LOCK_TIMEOUT, PROCESS_LOCK, HeldLock, Store, Stored
from ._stores.file import FileStore
from ._stores.keyring import KeyringStore
from ._stores.open import open_store
from ._stores.postgresql import PostgresStore
from ._version import __version__

__all__ = [
    "DEFAULT_LOCK_TIMEOUT",
    "DEFAULT_SKEW",
    "PROCESS_LOCK",
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
    "CredentialReport",
    "DeadlineExceeded",
    "Discovery",
    "EnterpriseIdentity",
    "FileStore",
    "Freshness",
    "HeldLock",
    "GrantkeeperError",
    "HttpxAuth",
    "InsufficientScope",
    "Keeper",
    "KeyringStore",
    "LockLost",
    "LockTimeout",
    "LoginFailed",
    "LoginRequired",
    "LogoutResult",
    "MalformedResponse",
    "MigrationResult",
    "MissingExtra",
    "OAuthUnsupported",
    "Outcome",
    "PersistencePending",
    "PostgresStore",
    "ProtocolError",
    "ProviderError",
    "ProviderUnavailable",
    "ReauthenticationRequired",
    "StaticTokenRejected",
    "Recovery",
    "RefreshIntent",
    "RefreshOutcomeUnknown",
    "ResourceMetadata",
    "RetryRequired",
    "ServerConfig",
    "ServerConfigError",
    "SessionLocksUnsupported",
    "ServerRejectsToken",
    "UnsupportedTokenType",
    "Store",
    "StoreCheck",
    "StoreConfigError",
    "StoreCorrupt",
    "StoreError",
    "StoreReport",
    "StoreUnavailable",
    "Stored",
    "UnsafeStorePath",
    "VersionConflict",
    "WorkloadIdentity",
    "WorkloadTokenRejected",
    "WorkloadTokenUnavailable",
    "__version__",
    "auth_status",
    "outcome_of",
    "authentication_required",
    "diagnose_store",
    "discover",
    "freshness",
    "grantkeeper_home",
    "known_servers",
    "load_servers",
    "login_recovery",
    "login",
    "logout",
    "migrate_credential",
    "migrate_store",
    "open_store",
    "redact",
    "refresh_margin",
    "remove_server",
    "resolve_server",
    "save_server",
]


_claim(__name__, {name: globals()[name] for name in __all__})
