"""A benchmark's result as a Markdown section of docs/benchmarks.md."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field


def ratio_cell(ratios: list[float]) -> str:
    """Ratios from repeated runs as one cell: the median, with its min–max when runs
    differ; runs that had nothing to compare (NaN) are left out, and none at all is "–"."""
    known = [r for r in ratios if not math.isnan(r)]
    if not known:
        return "–"
    low, high = min(known), max(known)
    spread = "" if f"{low:.2f}" == f"{high:.2f}" else f" ({low:.2f}–{high:.2f})"
    return f"{statistics.median(known):.2f}×{spread}"


@dataclass
class Section:
    """One benchmark's table, its goal and whether the run met it."""

    key: str
    title: str
    goal: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    met: bool | None = None
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        verdict = {True: "met", False: "**missed**", None: "not judged"}[self.met]
        lines = [f"## {self.key}: {self.title}", "", f"Goal: {self.goal} — {verdict}.", ""]
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("|" + "---|" * len(self.columns))
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        if self.notes:
            lines.append("")
            lines += self.notes
        return "\n".join(lines) + "\n"
