"""Suite-wide guards: every log line of every test is checked for secrets, and rescue copies
go to a directory of the test's own, never to the user's runtime directory or /dev/shm."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from grantkeeper._redact import forget_all
from grantkeeper._rescue_copies import RESCUE_DIR_ENV
from harness import secrets_seen


@pytest.fixture(scope="session", autouse=True)
def session_rescue_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where a Keeper still holding B when the interpreter exits keeps its copy: its flush
    runs after every test's fixtures are undone, so this is set for good, not restored."""
    rescue = tmp_path_factory.mktemp("rescue-at-exit")
    os.environ[RESCUE_DIR_ENV] = str(rescue)
    return rescue


@pytest.fixture(autouse=True)
def own_rescue_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point rescue copies (and those of every child that inherits the environment) at
    ``tmp_path / "rescue"``: a store refusing B must not leave a copy in a shared place."""
    rescue = tmp_path / "rescue"
    monkeypatch.setenv(RESCUE_DIR_ENV, str(rescue))
    return rescue


@pytest.fixture(autouse=True)
def no_remembered_secrets() -> None:
    """Start each test with no known secrets (``grantkeeper._redact``): one test's fixture
    token, say ``the-authorization-code-secret``, must not hide another's ordinary words."""
    forget_all()


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "grantkeeper", None)
        self.lines.append(f"{record.getMessage()} {fields!r}")


@pytest.fixture(autouse=True)
def no_secret_in_logs() -> Iterator[None]:
    """Capture grantkeeper's DEBUG logs and fail the test if any issued secret shows up."""
    handler = _Collect()
    logger = logging.getLogger("grantkeeper")
    previous = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
    leaked = [s for s in secrets_seen() for line in handler.lines if s in line]
    assert not leaked, f"{len(leaked)} secret(s) appeared in grantkeeper's logs"
