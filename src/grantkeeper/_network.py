"""The one way grantkeeper's HTTP clients are made: every request (discovery, registration,
login, refresh, logout, revocation, MCP, the proxy) goes through a proxy and trusts
certificates alike.

- **Proxies** come from ``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY`` and ``NO_PROXY``
  (either case), else on macOS and Windows from the system's proxy settings, as
  ``urllib.request.getproxies`` reads them: what pip, requests and httpx itself do. A
  desktop host starts its MCP servers with little of a shell's environment, so the
  system's settings matter there.
- **Trust**: the operating system's store through ``truststore`` (Keychain on macOS, the
  Windows certificate store, OpenSSL's system paths on Linux), as pip does, so a company CA
  installed there works; certificates in ``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` are trusted
  (truststore hands macOS and Windows the certificates loaded from the file; a directory's
  are loaded by OpenSSL only as needed, so there ``SSL_CERT_DIR`` may go unused: unverified)
  as well. Not certifi's bundle: a company's TLS-inspecting proxy is not in it.
- **``.netrc`` never adds credentials** to a request. httpx 0.28 reads it only through an
  explicit ``NetRCAuth``, which nothing here passes; ``tests/test_network.py`` holds it to
  that, since a login sending a user's netrc password to an authorization server would be a
  leak.

httpx and httpx2 take the same options, so both clients are made from :func:`client_options`.
"""

from __future__ import annotations

import functools
import os
import ssl
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from ._errors import ServerConfigError

TRUST_ENV_VARS = ("SSL_CERT_FILE", "SSL_CERT_DIR")
PROXY_SCHEMES = ("https", "http", "all")


def client_options() -> dict[str, Any]:
    """Keyword arguments for ``httpx.Client``, ``httpx.AsyncClient`` and their httpx2
    counterparts: proxies from the environment (``trust_env``) and the TLS context below.

    A proxy setting httpx cannot use (a scheme it does not speak, SOCKS without ``socksio``)
    is a :class:`ServerConfigError` naming the setting, not an exception from deep inside
    the first request."""
    check_proxies()
    return {"trust_env": True, "verify": tls_context()}


def check_proxies() -> None:
    """Raise :class:`ServerConfigError` for a proxy setting no request could use."""
    import importlib.util

    found = urllib.request.getproxies()
    for scheme in PROXY_SCHEMES:
        url = found.get(scheme)
        if not url:
            continue
        setting = f"{scheme.upper()}_PROXY"
        full = url if "://" in url else f"http://{url}"
        try:
            parts = urlsplit(full)
            parts.port  # noqa: B018 (raises on a port that is no number)
            httpx.URL(full)
        except (ValueError, httpx.InvalidURL):
            # Not quoted: the value may carry the proxy's password.
            raise ServerConfigError(f"{setting} is not a URL (http://HOST:PORT)") from None
        if not parts.hostname:
            raise ServerConfigError(f"{setting} names no host (http://HOST:PORT)")
        kind = parts.scheme.lower()
        if kind in ("socks5", "socks5h") and importlib.util.find_spec("socksio") is None:
            raise ServerConfigError(
                f"{setting} names a SOCKS proxy: install socksio (pip install 'httpx[socks]') "
                "or name an HTTP proxy"
            )
        if kind not in ("http", "https", "socks5", "socks5h"):
            raise ServerConfigError(
                f"{setting} names a {kind} proxy; grantkeeper goes through http, https or "
                "socks5 proxies"
            )


def tls_context() -> ssl.SSLContext:
    """The TLS context for every request, made once per trust configuration: loading the
    system's certificates costs milliseconds, and a proxy opens clients often."""
    return _context(*(os.environ.get(name) or None for name in TRUST_ENV_VARS))


@functools.lru_cache(maxsize=4)
def _context(cafile: str | None, capath: str | None) -> ssl.SSLContext:
    import truststore

    context = truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cafile or capath:
        # Added to the system's store, not in place of it: the variable names a company CA,
        # and the public servers must still verify.
        try:
            context.load_verify_locations(cafile=cafile, capath=capath)
        except (OSError, ssl.SSLError) as exc:
            named = " and ".join(
                f"{name}={value}"
                for name, value in zip(TRUST_ENV_VARS, (cafile, capath), strict=True)
                if value
            )
            reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or "unusable"
            raise ServerConfigError(f"cannot use the certificates of {named}: {reason}") from None
    return context


@dataclass(frozen=True)
class NetworkSettings:
    """What ``doctor`` shows: the proxies and the trust store in effect. Proxy URLs carry no
    password (it is replaced by ``***``)."""

    proxies: dict[str, str]
    """Scheme (``https``, ``http``, ``all``) to the proxy URL requests of it go through."""
    no_proxy: str | None
    """Hosts reached directly (``NO_PROXY``)."""
    trust: str
    """The trust store: the system's, plus any ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``."""
    loopback_proxied: bool
    """Whether plain-HTTP requests to loopback go through the proxy: as in curl, requests
    and httpx, only ``NO_PROXY`` exempts ``127.0.0.1`` and ``localhost``, and a proxy
    elsewhere cannot reach this machine's loopback servers (and sees their tokens)."""


def settings() -> NetworkSettings:
    """The proxies and trust store in effect for this process."""
    found = urllib.request.getproxies()
    proxies = {
        scheme: without_password(found[scheme]) for scheme in PROXY_SCHEMES if found.get(scheme)
    }
    extra = [f"{name}={os.environ[name]}" for name in TRUST_ENV_VARS if os.environ.get(name)]
    trust = "the system's certificate store (truststore)"
    if extra:
        trust += " and " + ", ".join(extra)
    # httpx routes by NO_PROXY's entries: "*", or the host itself for an address or
    # "localhost" (no CIDR ranges), so that is what is asked here.
    direct = {entry.strip().lower() for entry in (found.get("no") or "").split(",")}
    plain = found.get("http") or found.get("all")
    loopback_proxied = (
        bool(plain) and "*" not in direct and not {"127.0.0.1", "localhost"} <= direct
    )
    return NetworkSettings(
        proxies=proxies,
        no_proxy=found.get("no") or None,
        trust=trust,
        loopback_proxied=loopback_proxied,
    )


def without_password(url: str) -> str:
    """``url`` with the password of its userinfo hidden: a proxy URL may carry one. One that
    does not parse is not shown at all."""
    try:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.password is None:
            return urlunsplit(parts)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        if parts.port is not None:
            host += f":{parts.port}"
    except ValueError:
        return "(not a URL)"
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def failure(exc: BaseException) -> str:
    """Why a request failed, for a message: the exception's type, and for the two failures
    a company network causes, what to do about them. Never a URL's password: neither
    reason quotes one."""
    name = type(exc).__name__
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ssl.SSLCertVerificationError):
            reason = cause.verify_message or "certificate verify failed"
            return (
                f"{name}: the server's TLS certificate is not trusted ({reason}); if a "
                "company CA signs it, add that CA to the system's trust store or name its "
                "file in SSL_CERT_FILE"
            )
        if type(cause).__name__ == "ProxyError":  # httpx's, httpx2's or httpcore's
            return f"{name}: the proxy refused the request ({str(cause)[:80]})"
        cause = cause.__cause__ or cause.__context__
    return name
