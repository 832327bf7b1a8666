"""Where grantkeeper keeps its files."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

HOME_ENV = "GRANTKEEPER_HOME"
"""Environment variable that overrides the data directory, honoured everywhere."""


def grantkeeper_home() -> Path:
    """``$GRANTKEEPER_HOME`` if set, else the platform's user data directory."""
    configured = os.environ.get(HOME_ENV)
    if configured:
        return Path(configured).expanduser()
    return platformdirs.user_data_path("grantkeeper", appauthor=False)
