"""A benchmark's result as a Markdown section of docs/benchmarks.md."""

from __future__ import annotations

from dataclasses import dataclass, field


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
