"""Medians and spreads: the machine is shared and noisy, so report ratios of medians."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Spread:
    """The median of repeated measurements, with their min and max."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, samples: list[float]) -> Spread:
        return cls(statistics.median(samples), min(samples), max(samples))

    def fmt(self, unit: str = "", scale: float = 1.0, digits: int = 1) -> str:
        m, lo, hi = (v * scale for v in (self.median, self.low, self.high))
        return f"{m:.{digits}f}{unit} ({lo:.{digits}f}–{hi:.{digits}f})"


def per_op_seconds(operation: Callable[[], object], count: int) -> float:
    """Mean seconds per call of ``operation`` over ``count`` back-to-back calls."""
    started = time.perf_counter()
    for _ in range(count):
        operation()
    return (time.perf_counter() - started) / count


def ratio(numerator: Spread, denominator: Spread) -> str:
    return f"{numerator.median / denominator.median:.2f}×"


def machine() -> str:
    """One line about where the figures come from."""
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{platform.system()} {platform.release()}, {os.cpu_count()} CPUs"
        f"{' (' + model + ')' if model else ''}, Python {platform.python_version()}"
    )
