"""Windows and macOS, on Linux: every branch of ``grantkeeper._platform`` through an injected
platform (issue 38).

Windows is ``Windows(msvcrt, kernel32)`` with stand-ins for the two: the stand-in
``msvcrt.locking`` takes an ``flock`` on the descriptor (a lock per handle, as ``LockFile``'s
is) and raises what the CRT raises for a held lock; the stand-in ``kernel32`` answers
``OpenProcess`` and ``GetExitCodeProcess`` as scripted. macOS is ``Posix("darwin",
procfs=False)``: the real ``kill(pid, 0)``, without procfs. On those two platforms the
real ones are used instead of stand-ins where a test can (see ``windows`` below); what
needs Linux (a zombie, ``flock``) skips there with the reason.

What this cannot show, and the notes of issue 38 say: that real Windows answers as the
stand-ins do. The public repository's CI runs this module on Windows and macOS.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import platformdirs
import pytest

import grantkeeper._rescue_copies as rescue
from grantkeeper import (
    CredentialKey,
    FileStore,
    LockTimeout,
    StoreUnavailable,
    UnsafeStorePath,
    VersionConflict,
)
from grantkeeper._platform import current, use
from grantkeeper._platform.windows import (
    ERROR_ACCESS_DENIED,
    ERROR_INVALID_PARAMETER,
    MOVEFILE_REPLACE_EXISTING,
    MOVEFILE_WRITE_THROUGH,
    PROCESS_QUERY_LIMITED_INFORMATION,
    STILL_ACTIVE,
    PathDir,
    Windows,
)
from grantkeeper._stores.admin import diagnose_store
from grantkeeper.testing import sample_record
from tests.helpers import ROOT

if sys.platform != "win32":  # asserts it is not imported there
    from grantkeeper._platform.posix import Posix

pytestmark = pytest.mark.portable

KEY = CredentialKey("https://mcp.example.com/mcp", "client-1")
linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the stand-ins use flock; zombies need Linux"
)


class FakeMsvcrt:
    """``msvcrt.locking`` on one byte at the current position, recorded."""

    LK_NBLCK = 2
    LK_UNLCK = 0

    def __init__(self, *, refuse_with: int = errno.EACCES) -> None:
        self.calls: list[tuple[int, int, int]] = []
        self.refuse_with = refuse_with

    def locking(self, fd: int, mode: int, nbytes: int, /) -> None:
        import fcntl  # Linux and macOS: the module must import on Windows (portable)

        self.calls.append((os.lseek(fd, 0, os.SEEK_CUR), mode, nbytes))
        if mode == self.LK_UNLCK:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # What the CRT's _locking sets for a region another handle holds: EACCES for
            # LK_NBLCK (EDEADLOCK is LK_LOCK's, after its retries; taken as "held" too).
            raise OSError(self.refuse_with, os.strerror(self.refuse_with)) from None


class FakeKernel32:
    """``OpenProcess``/``GetExitCodeProcess`` answering from ``processes`` (pid: exit code,
    ``STILL_ACTIVE`` while running, ``None`` if the query fails); other pids get
    ``error``. ``MoveFileExW`` renames, after ``sharing_violations`` refusals."""

    def __init__(self, processes: dict[int, int | None], *, error: int) -> None:
        self.processes = processes
        self.error = error
        self.open_handles: set[int] = set()
        self.opened: list[tuple[int, bool, int]] = []
        self.sharing_violations = 0
        self.moves: list[int] = []

    def MoveFileExW(self, source: str, target: str, flags: int, /) -> None:  # noqa: N802
        self.moves.append(flags)
        if self.sharing_violations:
            self.sharing_violations -= 1
            raise PermissionError(errno.EACCES, "sharing violation", target)
        os.replace(source, target)

    def OpenProcess(self, access: int, inherit: bool, pid: int, /) -> int:  # noqa: N802
        self.opened.append((access, inherit, pid))
        if pid not in self.processes:
            return 0
        handle = 1000 + pid
        self.open_handles.add(handle)
        return handle

    def GetExitCodeProcess(self, handle: int, /) -> int | None:  # noqa: N802
        assert handle in self.open_handles
        return self.processes[handle - 1000]

    def CloseHandle(self, handle: int, /) -> None:  # noqa: N802
        self.open_handles.remove(handle)

    def last_error(self) -> int:
        return self.error


@pytest.fixture
def windows() -> Iterator[Windows]:
    if sys.platform == "win32":  # the real thing, where there is one
        with use(Windows.native()) as native:
            assert isinstance(native, Windows)
            yield native
        return
    platform = Windows(FakeMsvcrt(), FakeKernel32({}, error=ERROR_INVALID_PARAMETER))
    with use(platform):
        yield platform


@pytest.fixture
def macos() -> Iterator[Posix]:
    if sys.platform == "win32":
        pytest.skip("a POSIX platform: kill(pid, 0) ends a process group's life on Windows")
    with use(Posix("darwin", procfs=False)) as platform:
        assert isinstance(platform, Posix)
        yield platform


def _refuse_kill(pid: int, sig: int) -> None:
    raise AssertionError(f"os.kill({pid}, {sig}) on Windows sends CTRL_C_EVENT to a group")


# -- files ----------------------------------------------------------------------------------


def test_the_native_platform_is_the_one_this_process_runs_on() -> None:
    platform = current()
    if sys.platform.startswith("linux"):
        assert isinstance(platform, Posix) and platform.name == "linux" and platform.procfs
    elif sys.platform == "darwin":
        assert isinstance(platform, Posix) and platform.name == "darwin" and not platform.procfs
    else:
        assert isinstance(platform, Windows)


def test_windows_keeps_credentials_by_path_with_compare_and_swap(
    windows: Windows, tmp_path: Path
) -> None:
    store = FileStore(tmp_path / "home")
    first = store.write(KEY, sample_record("at-1", "rt-1"), expected_version=None)
    assert isinstance(windows.open_dir(store.directory), PathDir)
    second = store.write(KEY, sample_record("at-2", "rt-2"), expected_version=first)
    with pytest.raises(VersionConflict):
        store.write(KEY, sample_record("at-3", "rt-3"), expected_version=first)
    stored = store.read(KEY)
    assert stored is not None and stored.version == second
    assert stored.record.refresh_token == "rt-2"
    assert store.keys() == [KEY]
    # No temp file is left beside the record, and deleting it leaves nothing either.
    assert [p.name for p in store.directory.iterdir() if p.name.endswith(".tmp")] == []
    assert store.delete(KEY, expected_version=second)
    assert store.read(KEY) is None


@linux_only
def test_windows_mode_bits_are_not_the_protection_the_profile_acl_is(
    windows: Windows, tmp_path: Path
) -> None:
    """Windows reports 0666 for every writable file: refusing "loose" modes there would
    refuse every store. The user profile's ACL protects it instead (docs/security.md)."""
    store = FileStore(tmp_path / "home")
    store.write(KEY, sample_record("at-1", "rt-1"), expected_version=None)
    [record] = [p for p in store.directory.iterdir() if p.name.endswith(".json")]
    record.chmod(0o666)
    store.directory.chmod(0o755)
    stored = store.read(KEY)
    assert stored is not None and stored.record.access_token == "at-1"
    checks = {check.name: check for check in diagnose_store(store).checks}
    permission = checks[f"permissions {store.directory}"]
    assert permission.ok and "ACL not checked" in permission.detail
    # The same files on Linux or macOS are refused, with the fix.
    with use(Posix("linux", procfs=True)), pytest.raises(UnsafeStorePath, match="chmod 700"):
        store.read(KEY)


def test_windows_refuses_a_symlink_planted_for_the_record_or_the_directory(
    windows: Windows, tmp_path: Path
) -> None:
    store = FileStore(tmp_path / "home")
    store.write(KEY, sample_record("at-1", "rt-1"), expected_version=None)
    [record] = [p for p in store.directory.iterdir() if p.name.endswith(".json")]
    elsewhere = tmp_path / "elsewhere.json"
    record.rename(elsewhere)
    try:
        record.symlink_to(elsewhere)
    except OSError:
        pytest.skip("this Windows account may not create symlinks (Developer Mode is off)")
    with pytest.raises(UnsafeStorePath, match="symlink"):
        store.read(KEY)
    record.unlink()
    moved = tmp_path / "moved"
    store.directory.rename(moved)
    store.directory.symlink_to(moved, target_is_directory=True)
    with pytest.raises(UnsafeStorePath, match="symlink"):
        store.read(KEY)


def test_windows_renames_write_through_and_wait_for_a_reader_then_give_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rename over a file another process has open is a sharing violation on Windows: a
    reader of the credential holds it for one read, so the rename waits, boundedly. It is
    written through: there is no directory to fsync afterwards."""
    kernel32 = FakeKernel32({}, error=0)
    directory = PathDir(tmp_path, kernel32)
    (tmp_path / "new").write_text("B")
    kernel32.sharing_violations = 2
    directory.replace("new", "record")
    assert (tmp_path / "record").read_text() == "B"
    assert kernel32.moves == [MOVEFILE_REPLACE_EXISTING | MOVEFILE_WRITE_THROUGH] * 3

    monkeypatch.setattr("grantkeeper._platform.windows.SHARING_PATIENCE", 0.05)
    kernel32.sharing_violations = 10**9
    (tmp_path / "newer").write_text("C")
    with pytest.raises(PermissionError):
        directory.replace("newer", "record")
    assert (tmp_path / "record").read_text() == "B"


def test_windows_deletes_wait_for_a_reader_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = PathDir(tmp_path, FakeKernel32({}, error=0))
    (tmp_path / "record").write_text("A")
    real_unlink = os.unlink
    refusals = [True, True]

    def unlink(path: Path) -> None:
        if refusals:
            refusals.pop()
            raise PermissionError(errno.EACCES, "sharing violation", str(path))
        real_unlink(path)

    monkeypatch.setattr(os, "unlink", unlink)
    directory.unlink("record")
    assert not (tmp_path / "record").exists() and refusals == []


def test_windows_refuses_a_junction_which_is_no_symlink_to_s_islnk(
    windows: Windows, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A junction (a reparse point) passes ``S_ISLNK`` as a plain directory: its attribute
    is what gives it away."""
    store = FileStore(tmp_path / "home")
    store.write(KEY, sample_record("at-1", "rt-1"), expected_version=None)
    real_lstat = os.lstat

    def lstat(path: str | os.PathLike[str]) -> object:
        info = real_lstat(path)
        if Path(path) != store.directory:
            return info
        return SimpleNamespace(st_mode=info.st_mode, st_file_attributes=0x400)

    monkeypatch.setattr(os, "lstat", lstat)
    with pytest.raises(UnsafeStorePath, match="symlink"):
        store.read(KEY)


# -- locks ----------------------------------------------------------------------------------


@linux_only
@pytest.mark.parametrize("refusal", [errno.EACCES, errno.EDEADLK])
def test_windows_locks_the_first_byte_per_handle_and_frees_it(tmp_path: Path, refusal: int) -> None:
    msvcrt = FakeMsvcrt(refuse_with=refusal)
    with use(Windows(msvcrt, FakeKernel32({}, error=ERROR_INVALID_PARAMETER))):
        store = FileStore(tmp_path / "home")
        with store.lock(KEY, timeout=0):
            # Another handle, even in this process, is refused: a bounded wait, then the
            # typed error.
            with pytest.raises(LockTimeout), store.lock(KEY, timeout=0.05):
                pytest.fail("two holders of one lock")
        with store.lock(KEY, timeout=0):
            pass
    locks = [call for call in msvcrt.calls if call[1] == FakeMsvcrt.LK_NBLCK]
    unlocks = [call for call in msvcrt.calls if call[1] == FakeMsvcrt.LK_UNLCK]
    assert locks and all(size == 1 for _, _, size in locks)
    assert len(unlocks) == 2


@linux_only
def test_windows_locks_from_the_first_byte_wherever_the_descriptor_stands(
    tmp_path: Path,
) -> None:
    """``msvcrt.locking`` locks from the current position: a lock taken elsewhere would not
    exclude one taken at 0."""
    msvcrt = FakeMsvcrt()
    platform = Windows(msvcrt, FakeKernel32({}, error=0))
    fd = os.open(tmp_path / "some.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"12345")
        assert platform.try_lock(fd)
        os.lseek(fd, 3, os.SEEK_SET)
        platform.unlock(fd)
    finally:
        os.close(fd)
    assert msvcrt.calls == [(0, FakeMsvcrt.LK_NBLCK, 1), (0, FakeMsvcrt.LK_UNLCK, 1)]


@linux_only
def test_windows_reports_a_lock_failure_other_than_held_as_a_store_error(
    tmp_path: Path,
) -> None:
    msvcrt = FakeMsvcrt()

    def broken(fd: int, mode: int, nbytes: int, /) -> None:
        raise OSError(errno.EINVAL, "invalid argument")

    msvcrt.locking = broken  # type: ignore[method-assign]
    with use(Windows(msvcrt, FakeKernel32({}, error=ERROR_INVALID_PARAMETER))):
        store = FileStore(tmp_path / "home")
        with pytest.raises(StoreUnavailable, match="cannot lock"):
            with store.lock(KEY, timeout=1):
                pytest.fail("locked without a lock")


# -- processes and hosts --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("processes", "error", "alive"),
    [
        ({4242: STILL_ACTIVE}, ERROR_INVALID_PARAMETER, True),
        ({4242: 0}, ERROR_INVALID_PARAMETER, False),  # exited, handle still open somewhere
        ({4242: 1}, ERROR_INVALID_PARAMETER, False),
        ({4242: None}, ERROR_INVALID_PARAMETER, True),  # cannot tell: alive, wait the lease
        ({}, ERROR_INVALID_PARAMETER, False),  # no such process
        ({}, ERROR_ACCESS_DENIED, True),  # another user's, or protected: it exists
        ({}, 1234, True),  # anything else: cannot tell
    ],
)
def test_windows_liveness_asks_open_process_never_kill(
    processes: dict[int, int | None],
    error: int,
    alive: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from grantkeeper._liveness import process_alive

    kernel32 = FakeKernel32(processes, error=error)
    monkeypatch.setattr(os, "kill", _refuse_kill)
    with use(Windows(FakeMsvcrt(), kernel32)):
        assert process_alive(4242) is alive
    assert kernel32.opened == [(PROCESS_QUERY_LIMITED_INFORMATION, False, 4242)]
    assert kernel32.open_handles == set()  # every handle closed


def test_windows_liveness_of_no_pid_asks_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    from grantkeeper._liveness import process_alive

    kernel32 = FakeKernel32({0: STILL_ACTIVE}, error=ERROR_ACCESS_DENIED)
    monkeypatch.setattr(os, "kill", _refuse_kill)
    with use(Windows(FakeMsvcrt(), kernel32)):
        assert not process_alive(0) and not process_alive(-1)
    assert kernel32.opened == []


def test_windows_names_a_host_by_its_name_and_handles_no_signals_in_the_loop() -> None:
    from grantkeeper._liveness import host_identity

    with use(Windows(FakeMsvcrt(), FakeKernel32({}, error=0))) as platform:
        assert host_identity() == f"host:{socket.gethostname()}"
        assert platform.stop_signals() == ()
        assert platform.uid() is None


def test_windows_native_exists_only_on_windows() -> None:
    if sys.platform == "win32":
        assert isinstance(Windows.native(), Windows)
    else:
        with pytest.raises(RuntimeError, match="Windows only"):
            Windows.native()


@linux_only
def test_macos_cannot_tell_a_zombie_from_a_live_process(macos: Posix, zombie: int) -> None:
    """Without procfs, ``kill(pid, 0)`` is all there is: a killed holder its parent has not
    reaped counts as alive (its lock, dropped by the kernel, is what frees the credential).
    Linux, with procfs, sees it dead."""
    from grantkeeper._liveness import process_alive

    assert process_alive(os.getpid())
    assert process_alive(zombie)
    with use(Posix("linux", procfs=True)):
        assert not process_alive(zombie)


def test_macos_liveness_of_an_ended_process_and_of_no_pid(macos: Posix) -> None:
    from grantkeeper._liveness import process_alive

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(60)  # reaped: the pid names nothing now (unless reused, as anywhere)
    assert not process_alive(child.pid)
    assert not process_alive(0) and not process_alive(-1)  # process groups, never a process


def test_macos_names_a_host_by_its_name_and_stops_on_hangup(macos: Posix) -> None:
    import signal

    from grantkeeper._liveness import host_identity

    assert host_identity() == f"host:{socket.gethostname()}"
    assert signal.SIGHUP in macos.stop_signals() and signal.SIGTERM in macos.stop_signals()


# -- rescue copies --------------------------------------------------------------------------


def test_rescue_copies_go_where_each_platform_keeps_private_files(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    temp = Path(tempfile.gettempdir())
    windows = Windows(FakeMsvcrt(), FakeKernel32({}, error=0))
    # In the profile, never %TEMP%: a service's is C:\Windows\Temp, shared by all.
    cache = platformdirs.user_cache_path("grantkeeper", appauthor=False)
    assert windows.rescue_dirs() == [cache / "rescue"]
    if sys.platform == "win32":
        return
    uid = os.getuid()
    mac = Posix("darwin", procfs=False).rescue_dirs()
    assert mac == [temp / f"grantkeeper-rescue-{uid}"]  # no /run/user, no /dev/shm there
    linux = Posix("linux", procfs=True).rescue_dirs()
    assert linux[:2] == [Path(f"/run/user/{uid}/grantkeeper"), Path(f"/dev/shm/grantkeeper-{uid}")]
    assert linux[-1] == mac[-1]


def test_windows_keeps_and_adopts_a_rescue_copy(windows: Windows, own_rescue_dir: Path) -> None:
    own_rescue_dir.mkdir(mode=0o755)  # mode bits mean nothing there: the ACL protects it
    replaced = sample_record("at-1", "rt-spent")
    answer = sample_record("at-2", "rt-new")
    where = rescue.save(KEY, replaced, answer, plaintext_ok=True)
    assert where is not None and where.parent == own_rescue_dir
    found = rescue.load(KEY, replaced)
    assert found is not None and found.record.refresh_token == "rt-new"


# -- nothing POSIX-only at import -----------------------------------------------------------


def test_every_module_imports_without_posix_only_modules() -> None:
    """``import grantkeeper`` failed on Windows: ``fcntl`` was imported at module level. Here
    every module is imported with our own imports of POSIX-only modules refused, and so are
    the suite's conftest and every test module marked portable, which Windows CI collects."""
    portable = sorted(
        f"tests.{path.stem}"
        for path in Path(__file__).parent.glob("test_*.py")
        if "pytest.mark.portable" in path.read_text(encoding="utf-8")
    )
    # Only our own imports are refused: libraries (mcp) import fcntl under their own
    # ``sys.platform`` guard, which does its job on Windows.
    script = f"""
import builtins, importlib, pkgutil, sys
POSIX_ONLY = {{"fcntl", "termios", "tty", "pwd", "grp", "resource"}}
real_import = builtins.__import__
def refusing(name, globals=None, locals=None, fromlist=(), level=0):
    importer = (globals or {{}}).get("__name__", "")
    ours = importer.split(".")[0] in ("grantkeeper", "tests", "harness", "conftest")
    if ours and level == 0 and name.split(".")[0] in POSIX_ONLY:
        raise ImportError(f"imports {{name}}, which Windows lacks")
    return real_import(name, globals, locals, fromlist, level)
builtins.__import__ = refusing
import grantkeeper
names = [m.name for m in pkgutil.walk_packages(grantkeeper.__path__, "grantkeeper.")]
failed = []
for name in names + ["tests.conftest"] + {portable!r}:
    if name == "grantkeeper.__main__":
        continue  # runs the command
    if name == "grantkeeper._platform.posix" and sys.platform == "win32":
        continue  # never imported there
    try:
        importlib.import_module(name)
    except ImportError as exc:
        failed.append(f"{{name}}: {{exc}}")
print("\\n".join(failed))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == ""
