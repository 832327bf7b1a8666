"""The store conformance suite, :class:`StoreContract`, that every backend's tests subclass.

Public through :mod:`grantkeeper.testing`, which imports it only when it is asked for: the
suite needs pytest, the fakes beside it do not.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path

import pytest

from .._errors import LockTimeout, VersionConflict
from .._fakes import KEY, OTHER, sample_record
from .._record import CredentialKey
from .base import Store, Watchable, plaintext_at_rest

__all__ = ["StoreContract", "StoreFactory"]

StoreFactory = Callable[[], Store]
"""Opens the store under test; must be picklable and open the same store on every call."""

WAIT = 60.0
"""Upper bound on every wait for another process: a hung child fails the test, not CI."""

WRITERS = 4
"""Processes racing compare-and-swap increments: more than the two cores CI has."""

INCREMENTS = 15
"""Increments per writer: enough that conflicts happen on every run."""

LOCKERS = 3
"""Processes contending for one transaction lock in the bracket test."""

ROUNDS = 20
"""Lock acquisitions per locker in the bracket test."""

# -- child process bodies (module level, so ``spawn`` can import them) ---------------------


def _increment(
    factory: StoreFactory, start: multiprocessing.synchronize.Barrier, count: int
) -> None:
    """Add ``count`` to the counter kept in the access token, by CAS read-modify-write."""
    store = factory()
    start.wait(WAIT)
    done = 0
    while done < count:
        current = store.read(KEY)
        assert current is not None
        value = int(current.record.access_token.rsplit("-", 1)[1])
        try:
            store.write(
                KEY,
                current.record.replace(access_token=f"counter-{value + 1}"),
                expected_version=current.version,
            )
        except VersionConflict:
            continue
        done += 1


def _brackets(
    factory: StoreFactory, path: str, start: multiprocessing.synchronize.Barrier, rounds: int
) -> None:
    """Append ``(`` and ``)`` to ``path`` under the lock, in separate unbuffered writes."""
    store = factory()
    tag = str(os.getpid())
    start.wait(WAIT)
    for _ in range(rounds):
        with store.lock(KEY, timeout=WAIT):
            with open(path, "a", encoding="ascii", buffering=1) as out:
                out.write(f"( {tag}\n")
                out.flush()
                # Give a broken lock every chance to let a peer in between the two lines.
                time.sleep(0)  # sched_yield, on every platform
                out.write(f") {tag}\n")


def _hold(
    factory: StoreFactory,
    key: CredentialKey,
    held: multiprocessing.synchronize.Event,
    release: Connection,
    released: multiprocessing.synchronize.Event,
) -> None:
    """Hold ``key``'s lock until the parent closes ``release`` (or kills this process)."""
    store = factory()
    with store.lock(key, timeout=WAIT):
        held.set()
        # A pipe, not an Event: a process killed while sleeping on an Event's condition
        # leaves it wedged for everyone else.
        release.poll(WAIT * 2)
    released.set()


def _write_when_told(
    factory: StoreFactory, go: Connection, wrote: multiprocessing.synchronize.Event
) -> None:
    """Write one new version of ``KEY`` once the parent says so, then say it is done."""
    store = factory()
    if go.poll(WAIT) and go.recv() == "write":
        current = store.read(KEY)
        assert current is not None
        store.write(KEY, sample_record("from-a-peer"), expected_version=current.version)
        wrote.set()


class _Holder:
    """A child process holding a key's lock until :meth:`stop`."""

    def __init__(self, factory: StoreFactory, key: CredentialKey = KEY) -> None:
        context = multiprocessing.get_context("spawn")
        self.held = context.Event()
        self.released = context.Event()
        child_end, self._release = context.Pipe(duplex=False)
        self.process = context.Process(
            target=_hold, args=(factory, key, self.held, child_end, self.released)
        )
        self.process.start()
        child_end.close()
        if not self.held.wait(WAIT):
            self.process.kill()
            raise AssertionError("the child never acquired the lock")

    def stop(self) -> None:
        self._release.close()
        self.process.join(WAIT)
        if self.process.exitcode is None:
            self.process.kill()
            self.process.join(WAIT)


def _run_all(processes: Sequence[multiprocessing.process.BaseProcess]) -> None:
    for process in processes:
        process.start()
    for process in processes:
        process.join(WAIT * 2)
    for process in processes:
        if process.exitcode is None:
            process.kill()
    assert [p.exitcode for p in processes] == [0] * len(processes)


# -- the contract ------------------------------------------------------------------------


class StoreContract:
    """Behaviour every :class:`~grantkeeper.Store` must show. Subclass it in a test module.

    The subclass defines a ``store_factory`` fixture; see the module docstring.
    """

    @pytest.fixture
    def store(self, store_factory: StoreFactory) -> Store:
        return store_factory()

    # -- records --------------------------------------------------------------------------

    def test_missing_key_reads_none(self, store: Store) -> None:
        assert store.read(KEY) is None
        assert store.keys() == []
        assert store.delete(KEY) is False

    def test_round_trip(self, store: Store) -> None:
        record = sample_record()
        assert store.write(KEY, record, expected_version=None) == 1
        stored = store.read(KEY)
        assert stored is not None
        assert stored.record == record
        assert stored.version == 1

    def test_versions_grow_by_one(self, store: Store) -> None:
        version = store.write(KEY, sample_record("a" * 20), expected_version=None)
        for n in range(3):
            version = store.write(KEY, sample_record(f"token-{n}"), expected_version=version)
        assert version == 4
        stored = store.read(KEY)
        assert stored is not None and stored.version == 4
        assert stored.record.access_token == "token-2"

    def test_another_factory_call_sees_the_same_records(
        self, store: Store, store_factory: StoreFactory
    ) -> None:
        store.write(KEY, sample_record(), expected_version=None)
        again = store_factory().read(KEY)
        assert again is not None and again.record == sample_record()

    def test_create_conflicts_when_the_key_exists(self, store: Store) -> None:
        store.write(KEY, sample_record("first-token"), expected_version=None)
        with pytest.raises(VersionConflict):
            store.write(KEY, sample_record("second-token"), expected_version=None)
        stored = store.read(KEY)
        assert stored is not None and stored.record.access_token == "first-token"

    def test_stale_version_conflicts_and_changes_nothing(self, store: Store) -> None:
        store.write(KEY, sample_record("v1-token"), expected_version=None)
        store.write(KEY, sample_record("v2-token"), expected_version=1)
        with pytest.raises(VersionConflict):
            store.write(KEY, sample_record("stale-token"), expected_version=1)
        with pytest.raises(VersionConflict):
            store.write(KEY, sample_record("future-token"), expected_version=7)
        stored = store.read(KEY)
        assert stored is not None
        assert (stored.record.access_token, stored.version) == ("v2-token", 2)

    def test_update_of_a_missing_key_conflicts(self, store: Store) -> None:
        with pytest.raises(VersionConflict):
            store.write(KEY, sample_record(), expected_version=1)
        assert store.read(KEY) is None

    def test_delete(self, store: Store) -> None:
        store.write(KEY, sample_record(), expected_version=None)
        store.write(OTHER, sample_record(), expected_version=None)
        assert store.delete(KEY) is True
        assert store.read(KEY) is None
        assert store.delete(KEY) is False
        assert store.keys() == [OTHER]
        # A new login after a logout creates the record again.
        store.write(KEY, sample_record("again-token"), expected_version=None)
        stored = store.read(KEY)
        assert stored is not None and stored.record.access_token == "again-token"

    def test_delete_at_a_stale_version_conflicts(self, store: Store) -> None:
        store.write(KEY, sample_record(), expected_version=None)
        store.write(KEY, sample_record(), expected_version=1)
        with pytest.raises(VersionConflict):
            store.delete(KEY, expected_version=1)
        assert store.read(KEY) is not None
        assert store.delete(KEY, expected_version=2) is True
        assert store.read(KEY) is None

    def test_unicode_survives(self, store: Store) -> None:
        key = CredentialKey.for_server("https://mcp.example.test/ünï/π", "prøfil 🔑")
        record = sample_record(
            "tøken-ÄÖÜ-日本語-🔑",
            scope="lire écrire 読む",
            subject="José Ñúñez",
            reauth_reason='quote " backslash \\ newline \n tab \t nul-free',
        )
        store.write(key, record, expected_version=None)
        stored = store.read(key)
        assert stored is not None and stored.record == record
        assert store.keys() == [key]

    def test_large_record_survives(self, store: Store) -> None:
        # Providers with many scopes send long scope strings and JWT access tokens.
        scope = " ".join(f"scope:{n:06d}" for n in range(8000))
        assert len(scope) > 100_000
        record = sample_record("j" * 20_000, scope=scope)
        store.write(KEY, record, expected_version=None)
        smaller = record.replace(scope="mcp")
        store.write(KEY, smaller, expected_version=1)
        stored = store.read(KEY)
        assert stored is not None and stored.record == smaller
        store.write(KEY, record, expected_version=2)
        stored = store.read(KEY)
        assert stored is not None and stored.record == record

    def test_keys_lists_every_key_sorted(self, store: Store) -> None:
        keys = [
            CredentialKey.for_server("https://b.example.test/mcp"),
            CredentialKey.for_server("https://a.example.test/mcp", "work"),
            CredentialKey.for_server("https://a.example.test/mcp"),
            CredentialKey.for_server("https://a.example.test/mcp", "home"),
        ]
        for n, key in enumerate(keys):
            store.write(key, sample_record(f"token-for-key-{n}"), expected_version=None)
        assert store.keys() == sorted(keys)
        for n, key in enumerate(keys):
            stored = store.read(key)
            assert stored is not None and stored.record.access_token == f"token-for-key-{n}"

    def test_profiles_are_distinct_credentials(self, store: Store) -> None:
        store.write(KEY, sample_record("default-profile"), expected_version=None)
        store.write(OTHER, sample_record("work-profile"), expected_version=None)
        store.write(OTHER, sample_record("work-profile-2"), expected_version=1)
        default, work = store.read(KEY), store.read(OTHER)
        assert default is not None and work is not None
        assert (default.record.access_token, default.version) == ("default-profile", 1)
        assert (work.record.access_token, work.version) == ("work-profile-2", 2)

    def test_no_secret_in_repr(self, store: Store) -> None:
        store.write(KEY, sample_record("repr-secret-access-token"), expected_version=None)
        assert "repr-secret" not in repr(store)
        assert "conformance-refresh" not in repr(store.read(KEY))

    def test_plaintext_at_rest_is_a_bool_when_declared(self, store: Store) -> None:
        # Optional (absent means sealed), but a bool when declared: copies kept elsewhere
        # (rescue copies) are plaintext only where the store's own records are.
        declared = getattr(store, "plaintext_at_rest", False)
        assert isinstance(declared, bool)
        assert plaintext_at_rest(store) is declared

    # -- across processes -----------------------------------------------------------------

    def test_concurrent_writers_lose_no_update(
        self, store: Store, store_factory: StoreFactory
    ) -> None:
        store.write(KEY, sample_record("counter-0"), expected_version=None)
        context = multiprocessing.get_context("spawn")
        start = context.Barrier(WRITERS)
        writers = [
            context.Process(target=_increment, args=(store_factory, start, INCREMENTS))
            for _ in range(WRITERS)
        ]
        _run_all(writers)
        stored = store.read(KEY)
        assert stored is not None
        assert stored.record.access_token == f"counter-{WRITERS * INCREMENTS}"
        assert stored.version == WRITERS * INCREMENTS + 1

    def test_lock_is_exclusive_across_processes(
        self, store_factory: StoreFactory, tmp_path: Path
    ) -> None:
        log = tmp_path / "brackets.txt"
        log.touch()
        context = multiprocessing.get_context("spawn")
        start = context.Barrier(LOCKERS)
        lockers = [
            context.Process(target=_brackets, args=(store_factory, str(log), start, ROUNDS))
            for _ in range(LOCKERS)
        ]
        _run_all(lockers)
        lines = log.read_text(encoding="ascii").splitlines()
        assert len(lines) == 2 * LOCKERS * ROUNDS
        for opening, closing in zip(lines[::2], lines[1::2], strict=True):
            assert opening.startswith("(") and closing == ")" + opening[1:], (opening, closing)
        assert len({line.split()[1] for line in lines}) == LOCKERS

    def test_lock_times_out_without_stealing(self, store_factory: StoreFactory) -> None:
        store = store_factory()
        holder = _Holder(store_factory)
        try:
            started = time.monotonic()
            with pytest.raises(LockTimeout), store.lock(KEY, timeout=0.3):
                pytest.fail("acquired a lock another process holds")
            waited = time.monotonic() - started
            assert 0.3 <= waited < 0.3 + 10
            # The holder still has it: a second attempt fails too, and the holder is alive.
            with pytest.raises(LockTimeout), store.lock(KEY, timeout=0):
                pytest.fail("acquired a lock another process holds")
            assert holder.process.is_alive() and not holder.released.is_set()
        finally:
            holder.stop()
        assert holder.released.is_set()
        with store.lock(KEY, timeout=WAIT):
            pass

    def test_lock_is_released_when_the_holder_is_killed(self, store_factory: StoreFactory) -> None:
        store = store_factory()
        holder = _Holder(store_factory)
        try:
            with pytest.raises(LockTimeout), store.lock(KEY, timeout=0):
                pytest.fail("acquired a lock another process holds")
            holder.process.kill()  # SIGKILL; TerminateProcess on Windows
            holder.process.join(WAIT)
            if sys.platform == "win32":
                assert holder.process.exitcode not in (None, 0)
            else:
                assert holder.process.exitcode == -signal.SIGKILL
            with store.lock(KEY, timeout=WAIT):
                assert not holder.released.is_set()
        finally:
            holder.stop()

    def test_locks_of_different_keys_are_independent(self, store_factory: StoreFactory) -> None:
        store = store_factory()
        holder = _Holder(store_factory, OTHER)
        try:
            with store.lock(KEY, timeout=0):
                pass
        finally:
            holder.stop()

    def test_lock_is_exclusive_within_a_process(self, store: Store) -> None:
        # Two threads of one process each open their own lock; the second must wait.
        with store.lock(KEY, timeout=WAIT):
            with pytest.raises(LockTimeout), store.lock(KEY, timeout=0.05):
                pytest.fail("the lock was re-entered")
        with store.lock(KEY, timeout=0):
            pass

    def test_store_is_usable_under_its_own_lock(self, store: Store) -> None:
        # The refresh transaction reads and writes while it holds the lock.
        with store.lock(KEY, timeout=WAIT):
            store.write(KEY, sample_record(), expected_version=None)
            stored = store.read(KEY)
            assert stored is not None
            store.write(KEY, sample_record("next-token"), expected_version=stored.version)
        stored = store.read(KEY)
        assert stored is not None and stored.version == 2

    # -- watching (stores that offer it: see Watchable) ----------------------------------

    @pytest.fixture
    def watchable(self, store: Store) -> Watchable:
        if not isinstance(store, Watchable):
            pytest.skip(f"{type(store).__name__} offers no wait_for_change (optional)")
        return store

    def test_a_write_before_the_wait_counts(self, watchable: Watchable, store: Store) -> None:
        store.write(KEY, sample_record(), expected_version=None)
        read = store.read(KEY)
        assert read is not None
        store.write(KEY, sample_record("next-token"), expected_version=read.version)
        assert watchable.wait_for_change(KEY, read.version, WAIT)
        assert watchable.wait_for_change(KEY, None, WAIT)  # nothing read: any record

    def test_no_write_waits_out_the_timeout(self, watchable: Watchable, store: Store) -> None:
        store.write(KEY, sample_record(), expected_version=None)
        read = store.read(KEY)
        assert read is not None
        store.write(OTHER, sample_record(), expected_version=None)  # another key's write
        started = time.monotonic()
        assert not watchable.wait_for_change(KEY, read.version, 0.3)
        assert time.monotonic() - started >= 0.3

    def test_a_peer_processs_write_wakes_a_waiter(
        self, watchable: Watchable, store: Store, store_factory: StoreFactory
    ) -> None:
        store.write(KEY, sample_record(), expected_version=None)
        read = store.read(KEY)
        assert read is not None
        assert not watchable.wait_for_change(KEY, read.version, 0)  # starts any listener
        context = multiprocessing.get_context("spawn")
        wrote = context.Event()
        child_end, go = context.Pipe(duplex=False)
        peer = context.Process(target=_write_when_told, args=(store_factory, child_end, wrote))
        peer.start()
        child_end.close()
        try:
            go.send("write")
            # Woken by the write: a store that never hears of it returns False at WAIT, and
            # one that only reads again at the end returns at WAIT too.
            started = time.monotonic()
            assert watchable.wait_for_change(KEY, read.version, WAIT)
            assert time.monotonic() - started < WAIT / 2
            assert wrote.wait(WAIT)
            stored = store.read(KEY)
            assert stored is not None and stored.version == read.version + 1
        finally:
            go.close()
            peer.join(WAIT)
            if peer.exitcode is None:
                peer.kill()
                peer.join(WAIT)
        assert peer.exitcode == 0
