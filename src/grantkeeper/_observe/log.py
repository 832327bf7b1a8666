"""Structured log events: a stable event name plus fields, never a secret.

Each record's message reads ``event key=value ...`` for people, and carries the same fields
as ``record.grantkeeper`` (a dict) for log pipelines. Callers pass only non-secret values:
keys, fingerprints, durations, error classes. A text field may still repeat a peer's (a URL
a server named, an error's message), so each is scrubbed of the process's known secrets.
"""

from __future__ import annotations

import logging
from typing import Any

from .._redact import scrub_known

logger = logging.getLogger("grantkeeper")


def event(level: int, name: str, /, **fields: Any) -> None:
    """Log event ``name`` with ``fields`` at ``level``."""
    if not logger.isEnabledFor(level):
        return
    fields = {k: scrub_known(v) if isinstance(v, str) else v for k, v in fields.items()}
    text = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
    logger.log(level, "%s %s", name, text, extra={"grantkeeper": {"event": name, **fields}})
