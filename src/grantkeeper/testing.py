"""Test your code against grantkeeper: fakes to drive it, and the store conformance suite.

The fakes, as ``trio.testing`` and ``httpx.MockTransport`` offer theirs:

- :class:`StepClock`: a clock to pass as ``clock=``; it moves only by ``advance(seconds)``,
  so freshness and expiry are stepped by hand, never waited for;
- :class:`MemoryKeyring`: an in-memory ``keyring`` backend for
  ``KeyringStore(home, backend=MemoryKeyring())``; set ``locked = True`` to see what a
  locked desktop keyring does to your code;
- :class:`FakeProvider`: a token endpoint that rotates refresh tokens and detects reuse as
  oidc-provider does (a spent refresh token answers ``invalid_grant`` and revokes the whole
  grant). ``issue()`` starts a grant; route requests to it with ``transport()`` (an
  ``httpx.MockTransport``) or ``serve()`` (real HTTP on loopback, for other processes);
  ``refresh_calls``, ``rotations`` and ``replays`` count what happened, and ``faults``
  scripts answers.

The conformance suite: every backend's tests subclass :class:`StoreContract`.

A subclass provides a ``store_factory`` pytest fixture that returns a picklable callable
(``functools.partial(FileStore, tmp_path)``, say). Each call must open the *same* store,
because the cross-process tests call it again in child processes started with the
``spawn`` context. Processes are synchronised with events and barriers, never sleeps.

The fakes need nothing beyond grantkeeper; :class:`StoreContract` needs pytest (a test
dependency, not a runtime one), and is imported only when it is asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._exports import claim as _claim
from ._fakes import (
    KEY,
    OTHER,
    FakeProvider,
    Fault,
    Grant,
    KeyringLocked,
    MemoryKeyring,
    StepClock,
    sample_record,
)

if TYPE_CHECKING:
    from ._stores.contract import StoreContract, StoreFactory

__all__ = [
    "KEY",
    "OTHER",
    "FakeProvider",
    "Fault",
    "Grant",
    "KeyringLocked",
    "MemoryKeyring",
    "StepClock",
    "StoreContract",
    "StoreFactory",
    "sample_record",
]

_CONTRACT = frozenset({"StoreContract", "StoreFactory"})
"""Imported on first use, from the suite's module (it needs pytest). ``KEY`` and ``OTHER``
are the two credential keys the suite writes, for a subclass's own tests."""


def __getattr__(name: str) -> object:
    if name not in _CONTRACT:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from ._stores import contract

    value = getattr(contract, name)
    _claim(__name__, {name: value})
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


_claim(__name__, {name: globals()[name] for name in __all__ if name not in _CONTRACT})
