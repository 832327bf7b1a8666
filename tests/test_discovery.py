"""Discovery through httpx.MockTransport: the happy orders, the fallbacks and every refusal."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from grantkeeper import OAuthUnsupported
from grantkeeper._errors import ProtocolError
from grantkeeper._oauth.auth_server_metadata import AuthServerMetadata
from grantkeeper._oauth.discovery import (
    ResourceMetadata,
    choose_scope,
    discover,
    resource_matches,
    resource_metadata_urls,
)
from grantkeeper._oauth.www_authenticate import Challenge

SERVER = "https://mcp.example.com/v1/mcp"
ISSUER = "https://auth.example.com"
PRM_PATH = "https://mcp.example.com/.well-known/oauth-protected-resource/v1/mcp"
PRM_ROOT = "https://mcp.example.com/.well-known/oauth-protected-resource"
AS_META = "https://auth.example.com/.well-known/oauth-authorization-server"


def as_doc(issuer: str = ISSUER, **changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/authorize",
        "token_endpoint": f"{issuer}/token",
        "registration_endpoint": f"{issuer}/register",
        "revocation_endpoint": f"{issuer}/revoke",
        "scopes_supported": ["openid", "offline_access", "mcp"],
        "code_challenge_methods_supported": ["S256"],
    }
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not None}


def prm_doc(resource: str = SERVER, **changes: Any) -> dict[str, Any]:
    return {"resource": resource, "authorization_servers": [ISSUER], **changes}


Route = tuple[int, Any] | tuple[int, Any, dict[str, str]]


def client(routes: dict[str, Route], seen: list[str] | None = None) -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        if seen is not None:
            seen.append(f"{request.method} {url}")
        route = routes.get(url)
        if route is None:
            return httpx.Response(404)
        status, body, *rest = route
        headers = rest[0] if rest else {}
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.Response(status, content=content, headers=headers)

    return httpx.Client(transport=httpx.MockTransport(handler))


def challenge(**params: str) -> dict[str, str]:
    text = ", ".join(f'{k}="{v}"' for k, v in params.items())
    return {"WWW-Authenticate": f"Bearer {text}".strip()}


def test_metadata_urls_try_the_hint_then_path_aware_then_root() -> None:
    hint = "https://mcp.example.com/meta"
    assert resource_metadata_urls(SERVER, hint) == [hint, PRM_PATH, PRM_ROOT]
    assert resource_metadata_urls("https://mcp.example.com/") == [PRM_ROOT]


def test_the_challenge_hint_is_used_first() -> None:
    hint = "https://mcp.example.com/custom-prm"
    seen: list[str] = []
    routes: dict[str, Route] = {
        SERVER: (401, {}, challenge(resource_metadata=hint, scope="mcp:read")),
        hint: (200, prm_doc(scopes_supported=["mcp"])),
        AS_META: (200, as_doc()),
    }
    found = discover(SERVER, http=client(routes, seen))
    assert found.resource == SERVER and found.metadata.issuer == ISSUER
    assert found.challenge is not None and found.challenge.scope == "mcp:read"
    assert f"GET {PRM_PATH}" not in seen
    assert not found.legacy


def test_path_aware_then_root_resource_metadata_without_a_hint() -> None:
    routes: dict[str, Route] = {
        SERVER: (401, {}, challenge(error="invalid_token")),
        PRM_ROOT: (200, prm_doc("https://mcp.example.com/")),
        AS_META: (200, as_doc()),
    }
    seen: list[str] = []
    found = discover(SERVER, http=client(routes, seen))
    assert found.resource == "https://mcp.example.com/"  # a parent resource covers the path
    assert seen.index(f"GET {PRM_PATH}") < seen.index(f"GET {PRM_ROOT}")


def test_openid_configuration_is_the_fallback_for_the_authorization_server() -> None:
    routes: dict[str, Route] = {
        SERVER: (401, {}, challenge(resource_metadata=PRM_PATH)),
        PRM_PATH: (200, prm_doc()),
        "https://auth.example.com/.well-known/openid-configuration": (200, as_doc()),
    }
    assert discover(SERVER, http=client(routes)).metadata.token_endpoint == f"{ISSUER}/token"


@pytest.mark.parametrize(
    ("resource", "ok"),
    [
        (SERVER, True),
        ("https://MCP.example.com:443/v1/mcp", True),
        ("https://mcp.example.com/v1", True),
        ("https://mcp.example.com/v1/mcp/other", False),
        ("https://mcp.example.com/v", False),
        ("https://evil.example.com/v1/mcp", False),
        ("http://mcp.example.com/v1/mcp", False),
        ("not a url", False),
    ],
)
def test_resource_must_match_the_server(resource: str, ok: bool) -> None:
    assert resource_matches(SERVER, resource) is ok


def test_resource_metadata_for_another_resource_is_refused() -> None:
    routes: dict[str, Route] = {
        SERVER: (401, {}, challenge(resource_metadata=PRM_PATH)),
        PRM_PATH: (200, prm_doc("https://evil.example.com/mcp")),
        AS_META: (200, as_doc()),
    }
    with pytest.raises(ProtocolError, match="refusing"):
        discover(SERVER, http=client(routes))


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        (as_doc("https://other.example.com"), "expected"),
        (as_doc(token_endpoint="http://auth.example.com/token"), "HTTPS"),
        (as_doc(token_endpoint=None), "token_endpoint is missing"),
        (as_doc(authorization_endpoint=None), "authorization_endpoint is missing"),
        (as_doc(code_challenge_methods_supported=["plain"]), "S256"),
        # Not a metadata document at all: absent, and with no other location, none at all.
        (b"<html>oops</html>", "publishes no metadata"),
        ([1, 2], "publishes no metadata"),
        (b"{" + b" " * (300 * 1024) + b"}", "publishes no metadata"),
    ],
)
def test_bad_authorization_server_metadata_is_a_typed_error(doc: Any, match: str) -> None:
    routes: dict[str, Route] = {
        SERVER: (401, {}, challenge(resource_metadata=PRM_PATH)),
        PRM_PATH: (200, prm_doc()),
        AS_META: (200, doc),
    }
    with pytest.raises(ProtocolError, match=match):
        discover(SERVER, http=client(routes))


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        (prm_doc(authorization_servers=[]), "names no authorization server"),
        (prm_doc(authorization_servers=["http://auth.example.com"]), "HTTPS"),
        ({"authorization_servers": [ISSUER]}, "has no resource"),
    ],
)
def test_bad_resource_metadata_is_a_typed_error(doc: Any, match: str) -> None:
    routes: dict[str, Route] = {
        SERVER: (401, {}, challenge(resource_metadata=PRM_PATH)),
        PRM_PATH: (200, doc),
    }
    with pytest.raises(ProtocolError, match=match):
        discover(SERVER, http=client(routes))


def test_a_server_error_on_a_metadata_url_stops_discovery() -> None:
    routes: dict[str, Route] = {SERVER: (401, {}, challenge()), PRM_PATH: (500, b"")}
    with pytest.raises(ProtocolError, match="HTTP 500"):
        discover(SERVER, http=client(routes))


def test_plain_http_is_refused_off_loopback() -> None:
    with pytest.raises(ProtocolError, match="HTTPS"):
        discover("http://mcp.example.com/mcp", http=client({}))


def test_legacy_server_without_resource_metadata_uses_its_origin() -> None:
    origin_meta = "https://mcp.example.com/.well-known/oauth-authorization-server"
    routes: dict[str, Route] = {
        SERVER: (401, {}, challenge()),
        origin_meta: (200, as_doc("https://mcp.example.com")),
    }
    found = discover(SERVER, http=client(routes))
    assert found.legacy and found.resource_metadata is None
    assert found.metadata.issuer == "https://mcp.example.com"
    assert found.resource == SERVER


def test_legacy_server_with_no_metadata_at_all_gets_the_default_endpoints() -> None:
    found = discover(SERVER, http=client({SERVER: (401, {}, challenge())}))
    assert found.metadata.token_endpoint == "https://mcp.example.com/token"
    assert found.metadata.authorization_endpoint == "https://mcp.example.com/authorize"


def test_a_server_that_wants_no_token_is_unsupported() -> None:
    with pytest.raises(OAuthUnsupported, match="HTTP 200"):
        discover(SERVER, http=client({SERVER: (200, {"jsonrpc": "2.0"})}))


def test_the_probe_is_a_2026_07_28_request_with_its_envelope_and_headers() -> None:
    """SEP-2575 and SEP-2243: every POST carries the version and method in headers and the
    ``_meta`` envelope in its body; a 2025-era server that wants OAuth answers 401 to it."""
    import grantkeeper

    posted: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            posted.append(request)
            return httpx.Response(401, headers=challenge(resource_metadata=PRM_PATH))
        if str(request.url) == PRM_PATH:
            return httpx.Response(200, json=prm_doc())
        if str(request.url) == AS_META:
            return httpx.Response(200, json=as_doc())
        return httpx.Response(404)

    found = discover(SERVER, http=httpx.Client(transport=httpx.MockTransport(handler)))
    assert found.metadata.issuer == ISSUER
    (probe,) = posted
    assert probe.headers["mcp-protocol-version"] == "2026-07-28"
    assert probe.headers["mcp-method"] == "server/discover"
    assert "mcp-session-id" not in probe.headers and "authorization" not in probe.headers
    body = json.loads(probe.content)
    assert body["method"] == "server/discover" and body["jsonrpc"] == "2.0"
    meta = body["params"]["_meta"]
    assert meta["io.modelcontextprotocol/protocolVersion"] == "2026-07-28"
    assert meta["io.modelcontextprotocol/clientCapabilities"] == {}
    assert meta["io.modelcontextprotocol/clientInfo"] == {
        "name": "grantkeeper",
        "version": grantkeeper.__version__,
    }


def test_a_known_challenge_skips_the_probe() -> None:
    seen: list[str] = []
    routes: dict[str, Route] = {PRM_PATH: (200, prm_doc()), AS_META: (200, as_doc())}
    discover(SERVER, http=client(routes, seen), challenge=Challenge("bearer", {}))
    assert f"POST {SERVER}" not in seen


META = AuthServerMetadata(
    issuer=ISSUER,
    authorization_endpoint=f"{ISSUER}/a",
    token_endpoint=f"{ISSUER}/t",
    scopes_supported=("openid", "offline_access", "mcp"),
)
PRM = ResourceMetadata(SERVER, (ISSUER,), ("mcp:read", "mcp:write"))


def test_scope_precedence_explicit_challenge_resource_server() -> None:
    asked = Challenge("bearer", {"scope": "mcp:admin"})
    assert choose_scope("a b", asked, PRM, META) == "a b offline_access"
    assert choose_scope(None, asked, PRM, META) == "mcp:admin offline_access"
    assert choose_scope(None, None, PRM, META) == "mcp:read mcp:write offline_access"
    assert choose_scope(None, None, None, META) == "openid offline_access mcp"
    no_offline = AuthServerMetadata(ISSUER, f"{ISSUER}/a", f"{ISSUER}/t")
    assert choose_scope(None, None, None, no_offline) is None
    assert choose_scope("x offline_access", None, None, META) == "x offline_access"


# -- what is not a metadata document counts as absent ------------------------------------

EVENT_STREAM = {"Content-Type": "text/event-stream"}
PRM_ROOT_DOC = prm_doc("https://mcp.example.com/v1/mcp")


class Endless:
    """A response body that never ends; counts the chunks anyone read."""

    def __init__(self, chunk: bytes) -> None:
        self.chunk = chunk
        self.read = 0

    def __iter__(self) -> Any:
        while True:
            self.read += 1
            yield self.chunk


def streaming_client(
    routes: dict[str, Route], streams: dict[str, tuple[Endless, dict[str, str]]]
) -> httpx.Client:
    plain = client(routes)

    def handler(request: httpx.Request) -> httpx.Response:
        stream = streams.get(str(request.url))
        if stream is not None:
            body, headers = stream
            return httpx.Response(200, headers=headers, content=iter(body))
        return plain.send(request)

    return httpx.Client(transport=httpx.MockTransport(handler))


def root_metadata_client(path_aware: Callable[[httpx.Request], httpx.Response]) -> httpx.Client:
    """A client for a server whose challenge names no metadata URL and whose resource
    metadata (JSON) is at the root; ``path_aware`` answers the path-aware URL."""

    def handler(request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        if url == PRM_PATH:
            return path_aware(request)
        if url == SERVER:
            return httpx.Response(401, headers=challenge())
        if url == PRM_ROOT:
            return httpx.Response(200, json=PRM_ROOT_DOC)
        if url == AS_META:
            return httpx.Response(200, json=as_doc())
        return httpx.Response(404)

    return httpx.Client(transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b"data: {}\n\n", EVENT_STREAM),
        (b"<!doctype html><p>Welcome</p>", {"Content-Type": "text/html"}),
        # Would be refused if read (another resource): it must not even be parsed.
        (json.dumps(prm_doc("https://evil.example.com")).encode(), {"Content-Type": "text/plain"}),
        (b"<!doctype html>", {"Content-Type": "application/json"}),
        (b"[1, 2]", {"Content-Type": "application/json"}),
        (b"{" + b" " * (300 * 1024) + b"}", {"Content-Type": "application/json"}),
        (b"{}", {"Content-Type": "application/json", "Content-Length": str(1 << 30)}),
    ],
    ids=["event-stream", "html", "wrong-type", "html-as-json", "array", "oversized", "declared"],
)
def test_a_path_aware_answer_that_is_no_document_falls_back_to_the_root(
    body: bytes, headers: dict[str, str]
) -> None:
    def path_aware(request: httpx.Request) -> httpx.Response:
        if "Content-Length" in headers:  # claims a gigabyte; must not be read
            return httpx.Response(200, headers=headers, content=iter([b"{}"]))
        return httpx.Response(200, headers=headers, content=body)

    found = discover(SERVER, http=root_metadata_client(path_aware))
    assert found.resource_metadata is not None
    assert found.resource == "https://mcp.example.com/v1/mcp"
    assert found.metadata.issuer == ISSUER


def test_an_endless_event_stream_is_never_read() -> None:
    stream = Endless(b"id: 1\nretry: 500\ndata: \n\n")
    routes: dict[str, Route] = {
        SERVER: (401, {}, challenge()),
        PRM_ROOT: (200, PRM_ROOT_DOC),
        AS_META: (200, as_doc()),
    }
    found = discover(SERVER, http=streaming_client(routes, {PRM_PATH: (stream, EVENT_STREAM)}))
    assert found.metadata.issuer == ISSUER
    assert stream.read == 0


def test_an_endless_json_stream_is_cut_at_the_size_bound() -> None:
    stream = Endless(b" " * 4096)
    routes: dict[str, Route] = {
        SERVER: (401, {}, challenge()),
        PRM_ROOT: (200, PRM_ROOT_DOC),
        AS_META: (200, as_doc()),
    }
    json_type = {"Content-Type": "application/json"}
    found = discover(SERVER, http=streaming_client(routes, {PRM_PATH: (stream, json_type)}))
    assert found.metadata.issuer == ISSUER
    assert 0 < stream.read * 4096 <= 256 * 1024 + 4096


def test_a_metadata_url_that_times_out_counts_as_absent() -> None:
    def silent(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("silent", request=request)

    found = discover(SERVER, http=root_metadata_client(silent))
    assert found.metadata.issuer == ISSUER


def test_an_authorization_server_html_page_falls_back_to_openid_configuration() -> None:
    oidc = "https://auth.example.com/.well-known/openid-configuration"
    routes: dict[str, Route] = {
        SERVER: (401, {}, challenge(resource_metadata=PRM_PATH)),
        PRM_PATH: (200, prm_doc()),
        AS_META: (200, b"<html>catch-all</html>", {"Content-Type": "text/html"}),
        oidc: (200, as_doc()),
    }
    assert discover(SERVER, http=client(routes)).metadata.issuer == ISSUER


def test_a_server_that_streams_everything_and_wants_no_token_is_unsupported() -> None:
    """The conformance suite's sse-retry server: every GET is an endless event stream."""
    streams = {
        url: (Endless(b"data: \n\n"), EVENT_STREAM)
        for url in (
            PRM_PATH,
            PRM_ROOT,
            "https://mcp.example.com/.well-known/oauth-authorization-server",
            "https://mcp.example.com/.well-known/openid-configuration",
        )
    }
    probe = Endless(b"data: \n\n")

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(200, headers=EVENT_STREAM, content=iter(probe))
        stream = streams.get(str(request.url))
        if stream is None:
            return httpx.Response(404)
        return httpx.Response(200, headers=EVENT_STREAM, content=iter(stream[0]))

    with pytest.raises(OAuthUnsupported, match="HTTP 200"):
        discover(SERVER, http=httpx.Client(transport=httpx.MockTransport(handler)))
    assert probe.read <= 1
    assert all(body.read == 0 for body, _ in streams.values())
