"""The suite's own guards: signals reach only our children, fills only a tiny tmpfs.

These refuse before anything is sent or written; the one signal sent for real goes to a child
this test started in its own session.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.synchronize
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import NotOurChild, assert_small_tmpfs, check_own_child, reap, signal_own_child

WAIT = 30.0
"""Bounds every wait here: a broken guard fails the test, never hangs it."""

_BLOCK = "import sys; print('ready', flush=True); sys.stdin.read()"
"""A child that says it started, then waits for its stdin to close."""


@contextlib.contextmanager
def _blocking_child(*, own_session: bool) -> Iterator[subprocess.Popen[str]]:
    child = subprocess.Popen(
        [sys.executable, "-c", _BLOCK],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=own_session,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline() == "ready\n"  # the barrier: it runs
        yield child
    finally:
        child.stdin.close()  # ends it without a signal, unless it is stopped
        try:
            child.wait(WAIT)
        except subprocess.TimeoutExpired:
            reap(child)
        finally:
            child.stdout.close()


@pytest.fixture
def child_in_our_session() -> Iterator[subprocess.Popen[str]]:
    with _blocking_child(own_session=False) as child:
        yield child


@pytest.mark.parametrize("pid", [-1, 0, 1])
def test_init_and_groups_are_refused(pid: int) -> None:
    with pytest.raises(NotOurChild, match="refusing"):
        signal_own_child(pid, 0)


def test_this_process_and_its_parent_are_refused() -> None:
    for pid in (os.getpid(), os.getppid()):
        with pytest.raises(NotOurChild, match="refusing"):
            signal_own_child(pid, signal.SIGKILL)
        with pytest.raises(NotOurChild, match="refusing"):
            signal_own_child(pid, signal.SIGKILL, group=True)


def test_a_child_in_our_session_is_refused(
    child_in_our_session: subprocess.Popen[str],
) -> None:
    with pytest.raises(NotOurChild, match="does not lead its own session"):
        signal_own_child(child_in_our_session.pid, signal.SIGKILL, group=True)
    assert child_in_our_session.poll() is None  # nothing was sent


_FORK_GRANDCHILD = (
    "import subprocess, sys\n"
    "grandchild = subprocess.Popen([sys.executable, '-c', 'import sys; sys.stdin.read()'],"
    " stdin=subprocess.PIPE, start_new_session=True)\n"
    "print(grandchild.pid, flush=True)\n"
    "sys.stdin.read()\n"
)
"""A child that starts a grandchild in its own session and prints its pid; both end when
the child's stdin closes (the grandchild's stdin is a pipe only the child holds)."""


def test_a_grandchild_is_refused_unless_named_through_its_parent() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _FORK_GRANDCHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        grandchild = int(child.stdout.readline())
        with pytest.raises(NotOurChild, match=f"its parent is {child.pid}"):
            signal_own_child(grandchild, signal.SIGKILL)
        check_own_child(grandchild, parent=child.pid)  # the forkserver form: allowed
        with pytest.raises(NotOurChild, match="is not our child"):
            check_own_child(grandchild, parent=os.getppid())
    finally:
        child.stdin.close()
        child.wait(WAIT)
        child.stdout.close()


def test_a_stopped_child_in_its_own_session_is_reaped() -> None:
    with _blocking_child(own_session=True) as child:
        try:
            check_own_child(child.pid)  # ours, leading its session: allowed
            signal_own_child(child.pid, signal.SIGSTOP)
            # The barrier: the kernel reports it stopped (WUNTRACED reaps nothing).
            _, status = os.waitpid(child.pid, os.WUNTRACED)
            assert os.WIFSTOPPED(status)
        finally:
            reap(child, timeout=WAIT)
        assert child.returncode == -signal.SIGKILL
        assert not Path(f"/proc/{child.pid}").exists() or _parent(child.pid) != os.getpid()


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    return int(stat[stat.rindex(b")") + 2 :].split()[1])


def _stop_self(
    ready: multiprocessing.synchronize.Event, never: multiprocessing.synchronize.Event
) -> None:
    os.setsid()
    ready.set()
    os.kill(os.getpid(), signal.SIGSTOP)  # itself only
    never.wait(WAIT)  # after SIGCONT it still waits: only SIGKILL ends it


def test_a_stopped_multiprocessing_child_is_reaped() -> None:
    context = multiprocessing.get_context("spawn")
    ready, never = context.Event(), context.Event()
    process = context.Process(target=_stop_self, args=(ready, never), daemon=True)
    process.start()
    try:
        assert ready.wait(WAIT)
        assert process.pid is not None
        _, status = os.waitpid(process.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status)
    finally:
        reap(process, timeout=WAIT)
    assert process.exitcode == -signal.SIGKILL


def test_a_finished_child_is_left_alone() -> None:
    with _blocking_child(own_session=True) as child:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(WAIT)
        reap(child, timeout=WAIT)  # already reaped: nothing is signalled, nothing raised
        assert child.returncode == 0


@pytest.mark.parametrize("path", ["/", "/dev/shm", "/proc"])
def test_large_or_other_file_systems_are_refused(path: str) -> None:
    if not os.path.ismount(path):
        pytest.skip(f"{path} is not a mount point here")
    with pytest.raises(AssertionError, match="refusing to fill"):
        assert_small_tmpfs(Path(path))
    with pytest.raises(AssertionError, match="refusing to fill"):
        assert_small_tmpfs(Path(path), Path(path) / "ballast")


def test_a_directory_that_is_not_a_mount_point_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="not a mount point"):
        assert_small_tmpfs(tmp_path, tmp_path / "ballast")
    assert list(tmp_path.iterdir()) == []  # it only looked


def test_a_small_tmpfs_is_accepted_and_a_target_off_it_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True)
    try:
        assert assert_small_tmpfs(mount, mount / "ballast") == 64 * 1024
        with pytest.raises(AssertionError, match="not under"):
            assert_small_tmpfs(mount, tmp_path / "ballast")
        with pytest.raises(AssertionError, match="refusing to fill"):
            assert_small_tmpfs(mount, max_bytes=32 * 1024)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
