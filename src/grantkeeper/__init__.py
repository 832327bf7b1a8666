"""grantkeeper: OAuth credentials for MCP clients that never break.

This module is the public API; everything else is private and may change.
"""

from ._auto_store import AutoStore
from ._decide import MAX_UNKNOWN_ATTEMPTS
from ._errors import (
    AccountChanged,
    AuthenticationRequired,
    ClientRegistrationInvalid,
    DeadlineExceeded,
    GrantkeeperError,
    InsufficientScope,
    LockTimeout,
    LoginRequired,
    MalformedResponse,
    PersistencePending,
    ProtocolError,
    ProviderError,
    ProviderUnavailable,
    ReauthenticationRequired,
    RefreshOutcomeUnknown,
    RetryRequired,
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
from ._open_store import open_store
from ._paths import grantkeeper_home
from ._postgres_store import PostgresStore
from ._record import Credential, CredentialKey, RefreshIntent
from ._redact import redact
from ._store import DEFAULT_LOCK_TIMEOUT, Store, Stored

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_LOCK_TIMEOUT",
    "DEFAULT_SKEW",
    "MAX_UNKNOWN_ATTEMPTS",
    "AccountChanged",
    "AuthenticationRequired",
    "AutoStore",
    "ClientRegistrationInvalid",
    "Clock",
    "Credential",
    "CredentialKey",
    "DeadlineExceeded",
    "FileStore",
    "Freshness",
    "GrantkeeperError",
    "HttpxAuth",
    "InsufficientScope",
    "Keeper",
    "KeyringStore",
    "LockTimeout",
    "LoginRequired",
    "MalformedResponse",
    "PersistencePending",
    "PostgresStore",
    "ProtocolError",
    "ProviderError",
    "ProviderUnavailable",
    "ReauthenticationRequired",
    "RefreshIntent",
    "RefreshOutcomeUnknown",
    "RetryRequired",
    "Store",
    "StoreConfigError",
    "StoreCorrupt",
    "StoreError",
    "StoreUnavailable",
    "Stored",
    "UnsafeStorePath",
    "VersionConflict",
    "__version__",
    "freshness",
    "grantkeeper_home",
    "open_store",
    "redact",
    "refresh_margin",
]
