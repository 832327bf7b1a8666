"""The file store passes the store conformance suite."""

from __future__ import annotations

import functools
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from grantkeeper import FileStore
from grantkeeper._platform import current, use
from grantkeeper.testing import KEY, OTHER, StoreContract, StoreFactory, sample_record

WAIT = 60.0


class _Polling:
    """This platform, but without a watch of directories: the file store polls."""

    def __init__(self, inner: object) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def watch_dir(self, path: Path) -> None:
        return None


pytestmark = pytest.mark.portable  # needs no Linux-only server


class TestFileStore(StoreContract):
    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> StoreFactory:
        return functools.partial(FileStore, tmp_path / "home")


def _write_soon(store: FileStore, version: int) -> threading.Thread:
    record = sample_record("renewed-access-token")
    writer = threading.Thread(
        target=lambda: store.write(KEY, record, expected_version=version), daemon=True
    )
    writer.start()
    return writer


@pytest.mark.parametrize("platform", ["native", "polling"])
def test_a_waiter_hears_a_write_with_inotify_or_by_polling(tmp_path: Path, platform: str) -> None:
    """On Linux the watch is inotify's; a platform without one (macOS, Windows here) polls
    the record's status. Both wake the waiter for a write, and not for another key's."""
    store = FileStore(tmp_path / "home")
    store.write(KEY, sample_record(), expected_version=None)
    store.write(OTHER, sample_record(), expected_version=None)
    chosen: Any = current() if platform == "native" else _Polling(current())
    with use(chosen):
        assert (chosen.watch_dir(store.directory) is not None) == (
            platform == "native" and sys.platform.startswith("linux")
        )
        store.write(OTHER, sample_record("other"), expected_version=1)
        assert not store.wait_for_change(KEY, 1, 0.2)  # another key's write wakes no one
        writer = _write_soon(store, 1)
        started = time.monotonic()
        assert store.wait_for_change(KEY, 1, WAIT)
        assert time.monotonic() - started < WAIT / 2
        writer.join(WAIT)


def test_inotify_reports_a_change_once(tmp_path: Path) -> None:
    watch = current().watch_dir(tmp_path)
    if not sys.platform.startswith("linux"):
        assert watch is None  # macOS and Windows poll (kqueue, ReadDirectoryChangesW: untested)
        return
    assert watch is not None
    try:
        assert not watch.wait(0)
        (tmp_path / "new").write_text("x")
        assert watch.wait(WAIT)
        assert not watch.wait(0)  # consumed
    finally:
        watch.close()


def test_inotify_wakes_on_a_descriptor_past_1024(tmp_path: Path) -> None:
    """A process with many connections open hands out descriptors past 1024, which
    ``select`` refuses: the watch must still wake."""
    if not sys.platform.startswith("linux"):
        assert current().watch_dir(tmp_path) is None
        return
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(2048, hard), hard))
    fillers: list[int] = []
    try:
        while len(fillers) < 1100 and (not fillers or fillers[-1] < 1030):
            fillers.append(os.open(os.devnull, os.O_RDONLY))
        watch = current().watch_dir(tmp_path)
        assert watch is not None
        try:
            assert watch._fd >= 1024  # type: ignore[attr-defined]
            assert not watch.wait(0)
            (tmp_path / "new").write_text("x")
            assert watch.wait(WAIT)
        finally:
            watch.close()
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
