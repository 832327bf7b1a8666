"""Dynamic client registrations kept per issuer and redirect URI, for later logins to reuse.

Without this every login attempt registered a new client, and an authorization server
counted one per attempt (timed-out ones included). Only public clients are kept (what
grantkeeper registers: no secret), in ``.registrations`` beside the credential files, with
the file store's checks; a dot file, as ``.placements`` is, so that nothing that lists the
credential files takes it for one. Losing the file costs one registration, nothing more.

A registration is bound to the issuer that made it: it is only ever found for that issuer,
so a client ID never reaches another authorization server (SEP-2352). Where the server
handed out an RFC 7592 management URI, that and its registration access token are kept
too: the token reaches that one registration, nothing of a user's, and lets a later login
ask whether the server still knows the client before a browser opens. The issuer each
configured (pre-registered) client was used at is kept here too, per server, for the same
binding.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from urllib.parse import urlsplit

from .._errors import StoreError
from .._observe.log import event
from .._stores._fs import Document, SideFile
from .._stores.file import FileStore
from .registration import ClientRegistration
from .urls import is_loopback

REGISTRATIONS_FILE = ".registrations"
FORMAT = "grantkeeper-registrations"

MAX_PER_ISSUER = 16
"""Redirect URIs kept per issuer; the oldest go first (each was one taken loopback port)."""


class KeptRegistrations:
    """The registrations kept under ``home`` (default: ``GRANTKEEPER_HOME``)."""

    def __init__(self, home: str | os.PathLike[str] | None = None) -> None:
        self._file = SideFile(FileStore(home).directory, REGISTRATIONS_FILE, FORMAT)

    def _issuer(self, document: Document, issuer: str) -> dict[str, dict[str, str]]:
        kept = document.get("registrations")
        entries = kept.get(issuer) if isinstance(kept, dict) else None
        return entries if isinstance(entries, dict) else {}

    def _load(self) -> Document:
        try:
            return self._file.load()
        except StoreError as exc:
            event(logging.WARNING, "registrations.unreadable", error=type(exc).__name__)
            return {}

    def find(self, issuer: str, redirect_uri: str) -> ClientRegistration | None:
        """The client registered at ``issuer`` for ``redirect_uri``, if one is kept."""
        entry = self._issuer(self._load(), issuer).get(redirect_uri)
        if not isinstance(entry, dict) or not isinstance(entry.get("client_id"), str):
            return None
        method = entry.get("token_endpoint_auth_method")
        uri, token = entry.get("registration_client_uri"), entry.get("registration_access_token")
        readable = isinstance(uri, str) and isinstance(token, str)
        return ClientRegistration(
            entry["client_id"],
            None,
            method if isinstance(method, str) else None,
            registration_client_uri=uri if readable else None,
            registration_access_token=token if readable else None,
        )

    def ports(self, issuer: str, *, host: str | None = None) -> list[int]:
        """Loopback ports of the redirect URIs kept for ``issuer``, newest first; with
        ``host``, only of those naming it (``localhost`` and ``127.0.0.1`` redirect URIs
        are different registrations)."""
        found = []
        for uri in reversed(list(self._issuer(self._load(), issuer))):
            if is_loopback(uri) and (host is None or urlsplit(uri).hostname == host):
                port = urlsplit(uri).port
                if port:
                    found.append(port)
        return found

    def keep(self, issuer: str, redirect_uri: str, registration: ClientRegistration) -> None:
        """Remember a public client; one with a secret is not kept. Never fails a login."""
        if registration.client_secret:
            return
        entry = {"client_id": registration.client_id}
        if registration.token_endpoint_auth_method:
            entry["token_endpoint_auth_method"] = registration.token_endpoint_auth_method
        uri, token = registration.registration_client_uri, registration.registration_access_token
        if uri and token:
            entry["registration_client_uri"] = uri
            entry["registration_access_token"] = token

        def change(document: Document) -> Document:
            kept = document.get("registrations")
            kept = kept if isinstance(kept, dict) else {}
            entries = {k: v for k, v in self._issuer(document, issuer).items() if k != redirect_uri}
            entries[redirect_uri] = entry
            kept[issuer] = dict(list(entries.items())[-MAX_PER_ISSUER:])
            document["registrations"] = kept
            return document

        self._change(change, "keep")

    def forget(self, issuer: str, redirect_uri: str) -> None:
        """Drop the registration the server no longer knows."""

        def change(document: Document) -> Document | None:
            entries = self._issuer(document, issuer)
            if redirect_uri not in entries:
                return None
            del entries[redirect_uri]
            return document

        self._change(change, "forget")

    def bound(self, key: str, client_id: str) -> str | None:
        """The issuer a configured client of the server ``key`` was last used at."""
        bindings = self._load().get("bindings")
        entries = bindings.get(key) if isinstance(bindings, dict) else None
        issuer = entries.get(client_id) if isinstance(entries, dict) else None
        return issuer if isinstance(issuer, str) else None

    def bind(self, key: str, client_id: str, issuer: str) -> None:
        """Remember that ``client_id`` (configured for the server ``key``) belongs to
        ``issuer``: after a move it is then never presented to another one (SEP-2352), even
        once the credential stored with it is gone."""
        if self.bound(key, client_id) == issuer:
            return

        def change(document: Document) -> Document:
            bindings = document.get("bindings")
            bindings = bindings if isinstance(bindings, dict) else {}
            entries = bindings.get(key)
            entries = entries if isinstance(entries, dict) else {}
            entries[client_id] = issuer
            bindings[key] = entries
            document["bindings"] = bindings
            return document

        self._change(change, "bind")

    def _change(self, change: Callable[[Document], Document | None], what: str) -> None:
        try:
            self._file.update(change)
        except StoreError as exc:
            event(logging.WARNING, f"registrations.{what}_failed", error=type(exc).__name__)
