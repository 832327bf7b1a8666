"""scripts/bounded: the bound scripts/test runs the suite in, so a runaway cannot take the machine.

Each test runs a small runaway under a small limit and checks that the run was stopped, that it
said which limit in one line, and that nothing it started lives on. They need root and a
memory cgroup, as CI has; the last one shows the warning a contributor without them gets.

The memory runaway allocates anonymous memory. The bound counts tmpfs pages the same way (a
cgroup charges them to the writer's memory cgroup), but the suite never writes /dev/shm: a fill
that escaped would take the very memory the machine lives on.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BOUNDED = ROOT / "scripts" / "bounded"
SYSTEM_PYTHON = "/usr/bin/python3"  # readable by any user, unlike a pyenv or root-owned .venv


def _can_bound() -> bool:
    """Whether this machine lets scripts/bounded make its cgroup (root, a memory controller):
    where it cannot, it runs unbounded with its one warning, which the last test covers. Only
    that warning skips the limit tests: a bounded that fails in any other way fails them."""
    if os.geteuid() != 0:
        return False
    probe = subprocess.run(
        [sys.executable, str(BOUNDED), "--time", "60", "--", "true"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return not (probe.returncode == 0 and "bounded: warning: no cgroup" in probe.stderr)


needs_cgroups = pytest.mark.skipif(
    not _can_bound(), reason="no cgroup to bound a run in here (not root, or no memory controller)"
)


def _bounded(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRANTKEEPER_TEST_")}
    return subprocess.run(
        [sys.executable, str(BOUNDED), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        start_new_session=True,
    )


def _killed_at_a_limit(option: str, limit: str, code: str) -> subprocess.CompletedProcess[str]:
    """Run the Python ``code`` under ``bounded option limit``, and check that a limit killed
    it (exit status 137)."""
    run = _bounded(option, limit, "--", sys.executable, "-c", code)
    assert run.returncode == 137, run.stderr
    return run


def _our_cgroups() -> set[str]:
    found: set[str] = set()
    for base in Path("/sys/fs/cgroup").glob("*/**/grantkeeper-test-*"):
        found.add(str(base))
    return found


def _gone(pid: int) -> bool:
    """The process no longer exists, or is a zombie waiting for init to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


@needs_cgroups
def test_a_memory_runaway_is_killed_and_the_run_says_the_limit() -> None:
    before = _our_cgroups()
    # 1 GiB at most even if the bound failed: the machine survives the test's own failure.
    leak = (
        "chunks = []\n"
        "for _ in range(1024):\n"
        "    chunks.append(b'x' * (1 << 20))\n"
        "print('wrote 1 GiB and was never stopped')\n"
    )
    run = _killed_at_a_limit("--mem", "64M", leak)
    assert "never stopped" not in run.stdout
    lines = [line for line in run.stderr.splitlines() if line.startswith("bounded:")]
    assert lines == [
        "bounded: the run reached its memory limit of 64 MiB"
        " (GRANTKEEPER_TEST_MEM; tmpfs and /dev/shm writes count) and was killed"
    ]
    assert _our_cgroups() == before  # its cgroup is removed again


@needs_cgroups
def test_a_fork_runaway_is_stopped_at_the_process_limit() -> None:
    # Children block on a pipe nobody writes, so they pile up; 64 at most whatever happens.
    forks = (
        "import os\n"
        "r, w = os.pipe()\n"
        "for i in range(64):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError:\n"
        "        print('refused at', i, flush=True)\n"
        "        break\n"
        "    if pid == 0:\n"
        "        os.read(r, 1)\n"
        "        os._exit(0)\n"
        "os.read(r, 1)\n"
    )
    run = _killed_at_a_limit("--pids", "16", forks)
    assert "refused at" in run.stdout  # the 16th process could not be made
    assert "bounded: the run reached its process limit of 16 (GRANTKEEPER_TEST_PIDS)" in run.stderr


@needs_cgroups
def test_a_run_past_its_time_is_killed() -> None:
    # Waits for a signal that never comes: only the time limit can end it.
    run = _bounded("--time", "2", "--", sys.executable, "-c", "import signal; signal.pause()")
    assert run.returncode == 124, run.stderr
    assert "ran past its time limit of 2 s (GRANTKEEPER_TEST_TIME)" in run.stderr


@needs_cgroups
def test_what_the_run_leaves_behind_is_killed(tmp_path: Path) -> None:
    """A daemon in a session of its own and a stopped child outlive the command; not the bound."""
    marker = f"gk-bounded-test-{uuid.uuid4().hex}"
    pids_file = tmp_path / "pids"
    leaver = (
        "import os, signal, subprocess, sys\n"
        "idle = [sys.executable, '-c', 'import signal; signal.pause()', sys.argv[1]]\n"
        "daemon = subprocess.Popen(idle, start_new_session=True)\n"
        "stopped = subprocess.Popen(idle, start_new_session=True)\n"
        "os.kill(stopped.pid, signal.SIGSTOP)\n"
        "open(sys.argv[2], 'w').write(f'{daemon.pid} {stopped.pid}')\n"
        "os._exit(0)  # no wait: both are left behind\n"
    )
    left: list[int] = []
    try:
        run = _bounded("--", sys.executable, "-c", leaver, marker, str(pids_file))
        left = [int(p) for p in pids_file.read_text().split()]
        assert run.returncode == 0, run.stderr
        assert "bounded: killed 2 process(es) the run left behind" in run.stderr
        deadline = time.monotonic() + 60
        while not all(_gone(pid) for pid in left) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(_gone(pid) for pid in left)
    finally:
        for pid in left:  # only if the bound failed: still ours by the marker in its cmdline
            try:
                if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, 18)  # SIGCONT
                    os.kill(pid, 9)  # SIGKILL
            except OSError:
                pass


def test_without_root_it_warns_once_and_runs_unbounded() -> None:
    if os.geteuid() != 0:  # a contributor's own account: the real case, no setpriv needed
        command = [SYSTEM_PYTHON, str(BOUNDED), "--time", "60", "--", "true"]
    else:
        command = [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            SYSTEM_PYTHON,
            str(BOUNDED),
            "--time",
            "60",
            "--",
            "true",
        ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd="/")
    assert run.returncode == 0, run.stderr
    warnings = [line for line in run.stderr.splitlines() if "warning" in line]
    assert warnings == [
        "bounded: warning: no cgroup for the run (not root): it runs with no memory or"
        " process limit, only the 60 s time limit"
    ]
