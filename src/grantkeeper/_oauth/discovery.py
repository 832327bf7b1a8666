"""Find a server's authorization server: RFC 9728, then RFC 8414 / OpenID, then legacy.

The order follows the MCP authorization spec (2025-06-18) and its predecessor:

1. the ``resource_metadata`` URL from the server's 401 ``WWW-Authenticate`` challenge;
2. protected resource metadata at the path-aware, then the root well-known URL;
3. the first authorization server it names, at RFC 8414 and OpenID locations;
4. with no resource metadata at all (2025-03-26 servers), the server's origin as issuer,
   and if even that has no metadata but the server demanded a Bearer token, the default
   ``/authorize``, ``/token`` and ``/register`` endpoints that spec prescribes.

URL building and document parsing are pure; :func:`discover` is the thin HTTP driver.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx

from .._errors import OAuthUnsupported, ProtocolError
from .._network import client_options, failure
from .._observe.log import event
from .._record import canonical_url
from .._version import __version__
from .auth_server_metadata import (
    MAX_METADATA_BYTES,
    AuthServerMetadata,
    metadata_urls,
    parse_metadata,
)
from .urls import require_secure
from .www_authenticate import Challenge, bearer_challenge

PRM_WELL_KNOWN = "/.well-known/oauth-protected-resource"
"""RFC 9728 §3's well-known path prefix."""

DISCOVERY_TIMEOUT = httpx.Timeout(15.0, connect=10.0)
"""Bounds the unauthenticated probe of the MCP server itself."""

METADATA_TIMEOUT = httpx.Timeout(5.0, connect=5.0)
"""Bounds each well-known request: metadata is a few KiB, and a silent one is not there."""

METADATA_DEADLINE = 10.0
"""Seconds for a whole metadata body: a trickling stream must not outlast the read timeout."""

NOT_THERE = frozenset({400, 401, 403, 404, 405, 406, 410})
"""Statuses that mean "no document here, try the next location" rather than a failure."""

PROBE_VERSION = "2026-07-28"
"""The protocol revision the probe speaks: the newest. Before this request, grantkeeper knows
nothing of the server, so the probe is the request a current client opens with; a server of
an older revision that wants OAuth answers 401 to any request, which is all discovery needs."""

PROBE_BODY = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "server/discover",
    "params": {
        "_meta": {
            "io.modelcontextprotocol/protocolVersion": PROBE_VERSION,
            "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": {"name": "grantkeeper", "version": __version__},
        }
    },
}
"""A 2026-07-28 ``server/discover``, sent without credentials to provoke the server's 401.

It is stateless (no session to end) and, as every request of that revision must, it carries
its ``_meta`` envelope and repeats the version and method in headers (SEP-2575, SEP-2243)."""

PROBE_HEADERS = {
    "Accept": "application/json, text/event-stream",
    "MCP-Protocol-Version": PROBE_VERSION,
    "Mcp-Method": "server/discover",
}


@dataclass(frozen=True)
class ResourceMetadata:
    """The parts of RFC 9728 protected resource metadata that login uses."""

    resource: str
    authorization_servers: tuple[str, ...]
    scopes_supported: tuple[str, ...] = ()


@dataclass(frozen=True)
class Discovery:
    """Everything login needs to know about a server, found without credentials."""

    server_url: str
    resource: str
    """The RFC 8707 resource indicator: the metadata's ``resource``, else the server URL."""
    metadata: AuthServerMetadata
    resource_metadata: ResourceMetadata | None = None
    challenge: Challenge | None = None
    """The Bearer challenge of the server's 401, if it sent one."""
    legacy: bool = False
    """Found without resource metadata (servers written to MCP 2025-03-26)."""


# -- pure -------------------------------------------------------------------------------


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "", "", ""))


def resource_metadata_urls(server_url: str, hinted: str | None = None) -> list[str]:
    """Where to look for ``server_url``'s resource metadata, in order (RFC 9728 §3.1, §5.1)."""
    parts = urlsplit(server_url)
    path = parts.path.rstrip("/")
    urls = [require_secure(hinted, "resource_metadata URL")] if hinted else []
    if path:
        urls.append(urlunsplit((parts.scheme, parts.netloc, PRM_WELL_KNOWN + path, "", "")))
    urls.append(urlunsplit((parts.scheme, parts.netloc, PRM_WELL_KNOWN, "", "")))
    return list(dict.fromkeys(urls))


def resource_matches(server_url: str, resource: str) -> bool:
    """Whether metadata for ``resource`` may govern ``server_url``.

    Equal after canonicalisation, or the same origin with ``resource``'s path a whole-segment
    prefix of the server's (one resource may cover several endpoints, as the SDK allows).
    """
    try:
        server, claimed = canonical_url(server_url), canonical_url(resource)
    except ValueError:
        return False
    if server == claimed:
        return True
    s, c = urlsplit(server), urlsplit(claimed)
    if (s.scheme, s.netloc) != (c.scheme, c.netloc) or c.query:
        return False
    prefix = c.path.rstrip("/") + "/"
    return (s.path.rstrip("/") + "/").startswith(prefix)


def _json_object(body: bytes, what: str) -> dict[str, object]:
    if len(body) > MAX_METADATA_BYTES:
        raise ProtocolError(f"{what} is too large")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError(f"{what} is not JSON") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"{what} is not a JSON object")
    return data


def _strings(value: object, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ProtocolError(f"{what} is not a list of strings")
    return tuple(value)


def parse_resource_metadata(body: bytes, *, server_url: str) -> ResourceMetadata:
    """Parse and check RFC 9728 metadata fetched for ``server_url``.

    Its ``resource`` must match the server (RFC 9728 §3.3), so a server cannot send us to
    log in for another resource; its authorization servers must be HTTPS off loopback.
    """
    what = "protected resource metadata"
    data = _json_object(body, what)
    resource = data.get("resource")
    if not isinstance(resource, str) or not resource:
        raise ProtocolError(f"{what} has no resource")
    if not resource_matches(server_url, resource):
        raise ProtocolError(
            f"{what} is for resource {resource[:200]!r}, not for {server_url!r}; refusing it"
        )
    servers = _strings(data.get("authorization_servers"), f"{what} authorization_servers")
    if not servers:
        raise ProtocolError(f"{what} names no authorization server")
    return ResourceMetadata(
        resource=require_secure(resource, "protected resource"),
        authorization_servers=tuple(require_secure(s, "authorization server") for s in servers),
        scopes_supported=_strings(data.get("scopes_supported"), f"{what} scopes_supported"),
    )


def legacy_metadata(server_url: str) -> AuthServerMetadata:
    """The default endpoints at ``server_url``'s origin (MCP 2025-03-26, "fallbacks")."""
    origin = require_secure(_origin(server_url), "server URL")
    return AuthServerMetadata(
        issuer=origin,
        authorization_endpoint=f"{origin}/authorize",
        token_endpoint=f"{origin}/token",
        registration_endpoint=f"{origin}/register",
    )


def choose_scope(
    explicit: str | None,
    challenge: Challenge | None,
    resource_metadata: ResourceMetadata | None,
    metadata: AuthServerMetadata,
) -> str | None:
    """The scope to ask for: explicit, else the challenge's, else the resource's, else the
    server's; plus ``offline_access`` when the server supports it, so a refresh token comes."""
    scopes: Iterable[str] = ()
    if explicit and explicit.strip():
        scopes = explicit.split()
    elif challenge is not None and challenge.scope:
        scopes = challenge.scope.split()
    elif resource_metadata is not None and resource_metadata.scopes_supported:
        scopes = resource_metadata.scopes_supported
    elif metadata.scopes_supported:
        scopes = metadata.scopes_supported
    chosen = list(dict.fromkeys(scopes))
    if "offline_access" in metadata.scopes_supported and "offline_access" not in chosen:
        chosen.append("offline_access")
    return " ".join(chosen) or None


# -- I/O --------------------------------------------------------------------------------


def _json_type(content_type: str | None) -> bool:
    """Whether a ``Content-Type`` may carry a JSON document (none at all is given a chance)."""
    if not content_type:
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def _get(http: httpx.Client, url: str) -> tuple[int, bytes | None]:
    """GET ``url``: its status, and its body if it is a bounded JSON object, else ``None``.

    A 2xx that is an event stream, an HTML catch-all page, too large, too slow or not a
    JSON object is no metadata document: ``None``, and discovery tries the next location.
    """
    deadline = time.monotonic() + METADATA_DEADLINE
    try:
        with http.stream(
            "GET", url, headers={"Accept": "application/json"}, timeout=METADATA_TIMEOUT
        ) as response:
            status = response.status_code
            if status >= 300:
                return status, b""
            if not _json_type(response.headers.get("content-type")):
                return _absent(url, status, "content_type")
            declared = response.headers.get("content-length", "")
            if declared.isascii() and declared.isdigit() and int(declared) > MAX_METADATA_BYTES:
                return _absent(url, status, "too_large")
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_METADATA_BYTES:
                    return _absent(url, status, "too_large")
                if time.monotonic() > deadline:
                    return _absent(url, status, "too_slow")
    except httpx.TimeoutException:
        # A document that does not arrive in time is not there; a refused connection is an error.
        return _absent(url, 200, "timeout")
    except httpx.HTTPError as exc:
        raise ProtocolError(f"could not fetch {url} ({failure(exc)})") from None
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return _absent(url, status, "not_json")
    if not isinstance(data, dict):
        return _absent(url, status, "not_an_object")
    return status, bytes(body)


def _absent(url: str, status: int, reason: str) -> tuple[int, None]:
    event(logging.INFO, "discovery.not_a_document", url=url, status=status, reason=reason)
    return status, None


def probe(http: httpx.Client, server_url: str) -> tuple[int, Challenge | None]:
    """Send an unauthenticated MCP request; return the status and any Bearer challenge."""
    try:
        # Only the status and headers matter: a server that lets us in may answer with an
        # event stream that never ends, so the body is never read.
        with http.stream(
            "POST",
            server_url,
            json=PROBE_BODY,
            headers=PROBE_HEADERS,
            timeout=DISCOVERY_TIMEOUT,
        ) as response:
            pass
    except httpx.HTTPError as exc:
        raise ProtocolError(f"could not reach {server_url} ({failure(exc)})") from None
    session = response.headers.get("mcp-session-id")
    if session and response.status_code < 300:
        # The server let us in without credentials: end the session we just opened.
        try:
            http.delete(server_url, headers={"Mcp-Session-Id": session})
        except httpx.HTTPError:
            pass
    headers = response.headers.get_list("www-authenticate")
    challenge = bearer_challenge(headers) if headers else None
    return response.status_code, challenge


def _first_document(http: httpx.Client, urls: Iterable[str]) -> tuple[str, bytes] | None:
    for url in urls:
        status, body = _get(http, url)
        if body is None:
            continue
        if 200 <= status < 300:
            return url, body
        if status not in NOT_THERE:
            raise ProtocolError(f"{url} answered HTTP {status}")
    return None


def fetch_as_metadata(http: httpx.Client, issuer: str) -> AuthServerMetadata | None:
    """``issuer``'s metadata from the first location that has it, or ``None``."""
    found = _first_document(http, metadata_urls(issuer))
    return None if found is None else parse_metadata(found[1], expected_issuer=issuer)


def discover(
    server_url: str,
    *,
    http: httpx.Client | None = None,
    challenge: Challenge | None = None,
) -> Discovery:
    """Discover how to log in to the MCP server at ``server_url``.

    ``challenge`` is the Bearer challenge of a 401 the caller already has; without one,
    an unauthenticated probe provokes it. Raises :class:`OAuthUnsupported` when the server
    offers no OAuth, and :class:`ProtocolError` when what it offers is unsafe or malformed.
    """
    server_url = require_secure(server_url, "server URL")
    own = http is None
    client = http or httpx.Client(follow_redirects=False, **client_options())
    try:
        return _discover(client, server_url, challenge)
    finally:
        if own:
            client.close()


def _discover(http: httpx.Client, server_url: str, challenge: Challenge | None) -> Discovery:
    status = 401 if challenge is not None else None
    if challenge is None:
        status, challenge = probe(http, server_url)
    hinted = challenge.resource_metadata if challenge is not None else None
    found = _first_document(http, resource_metadata_urls(server_url, hinted))
    if found is not None:
        prm = parse_resource_metadata(found[1], server_url=server_url)
        issuer = prm.authorization_servers[0]
        metadata = fetch_as_metadata(http, issuer)
        if metadata is None:
            raise ProtocolError(f"the authorization server {issuer} publishes no metadata")
        return Discovery(server_url, prm.resource, metadata, prm, challenge)
    metadata = fetch_as_metadata(http, require_secure(_origin(server_url), "server URL"))
    if metadata is None:
        if challenge is None:
            raise OAuthUnsupported(
                f"{server_url} offers no OAuth: no resource or authorization server metadata"
                + ("" if status == 401 else f", and it answered HTTP {status} without a token")
            )
        metadata = legacy_metadata(server_url)
    return Discovery(server_url, canonical_url(server_url), metadata, None, challenge, legacy=True)
