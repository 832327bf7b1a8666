"""The credential record, its key, and their JSON form.

Expiry is stored as an absolute UTC time. Records written by older clients that kept only
``expires_in`` still load; when the time they were obtained is unknown too, their expiry is
unknown (``expires_at is None``) and freshness treats them as due for a refresh.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from ._errors import StoreCorrupt
from ._redact import fingerprint, redact, remember

SCHEMA_VERSION = 3
"""Version of the stored JSON layout; a newer one is refused rather than misread.

Each record is written with the lowest version that reads it right, so that a store shared
with an older grantkeeper (a desktop proxy pinned by uvx, say) keeps working wherever it
can:

- 1: a Bearer record that sends ``resource``: every version reads it.
- 2: a record whose ``token_type`` is not Bearer (a DPoP token kept from a refresh's
  answer): versions that read only 1 ignore ``token_type`` and would send the token as
  Bearer, so they must refuse the record (``StoreCorrupt``) instead.
- 3: a record that never sends ``resource`` (``resource_indicator`` false): versions that
  read up to 2 ignore the field, would send ``resource`` at refresh (refused by such a
  provider) and, worse, write the record back without it at their next refresh, so that
  this version would send it too from then on. They refuse it instead."""

BEARER_SCHEMA = 1
"""The layout version written for a Bearer record (see :data:`SCHEMA_VERSION`)."""

DPOP_SCHEMA = 2
"""The layout version written for a record whose token is not Bearer."""

IntentState = Literal["in_flight", "unknown", "unavailable", "answered"]
"""``in_flight``: a process is spending the token now. ``unknown``: it was sent and no usable
answer came back, so it may be spent. ``unavailable``: the provider did not process it (not
sent, 429, 503) or refused it (``refused``): it is unspent, and the next attempt waits for
``retry_at``. ``answered``: the
provider answered and its new token could be stored nowhere, so this one is spent for sure."""

INTENT_STATES: tuple[IntentState, ...] = ("in_flight", "unknown", "unavailable", "answered")

CLIENT_CREDENTIALS = "client_credentials"
"""The ``grant`` of a machine client's credential: renewed by asking again (RFC 6749 §4.4)."""


class _FieldError(ValueError):
    """A malformed field, described by name only: values may be secrets."""


def canonical_url(url: str) -> str:
    """Return ``url`` with scheme and host lower-cased, default port and fragment dropped."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise _FieldError(f"not an http(s) URL: {url!r}")
    host = parts.hostname.lower()
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    port = parts.port
    if port is not None and (scheme, port) not in (("http", 80), ("https", 443)):
        host = f"{host}:{port}"
    return urlunsplit((scheme, host, parts.path or "/", parts.query, ""))


@functools.total_ordering
@dataclass(frozen=True, slots=True)
class CredentialKey:
    """Names one credential: the canonical MCP server URL plus an optional profile."""

    server_url: str
    profile: str | None = None

    @classmethod
    def for_server(cls, url: str, profile: str | None = None) -> CredentialKey:
        """Build the key for ``url``, canonicalising it so spellings of one URL agree."""
        if profile is not None and not profile.strip():
            profile = None
        return cls(canonical_url(url), profile)

    def __str__(self) -> str:
        return f"{self.server_url}#{self.profile}" if self.profile else self.server_url

    def __lt__(self, other: object) -> bool:
        # Field-wise ordering would compare None with a str when one server has both a
        # default and a named profile; the default profile sorts first instead.
        if not isinstance(other, CredentialKey):
            return NotImplemented
        return self._sort_key() < other._sort_key()

    def _sort_key(self) -> tuple[str, bool, str]:
        return (self.server_url, self.profile is not None, self.profile or "")


@dataclass(frozen=True, slots=True)
class RefreshIntent:
    """A durable note, written before a refresh token is spent, of who is spending it.

    If the spender dies or loses its answer, the next transaction finds the note and knows
    the outcome is unknown instead of guessing. It holds a fingerprint, never the token.
    """

    token_fingerprint: str
    pid: int
    host: str
    started_at: datetime
    attempts: int = 1
    state: IntentState = "in_flight"
    holder: str = ""
    """Identifies the ``Keeper`` instance, since one process may run several."""
    host_id: str = ""
    """Boot id and pid namespace of the writer (see ``_liveness.host_identity``): where
    ``pid`` can be probed. Empty in notes written before it existed."""
    lease_until: datetime | None = None
    """Until when a reader under another ``host_id`` must treat the note as live; renewed
    while the provider call runs. ``None`` in notes written before leases existed."""
    retry_at: datetime | None = None
    """No attempt with this token before this time (backoff, or the provider's Retry-After)."""
    since: datetime | None = None
    """When the first failed attempt with this token started: how long the trouble lasts."""
    last_error: str | None = None
    """What the last failed attempt got (an error type and status), for status. Never a secret."""
    refused: bool = False
    """The last attempt was refused (a 4xx with an error code other than the definitive ones):
    nothing was spent, and the state stays ``unavailable`` so that a version that predates
    this field also waits for ``retry_at``."""


@dataclass(frozen=True, slots=True)
class Credential:
    """One OAuth credential for one MCP server, as stored.

    ``repr`` and ``str`` show secrets only as a short suffix.
    """

    access_token: str
    resource: str
    token_type: str = "Bearer"
    refresh_token: str | None = None
    scope: str | None = None
    expires_at: datetime | None = None
    obtained_at: datetime | None = None
    issuer: str | None = None
    token_endpoint: str | None = None
    revocation_endpoint: str | None = None
    client_id: str | None = None
    client_secret: str | None = field(default=None)
    token_endpoint_auth_method: str | None = None
    subject: str | None = None
    reauth_reason: str | None = None
    """Set when a transaction found the grant dead; only a new login clears it."""
    intent: RefreshIntent | None = None
    rejected_refresh_at: datetime | None = None
    """When this token was obtained by a refresh that a server's 401 forced, so that a server
    rejecting every fresh token is not answered with a refresh per request."""
    grant: str | None = None
    """How the credential was obtained: ``None`` for a person's login (renewed with its
    refresh token), :data:`CLIENT_CREDENTIALS` for a machine client (renewed by asking again),
    the jwt-bearer grant's URN for cross-app access and workload identity."""
    client_key_source: str | None = None
    """Where a ``private_key_jwt`` client's key is read from (``file:…``/``env:…``), never
    the key itself."""
    scope_requested: str | None = None
    """The scope a client-credentials renewal asks for again."""
    dpop_key: str | None = None
    """The private JWK every proof of this credential is signed with (RFC 9449), shared by
    every process and host that holds the record; ``None`` for a bearer credential. A
    secret: kept only in the record, which the store seals where it seals records."""
    workload_source: str | None = None
    """Where a workload identity credential's own JWT is read at every renewal (``file:…``,
    ``env:…``, or ``callable``), never the token: the jwt-bearer grant asks again with it."""
    resource_indicator: bool = True
    """Whether the requests of this credential name ``resource`` (RFC 8707). ``False`` for
    a login whose server refuses it next to ``scope`` (Microsoft Entra v2, AADSTS9010010):
    the choice is kept here, not only in servers.json, because a renewal may run where
    that file is never read. ``resource`` itself is kept either way: the key, the
    identity checks and status still name the server by it."""

    def __post_init__(self) -> None:
        # Whatever a server echoes of these is hidden from every message (see _redact).
        remember(self.access_token, self.refresh_token, self.client_secret, self.dpop_key)

    def __repr__(self) -> str:
        return (
            f"Credential(resource={self.resource!r}, access_token={redact(self.access_token)!r}, "
            f"refresh_token={redact(self.refresh_token)!r}, expires_at={_iso(self.expires_at)!r}, "
            f"issuer={self.issuer!r}, client_id={self.client_id!r}, subject={self.subject!r}"
            + (f", reauth_reason={self.reauth_reason!r}" if self.reauth_reason else "")
            + (f", intent={self.intent.state!r}" if self.intent else "")
            + ")"
        )

    __str__ = __repr__

    def replace(self, **changes: Any) -> Credential:
        """Return a copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    @property
    def bearer(self) -> bool:
        """Whether the token is a Bearer token (RFC 6750)."""
        # Asked on every request: the stored spelling first, the case-blind match after.
        return self.token_type == "Bearer" or self.token_type.lower() == "bearer"

    @property
    def dpop(self) -> bool:
        """Whether the token is sender-constrained with this record's own DPoP key."""
        return self.dpop_key is not None and self.token_type.lower() == "dpop"

    @property
    def presentable(self) -> bool:
        """Whether grantkeeper can send the token: Bearer, or DPoP with the key it is bound
        to. Another kind is kept and rotates like any, but no request is sent with it."""
        return self.bearer or self.dpop

    @property
    def refresh_fingerprint(self) -> str | None:
        """Fingerprint of what a renewal spends or replaces, for intents and logs: the
        refresh token, or for a client-credentials credential its access token."""
        secret = renewal_secret(self)
        return fingerprint(secret) if secret is not None else None

    @property
    def asks_again(self) -> bool:
        """Whether a renewal asks for a new token with the client's or the workload's own
        credentials (client credentials, workload identity) rather than spending a refresh
        token: it spends nothing, so asking again is always safe."""
        return self.grant == CLIENT_CREDENTIALS or self.workload_source is not None

    @property
    def renewable(self) -> bool:
        """Whether a renewal needs no person: a refresh token, or credentials of its own."""
        return bool(self.refresh_token) or self.asks_again

    @property
    def sent_resource(self) -> str | None:
        """The ``resource`` a renewal of this credential sends: ``None`` where its login
        opted out (:attr:`resource_indicator`)."""
        return self.resource if self.resource_indicator else None

    def same_identity(self, other: Credential) -> bool:
        """Whether ``other`` belongs to the same issuer and resource as this record."""
        return self.issuer == other.issuer and self.resource == other.resource


def renewal_secret(record: Credential) -> str | None:
    """The secret a renewal of ``record`` spends or replaces (``None``: none can renew it):
    its refresh token, or for one that asks again (:attr:`Credential.asks_again`) its access
    token."""
    if record.refresh_token:
        return record.refresh_token
    if record.asks_again:
        return record.access_token
    return None


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z") if moment else None


def _parse_time(value: Any, what: str) -> datetime | None:
    """Accept ISO 8601 strings and epoch numbers (seconds, or milliseconds as Codex stores)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise _FieldError(f"{what} is not a time")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise _FieldError(f"{what} is not finite")
        seconds = value / 1000 if value > 10**11 else value
        return datetime.fromtimestamp(seconds, UTC)
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise _FieldError(f"{what} is not a time") from None
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    raise _FieldError(f"{what} is not a time")


def _opt_str(data: Mapping[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _FieldError(f"{name} is not a string")
    return value


def _schema(record: Credential) -> int:
    """The lowest layout version that reads ``record`` right (see :data:`SCHEMA_VERSION`)."""
    if not record.resource_indicator:
        return SCHEMA_VERSION
    return BEARER_SCHEMA if record.bearer else DPOP_SCHEMA


def record_to_json(record: Credential) -> dict[str, Any]:
    """Return the stored JSON form of ``record``."""
    intent = record.intent
    return {
        "schema": _schema(record),
        "access_token": record.access_token,
        "token_type": record.token_type,
        "refresh_token": record.refresh_token,
        "scope": record.scope,
        "expires_at": _iso(record.expires_at),
        "obtained_at": _iso(record.obtained_at),
        "issuer": record.issuer,
        "token_endpoint": record.token_endpoint,
        "revocation_endpoint": record.revocation_endpoint,
        "resource": record.resource,
        "resource_indicator": record.resource_indicator,
        "client": {
            "client_id": record.client_id,
            "client_secret": record.client_secret,
            "token_endpoint_auth_method": record.token_endpoint_auth_method,
            "key_source": record.client_key_source,
        },
        "grant": record.grant,
        "scope_requested": record.scope_requested,
        "dpop_key": record.dpop_key,
        "workload_source": record.workload_source,
        "subject": record.subject,
        "reauth_reason": record.reauth_reason,
        "intent": None
        if intent is None
        else {
            "token_fingerprint": intent.token_fingerprint,
            "pid": intent.pid,
            "host": intent.host,
            "started_at": _iso(intent.started_at),
            "attempts": intent.attempts,
            "state": intent.state,
            "holder": intent.holder,
            "host_id": intent.host_id,
            "lease_until": _iso(intent.lease_until),
            "retry_at": _iso(intent.retry_at),
            "since": _iso(intent.since),
            "last_error": intent.last_error,
            "refused": intent.refused,
        },
        "rejected_refresh_at": _iso(record.rejected_refresh_at),
    }


def record_from_json(data: Any, *, key: str | None = None) -> Credential:
    """Parse a stored record, raising :class:`StoreCorrupt` (with no secret) if it is bad."""
    try:
        return _record_from_json(data)
    except StoreCorrupt:
        raise
    except (ValueError, TypeError, KeyError, OverflowError) as exc:
        # The message names a field, never its value: values may be secrets.
        raise StoreCorrupt(f"stored credential is malformed: {_describe(exc)}", key=key) from None


def _describe(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"missing field {exc.args[0]!r}"
    if isinstance(exc, _FieldError):
        return str(exc)
    # Library errors (fromisoformat, float) echo their input, which may be a secret.
    return f"a field has an invalid value ({type(exc).__name__})"


def _record_from_json(data: Any) -> Credential:
    if not isinstance(data, dict):
        raise _FieldError("record is not an object")
    schema = data.get("schema", SCHEMA_VERSION)
    if not isinstance(schema, int) or isinstance(schema, bool):
        raise _FieldError("schema is not an integer")
    if schema > SCHEMA_VERSION:
        raise StoreCorrupt(
            f"stored credential has schema {schema}, written by a newer grantkeeper "
            f"(this one reads up to {SCHEMA_VERSION})"
        )
    access_token = data["access_token"]
    if not isinstance(access_token, str):
        raise _FieldError("access_token is not a string")
    resource = _opt_str(data, "resource")
    if resource is None:
        raise KeyError("resource")
    # Absent in records written before the opt-out existed: they all sent it.
    resource_indicator = data.get("resource_indicator", True)
    if not isinstance(resource_indicator, bool):
        raise _FieldError("resource_indicator is not a boolean")
    obtained_at = _parse_time(data.get("obtained_at", data.get("received_at")), "obtained_at")
    expires_at = _parse_time(data.get("expires_at"), "expires_at")
    if expires_at is None and data.get("expires_in") is not None and obtained_at is not None:
        # Legacy layout: a relative lifetime is only meaningful next to when it was received.
        expires_at = obtained_at + timedelta(seconds=float(data["expires_in"]))
    client = data.get("client") or {}
    if not isinstance(client, dict):
        raise _FieldError("client is not an object")
    client_fields = {**data, **client}  # legacy records kept client_id at the top level
    intent_data = data.get("intent")
    intent = None
    if intent_data is not None:
        if not isinstance(intent_data, dict):
            raise _FieldError("intent is not an object")
        started = _parse_time(intent_data["started_at"], "intent.started_at")
        state = intent_data.get("state", "in_flight")
        if state not in INTENT_STATES:
            raise _FieldError("intent.state is not a known string")
        pid, attempts = intent_data["pid"], intent_data.get("attempts", 1)
        if not isinstance(pid, int) or not isinstance(attempts, int):
            raise _FieldError("intent.pid is not an integer")
        intent = RefreshIntent(
            token_fingerprint=str(intent_data["token_fingerprint"]),
            pid=pid,
            host=str(intent_data["host"]),
            started_at=started or datetime.fromtimestamp(0, UTC),
            attempts=attempts,
            state=state,
            holder=str(intent_data.get("holder", "")),
            host_id=str(intent_data.get("host_id") or ""),
            lease_until=_parse_time(intent_data.get("lease_until"), "intent.lease_until"),
            retry_at=_parse_time(intent_data.get("retry_at"), "intent.retry_at"),
            since=_parse_time(intent_data.get("since"), "intent.since"),
            last_error=_opt_str(intent_data, "last_error"),
            refused=intent_data.get("refused") is True,
        )
    return Credential(
        access_token=access_token,
        resource=resource,
        token_type=_opt_str(data, "token_type") or "Bearer",
        refresh_token=_opt_str(data, "refresh_token"),
        scope=_opt_str(data, "scope"),
        expires_at=expires_at,
        obtained_at=obtained_at,
        issuer=_opt_str(data, "issuer"),
        token_endpoint=_opt_str(data, "token_endpoint"),
        revocation_endpoint=_opt_str(data, "revocation_endpoint"),
        client_id=_opt_str(client_fields, "client_id"),
        client_secret=_opt_str(client_fields, "client_secret"),
        token_endpoint_auth_method=_opt_str(client_fields, "token_endpoint_auth_method"),
        subject=_opt_str(data, "subject"),
        reauth_reason=_opt_str(data, "reauth_reason"),
        intent=intent,
        rejected_refresh_at=_parse_time(data.get("rejected_refresh_at"), "rejected_refresh_at"),
        grant=_opt_str(data, "grant"),
        client_key_source=_opt_str(client, "key_source"),
        scope_requested=_opt_str(data, "scope_requested"),
        dpop_key=_opt_str(data, "dpop_key"),
        workload_source=_opt_str(data, "workload_source"),
        resource_indicator=resource_indicator,
    )
