"""The one way grantkeeper writes the command a person must run to log in.

The CLI's errors, ``status``'s action column and the proxy's JSON-RPC errors all print it,
so all of them name the server as the user did and keep the profile: a hint without
``--profile`` would log in to the default credential, not the one that needs it.
"""

from __future__ import annotations

import shlex


def login_command(
    server: str, profile: str | None = None, *, scope: str | None = None, with_token: bool = False
) -> str:
    """``grantkeeper login SERVER [--profile P] [--scope S] [--with-token]``, shell-quoted.

    ``scope``: what a server said the token lacks. ``with_token``: a static token to replace
    (a browser login would not help)."""
    words = ["grantkeeper", "login", server]
    if profile:
        words += ["--profile", profile]
    if scope:
        words += ["--scope", scope]
    if with_token:
        words.append("--with-token")
    return shlex.join(words)
