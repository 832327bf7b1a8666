"""Hypothesis settings shared by the fuzz suites: a few hundred cases in the normal suite,
``GRANTKEEPER_FUZZ_EXAMPLES`` (``scripts/fuzz`` sets 100000) in the full run."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

FUZZ_EXAMPLES = int(os.environ.get("GRANTKEEPER_FUZZ_EXAMPLES", "200"))
"""Cases per fuzz test."""

FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
"""Apply to every fuzz test."""
