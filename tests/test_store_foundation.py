"""The stores' shared foundation: one compare-and-swap rule, one envelope, one file layer."""

from __future__ import annotations

import ast
import fcntl
import os
import stat
import threading
from pathlib import Path

import pytest

from grantkeeper import CredentialKey, LockTimeout, ServerConfig, StoreCorrupt, VersionConflict
from grantkeeper._servers import load_servers, save_server, servers_file
from grantkeeper._stores import _fs
from grantkeeper._stores.base import envelope, may_delete, next_version, open_envelope
from grantkeeper.testing import KEY

SRC = Path(__file__).resolve().parents[1] / "src" / "grantkeeper"
WAIT = 60.0


def test_no_module_imports_another_modules_private_names() -> None:
    reaching = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            base = path.parent
            for _ in range(node.level - 1):
                base = base.parent
            target = base.joinpath(*(node.module or "").split(".")) if node.module else base
            for alias in node.names:
                private = alias.name.startswith("_") and not alias.name.startswith("__")
                module = (target / f"{alias.name}.py").exists() or (target / alias.name).is_dir()
                if private and not module:
                    reaching.append(f"{path.relative_to(SRC)}: {node.module}.{alias.name}")
    assert reaching == []


def test_the_compare_and_swap_rule() -> None:
    assert next_version(KEY, None, None) == 1
    assert next_version(KEY, 4, 4) == 5
    for current, expected in [(1, None), (None, 1), (3, 2), (2, 3)]:
        with pytest.raises(VersionConflict, match=f"at version {current}, expected {expected}"):
            next_version(KEY, current, expected)
    assert may_delete(KEY, None, None) is False
    assert may_delete(KEY, None, 3) is False
    assert may_delete(KEY, 3, None) is True
    assert may_delete(KEY, 3, 3) is True
    with pytest.raises(VersionConflict):
        may_delete(KEY, 4, 3)


def test_the_envelope_opens_only_what_it_sealed() -> None:
    document = envelope("fmt", KEY, 7)
    assert open_envelope(document, "fmt", what="x", key=KEY) == (KEY, 7)
    assert open_envelope(document, "fmt", what="x") == (KEY, 7)
    other = CredentialKey.for_server("https://other.example.test/mcp")
    bad = [
        ("not a dict", "fmt", KEY),
        ({**document, "format": "foreign"}, "fmt", KEY),
        ({**document, "version": 0}, "fmt", KEY),
        ({**document, "version": True}, "fmt", KEY),
        ({**document, "key": {"profile": None}}, "fmt", KEY),
        (document, "fmt", other),
    ]
    for candidate, fmt, key in bad:
        with pytest.raises(StoreCorrupt):
            open_envelope(candidate, fmt, what="x", key=key)


# -- servers.json through the file-system layer ------------------------------------------


def test_a_servers_file_update_waits_for_its_lock_only_so_long(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_server(ServerConfig(url="https://a.example.test/mcp", name="a"), tmp_path)
    monkeypatch.setattr(_fs, "UPDATE_LOCK_TIMEOUT", 0.05)
    held = os.open(tmp_path / "servers.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(held, fcntl.LOCK_EX)  # a peer stuck mid-update
    outcome: list[BaseException | None] = []

    def update() -> None:
        try:
            save_server(ServerConfig(url="https://b.example.test/mcp", name="b"), tmp_path)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=update, daemon=True)
    worker.start()
    worker.join(WAIT)
    stuck = worker.is_alive()
    os.close(held)  # lets a worker blocked without a bound finish
    worker.join(WAIT)
    assert not stuck, "the update waited for the lock without a bound"
    assert len(outcome) == 1 and isinstance(outcome[0], LockTimeout)
    assert [c.name for c in load_servers(tmp_path)] == ["a"]


def test_a_servers_file_update_is_atomic_and_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[bool] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    save_server(ServerConfig(url="https://a.example.test/mcp", name="a"), tmp_path)
    assert synced.count(False) >= 1  # the new file's contents
    assert synced.count(True) >= 1  # and the directory entry that names it
    path = servers_file(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [entry.name for entry in tmp_path.iterdir() if entry.name.endswith(".tmp")] == []
