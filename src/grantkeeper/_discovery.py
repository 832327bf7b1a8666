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
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx

from ._as_metadata import MAX_METADATA_BYTES, AuthServerMetadata, metadata_urls, parse_metadata
from ._errors import OAuthUnsupported, ProtocolError
from ._record import canonical_url
from ._urls import require_secure
from ._www_authenticate import Challenge, bearer_challenge

PRM_WELL_KNOWN = "/.well-known/oauth-protected-resource"
"""RFC 9728 §3's well-known path prefix."""

DISCOVERY_TIMEOUT = httpx.Timeout(15.0, connect=10.0)
"""Bounds each discovery request; metadata is small and a slow answer means a broken server."""

NOT_THERE = frozenset({400, 401, 403, 404, 405, 406, 410})
"""Statuses that mean "no document here, try the next location" rather than a failure."""

PROBE_BODY = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "grantkeeper", "version": "0"},
    },
}
"""An MCP ``initialize`` request, sent without credentials to provoke the server's 401."""


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


def _get(http: httpx.Client, url: str) -> tuple[int, bytes]:
    """GET ``url``; return status and at most ``MAX_METADATA_BYTES + 1`` bytes of body."""
    try:
        with http.stream(
            "GET", url, headers={"Accept": "application/json"}, timeout=DISCOVERY_TIMEOUT
        ) as response:
            body = bytearray()
            if response.status_code < 300:
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > MAX_METADATA_BYTES:
                        break
            return response.status_code, bytes(body)
    except httpx.HTTPError as exc:
        raise ProtocolError(f"could not fetch {url} ({type(exc).__name__})") from None


def probe(http: httpx.Client, server_url: str) -> tuple[int, Challenge | None]:
    """Send an unauthenticated MCP request; return the status and any Bearer challenge."""
    try:
        response = http.post(
            server_url,
            json=PROBE_BODY,
            headers={"Accept": "application/json, text/event-stream"},
            timeout=DISCOVERY_TIMEOUT,
        )
    except httpx.HTTPError as exc:
        raise ProtocolError(f"could not reach {server_url} ({type(exc).__name__})") from None
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
    client = http or httpx.Client(follow_redirects=False, trust_env=False)
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
