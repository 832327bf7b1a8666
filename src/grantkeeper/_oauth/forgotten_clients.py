"""Whether the authorization server still knows a kept client registration.

A server that restarted without its state forgets every client registered with it, and
its authorization endpoint then shows the person an error page instead of redirecting:
the login's listener would wait out its timeout. So a login asks first, in the order the
server allows: a pushed authorization request (RFC 9126: ``invalid_client`` for a client
it does not know), else a read of the registration (RFC 7592: 401 or 404). Where it allows
neither, the login finds out on the first failure: no redirect came back, and the
authorization endpoint, asked then, refuses the client (:func:`authorization_refused`).

An outage, or any answer that says nothing about the client, keeps the registration: it
never costs one. No request here follows a redirect (a token must not travel on).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

import httpx

from .._errors import ClientRegistrationInvalid, ProtocolError
from .auth_server_metadata import AuthServerMetadata
from .authorization import authorization_params, url_with
from .code_flow import push_authorization_request
from .pkce import new_verifier, s256_challenge
from .registration import ClientRegistration, parse_registration, read_verdict
from .urls import SENDING_FAILURES


@dataclass(frozen=True)
class Asked:
    """What the login will ask for: each check asks the same, so that an answer about the
    request is an answer about the client, not about a different request."""

    redirect_uri: str
    resource: str | None
    """``None`` for a login that sends no ``resource``: the checks do not either."""
    scope: str | None

    def params(self, registration: ClientRegistration) -> dict[str, str]:
        """The login's own request, with a state and challenge of its own (never used)."""
        return authorization_params(
            client_id=registration.client_id,
            redirect_uri=self.redirect_uri,
            state=secrets.token_urlsafe(24),
            code_challenge=s256_challenge(new_verifier()),
            resource=self.resource,
            scope=self.scope,
        )


@dataclass(frozen=True)
class Verdict:
    """What a check found: ``known`` is ``True``, ``False`` (forgotten) or ``None`` (no
    answer); ``registration`` is the client to keep, with a rotated read token if any."""

    known: bool | None
    registration: ClientRegistration
    asked: str = ""
    """How the answer came: ``"pushed"`` or ``"read"``; empty when none came."""


def check_client(
    http: httpx.Client, metadata: AuthServerMetadata, registration: ClientRegistration, asked: Asked
) -> Verdict:
    """Ask the server whether it knows ``registration``, before a browser opens."""
    if metadata.pushed_authorization_request_endpoint:
        known = _pushed(http, metadata.pushed_authorization_request_endpoint, registration, asked)
        if known is not None:
            return Verdict(known, registration, "pushed")
    return read_registration(http, registration)


def _pushed(
    http: httpx.Client, endpoint: str, registration: ClientRegistration, asked: Asked
) -> bool | None:
    """A pushed request made only to hear the answer; its reference is never used and
    expires at the server."""
    try:
        push_authorization_request(http, endpoint, asked.params(registration), registration)
    except ClientRegistrationInvalid:
        return False
    except ProtocolError:
        return None  # no answer, or a refusal for another reason: nothing said of the client
    return True


def read_registration(http: httpx.Client, registration: ClientRegistration) -> Verdict:
    """The RFC 7592 §2.1 read. A server may rotate the registration access token on a read
    (RFC 7592 §3): the new one is what the next read needs, so it comes back to be kept."""
    uri, token = registration.registration_client_uri, registration.registration_access_token
    if not uri or not token:
        return Verdict(None, registration)
    try:
        response = http.get(
            uri, headers={"Authorization": f"Bearer {token}"}, follow_redirects=False
        )
    except SENDING_FAILURES:
        return Verdict(None, registration)
    known = read_verdict(response.status_code)
    asked = "read" if known is not None else ""
    if known is not True:
        return Verdict(known, registration, asked)
    try:
        read = parse_registration(200, response.content)
    except ProtocolError:
        return Verdict(True, registration, asked)  # it knows the client; nothing more said
    if read.client_id != registration.client_id or not read.registration_access_token:
        return Verdict(True, registration, asked)
    moved_to = read.registration_client_uri or uri
    if urlsplit(moved_to)[:2] != urlsplit(uri)[:2]:
        moved_to = uri  # the token goes nowhere but the server that issued it
    rotated = replace(
        registration,
        registration_client_uri=moved_to,
        registration_access_token=read.registration_access_token,
    )
    return Verdict(True, rotated, asked)


def authorization_refused(
    http: httpx.Client, metadata: AuthServerMetadata, registration: ClientRegistration, asked: Asked
) -> bool:
    """Whether the authorization endpoint refuses ``registration`` outright (400), asked
    after a login with it saw no redirect. A server that forgot a client cannot redirect to
    it, so it shows the person an error page; one that knows it answers with a page or a
    redirect. Only then, never before a browser opens: the request is a login's first step
    at the server, with state of its own there. No redirect is followed."""
    url = url_with(metadata.authorization_endpoint, asked.params(registration))
    try:
        response = http.get(url, follow_redirects=False)
    except SENDING_FAILURES:
        return False
    return response.status_code == 400
