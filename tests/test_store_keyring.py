"""The keyring store against a real Secret Service (gnome-keyring under ``scripts/test``)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from grantkeeper import AutoStore, KeyringStore, LockTimeout, Store, StoreCorrupt, StoreUnavailable
from grantkeeper._stores.keyring import PART_CHARS, KeyringBackend, default_backend
from grantkeeper._stores.secret_service import SecretService
from grantkeeper.testing import KEY, StoreContract, StoreFactory, sample_record

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="CI runs a real Secret Service on Linux only"
)


@pytest.fixture
def service() -> Iterator[str]:
    """A service name of this test's own, emptied afterwards."""
    name = f"grantkeeper-test-{uuid.uuid4().hex[:12]}"
    yield name


class TestKeyringStore(StoreContract):
    @pytest.fixture
    def store_factory(self, tmp_path: Path, service: str) -> Iterator[StoreFactory]:
        factory = functools.partial(KeyringStore, tmp_path / "home", service=service)
        yield factory
        store = factory()
        for key in store.keys():
            store.delete(key)


class Recording:
    """Wraps the real backend and remembers the length of every secret written."""

    def __init__(self, inner: KeyringBackend) -> None:
        self.inner = inner
        self.lengths: list[int] = []

    def get_password(self, service: str, username: str) -> str | None:
        return self.inner.get_password(service, username)

    def set_password(self, service: str, username: str, password: str) -> None:
        self.lengths.append(len(password.encode("utf-16-le")))
        self.inner.set_password(service, username, password)

    def delete_password(self, service: str, username: str) -> None:
        self.inner.delete_password(service, username)


def test_the_real_secret_service_is_in_use() -> None:
    import keyring

    assert type(keyring.get_keyring()).__module__ == "keyring.backends.SecretService"
    assert isinstance(default_backend(), SecretService)


def test_doctor_names_the_backend_as_keyring_does(tmp_path: Path) -> None:
    import keyring

    from grantkeeper.testing import MemoryKeyring

    assert KeyringStore(tmp_path).backend_name() == keyring.get_keyring().name
    assert "grantkeeper" not in KeyringStore(tmp_path, backend=MemoryKeyring()).backend_name()


def _connections_so_far() -> int:
    """How many connections the session bus has handed out, this probe's included: the bus
    numbers its unique names ``:1.N`` in order."""
    import secretstorage

    with contextlib.closing(secretstorage.dbus_init()) as probe:
        return int(probe.unique_name.rsplit(".", 1)[1])


def test_a_process_talks_to_the_secret_service_over_one_connection(
    tmp_path: Path, service: str
) -> None:
    # keyring's backend connects anew for every call, and gnome-keyring aborts on that
    # churn (see grantkeeper._stores.secret_service): then every keyring client of the user fails.
    store = KeyringStore(tmp_path, service=service)
    store.write(KEY, sample_record(scope="s" * 3 * PART_CHARS), expected_version=None)
    before = _connections_so_far()
    for version in range(1, 6):
        store.write(KEY, sample_record(f"token-{version}"), expected_version=version)
        stored = KeyringStore(tmp_path, service=service).read(KEY)
        assert stored is not None and stored.record.access_token == f"token-{version}"
    assert store.delete(KEY) is True
    assert _connections_so_far() == before + 1  # the probe's own: the store opened none


def test_entries_are_shared_with_the_keyring_package(tmp_path: Path, service: str) -> None:
    # What keyring's own backend wrote (an older grantkeeper, another tool) is read, and
    # the other way round.
    import keyring

    theirs = keyring.get_keyring()
    record = sample_record("written-by-keyring")
    KeyringStore(tmp_path, service=service).write(KEY, record, expected_version=None)
    head = theirs.get_password(service, str(KEY))
    assert head is not None and json.loads(head)["record"]["access_token"] == "written-by-keyring"
    theirs.set_password(service, str(KEY), head.replace("written-by-keyring", "changed"))
    stored = KeyringStore(tmp_path, service=service).read(KEY)
    assert stored is not None and stored.record.access_token == "changed"
    theirs.delete_password(service, str(KEY))
    assert KeyringStore(tmp_path, service=service).read(KEY) is None


def test_long_records_are_split_into_parts_windows_accepts(tmp_path: Path, service: str) -> None:
    spy = Recording(default_backend())
    store = KeyringStore(tmp_path, service=service, backend=spy)
    record = sample_record(scope="s" * 10_000)
    store.write(KEY, record, expected_version=None)
    assert len(spy.lengths) > 8
    assert max(spy.lengths) <= 2 * PART_CHARS <= 2560
    stored = store.read(KEY)
    assert stored is not None and stored.record == record
    head = json.loads(spy.get_password(service, str(KEY)) or "{}")
    generation, count = head["parts"]["generation"], head["parts"]["count"]
    part = f"{KEY} (part {generation}.0)"
    assert spy.get_password(service, part) is not None
    # Shrinking the record removes the old parts from the keyring.
    store.write(KEY, sample_record(), expected_version=1)
    assert [spy.get_password(service, f"{KEY} (part {generation}.{n})") for n in range(count)] == [
        None
    ] * count
    store.delete(KEY)


def test_the_index_holds_keys_but_no_secret(tmp_path: Path, service: str) -> None:
    store = KeyringStore(tmp_path, service=service)
    store.write(KEY, sample_record("index-must-not-hold-this"), expected_version=None)
    index = [p for p in (tmp_path / "credentials").iterdir() if p.name.endswith(".index")]
    assert len(index) == 1
    text = index[0].read_text()
    assert KEY.server_url in text
    assert "index-must-not-hold-this" not in text and "conformance-refresh" not in text
    assert index[0].stat().st_mode & 0o777 == 0o600
    store.delete(KEY)
    assert KEY.server_url not in index[0].read_text()


def test_a_foreign_secret_is_corrupt_not_misread(tmp_path: Path, service: str) -> None:
    default_backend().set_password(service, str(KEY), json.dumps({"hello": "world"}))
    store = KeyringStore(tmp_path, service=service)
    with pytest.raises(StoreCorrupt):
        store.read(KEY)
    # A new login may replace it, and a logout removes it.
    store.write(KEY, sample_record(), expected_version=None)
    assert store.delete(KEY) is True


def test_no_keyring_is_a_typed_actionable_error(tmp_path: Path) -> None:
    from keyring.backends import fail

    store = KeyringStore(tmp_path, backend=fail.Keyring())  # type: ignore[no-untyped-call]
    assert not store.available()
    with pytest.raises(StoreUnavailable, match="--store file") as caught:
        store.read(KEY)
    assert "no OS keyring" in str(caught.value)
    with pytest.raises(StoreUnavailable):
        store.write(KEY, sample_record("never-stored-anywhere"), expected_version=None)


LOCKED_SCRIPT = """
import subprocess, sys
from pathlib import Path
import secretstorage
from grantkeeper import KeyringStore, StoreUnavailable, CredentialKey
connection = secretstorage.dbus_init()
secretstorage.get_default_collection(connection).lock()
try:
    KeyringStore(Path(sys.argv[1])).read(CredentialKey.for_server("https://a.example.test"))
except StoreUnavailable as exc:
    print(type(exc).__name__, exc)
"""


def test_a_locked_keyring_is_a_typed_actionable_error(tmp_path: Path) -> None:
    # A private session, so locking its keyring cannot disturb the other tests.
    script = tmp_path / "locked.py"
    script.write_text(LOCKED_SCRIPT)
    repo = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [str(repo / "scripts" / "with-keyring"), sys.executable, str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("StoreUnavailable cannot read from the OS keyring")
    assert "locked" in result.stdout and "unlock it" in result.stdout


# -- one lock per keyring entry, whatever GRANTKEEPER_HOME --------------------------------

HOLDER_SCRIPT = """
import sys
from grantkeeper import AutoStore, KeyringStore
from grantkeeper._stores.keyring import default_backend
from grantkeeper.testing import KEY, sample_record

kind, home, service = sys.argv[1:]


class Pausing:
    # Stops inside the write (the short write lock held) until told to go on.
    def __init__(self, inner):
        self.inner = inner

    def get_password(self, service, username):
        return self.inner.get_password(service, username)

    def set_password(self, service, username, password):
        print("writing", flush=True)
        sys.stdin.readline()
        self.inner.set_password(service, username, password)

    def delete_password(self, service, username):
        self.inner.delete_password(service, username)


if kind == "write":
    store = KeyringStore(home, service=service, backend=Pausing(default_backend()))
    store.write(KEY, sample_record("written-from-home-a"), expected_version=None)
else:
    keyring = KeyringStore(home, service=service)
    store = keyring if kind == "keyring" else AutoStore(home, keyring=keyring)
    with store.lock(KEY):
        print("locked", flush=True)
        sys.stdin.readline()
print("done", flush=True)
"""


@contextlib.contextmanager
def holder(tmp_path: Path, kind: str, service: str) -> Iterator[subprocess.Popen[str]]:
    """A process on home A that holds a lock of ``KEY`` until the block ends."""
    script = tmp_path / "holder.py"
    script.write_text(HOLDER_SCRIPT)
    with subprocess.Popen(
        [sys.executable, str(script), kind, str(tmp_path / "home-a"), service],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdin is not None and child.stdout is not None
        assert child.stdout.readline().strip() in ("locked", "writing")
        try:
            yield child
        finally:
            child.stdin.write("\n")
            child.stdin.flush()
        assert child.stdout.readline().strip() == "done"
        assert child.wait(timeout=60) == 0


@pytest.mark.parametrize(
    ("held_by", "tried_by"),
    [("keyring", "keyring"), ("auto", "auto"), ("auto", "keyring"), ("keyring", "auto")],
)
def test_two_homes_on_one_keyring_exclude_each_other(
    tmp_path: Path, service: str, held_by: str, tried_by: str
) -> None:
    keyring = KeyringStore(tmp_path / "home-b", service=service)
    other: Store = (
        keyring if tried_by == "keyring" else AutoStore(tmp_path / "home-b", keyring=keyring)
    )
    with holder(tmp_path, held_by, service):
        with pytest.raises(LockTimeout), other.lock(KEY, timeout=0):
            pass
    with other.lock(KEY, timeout=60):
        pass  # free again once the holder in home A let go


def test_two_homes_on_one_keyring_never_write_at_once(
    tmp_path: Path, service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import grantkeeper._stores.keyring as keyring_store

    store = KeyringStore(tmp_path / "home-b", service=service)
    with holder(tmp_path, "write", service):
        monkeypatch.setattr(keyring_store, "CAS_LOCK_TIMEOUT", 0)
        with pytest.raises(LockTimeout):
            store.write(KEY, sample_record("written-from-home-b"), expected_version=None)
        monkeypatch.undo()
    stored = store.read(KEY)
    assert stored is not None and stored.record.access_token == "written-from-home-a"
    store.delete(KEY)


def test_the_locks_live_in_the_users_runtime_directory(tmp_path: Path, service: str) -> None:
    a, b = (
        KeyringStore(tmp_path / "a", service=service),
        KeyringStore(tmp_path / "b", service=service),
    )
    assert a.lock_directory == b.lock_directory
    assert a.lock_directory != KeyringStore(tmp_path / "a", service=service + "-x").lock_directory
    assert not a.lock_directory.is_relative_to(tmp_path)
    if os.environ.get("XDG_RUNTIME_DIR"):  # scripts/with-keyring sets the daemon's
        assert a.lock_directory.parent == Path(os.environ["XDG_RUNTIME_DIR"]) / "grantkeeper"
    with a.lock(KEY):
        pass
    assert stat.S_IMODE(a.lock_directory.stat().st_mode) == 0o700
