"""A short-lived process on a full disk never takes the provider's answer with it.

The adversarial run that broke the promise: the store on a 64 KiB tmpfs, full while
``grantkeeper token`` refreshes. The CLI printed B and exited 0 after
``refresh.persist_failed``, the note stayed ``in_flight`` under a dead pid, and once space
was freed the next call retried A: the authorization server saw a replay and revoked the
grant. Here, against the real oidc-provider and a real tmpfs, B survives the exit (a rescue
copy on another file system) and the next process adopts it: 0 replays, no new login.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from grantkeeper import CredentialKey, FileStore
from harness.authserver import AuthServer
from harness.real_login import age, log_in
from tests.tiny_disk import environment, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.realserver]

RESOURCE = "http://127.0.0.1:9/mcp"


_FILL_AFTER_THE_ANSWER = """
import pathlib
import sys
import grantkeeper._keeper as keeper_module
from grantkeeper._cli import main
from tests.tiny_disk import fill

disk = pathlib.Path(sys.argv.pop(1))
sent = keeper_module.send_token_request

def send_then_fill(*args, **kwargs):
    answer = sent(*args, **kwargs)
    fill(disk)  # the disk fills while the provider answers
    return answer

keeper_module.send_token_request = send_then_fill
sys.argv[0] = "grantkeeper"
main()
"""


def _cli(
    home: Path, rescue: Path, key: CredentialKey, *args: str, fill: bool = False
) -> subprocess.CompletedProcess[str]:
    if not fill:
        return run_cli(home, rescue, key, *args)
    command = [sys.executable, "-c", _FILL_AFTER_THE_ANSWER, str(home), *args, key.server_url]
    if key.profile:
        command += ["--profile", key.profile]
    return subprocess.run(
        command, capture_output=True, text=True, env=environment(home, rescue), timeout=120
    )


def test_a_cli_on_a_full_disk_keeps_b_across_its_exit_and_the_next_one_adopts_it(
    tiny_disk: Path, tmp_path: Path
) -> None:
    with AuthServer(resources=[RESOURCE], access_ttl=60) as server:
        key = CredentialKey.for_server(RESOURCE, f"t{uuid.uuid4().hex[:8]}")
        store = FileStore(tiny_disk)
        a = log_in(server, store, key, resource=RESOURCE)
        age(store, key, expires_in=-timedelta(hours=1))  # expired: refresh first
        server.reset_stats()
        rescue = tmp_path / "rescue"
        first = _cli(tiny_disk, rescue, key, "token", fill=True)
        assert first.returncode == 0, first.stderr
        b = first.stdout.strip()
        assert b and b != a.access_token
        assert server.stats()["refresh_success"] == 1
        assert list(rescue.glob("*.json")), "B left with the process"

        assert store.read(key).record.access_token != b  # type: ignore[union-attr]
        (tiny_disk / "ballast").unlink()  # space is freed
        second = _cli(tiny_disk, rescue, key, "token")
        assert second.returncode == 0, second.stderr
        assert second.stdout.strip() == b  # adopted, not refreshed again
        stats = server.stats()
        assert stats["replays"] == 0 and stats["refresh_success"] == 1
        assert not stats["refresh_errors"]
        assert server.is_active(b)
        after = store.read(key)
        assert after is not None and after.record.access_token == b
        assert not list(rescue.glob("*.json"))
