"""Parse ``WWW-Authenticate`` challenges (RFC 9110 §11.6.1, RFC 6750 §3, RFC 9728 §5.1).

Servers send several challenges in one header, or the header several times; parameters
may be quoted strings with escapes or bare tokens. Malformed input raises
:class:`ProtocolError`; it never crashes and never loops.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from .._errors import ProtocolError

MAX_HEADER_CHARS = 16 * 1024
"""Challenges are short; a header longer than this is refused unparsed."""

_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_TOKEN68 = r"[A-Za-z0-9\-._~+/]+=*"
_SCHEME = re.compile(rf"\s*({_TOKEN})")
_PARAM = re.compile(rf"\s*({_TOKEN})\s*=\s*")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"', re.DOTALL)
_BARE = re.compile(rf"({_TOKEN})")
_T68 = re.compile(rf"\s*({_TOKEN68})\s*(?=,|$)")


@dataclass(frozen=True)
class Challenge:
    """One challenge: its scheme (lower-cased) and parameters (names lower-cased)."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)

    @property
    def scope(self) -> str | None:
        """The ``scope`` the server asks for (RFC 6750 §3)."""
        return self.params.get("scope")

    @property
    def error(self) -> str | None:
        """The ``error`` code, e.g. ``invalid_token`` or ``insufficient_scope``."""
        return self.params.get("error")

    @property
    def resource_metadata(self) -> str | None:
        """Where the protected resource metadata lives (RFC 9728 §5.1)."""
        return self.params.get("resource_metadata")


def parse_challenges(values: str | Iterable[str]) -> list[Challenge]:
    """Parse one header value, or every value of a repeated header, into challenges."""
    if isinstance(values, str):
        values = [values]
    challenges: list[Challenge] = []
    for value in values:
        if len(value) > MAX_HEADER_CHARS:
            raise ProtocolError("WWW-Authenticate header is too long")
        challenges.extend(_parse_one(value))
    return challenges


OAUTH_SCHEMES = frozenset({"bearer", "dpop"})
"""The schemes an OAuth access token is presented with: Bearer (RFC 6750) and DPoP (RFC
9449 §7.1, whose challenges carry the same parameters)."""


def bearer_challenge(values: str | Iterable[str]) -> Challenge | None:
    """The first Bearer challenge, else the first DPoP one, or ``None`` if the server offers
    neither: both ask for an OAuth token and name its resource metadata and scope."""
    challenges = [c for c in parse_challenges(values) if c.scheme in OAUTH_SCHEMES]
    return next((c for c in challenges if c.scheme == "bearer"), None) or next(
        iter(challenges), None
    )


def _parse_one(text: str) -> list[Challenge]:
    challenges: list[Challenge] = []
    pos, end = 0, len(text)
    while pos < end:
        # Skip empty list elements ("a, , b" is legal).
        while pos < end and text[pos] in " \t,":
            pos += 1
        if pos >= end:
            break
        match = _SCHEME.match(text, pos)
        if not match:
            raise ProtocolError("WWW-Authenticate: expected an auth scheme")
        scheme, pos = match.group(1).lower(), match.end()
        params: dict[str, str] = {}
        # A token68 ("abc123==") runs to the next comma or the end; parameters never do,
        # since a parameter's "=" is followed by a value.
        token68 = _T68.match(text, pos)
        if token68:
            pos = token68.end()
        else:
            pos = _parse_params(text, pos, params)
        challenges.append(Challenge(scheme, params))
    return challenges


def _parse_params(text: str, pos: int, params: dict[str, str]) -> int:
    end = len(text)
    while pos < end:
        param = _PARAM.match(text, pos)
        if not param:
            return pos  # the next challenge starts here
        name, pos = param.group(1).lower(), param.end()
        quoted = _QUOTED.match(text, pos)
        if quoted:
            value = re.sub(r"\\(.)", r"\1", quoted.group(1), flags=re.DOTALL)
            pos = quoted.end()
        else:
            bare = _BARE.match(text, pos)
            if not bare:
                raise ProtocolError(f"WWW-Authenticate: parameter {name!r} has no value")
            value, pos = bare.group(1), bare.end()
        if name in params:
            raise ProtocolError(f"WWW-Authenticate: parameter {name!r} is repeated")
        params[name] = value
        while pos < end and text[pos] in " \t":
            pos += 1
        if pos < end:
            if text[pos] != ",":
                raise ProtocolError("WWW-Authenticate: expected ',' between parameters")
            pos += 1
    return pos
