"""Rescue copies at rest (issue 29, item 3): sealed as the store seals, gone once superseded,
written whole or not at all.

A rescue copy holds B, the answer a store refused through a process's exit. It must be no
easier to read than the store's own record (the OS keyring, the file store), a login or a
logout that replaces the record must take it away, and a full rescue location must leave
nothing behind. Copies from before sealing (plaintext, ``grantkeeper-rescue-1``) are still
adopted, so no B is lost on upgrade, and never written back in plaintext.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import grantkeeper._rescue_copies as rescue_module
from grantkeeper import (
    AutoStore,
    Credential,
    FileStore,
    KeyringStore,
    MissingExtra,
    PostgresStore,
    logout,
)
from grantkeeper._oauth.code_flow import save as store_login
from grantkeeper._record import record_to_json
from grantkeeper._redact import fingerprint
from grantkeeper._rescue_copies import RESCUE_DIR_ENV
from grantkeeper._stores.sealing import KEY_ENV, Sealer
from grantkeeper.testing import MemoryKeyring, sample_record
from harness.fake_provider import FakeProvider
from tests.helpers import KEY, CountingStore, World
from tests.tiny_disk import fill

PAGE = 4096


def refused_b(world: World) -> Credential:
    """Refresh A into B with the store refusing B through ``close()``: B is rescued."""
    keeper, b = world.refuse_b()
    keeper.close()
    assert world.stored().access_token != b.access_token
    world.store.fail_writes = lambda record: False
    return b


@pytest.fixture
def keyring_world(tmp_path: Path, provider: FakeProvider) -> Iterator[World]:
    """The keyring store on the real Secret Service ``scripts/with-keyring`` runs."""
    if not sys.platform.startswith("linux"):
        pytest.skip("CI runs a real Secret Service on Linux only")
    store = KeyringStore(tmp_path / "home", service=f"grantkeeper-test-{uuid.uuid4().hex[:12]}")
    world = World(provider, store)
    yield world
    world.close()
    for key in store.keys():
        store.delete(key)


@pytest.fixture(params=["file", "keyring"])
def any_world(request: pytest.FixtureRequest) -> World:
    """The world on the file store (the suite's ``world``), then on the keyring."""
    world: World = request.getfixturevalue("world" if request.param == "file" else "keyring_world")
    return world


@pytest.fixture
def rescued(any_world: World, own_rescue_dir: Path) -> tuple[World, Credential]:
    """``any_world`` after a login and a refresh to B its store refused: B is in a copy."""
    any_world.login()
    b = refused_b(any_world)
    assert _copies(own_rescue_dir)
    return any_world, b


def _copies(directory: Path) -> list[Path]:
    return sorted(directory.iterdir()) if directory.exists() else []


def _events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    found = [getattr(r, "grantkeeper", {}) for r in caplog.records]
    return [fields for fields in found if fields.get("event") == name]


def _assert_sealed(raw: bytes, *records: Credential) -> None:
    """No token of ``records``, and no JSON of a record, is in ``raw``, even base64-decoded."""
    document = json.loads(raw)
    assert document["format"] == "grantkeeper-rescue-2"
    opened = base64.b64decode(document["sealed"])
    for blob in (raw, opened):
        for record in records:
            for secret in (record.access_token, record.refresh_token):
                assert secret and secret.encode() not in blob
        for field in (b"access_token", b"refresh_token", b"token_endpoint", b"record"):
            assert field not in blob


# -- 1. sealed, and adopted by the next Keeper -------------------------------------------


def test_a_rescue_copy_holds_no_token_in_clear_and_the_next_keeper_adopts_it(
    any_world: World, own_rescue_dir: Path
) -> None:
    world = any_world
    a = world.login()
    b = refused_b(world)
    [copy] = _copies(own_rescue_dir)
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert stat.S_IMODE(own_rescue_dir.stat().st_mode) == 0o700
    _assert_sealed(copy.read_bytes(), a, b)

    # The next process's Keeper adopts B under the lock: served, stored, copy gone.
    assert world.keeper(world.store.inner).access_token() == b.access_token
    assert world.stored() == b
    assert _copies(own_rescue_dir) == []
    assert world.provider.replays == 0 and world.provider.refresh_calls == 1


# -- 2. a login or a logout supersedes the copy --------------------------------------------


def test_a_login_removes_the_copy_it_supersedes(
    rescued: tuple[World, Credential], own_rescue_dir: Path
) -> None:
    world, b = rescued
    access, refresh = world.provider.issue()
    fresh = sample_record(access, refresh, now=world.clock())
    store_login(world.store.inner, KEY, fresh)  # what every login (CLI, proxy) stores with
    assert _copies(own_rescue_dir) == []
    assert world.keeper(world.store.inner).access_token() == fresh.access_token != b.access_token
    assert world.stored() == fresh


def test_a_logout_removes_the_copy(rescued: tuple[World, Credential], own_rescue_dir: Path) -> None:
    world, _ = rescued
    assert logout(world.store.inner, KEY, revoke=False).removed
    assert _copies(own_rescue_dir) == []


# -- 3. a full rescue location leaves nothing behind --------------------------------------


def _only(monkeypatch: pytest.MonkeyPatch, *directories: Path) -> None:
    """Rescue copies go to ``directories`` and nowhere else (never /dev/shm or /run/user)."""
    monkeypatch.setattr(rescue_module, "_candidates", lambda: iter(directories))


def _one_page_free(disk: Path) -> int:
    """Fill ``disk``, then give back its last page or two: room for a few KiB, no more."""
    ballast = fill(disk)
    size = ballast.stat().st_size
    os.truncate(ballast, max(0, (size // PAGE - 1) * PAGE))
    stats = os.statvfs(disk)
    free = stats.f_bavail * stats.f_frsize
    assert 0 < free < 3 * PAGE
    return free


def test_a_full_rescue_location_leaves_no_torn_or_temporary_copy(
    world: World,
    tiny_disk: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    on_disk = tiny_disk / "rescue"
    on_disk.mkdir(mode=0o700)
    _only(monkeypatch, on_disk)
    # A long scope is kept in B: B's copy is larger than the room left, so a write that
    # stops part-way (the file system takes what fits and says how much) would tear it.
    free = _one_page_free(tiny_disk)
    world.login(scope=" ".join(f"scope-{n}" for n in range(3 * free // 8)))
    refused_b(world)  # close() must not raise
    assert _copies(on_disk) == []
    assert _events(caplog, "pending.lost")
    intent = world.stored().intent
    assert intent is not None and intent.state == "answered"  # A is never retried


def test_a_full_rescue_location_falls_through_to_the_next_one(
    world: World, tiny_disk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_disk, elsewhere = tiny_disk / "rescue", tmp_path / "elsewhere"
    on_disk.mkdir(mode=0o700)
    _only(monkeypatch, on_disk, elsewhere)
    free = _one_page_free(tiny_disk)
    a = world.login(scope=" ".join(f"scope-{n}" for n in range(3 * free // 8)))
    b = refused_b(world)
    assert _copies(on_disk) == []
    [copy] = _copies(elsewhere)
    _assert_sealed(copy.read_bytes(), a, b)
    assert world.keeper(world.store.inner).access_token() == b.access_token
    assert _copies(elsewhere) == []


# -- 4. copies from before sealing --------------------------------------------------------


def _legacy_copy(directory: Path, a: Credential, b: Credential) -> Path:
    """A plaintext copy of ``b`` as an earlier version wrote it, named as it named them."""
    assert a.refresh_token is not None
    spent = fingerprint(a.refresh_token)
    for copy in _copies(directory):
        copy.unlink()  # in place of the copy this version wrote
    document = {
        "format": "grantkeeper-rescue-1",
        "key": str(KEY),
        "spent": spent,
        "record": record_to_json(b),
    }
    name = rescue_module._name(KEY, spent)
    path = directory / name
    path.write_text(json.dumps(document))
    path.chmod(0o600)
    return path


def test_a_plaintext_copy_from_an_earlier_version_is_adopted_then_kept_only_sealed(
    world: World, own_rescue_dir: Path
) -> None:
    a = world.login()
    b = refused_b(world)  # the store holds A and the note of a refresh answered with B
    legacy = _legacy_copy(own_rescue_dir, a, b)

    # Adopted while the store still refuses: B serves from memory, and its copy at close
    # is sealed, the plaintext one gone.
    world.store.fail_writes = lambda record: True
    keeper = world.keeper()
    assert keeper.access_token() == b.access_token
    keeper.close()
    [copy] = _copies(own_rescue_dir)
    assert copy.name == legacy.name
    _assert_sealed(copy.read_bytes(), a, b)

    world.store.fail_writes = lambda record: False
    assert world.keeper().access_token() == b.access_token
    assert world.stored() == b and _copies(own_rescue_dir) == []
    assert world.provider.replays == 0 and world.provider.refresh_calls == 1


def test_a_plaintext_copy_from_an_earlier_version_is_adopted_and_removed(
    world: World, own_rescue_dir: Path
) -> None:
    a = world.login()
    b = refused_b(world)
    _legacy_copy(own_rescue_dir, a, b)
    assert world.keeper().access_token() == b.access_token
    assert world.stored() == b and _copies(own_rescue_dir) == []
    assert world.provider.replays == 0 and world.provider.refresh_calls == 1


# -- without the cryptography package -----------------------------------------------------


def test_without_cryptography_a_sealed_store_gets_no_plaintext_copy(
    keyring_world: World,
    own_rescue_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(rescue_module, "sealing_available", lambda: False)
    world = keyring_world
    world.login()
    refused_b(world)
    assert _copies(own_rescue_dir) == []
    [refused] = _events(caplog, "rescue.refused_unsealed")
    assert refused["reason"] == "no_cryptography"
    assert _events(caplog, "pending.lost")
    intent = world.stored().intent
    assert intent is not None and intent.state == "answered"


def test_without_cryptography_the_file_store_still_gets_a_plaintext_copy(
    world: World, own_rescue_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rescue_module, "sealing_available", lambda: False)
    world.login()
    b = refused_b(world)
    [copy] = _copies(own_rescue_dir)
    assert json.loads(copy.read_bytes())["format"] == "grantkeeper-rescue-1"
    assert world.keeper(world.store.inner).access_token() == b.access_token
    assert _copies(own_rescue_dir) == []


def test_a_sealed_copy_this_process_cannot_open_stops_it_from_spending_the_replaced_token(
    world: World, own_rescue_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.login()
    b = refused_b(world)
    [copy] = _copies(own_rescue_dir)
    world.clock.advance(3600)  # A has expired: only a refresh, or B, could serve
    able = rescue_module.sealing_available
    monkeypatch.setattr(rescue_module, "sealing_available", lambda: False)
    with pytest.raises(MissingExtra) as info:
        world.keeper().credential()
    assert info.value.extra == "encryption"
    assert world.provider.refresh_calls == 1 and world.provider.replays == 0
    assert _copies(own_rescue_dir) == [copy]  # kept for a process that can open it
    monkeypatch.setattr(rescue_module, "sealing_available", able)
    # A process that can open it adopts B, and (B has expired too) spends B, never A.
    served = world.keeper().access_token()
    assert world.stored().access_token == served != b.access_token
    assert _copies(own_rescue_dir) == []
    assert world.provider.refresh_calls == 2 and world.provider.replays == 0


def test_stores_say_whether_their_records_rest_in_plaintext(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from grantkeeper._stores.base import plaintext_at_rest  # new with sealed copies

    monkeypatch.delenv(KEY_ENV, raising=False)
    dsn = "postgresql://nobody@127.0.0.1:9/none"  # never connected to
    files = FileStore(tmp_path)
    assert plaintext_at_rest(files) and plaintext_at_rest(CountingStore(files))
    assert plaintext_at_rest(PostgresStore(dsn))
    assert not plaintext_at_rest(PostgresStore(dsn, sealer=Sealer(os.urandom(32))))
    assert not plaintext_at_rest(KeyringStore(tmp_path, backend=MemoryKeyring()))
    assert not plaintext_at_rest(AutoStore(tmp_path))  # the keyring package is installed
    assert not plaintext_at_rest(object())  # type: ignore[arg-type]  # unknown: sealed


def test_the_suite_keeps_rescue_copies_in_the_tests_own_directory(own_rescue_dir: Path) -> None:
    assert os.environ[RESCUE_DIR_ENV] == str(own_rescue_dir)
