"""SIGTERM and SIGHUP end our commands as SIGINT does: a refresh that was sent finishes.

Against the real oidc-provider with reuse detection on. ``grantkeeper token`` gets the
signal while its refresh is inside the provider call (the server has rotated; its answer
is on the way): it says "cancelled", exits with 128 + the signal's number (130 for
SIGINT), and B is stored before it exits, so the next call is served B and nothing is
replayed. Before, SIGTERM killed it at once and the next call replayed A. The proxy, idle
with its host's stdin still open, ends its session and exits 0 on SIGTERM or SIGHUP,
where it used to abort at interpreter shutdown ("Fatal Python error").

The children run in their own session and are signalled only through the guard in
``harness.children``.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import uuid
from datetime import timedelta
from pathlib import Path
from typing import IO

import pytest

from grantkeeper import CredentialKey, FileStore
from harness.authserver import AuthServer
from harness.mcp_demo import login
from harness.mcp_server import INITIALIZE, McpServer
from harness.real_login import age, log_in
from tests.helpers import ROOT, reap, signal_own_child
from tests.tiny_disk import cli_command, environment, run_cli, start_cli

pytestmark = pytest.mark.realserver

RESOURCE = "http://127.0.0.1:9/mcp"
WAIT = 60.0

_HOLD_THE_ANSWER = """
import os
import signal
import sys
import grantkeeper._keeper as keeper_module
from grantkeeper._cli import main
from grantkeeper._oauth.token_client import send_token_request as sent

hold = int(sys.argv.pop(1))

def send_and_hold(*args, **kwargs):
    answer = sent(*args, **kwargs)
    os.write(2, b"answered\\n")  # the server has rotated; the answer is on its way
    os.read(hold, 1)  # until the test has seen the signal handled
    return answer

def marked(handler):
    def handle(signum, frame):
        os.write(2, b"signalled\\n")  # the main thread runs the handler now
        return handler(signum, frame)
    return handle

vars(keeper_module)["send_token_request"] = send_and_hold
signal.signal(signal.SIGINT, marked(signal.default_int_handler))
try:
    import grantkeeper._signals as signals_module
except ImportError:  # a grantkeeper without the handlers: SIGTERM kills at once
    pass
else:
    vars(signals_module)["_stop"] = marked(signals_module._stop)
sys.argv[0] = "grantkeeper"
main()
"""


def _lines(stream: IO[str]) -> queue.Queue[str | None]:
    """The lines of ``stream`` as they come, ``None`` at its end (read on a thread, so a
    wait for one is bounded)."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _wait_for(lines: queue.Queue[str | None], text: str, seen: list[str]) -> bool:
    """Read ``lines`` into ``seen`` until one contains ``text``; ``False`` at their end."""
    while True:
        line = lines.get(timeout=WAIT)
        if line is None:
            return False
        seen.append(line)
        if text in line:
            return True


AUTH_SERVER = {"resources": [RESOURCE], "access_ttl": 3600}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_during_the_cli_refresh_lets_it_finish_and_exits_cleanly(
    auth_server: AuthServer, tmp_path: Path, signum: signal.Signals
) -> None:
    home, rescue = tmp_path / "home", tmp_path / "rescue"
    key = CredentialKey.for_server(RESOURCE, f"t{uuid.uuid4().hex[:8]}")
    store = FileStore(home)
    a = log_in(auth_server, store, key, resource=RESOURCE)
    age(store, key, expires_in=-timedelta(hours=1))  # expired: refresh first
    auth_server.reset_stats()

    hold, release = os.pipe()
    command = cli_command(key, "token", run=["-c", _HOLD_THE_ANSWER, str(hold)])
    child = start_cli(
        home,
        rescue,
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        pass_fds=[hold],
    )
    os.close(hold)
    seen: list[str] = []
    try:
        assert child.stderr is not None and child.stdout is not None
        errors = _lines(child.stderr)
        assert _wait_for(errors, "answered", seen), "".join(seen)
        signal_own_child(child.pid, signum)
        # Its main thread handles the signal before the answer is let through.
        handled = _wait_for(errors, "signalled", seen)
        os.close(release)
        release = -1
        printed = child.stdout.read()
        child.wait(WAIT)
        # The rest of stderr (its end was read already if the signal killed it).
        while handled and (line := errors.get(timeout=WAIT)) is not None:
            seen.append(line)
    finally:
        if release >= 0:
            os.close(release)
        reap(child)
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                stream.close()
    stderr = "".join(seen)
    assert handled, f"exit {child.returncode}: {stderr}"
    assert child.returncode == (130 if signum == signal.SIGINT else 128 + signum), stderr
    assert "error: cancelled" in stderr
    assert printed == ""  # cancelled: no token printed
    assert "Traceback" not in stderr and "Fatal Python error" not in stderr
    # The answer was stored before the process exited.
    after = store.read(key)
    assert after is not None and after.record.intent is None
    b = after.record.access_token
    assert b != a.access_token
    assert auth_server.stats()["refresh_success"] == 1

    following = run_cli(home, rescue, key, "token")
    assert following.returncode == 0, following.stderr
    assert following.stdout.strip() == b
    stats = auth_server.stats()
    assert stats["replays"] == 0, stats
    assert stats["refresh_success"] == 1, stats
    assert not stats["refresh_errors"], stats
    assert auth_server.is_active(b)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_the_proxy_ends_its_session_and_exits_cleanly_on_a_signal(
    tmp_path: Path, signum: signal.Signals
) -> None:
    home = tmp_path / "home"
    with AuthServer(access_ttl=3600) as auth, McpServer(auth_server=auth) as mcp:
        login(auth, mcp.url, FileStore(home))
        errlog = tmp_path / "proxy.err"
        with errlog.open("w") as stderr:
            proxy = subprocess.Popen(
                [sys.executable, "-m", "grantkeeper", "proxy", mcp.url, "--ping-interval", "0"],
                env=environment(home, tmp_path / "rescue"),
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                start_new_session=True,
            )
        try:
            assert proxy.stdin is not None and proxy.stdout is not None
            proxy.stdin.write((json.dumps(INITIALIZE) + "\n").encode())
            proxy.stdin.flush()
            answer = json.loads(proxy.stdout.readline())
            assert answer["id"] == 1 and "result" in answer, answer
            # Idle, its host's stdin still open: the host stops it.
            signal_own_child(proxy.pid, signum)
            proxy.wait(WAIT)
        finally:
            reap(proxy)
            if proxy.stdin is not None:
                proxy.stdin.close()
            if proxy.stdout is not None:
                proxy.stdout.close()
        log = errlog.read_text()
        assert proxy.returncode == 0, log
        assert "Fatal Python error" not in log and "Traceback" not in log, log
        seen = mcp.wait_for(lambda seen: any(s.method == "DELETE" for s in seen))
        assert any(s.method == "DELETE" for s in seen)  # the session ended cleanly
