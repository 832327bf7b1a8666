"""A process that asks a Keeper once in the stale window, then ends without ``close()``.

Run by ``tests/test_process_exits.py`` as ``python -m tests.exit_worker MODE HOME DISK URL
PROFILE``. The Keeper serves the still-valid token at once and refreshes in the background;
with DISK set, that tmpfs fills while the provider answers, so B cannot be stored. Then the
process ends one of four ways (MODE): a plain script returning from ``main``, or a
``multiprocessing`` worker of the ``spawn``, ``fork`` or ``forkserver`` kind returning from
its target (fork and forkserver workers end in ``os._exit``, after multiprocessing's own
finalizers only). Prints ``served <sha256 of the token>``, never a token.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import multiprocessing.process
import sys
from pathlib import Path
from typing import Any

WAIT = 120.0
"""Upper bound on the worker: a hung one fails the test, never hangs it."""


def ask_once(home: str, disk: str, url: str, profile: str) -> None:
    """The worker's body: one question, in a local Keeper that is simply dropped."""
    import grantkeeper._keeper as keeper_module
    from grantkeeper import CredentialKey, FileStore, Keeper
    from grantkeeper._oauth.token_client import send_token_request as sent
    from tests.tiny_disk import fill

    if disk:

        def send_then_fill(*args: Any, **kwargs: Any) -> Any:
            answer = sent(*args, **kwargs)
            fill(Path(disk))  # the disk fills while the provider answers
            return answer

        vars(keeper_module)["send_token_request"] = send_then_fill
    keeper = Keeper(FileStore(home), CredentialKey.for_server(url, profile or None))
    served = keeper.credential().access_token
    print("served", hashlib.sha256(served.encode()).hexdigest(), flush=True)


def main(argv: list[str]) -> int:
    mode, home, disk, url, profile = argv
    if mode == "script":
        ask_once(home, disk, url, profile)
        return 0
    context: Any = multiprocessing.get_context(mode)
    worker: multiprocessing.process.BaseProcess = context.Process(
        target=ask_once, args=(home, disk, url, profile), daemon=True
    )
    worker.start()
    worker.join(WAIT)
    if worker.exitcode is None:
        worker.kill()
        worker.join(WAIT)
        return 3
    return worker.exitcode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
