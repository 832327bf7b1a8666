"""Auto mode: keyring or file, decided once per credential and recorded durably."""

from __future__ import annotations

import functools
import logging
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from keyring.backends import fail

from grantkeeper import (
    AutoStore,
    FileStore,
    KeyringStore,
    PostgresStore,
    StoreConfigError,
    StoreUnavailable,
    logout,
    open_store,
)
from grantkeeper.testing import (
    KEY,
    OTHER,
    MemoryKeyring,
    StoreContract,
    StoreFactory,
    sample_record,
)


def auto_on_real_keyring(home: Path, service: str) -> AutoStore:
    return AutoStore(home, keyring=KeyringStore(home, service=service))


def auto_without_keyring(home: Path) -> AutoStore:
    return AutoStore(home, keyring=KeyringStore(home, backend=fail.Keyring()))  # type: ignore[no-untyped-call]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="real Secret Service on Linux")
class TestAutoStoreOnTheKeyring(StoreContract):
    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> Iterator[StoreFactory]:
        factory = functools.partial(
            auto_on_real_keyring, tmp_path / "home", f"grantkeeper-test-{uuid.uuid4().hex[:12]}"
        )
        yield factory
        store = factory()
        assert store.preferred == "keyring"
        for key in store.keys():
            store.delete(key)


class TestAutoStoreWithoutAKeyring(StoreContract):
    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> StoreFactory:
        return functools.partial(auto_without_keyring, tmp_path / "home")


@pytest.fixture
def memory() -> MemoryKeyring:
    return MemoryKeyring()


def auto(home: Path, memory: MemoryKeyring) -> AutoStore:
    return AutoStore(home, keyring=KeyringStore(home, backend=memory))


def test_new_credentials_go_to_the_keyring_when_it_works(
    tmp_path: Path, memory: MemoryKeyring
) -> None:
    store = auto(tmp_path, memory)
    store.write(KEY, sample_record(), expected_version=None)
    assert store.placement(KEY) == "keyring"
    assert FileStore(tmp_path).keys() == []
    assert memory.secrets
    # Placements hold no secret.
    assert "conformance" not in (tmp_path / "credentials" / ".placements").read_text()


def test_new_credentials_go_to_the_file_when_the_keyring_is_locked(
    tmp_path: Path, memory: MemoryKeyring
) -> None:
    memory.locked = True
    store = auto(tmp_path, memory)
    store.write(KEY, sample_record(), expected_version=None)
    assert store.placement(KEY) == "file"
    assert FileStore(tmp_path).keys() == [KEY]


def test_the_preference_is_pinned_for_the_lifecycle(tmp_path: Path, memory: MemoryKeyring) -> None:
    memory.locked = True
    store = auto(tmp_path, memory)
    assert store.preferred == "file"
    memory.locked = False  # the user unlocks the keyring mid-run
    store.write(KEY, sample_record(), expected_version=None)
    assert store.placement(KEY) == "file"
    assert store.preferred == "file"


def test_every_process_follows_the_recorded_placement(
    tmp_path: Path, memory: MemoryKeyring
) -> None:
    desktop = auto(tmp_path, memory)
    desktop.write(KEY, sample_record("desktop-token"), expected_version=None)
    # A cron job whose keyring is locked: it must not start a second copy in the file.
    locked = MemoryKeyring()
    locked.secrets, locked.locked = memory.secrets, True
    cron = auto(tmp_path, locked)
    with pytest.raises(StoreUnavailable, match="locked"):
        cron.read(KEY)
    with pytest.raises(StoreUnavailable):
        cron.write(KEY, sample_record("cron-token"), expected_version=1)
    assert FileStore(tmp_path).keys() == []
    # What the cron job creates lives in the file, and the desktop finds it there.
    cron.write(OTHER, sample_record("cron-other"), expected_version=None)
    assert cron.placement(OTHER) == "file"
    stored = auto(tmp_path, memory).read(OTHER)
    assert stored is not None and stored.record.access_token == "cron-other"


def test_drift_is_logged_and_never_followed(
    tmp_path: Path, memory: MemoryKeyring, caplog: pytest.LogCaptureFixture
) -> None:
    store = auto(tmp_path, memory)
    store.write(KEY, sample_record("keyring-copy"), expected_version=None)
    FileStore(tmp_path).write(KEY, sample_record("stray-file-copy"), expected_version=None)
    with caplog.at_level(logging.WARNING, logger="grantkeeper"):
        fresh = auto(tmp_path, memory)
        for _ in range(3):
            stored = fresh.read(KEY)
            assert stored is not None and stored.record.access_token == "keyring-copy"
    drift = [r for r in caplog.records if r.getMessage().startswith("store.drift")]
    assert len(drift) == 1
    assert "placed=keyring" in drift[0].getMessage() and "also_in=file" in drift[0].getMessage()
    [placement] = fresh.placements()
    assert placement.drift and placement.found_in == ("keyring", "file")


def test_a_credential_gone_from_its_store_is_gone_even_if_a_copy_is_elsewhere(
    tmp_path: Path, memory: MemoryKeyring, caplog: pytest.LogCaptureFixture
) -> None:
    store = auto(tmp_path, memory)
    store.write(KEY, sample_record(), expected_version=None)
    KeyringStore(tmp_path, backend=memory).delete(KEY)
    FileStore(tmp_path).write(KEY, sample_record("old-file-copy"), expected_version=None)
    with caplog.at_level(logging.WARNING, logger="grantkeeper"):
        assert auto(tmp_path, memory).read(KEY) is None
    assert any(r.getMessage().startswith("store.drift") for r in caplog.records)


def test_an_unplaced_credential_is_adopted_where_it_is(
    tmp_path: Path, memory: MemoryKeyring, caplog: pytest.LogCaptureFixture
) -> None:
    # Written by a grantkeeper from before placements, to the file store.
    FileStore(tmp_path).write(KEY, sample_record("legacy-token"), expected_version=None)
    store = auto(tmp_path, memory)
    with caplog.at_level(logging.INFO, logger="grantkeeper"):
        stored = store.read(KEY)
    assert stored is not None and stored.record.access_token == "legacy-token"
    assert store.placement(KEY) == "file"
    assert any("store.placement_adopted" in r.getMessage() for r in caplog.records)
    store.write(KEY, sample_record("next-token"), expected_version=stored.version)
    assert memory.secrets == {} or all("next-token" not in v for v in memory.secrets.values())


def test_a_logout_forgets_the_placement(tmp_path: Path, memory: MemoryKeyring) -> None:
    memory.locked = True
    store = auto(tmp_path, memory)
    store.write(KEY, sample_record(), expected_version=None)
    assert store.delete(KEY) is True
    assert store.placement(KEY) is None
    memory.locked = False
    # The next login is placed by the preference of its own lifecycle.
    auto(tmp_path, memory).write(KEY, sample_record(), expected_version=None)
    assert store.placement(KEY) == "keyring"


def test_open_store_specs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRANTKEEPER_STORE", raising=False)
    assert isinstance(open_store(None, home=tmp_path), AutoStore)
    assert isinstance(open_store("auto", home=tmp_path), AutoStore)
    assert isinstance(open_store("FILE", home=tmp_path), FileStore)
    assert isinstance(open_store("keyring", home=tmp_path), KeyringStore)
    pg = open_store("postgresql://worker:pw@127.0.0.1:1/db")
    assert isinstance(pg, PostgresStore) and "pw" not in repr(pg)
    monkeypatch.setenv("GRANTKEEPER_STORE", "file")
    assert isinstance(open_store(None, home=tmp_path), FileStore)
    with pytest.raises(StoreConfigError, match="use auto, file, keyring") as caught:
        open_store("postgressql://worker:hunter2@db/x")
    assert "hunter2" not in str(caught.value)


# -- a logout removes every copy ----------------------------------------------------------


def _no_copy_anywhere(home: Path, keyring: KeyringStore, make: Callable[[], AutoStore]) -> None:
    assert make().read(KEY) is None  # a fresh Auto store adopts nothing
    assert FileStore(home).read(KEY) is None
    assert keyring.read(KEY) is None


def test_a_logout_deletes_the_stray_copy_in_the_other_backend(
    tmp_path: Path, memory: MemoryKeyring
) -> None:
    store = auto(tmp_path, memory)
    store.write(KEY, sample_record("keyring-copy"), expected_version=None)
    FileStore(tmp_path).write(KEY, sample_record("stray-file-copy"), expected_version=None)
    result = logout(store, KEY, revoke=False)
    assert result.removed
    assert store.read(KEY) is None
    _no_copy_anywhere(
        tmp_path, KeyringStore(tmp_path, backend=memory), lambda: auto(tmp_path, memory)
    )


def test_a_logout_deletes_a_stray_copy_beside_an_empty_placement(
    tmp_path: Path, memory: MemoryKeyring
) -> None:
    # Placed in the keyring, gone from there, and a stray copy in the file: reads see
    # nothing, and the logout must still remove the copy they ignore.
    store = auto(tmp_path, memory)
    store.write(KEY, sample_record(), expected_version=None)
    KeyringStore(tmp_path, backend=memory).delete(KEY)
    FileStore(tmp_path).write(KEY, sample_record("stray-file-copy"), expected_version=None)
    assert store.read(KEY) is None
    assert logout(store, KEY, revoke=False).removed
    _no_copy_anywhere(
        tmp_path, KeyringStore(tmp_path, backend=memory), lambda: auto(tmp_path, memory)
    )
    assert store.placement(KEY) is None


def test_a_delete_with_the_keyring_unreachable_keeps_an_indexed_copy_from_coming_back(
    tmp_path: Path, memory: MemoryKeyring
) -> None:
    memory.locked = True
    store = auto(tmp_path, memory)
    store.write(KEY, sample_record("file-copy"), expected_version=None)
    memory.locked = False
    KeyringStore(tmp_path, backend=memory).write(KEY, sample_record("stray"), expected_version=None)
    memory.locked = True
    assert logout(store, KEY, revoke=False).removed
    assert FileStore(tmp_path).read(KEY) is None
    # The keyring copy could not be deleted; the placement stays so nobody adopts it.
    memory.locked = False
    assert auto(tmp_path, memory).read(KEY) is None
    # Once the keyring is back, the next logout finishes the job.
    assert logout(auto(tmp_path, memory), KEY, revoke=False).removed
    assert KeyringStore(tmp_path, backend=memory).read(KEY) is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="real Secret Service on Linux")
def test_a_logout_deletes_every_copy_on_the_real_keyring(tmp_path: Path) -> None:
    home, service = tmp_path / "home", f"grantkeeper-test-{uuid.uuid4().hex[:12]}"
    store = auto_on_real_keyring(home, service)
    store.write(KEY, sample_record("keyring-copy"), expected_version=None)
    FileStore(home).write(KEY, sample_record("stray-file-copy"), expected_version=None)
    assert logout(store, KEY, revoke=False).removed
    keyring = KeyringStore(home, service=service)
    _no_copy_anywhere(home, keyring, lambda: auto_on_real_keyring(home, service))
    # The other way round: placed in the file, a stray copy in the keyring.
    without = auto_without_keyring(home)
    without.write(KEY, sample_record("file-copy"), expected_version=None)
    keyring.write(KEY, sample_record("stray-keyring-copy"), expected_version=None)
    assert logout(auto_on_real_keyring(home, service), KEY, revoke=False).removed
    _no_copy_anywhere(home, keyring, lambda: auto_on_real_keyring(home, service))
