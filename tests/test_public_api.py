"""``grantkeeper/__init__.py`` is the contract: guard it like httpx guards its exports."""

from __future__ import annotations

import types

import grantkeeper
from grantkeeper import _errors


def test_all_lists_exactly_the_public_names() -> None:
    public = {
        name
        for name, value in vars(grantkeeper).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert set(grantkeeper.__all__) == public | {"__version__"}
    assert len(grantkeeper.__all__) == len(set(grantkeeper.__all__))


def test_every_exported_name_exists() -> None:
    for name in grantkeeper.__all__:
        assert hasattr(grantkeeper, name), name


def test_the_error_tree_is_exported_whole_and_documented() -> None:
    errors = [getattr(_errors, name) for name in _errors.__all__]
    for error in errors:
        assert issubclass(error, grantkeeper.GrantkeeperError)
        assert error.__name__ in grantkeeper.__all__
        assert error.__name__ in (_errors.__doc__ or ""), f"{error.__name__} missing from the tree"


def test_exported_classes_report_the_public_module() -> None:
    classes = [v for n in grantkeeper.__all__ if isinstance(v := getattr(grantkeeper, n), type)]
    assert {"FileStore", "KeyringStore", "AutoStore", "PostgresStore", "Store", "Stored"} <= {
        c.__name__ for c in classes
    }
    for cls in classes:
        assert cls.__module__ == "grantkeeper", cls
    assert repr(grantkeeper.LockTimeout("held")).startswith("LockTimeout(")
    assert str(grantkeeper.FileStore).startswith("<class 'grantkeeper.FileStore'")


def test_the_other_public_modules_report_themselves_too() -> None:
    import grantkeeper.mcp
    import grantkeeper.testing

    assert grantkeeper.testing.StepClock.__module__ == "grantkeeper.testing"
    assert grantkeeper.testing.FakeProvider.__module__ == "grantkeeper.testing"
    assert grantkeeper.testing.StoreContract.__module__ == "grantkeeper.testing"
    assert grantkeeper.mcp.Httpx2Auth.__module__ == "grantkeeper.mcp"
    assert grantkeeper.mcp.McpSession.__module__ == "grantkeeper.mcp"


def test_the_fakes_import_without_pytest() -> None:
    # Users test with unittest too; only StoreContract needs pytest, when asked for.
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['pytest'] = None\n"
        "from grantkeeper.testing import FakeProvider, MemoryKeyring, StepClock, sample_record\n"
        "StepClock().advance(1); sample_record()\n"
        "try:\n    from grantkeeper.testing import StoreContract\n"
        "except ImportError:\n    print('contract needs pytest')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "contract needs pytest"
