"""A fake browser for tests of ``grantkeeper proxy``, run as ``python -m harness.fake_browser URL``
from a one-line script that ``$BROWSER`` names (``webbrowser`` takes a program, not a command line).

``webbrowser.open(url)`` runs it with the authorization URL. It prints to stdout what real
browsers print (so a test sees whether the protocol stream got it), appends one line to
``$FAKE_BROWSER_LOG`` (the opener's pid and the URL: the count of browser windows), then
plays the user with :func:`harness.authserver.play_browser` and follows the redirect to the
opener's loopback listener.

With ``$FAKE_BROWSER_PORT`` set it first reports to a test listening on that loopback port
and does what the test answers: ``approve``, or ``hang`` (wait until the test closes the
connection; the test kills the opener meanwhile).
"""

from __future__ import annotations

import json
import os
import socket
import sys

import httpx

from harness.authserver import play_browser


def main(url: str) -> int:
    print("Opening in existing browser session.", flush=True)
    log = os.environ.get("FAKE_BROWSER_LOG")
    if log:
        line = json.dumps({"opener": os.getppid(), "url": url}) + "\n"
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line.encode())  # one write with O_APPEND: lines never interleave
        finally:
            os.close(fd)
    port = os.environ.get("FAKE_BROWSER_PORT")
    if port:
        with socket.create_connection(("127.0.0.1", int(port)), timeout=60) as conn:
            conn.sendall(f"{os.getppid()}\n".encode())
            command = conn.makefile("r").readline().strip()
        if command != "approve":
            return 0  # "hang" ended: the test closed the connection
    callback = play_browser(url)
    response = httpx.get(callback, trust_env=False, timeout=10.0)
    return 0 if response.status_code == 200 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
