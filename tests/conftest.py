"""Suite-wide guards: every log line of every test is checked for secrets."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from harness import secrets_seen


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
