"""Workload identity federation (SEP-1933): a machine logs in with its own identity.

A workload (a Kubernetes pod, a CI job, a cloud VM) holds a JWT its platform issued it. The
MCP server's authorization server trusts that platform's issuer and takes the JWT as an
RFC 7523 jwt-bearer grant: no client secret to hand out, no browser.

The token is read where the workload's platform puts it, *at every renewal*, and never
stored: a Kubernetes projected service-account token is rewritten in place before it
expires, so a token read once would be sent after it was replaced. A record keeps only the
source (``file:/path``, ``env:NAME``, or ``callable`` for a function the application hands
each :class:`~grantkeeper.Keeper`). Before a token is sent its ``exp`` is read (unverified:
the authorization server verifies it) so that an expired one is reported here, naming where
it was found, instead of being refused at the authorization server.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime

from .._errors import ServerConfigError, WorkloadTokenRejected, WorkloadTokenUnavailable
from .._redact import fingerprint, remember
from .client_assertion import read_source
from .jws import b64url_decode

CALLABLE = "callable"
"""The stored source of a token a function returns: each process hands the function over."""

MAX_TOKEN_BYTES = 64 * 1024
"""A workload JWT is a few KiB; refuse to read anything larger."""

REFUSAL_WAIT = 60.0
"""Seconds a process does not send a workload token the authorization server refused,
doubled at each refusal of the same token up to :data:`REFUSAL_WAIT_CAP`: the same token is
refused again unless the server's trust changed, and a login hook would otherwise send it
once per request. A new token from the source is sent at once."""

REFUSAL_WAIT_CAP = 900.0
"""The longest a refused token waits (15 minutes)."""

MAX_REFUSALS_KEPT = 64
"""Refused tokens remembered per process (the oldest is forgotten first)."""

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,255}")


class WorkloadIdentity:
    """Where a workload's own identity token (a JWT) is read, for the jwt-bearer grant.

    Exactly one of ``file`` (re-read at every renewal: a Kubernetes projected token rotates
    in place), ``env`` (the name of an environment variable) or ``token`` (a function
    returning the current token, called at every renewal). ``repr`` names the source only.
    """

    __slots__ = ("env", "file", "token")

    def __init__(
        self,
        *,
        file: str | os.PathLike[str] | None = None,
        env: str | None = None,
        token: Callable[[], str] | None = None,
    ) -> None:
        if sum(source is not None for source in (file, env, token)) != 1:
            raise ServerConfigError(
                "give the workload identity token as exactly one of a file, an environment "
                "variable or a function"
            )
        if env is not None and not _ENV_NAME.fullmatch(env):
            # Never repeated: a token pasted where its variable's name belongs is a secret.
            raise ServerConfigError(
                "the workload identity environment variable must be given by its name "
                "(letters, digits, underscores), not its value"
            )
        self.file = os.path.abspath(file) if file is not None else None
        self.env = env
        self.token = token

    @classmethod
    def from_source(cls, source: str) -> WorkloadIdentity:
        """The identity a record's ``workload_source`` names (a file or a variable)."""
        kind, _, where = source.partition(":")
        if kind == "file" and where:
            return cls(file=where)
        if kind == "env" and where:
            return cls(env=where)
        if source == CALLABLE:
            raise WorkloadTokenUnavailable(
                "this credential's workload identity token comes from a function, and this "
                "process was given none: pass Keeper(workload=WorkloadIdentity(token=...))"
            )
        raise WorkloadTokenUnavailable("the stored workload identity source is not file: or env:")

    @property
    def source(self) -> str:
        """What a record keeps of this identity: where the token is read, never the token."""
        if self.file is not None:
            return f"file:{self.file}"
        if self.env is not None:
            return f"env:{self.env}"
        return CALLABLE

    @property
    def where(self) -> str:
        """Where the token is looked for, as messages say it."""
        if self.file is not None:
            return f"the file {self.file}"
        if self.env is not None:
            return f"${self.env}"
        return "the workload token function"

    def __repr__(self) -> str:
        if self.token is not None:
            return f"WorkloadIdentity(token={getattr(self.token, '__qualname__', 'function')})"
        shown = f"file={self.file!r}" if self.file is not None else f"env={self.env!r}"
        return f"WorkloadIdentity({shown})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WorkloadIdentity):
            return NotImplemented
        return (self.file, self.env, self.token) == (other.file, other.env, other.token)

    def __hash__(self) -> int:
        return hash((self.file, self.env, self.token))

    def read(self) -> str:
        """The token as the source holds it now, checked to be an unexpired JWT.

        Raises :class:`WorkloadTokenUnavailable`, naming where it looked (never the token),
        if it is missing, empty, not a JWT, or expired (judged by the wall clock, as the
        authorization server judges it, not by a Keeper's clock); and
        :class:`WorkloadTokenRejected` if the authorization server refused this very token
        to this process within its wait (:data:`REFUSAL_WAIT`).
        """
        token = self._raw().strip()
        if not token:
            raise WorkloadTokenUnavailable(f"the workload identity token in {self.where} is empty")
        remember(token)  # it proves the workload's identity until it expires: never print it
        claims = _claims(token)
        if claims is None:
            raise WorkloadTokenUnavailable(
                f"the workload identity token in {self.where} is not a JWT"
            )
        exp = claims.get("exp")
        # Without a numeric exp the authorization server decides; it verifies the rest.
        if isinstance(exp, int | float) and not isinstance(exp, bool) and exp <= time.time():
            raise WorkloadTokenUnavailable(
                f"the workload identity token in {self.where} expired at {_when(exp)}; "
                "its platform has not replaced it"
            )
        _refusals.check(token, self.where)
        return token

    def _raw(self) -> str:
        if self.token is None:
            data = read_source(
                self.source,
                what="workload identity token",
                limit=MAX_TOKEN_BYTES,
                error=WorkloadTokenUnavailable,
            )
            try:
                return data.decode("ascii")
            except UnicodeDecodeError:
                raise WorkloadTokenUnavailable(
                    f"the workload identity token in {self.where} is not a JWT"
                ) from None
        try:
            value = self.token()
        except Exception as exc:
            # Its message is the application's and may quote the token: only its type.
            raise WorkloadTokenUnavailable(
                f"the workload token function failed ({type(exc).__name__})"
            ) from None
        if not isinstance(value, str):
            raise WorkloadTokenUnavailable("the workload token function returned no string")
        return value


class _Refusals:
    """The workload tokens this process saw refused, by fingerprint: none is sent again
    before its wait ends (:data:`REFUSAL_WAIT`). A process's own memory; the record's note
    backs the fleet off as well."""

    def __init__(self) -> None:
        # fingerprint -> (refusals, wall-clock time of the last, monotonic end of the wait)
        self._seen: dict[str, tuple[int, float, float]] = {}

    def add(self, token: str) -> None:
        key = fingerprint(token)
        count = self._seen.pop(key, (0, 0.0, 0.0))[0] + 1
        wait = min(REFUSAL_WAIT_CAP, REFUSAL_WAIT * 2 ** min(count - 1, 16))
        self._seen[key] = (count, time.time(), time.monotonic() + wait)
        while len(self._seen) > MAX_REFUSALS_KEPT:
            self._seen.pop(next(iter(self._seen)))

    def check(self, token: str, where: str) -> None:
        seen = self._seen.get(fingerprint(token))
        if seen is None:
            return
        _, at, until = seen
        left = until - time.monotonic()
        if left > 0:
            raise WorkloadTokenRejected(
                f"the authorization server refused the workload identity token in {where} "
                f"at {_when(at)}; it is not sent again before {_when(time.time() + left)}, "
                "but a new token there is sent at once"
            )


_refusals = _Refusals()


def refused(token: str) -> None:
    """Remember that the authorization server definitively refused ``token``."""
    _refusals.add(token)


def _claims(token: str) -> dict[str, object] | None:
    """The JWT's claims, unverified, or ``None`` if ``token`` is no compact JWS."""
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        return None
    try:
        claims = json.loads(b64url_decode(parts[1]))
    except (ValueError, RecursionError):
        return None
    return claims if isinstance(claims, dict) else None


def _when(exp: float) -> str:
    try:
        return f"{datetime.fromtimestamp(exp, UTC):%Y-%m-%d %H:%M:%S}Z"
    except (OverflowError, ValueError, OSError):
        return "an impossible time"
