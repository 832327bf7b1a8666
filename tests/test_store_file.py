"""The file store passes the store conformance suite."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from grantkeeper import FileStore
from grantkeeper.testing import StoreContract, StoreFactory

pytestmark = pytest.mark.portable  # needs no Linux-only server


class TestFileStore(StoreContract):
    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> StoreFactory:
        return functools.partial(FileStore, tmp_path / "home")
