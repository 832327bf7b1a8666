"""File store specifics: location, atomicity, permissions, symlinks, corrupt files."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from grantkeeper import (
    CredentialKey,
    FileStore,
    StoreCorrupt,
    UnsafeStorePath,
    VersionConflict,
    grantkeeper_home,
)
from grantkeeper.testing import sample_record
from tests.helpers import KEY, T0, signal_own_child

OTHER = CredentialKey.for_server("https://other.test/mcp", "work")


def test_home_honours_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GRANTKEEPER_HOME", str(tmp_path / "gk"))
    assert grantkeeper_home() == tmp_path / "gk"
    assert FileStore().directory == tmp_path / "gk" / "credentials"


def test_files_are_created_private(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "home")
    store.write(KEY, sample_record("a", "r", now=T0), expected_version=None)
    assert stat.S_IMODE(os.stat(store.directory).st_mode) == 0o700
    files = [p for p in store.directory.iterdir() if p.suffix == ".json"]
    assert len(files) == 1 and stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert not [p for p in store.directory.iterdir() if p.name.endswith(".tmp")]


def test_write_is_compare_and_swap(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    assert store.write(KEY, sample_record("a", "r", now=T0), expected_version=None) == 1
    with pytest.raises(VersionConflict):
        store.write(KEY, sample_record("b", "r", now=T0), expected_version=None)
    assert store.write(KEY, sample_record("b", "r", now=T0), expected_version=1) == 2
    with pytest.raises(VersionConflict):
        store.write(KEY, sample_record("c", "r", now=T0), expected_version=1)
    found = store.read(KEY)
    assert found is not None and found.version == 2 and found.record.access_token == "b"


def test_symlinked_directory_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "credentials").symlink_to(real)
    store = FileStore(tmp_path / "home")
    with pytest.raises(UnsafeStorePath, match="symlink"):
        store.read(KEY)
    with pytest.raises(UnsafeStorePath):
        store.write(KEY, sample_record("a", "r", now=T0), expected_version=None)
    assert list(real.iterdir()) == []


def test_symlinked_record_file_is_refused_not_followed(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.write(KEY, sample_record("a", "r", now=T0), expected_version=None)
    target = tmp_path / "elsewhere.json"
    target.write_text("{}")
    path = next(p for p in store.directory.iterdir() if p.suffix == ".json")
    path.unlink()
    path.symlink_to(target)
    with pytest.raises(UnsafeStorePath):
        store.read(KEY)
    with pytest.raises(UnsafeStorePath):
        store.write(KEY, sample_record("b", "r", now=T0), expected_version=None)
    assert target.read_text() == "{}"


def test_loose_permissions_are_refused_with_the_fix(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.write(KEY, sample_record("a", "r", now=T0), expected_version=None)
    os.chmod(store.directory, 0o755)
    with pytest.raises(UnsafeStorePath, match="chmod 700"):
        store.read(KEY)
    os.chmod(store.directory, 0o700)
    path = next(p for p in store.directory.iterdir() if p.suffix == ".json")
    os.chmod(path, 0o644)
    with pytest.raises(UnsafeStorePath, match="chmod 600"):
        store.read(KEY)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{",
        b"\x00\x01garbage",
        b"[]",
        json.dumps({"format": "other"}).encode(),
        json.dumps(
            {
                "format": "grantkeeper-credential",
                "key": {"server_url": "x"},
                "version": 0,
                "record": {},
            }
        ).encode(),
    ],
)
def test_corrupt_file_is_a_clear_error_and_nothing_else_is_touched(
    tmp_path: Path, content: bytes
) -> None:
    store = FileStore(tmp_path)
    store.write(KEY, sample_record("a", "r", now=T0), expected_version=None)
    store.write(OTHER, sample_record("b", "r2", now=T0), expected_version=None)
    path = next(
        p for p in store.directory.iterdir() if p.suffix == ".json" and "mcp.example.test" in p.name
    )
    other_before = {p.name: p.read_bytes() for p in store.directory.iterdir() if p != path}
    path.write_bytes(content)
    with pytest.raises(StoreCorrupt) as info:
        store.read(KEY)
    assert str(store.directory) in str(info.value)
    with pytest.raises(StoreCorrupt):
        store.write(KEY, sample_record("c", "r", now=T0), expected_version=1)
    assert path.read_bytes() == content
    assert {p.name: p.read_bytes() for p in store.directory.iterdir() if p != path} == other_before
    assert store.keys() == [OTHER]
    assert len(store.problems()) == 1


def test_truncated_file_from_a_torn_write_is_detected(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.write(KEY, sample_record("a", "r", now=T0), expected_version=None)
    path = next(p for p in store.directory.iterdir() if p.suffix == ".json")
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(StoreCorrupt):
        store.read(KEY)


def test_missing_directory_reads_as_empty(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "never-created")
    assert store.read(KEY) is None and store.keys() == []
    assert not (tmp_path / "never-created").exists()


def test_a_corrupt_record_can_be_deleted_or_replaced_by_a_new_login(tmp_path: Path) -> None:
    from grantkeeper._oauth.code_flow import save

    store = FileStore(tmp_path)
    store.write(KEY, sample_record("a", "r", now=T0), expected_version=None)
    store.write(OTHER, sample_record("b", "r2", now=T0), expected_version=None)
    path = next(
        p for p in store.directory.iterdir() if p.suffix == ".json" and "mcp.example" in p.name
    )
    path.write_bytes(b"{torn")
    save(store, KEY, sample_record("new", "r3", now=T0))
    found = store.read(KEY)
    assert found is not None and found.record.access_token == "new" and found.version == 1
    path.write_bytes(b"{torn again")
    assert store.delete(KEY) is True
    assert store.read(KEY) is None and store.keys() == [OTHER]


# -- temp files a killed writer leaves behind ----------------------------------------------

PAUSED_WRITER = """
import os, sys
from pathlib import Path
from grantkeeper import FileStore
from tests.helpers import KEY, T0
from grantkeeper.testing import sample_record

real_replace = os.replace


def paused_replace(*args, **kwargs):
    # The temp file is written and synced; stop before it is renamed into place.
    print("renaming", flush=True)
    if sys.stdin.readline() == "":
        raise SystemExit(3)
    return real_replace(*args, **kwargs)


os.replace = paused_replace
FileStore(Path(sys.argv[1])).write(KEY, sample_record(sys.argv[2], "r", now=T0), expected_version=1)
print("written", flush=True)
"""


def _temps(store: FileStore) -> list[str]:
    return sorted(p.name for p in store.directory.iterdir() if p.name.endswith(".tmp"))


def _paused_writer(tmp_path: Path, token: str) -> subprocess.Popen[str]:
    script = tmp_path / "writer.py"
    script.write_text(PAUSED_WRITER)
    child = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "home"), token],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
        # A script's own directory heads its path, not the cwd: give it ours (tests, src).
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        start_new_session=True,  # signalled through signal_own_child
    )
    assert child.stdout is not None and child.stdout.readline() == "renaming\n"
    return child


@pytest.mark.parametrize("next_write", ["same record", "other record", "logout"])
def test_the_temp_file_of_a_writer_killed_mid_write_is_removed_by_the_next_write(
    tmp_path: Path, next_write: str
) -> None:
    store = FileStore(tmp_path / "home")
    store.write(KEY, sample_record("a", "r", now=T0), expected_version=None)
    with _paused_writer(tmp_path, "killed-mid-write") as child:
        [leftover] = _temps(store)
        assert "killed-mid-write" in (store.directory / leftover).read_text()
        signal_own_child(child.pid, signal.SIGKILL)
        child.wait(timeout=60)
    assert _temps(store) == [leftover]
    if next_write == "same record":
        store.write(KEY, sample_record("b", "r", now=T0), expected_version=1)
    elif next_write == "other record":
        store.write(OTHER, sample_record("c", "r", now=T0), expected_version=None)
    else:
        assert store.delete(KEY, expected_version=1)
    assert _temps(store) == []


def test_a_live_writers_temp_file_is_never_removed_under_it(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "home")
    store.write(KEY, sample_record("a", "r", now=T0), expected_version=None)
    with _paused_writer(tmp_path, "still-writing") as child:
        assert child.stdin is not None and child.stdout is not None
        [in_use] = _temps(store)
        # Another record's write (and its sweep) runs while the writer holds its lock.
        store.write(OTHER, sample_record("c", "r", now=T0), expected_version=None)
        assert _temps(store) == [in_use]
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.stdout.readline() == "written\n"
        assert child.wait(timeout=60) == 0
    found = store.read(KEY)
    assert found is not None and found.record.access_token == "still-writing"
    assert _temps(store) == []


def test_only_our_temp_files_are_cleaned(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "home")
    store.write(KEY, sample_record("a", "r", now=T0), expected_version=None)
    name = next(p.name for p in store.directory.iterdir() if p.suffix == ".json")
    ours = store.directory / f".{name}.999999.140000000000.tmp"
    foreign = [store.directory / n for n in ("notes.tmp", f".{name}.tmp", f"{name}.1.2.tmp")]
    for path in [ours, *foreign]:
        path.write_text("{}")
        path.chmod(0o600)
    store.write(KEY, sample_record("b", "r", now=T0), expected_version=1)
    assert not ours.exists()
    assert all(path.exists() for path in foreign)


def test_a_side_files_leftover_temp_file_is_removed_by_its_next_update(tmp_path: Path) -> None:
    from keyring.backends import fail

    from grantkeeper import AutoStore, KeyringStore

    no_keyring = KeyringStore(tmp_path, backend=fail.Keyring())  # type: ignore[no-untyped-call]
    store = AutoStore(tmp_path, keyring=no_keyring)
    store.write(KEY, sample_record("a", "r", now=T0), expected_version=None)
    leftover = store.file.directory / "..placements.999999.140000000000.tmp"
    leftover.write_text("{}")
    leftover.chmod(0o600)
    store.write(OTHER, sample_record("b", "r", now=T0), expected_version=None)  # places OTHER
    assert not leftover.exists()
