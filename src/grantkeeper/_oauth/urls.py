"""URL rules shared by discovery, registration and login."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

import httpx

from .._errors import ProtocolError

SENDING_FAILURES: tuple[type[Exception], ...] = (httpx.HTTPError, httpx.InvalidURL, ValueError)
"""What sending to a URL a server named can raise instead of an answer: an HTTP failure,
or a URL httpx cannot send (``ValueError``: an IDNA error, say)."""


def is_loopback(url: str) -> bool:
    """Whether ``url`` points at this machine (127.0.0.0/8, ::1 or localhost)."""
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_secure(url: object, what: str) -> str:
    """Return ``url`` if it is an absolute HTTPS URL, or HTTP on loopback; else raise."""
    if not isinstance(url, str) or not url:
        raise ProtocolError(f"{what} is missing")
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        raise ProtocolError(f"{what} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ProtocolError(f"{what} is not an absolute http(s) URL")
    if parts.scheme != "https" and not is_loopback(url):
        raise ProtocolError(f"{what} must use HTTPS off loopback: {url}")
    if parts.fragment:
        raise ProtocolError(f"{what} must not have a fragment")
    return url
