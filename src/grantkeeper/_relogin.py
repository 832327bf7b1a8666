"""A recovery hook that asks a person to log in again, for :class:`~grantkeeper.Keeper`.

The Keeper calls it once when only a person can help: nothing is stored, the grant is dead,
the client registration is gone, or the server needs a scope the credential lacks. For the
last, the Keeper asks for the union of the held and required scopes (a step-up), so the new
token keeps everything the old one could do. Each recovery discovers afresh: a server that
moved to another authorization server (SEP-2352) names it in its metadata, and the login
goes there, with a client registered there, rather than back to the issuer that no longer
serves it. The client registration is kept by the login itself (per issuer and redirect
URI), so a step-up re-authorizes the same client.
"""

from __future__ import annotations

import threading
from typing import Any

from ._errors import AuthenticationRequired, InsufficientScope
from ._keeper import Recovery
from ._login import login
from ._oauth.discovery import discover
from ._record import Credential
from ._servers import ServerConfig, resolve_server
from ._stores.base import Store


def login_recovery(
    server: str | ServerConfig, *, store: Store | None = None, **login_options: Any
) -> Recovery:
    """A recovery hook for ``Keeper(recover=...)`` that runs :func:`grantkeeper.login`.

    ``login_options`` are :func:`~grantkeeper.login`'s (``authorize`` and ``redirect_uri``
    for an application that presents the authorization URL itself, ``open_browser``,
    ``scope``, ``client_id``...). Without them a browser opens on the loopback listener.
    A ``discovery`` given here serves the first recovery only (it was found moments ago);
    later ones discover again, so they follow the server to a new authorization server.
    """
    config = server if isinstance(server, ServerConfig) else resolve_server(server)
    given = [login_options.pop("discovery", None)]
    lock = threading.Lock()
    given_scope = login_options.pop("scope", None)

    def recover(need: AuthenticationRequired) -> Credential:
        scope = need.scope if isinstance(need, InsufficientScope) and need.scope else given_scope
        with lock:
            found = given.pop() if given else None
            if found is None:
                found = discover(config.url, http=login_options.get("http"))
            return login(config, store=store, scope=scope, discovery=found, **login_options)

    return recover
