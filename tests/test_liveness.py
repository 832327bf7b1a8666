"""Who is alive: a process (a killed but unreaped one is not) and a host (its boot and PID
namespace, never its name, which containers and clones share)."""

from __future__ import annotations

import os
import socket
import sys

import pytest

from grantkeeper._liveness import host_identity, process_alive


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="procfs")
def test_a_killed_but_unreaped_holder_is_dead(zombie: int) -> None:
    assert process_alive(os.getpid())
    assert not process_alive(zombie)


def test_host_identity_is_the_boot_and_the_pid_namespace() -> None:
    with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
        boot = handle.read().strip()
    assert host_identity() == f"{boot}/{os.stat('/proc/self/ns/pid').st_ino}"
    assert socket.gethostname() not in host_identity()
