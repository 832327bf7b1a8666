"""Run the benchmarks and write docs/benchmarks.md.

    python -m benchmarks [--only P1,P4] [--repeats 5] [--smoke] [--output docs/benchmarks.md]

``scripts/bench`` wraps this with the set-up (venv, npm, keyring session). ``--smoke`` runs
each benchmark once at a tiny size, as the test suite does, and checks nothing but that
they still run.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import shlex
import sys
import time
from pathlib import Path

from benchmarks._measure import machine
from benchmarks._report import Section

BENCHMARKS = {
    "P1": "benchmarks.p1_concurrent_calls",
    "P2": "benchmarks.p2_request_overhead",
    "P3": "benchmarks.p3_refresh_storm",
    "P4": "benchmarks.p4_store_scale",
    "P5": "benchmarks.p5_cold_start",
    "P6": "benchmarks.p6_fleet_hosts",
    "P7": "benchmarks.p7_proxy",
    "P8": "benchmarks.p8_dpop",
}


def run(names: list[str], *, repeats: int, smoke: bool) -> list[Section]:
    sections = []
    for name in names:
        module = importlib.import_module(BENCHMARKS[name])
        started = time.monotonic()
        section: Section = module.smoke() if smoke else module.run(repeats=repeats)
        section.notes.append(f"Took {time.monotonic() - started:.0f} s.")
        sections.append(section)
        print(f"{name} done", file=sys.stderr)
    return sections


def render(sections: list[Section], command: str) -> str:
    head = [
        "# Benchmarks",
        "",
        "Figures from one run on one machine, side by side. The machine is shared and noisy:",
        "compare the ratios, not the absolute times. Each cell is a median with its min–max",
        "spread in brackets.",
        "",
        f"- machine: {machine()}",
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"- command: `{command}`",
        "",
        "",
    ]
    return "\n".join(head) + "\n".join(section.markdown() for section in sections)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="e.g. P1,P4")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="one tiny iteration each")
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"))
    args = parser.parse_args(argv)
    names = [n.strip().upper() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    sections = run(names, repeats=args.repeats, smoke=args.smoke)
    command = "scripts/bench" + (" " + shlex.join(argv or sys.argv[1:]) if sys.argv[1:] else "")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render(sections, command), encoding="utf-8")
    print(args.output.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
