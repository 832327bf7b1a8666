"""Where grantkeeper keeps its files."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import platformdirs

from ._errors import StoreUnavailable

HOME_ENV = "GRANTKEEPER_HOME"
"""Environment variable that overrides the data directory, honoured everywhere."""


def grantkeeper_home() -> Path:
    """``$GRANTKEEPER_HOME`` if set, else the platform's user data directory."""
    configured = os.environ.get(HOME_ENV)
    if configured:
        return Path(configured).expanduser()
    return platformdirs.user_data_path("grantkeeper", appauthor=False)


def user_runtime_dir() -> Path:
    """grantkeeper's directory in the user's runtime directory, whatever ``GRANTKEEPER_HOME``.

    On Linux ``$XDG_RUNTIME_DIR/grantkeeper``; without the variable, platformdirs falls back
    to ``/run/user/<uid>`` (what logind sets the variable to, so a cron job and a desktop
    session agree), then to ``runtime-<uid>`` in the temporary directory. It is per user,
    private, on a local file system, and emptied at logout: the place for locks that guard
    something the whole user account shares, such as the OS keyring.
    """
    try:
        with warnings.catch_warnings():
            # platformdirs warns when it falls back; the fallback is the documented choice.
            warnings.simplefilter("ignore")
            return platformdirs.user_runtime_path("grantkeeper", appauthor=False)
    except OSError as exc:
        raise StoreUnavailable(
            f"the user's runtime directory is unusable ({exc.strerror or type(exc).__name__}); "
            "set XDG_RUNTIME_DIR to a private directory"
        ) from None
