"""P3: a refresh storm on the real oidc-provider, for grantkeeper and its peers.

P processes × T tasks call an MCP tool for D seconds while access tokens live TTL seconds,
all starting from one shared login (``benchmarks/_storm.py`` says how each client kind
shares it). The authorization server rotates refresh tokens and revokes the whole grant
when a spent one comes back, so every replay costs the fleet its login.

From the authorization server: refresh calls, rotations (successful refreshes), replays and
forced re-authentications (authorization codes redeemed after the initial login). From the
clients: calls, failed calls, and the latency of calls that were in flight while a token was
issued ("hit a rotation"), against all calls; from grantkeeper's workers, how long each
provider refresh took. A rotation should cost a caller at most the refresh itself: what it
adds to the p99 of the calls that hit one stays within :data:`RATIO_GOAL` of the refresh's
p99, judged on the calls after the first pace (each task's first call is a start-up queue:
see the note :func:`run` writes).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import multiprocessing
import statistics
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._report import Section, ratio_cell
from benchmarks._storm import KINDS, Call, Plan, log_in_once, work

PACE = 4.0
"""Seconds between a task's calls. Agents call tools every few seconds; and 2 cores serve
about 100 MCP calls a second here (client, server and introspection all on them), so 256
tasks at this pace (~64 calls/s) keep the machine busy without saturating it, and the
latency columns measure refreshes rather than a queue."""

PEERS_NOTE = (
    "Why the peers look the way they do: after a restart (every worker starts from the "
    "stored login) neither the SDK nor fastmcp knows the token endpoint or, for the SDK, the "
    "expiry; both refresh only before a request and with no margin, so the token dies at "
    "the server first, and a 401 sends them to a new browser login, never to the refresh "
    "token. Each process then lives on a grant of its own and refreshes that one, which is "
    "why they show refreshes but no replays. Their calls succeed only because the harness "
    "approves each login at once; the forced re-authentication column is the real cost."
)

START_TIMEOUT = 180.0
"""Seconds for every worker to import, connect and reach the start line."""

RATIO_GOAL = 1.2
"""What a rotation adds to the p99 of the calls that meet one (their p99 minus the p99 of
all calls), after the first pace, at most this many times the provider refresh's p99. With
3 s tokens and a call every 4 s, most calls that meet a rotation hold a token that expired
between two calls and must wait for a refresh: the physical limit of what a rotation costs
them is one provider refresh, and 20 % leaves room for the noise of a shared machine."""


@dataclass
class Outcome:
    """One run of one client kind."""

    calls: int = 0
    failed: int = 0
    refresh_calls: int = 0
    rotations: int = 0
    replays: int = 0
    reauths: int = 0
    crashed: int = 0
    errors: dict[str, int] | None = None
    all_latency: tuple[float, float] = (float("nan"), float("nan"))
    rotation_latency: tuple[float, float] = (float("nan"), float("nan"))
    rotation_calls: int = 0
    provider_latency: tuple[float, float] = (float("nan"), float("nan"))
    """p50 and p99 of the provider's refresh, as grantkeeper's workers timed it."""
    steady_latency: tuple[float, float] = (float("nan"), float("nan"))
    """p50 and p99 of the calls started after the first pace (in which each task makes its
    first call: see the note :func:`run` writes)."""
    steady_rotation_latency: tuple[float, float] = (float("nan"), float("nan"))
    """The same, of those that hit a rotation."""

    @property
    def p99_ratio(self) -> float:
        """p99 of calls hitting a rotation over p99 of all calls (NaN if either is)."""
        everyone, hit = self.all_latency[1], self.rotation_latency[1]
        return hit / everyone if everyone > 0 else float("nan")

    @property
    def extra_ratio(self) -> float:
        """What a rotation adds to the p99 (calls hitting one, minus all calls), after the
        first pace, over the provider refresh's p99 (NaN where the refresh was not timed,
        or no call after the first pace hit a rotation)."""
        extra = self.steady_rotation_latency[1] - self.steady_latency[1]
        refresh = self.provider_latency[1]
        if extra != extra or not refresh > 0:  # no call hit a rotation, or none was timed
            return float("nan")
        return max(0.0, extra) / refresh


def _percentiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return (values[0], values[0]) if values else (float("nan"), float("nan"))
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[49], cuts[98]


@contextlib.contextmanager
def _servers(ttl: int) -> Iterator[tuple[Any, str]]:
    from benchmarks._server_process import mcp_server_process
    from harness.authserver import AuthServer

    with AuthServer(access_ttl=ttl) as auth, mcp_server_process(auth.issuer) as url:
        yield auth, url


def _seed(kind: str, auth: Any, url: str, scratch: Path) -> str:
    """Log in once, into the store ``kind`` shares, the way ``kind`` logs in; return it."""
    if kind == "grantkeeper":
        from grantkeeper import CredentialKey, FileStore
        from harness.real_login import log_in

        home = scratch / "grantkeeper"
        log_in(auth, FileStore(home), CredentialKey.for_server(url), resource=url)
        return str(home)
    store = scratch / ("sdk-tokens.json" if kind == "mcp SDK" else "fastmcp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fastmcp's store warns that its API may change
        asyncio.run(log_in_once(Plan(kind, url, str(store), 1, 0)))
    return str(store)


def storm(
    kind: str, *, processes: int, tasks: int, seconds: float, ttl: int, pace: float
) -> Outcome:
    """One run of ``kind`` against fresh servers."""
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="gk-storm-") as scratch, _servers(ttl) as (auth, url):
        store = _seed(kind, auth, url, Path(scratch))
        auth.reset_stats()  # the initial login is not a forced re-authentication
        plan = Plan(kind, url, store, tasks, seconds, pace)
        ready = context.Barrier(processes + 1, timeout=START_TIMEOUT)
        results = context.Queue()
        workers = [
            context.Process(target=work, args=(plan, ready, results), daemon=True)
            for _ in range(processes)
        ]
        for worker in workers:
            worker.start()
        try:
            ready.wait()
        except Exception:  # a worker failed to start (it aborted the barrier) or timed out
            pass
        began = time.time()
        # Counted from the start line: tokens issued while sessions opened are set-up.
        before = auth.stats()
        reports = [results.get(timeout=seconds + START_TIMEOUT) for _ in workers]
        for worker in workers:
            worker.join(timeout=30)
        stats = _since(before, auth.stats())
    calls: list[Call] = [call for _, found, _, _ in reports if found for call in found]
    provider = [seconds for *_, durations in reports for seconds in durations]
    issued = sorted(ms / 1000 for ms in stats["issued_at"])
    latencies = [ended - started for started, ended, error in calls if error is None]
    hit = [
        ended - started
        for started, ended, error in calls
        if error is None and _contains(issued, started, ended)
    ]
    steady = [
        (started, ended)
        for started, ended, error in calls
        if error is None and started >= began + pace
    ]
    errors: dict[str, int] = {}
    for _, _, error in calls:
        if error is not None:
            errors[error] = errors.get(error, 0) + 1
    return Outcome(
        calls=len(calls),
        failed=sum(errors.values()),
        refresh_calls=int(stats["refresh_success"]) + len(stats["refresh_errors"]),
        rotations=int(stats["refresh_success"]),
        replays=int(stats["replays"]),
        reauths=int(stats["code_success"]),
        crashed=sum(1 for _, found, _, _ in reports if found is None),
        errors=errors,
        all_latency=_percentiles(latencies),
        rotation_latency=_percentiles(hit),
        rotation_calls=len(hit),
        provider_latency=_percentiles(provider),
        steady_latency=_percentiles([ended - started for started, ended in steady]),
        steady_rotation_latency=_percentiles(
            [ended - started for started, ended in steady if _contains(issued, started, ended)]
        ),
    )


def _since(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What the authorization server counted between two snapshots of its stats."""
    delta: dict[str, Any] = {}
    for name, value in after.items():
        if isinstance(value, list):
            delta[name] = value[len(before.get(name, [])) :]
        else:
            delta[name] = value - before.get(name, 0)
    return delta


def _contains(sorted_times: list[float], started: float, ended: float) -> bool:
    """Whether any time in ``sorted_times`` falls within [started, ended]."""
    index = bisect.bisect_left(sorted_times, started)
    return index < len(sorted_times) and sorted_times[index] <= ended


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f}"


def _cell(values: list[float]) -> str:
    """A count's median, with its min–max when repeats differ."""
    low, high = min(values), max(values)
    return _median(values) + ("" if low == high else f" ({low:,.0f}–{high:,.0f})")


def _ms(pairs: list[tuple[float, float]]) -> str:
    """Two latencies of repeated runs (seconds) as "first / second ms", each the median
    of the runs that had one; "–" for a side none had."""
    sides = [[value for value in side if value == value] for side in zip(*pairs, strict=True)]
    if len(sides) != 2 or not any(sides):
        return "–"
    first, second = (f"{statistics.median(side) * 1e3:,.0f}" if side else "–" for side in sides)
    return f"{first} / {second} ms"


def run(
    *,
    repeats: int = 5,
    processes: int = 16,
    tasks: int = 16,
    seconds: float = 60,
    ttl: int = 3,
    pace: float = PACE,
    max_repeats: int = 3,
) -> Section:
    repeats = max(1, min(repeats, max_repeats))
    section = Section(
        "P3",
        f"refresh storm: {processes} processes × {tasks} tasks for {seconds:g} s, "
        f"a call every {pace:g} s per task, access tokens live {ttl} s",
        "grantkeeper: provider refresh calls == rotations, 0 replays, 0 failed calls "
        "(and no forced re-authentication), and after the first pace what a rotation adds "
        "to the p99 (p99 of calls hitting one minus p99 of all calls) ≤ "
        f"{RATIO_GOAL}× the provider refresh's p99",
        [
            "client",
            "calls",
            "failed calls",
            "refresh calls",
            "rotations",
            "replays",
            "forced re-auths",
            "p50 / p99, all calls",
            "p50 / p99, calls hitting a rotation",
            "p99 ratio, hitting a rotation / all",
            "after the first pace: p99 all / hitting a rotation",
            "provider refresh p50 / p99",
            "p99 added by a rotation (after the first pace) / refresh p99",
        ],
    )
    outcomes: dict[str, list[Outcome]] = {kind: [] for kind in KINDS}
    for _ in range(repeats):
        for kind in KINDS:
            outcomes[kind].append(
                storm(kind, processes=processes, tasks=tasks, seconds=seconds, ttl=ttl, pace=pace)
            )
    for kind, runs in outcomes.items():
        section.rows.append(
            [
                kind,
                _cell([o.calls for o in runs]),
                _cell([o.failed for o in runs]),
                _cell([o.refresh_calls for o in runs]),
                _cell([o.rotations for o in runs]),
                _cell([o.replays for o in runs]),
                _cell([o.reauths for o in runs]),
                _ms([o.all_latency for o in runs]),
                _ms([o.rotation_latency for o in runs]),
                ratio_cell([o.p99_ratio for o in runs]),
                _ms([(o.steady_latency[1], o.steady_rotation_latency[1]) for o in runs]),
                _ms([o.provider_latency for o in runs]),
                ratio_cell([o.extra_ratio for o in runs]),
            ]
        )
    ours = outcomes["grantkeeper"]
    ratios = [o.extra_ratio for o in ours if o.extra_ratio == o.extra_ratio]
    section.met = (
        all(
            o.rotations > 0
            and o.refresh_calls == o.rotations
            and o.replays == 0
            and o.failed == 0
            and o.reauths == 0
            and o.crashed == 0
            for o in ours
        )
        # Latency is noisy on a shared machine: the median run is judged, as in the cells.
        and bool(ratios)
        and statistics.median(ratios) <= RATIO_GOAL
    )
    expected = seconds / ttl
    section.notes.append(
        f"Median (min–max where repeats differ) over {repeats} repeat(s); each run starts "
        "fresh servers and one shared login, then all workers start together at a barrier. "
        f'About {expected:.0f} expiries fall in each run. A call "hits a rotation" when '
        "the authorization server issued a token while it was in flight. The provider "
        "refresh is timed by grantkeeper's workers (its `refresh.provider_call` events); "
        "the ratios are per run, then the median (min–max) over runs, and the median run "
        f"is judged. What a rotation adds is judged on the calls started after the first "
        f"{pace:g} s, one pace, in which every task makes its first call: those "
        f"{processes * tasks} first calls, each with a token that expired while the sessions "
        "opened, queue behind each other, which would make both p99s that queue's (the "
        "pace is counted from the start line as this process saw it, so a task whose "
        "first call started late may have it counted after). A run in which no call after "
        "the first pace hit a rotation has no ratio (–) and is not judged. Forced "
        "re-authentications are browser logins the client started (the harness plays the "
        "browser); in real use each is a person interrupted."
    )
    for kind, runs in outcomes.items():
        merged: dict[str, int] = {}
        for outcome in runs:
            for name, count in (outcome.errors or {}).items():
                merged[name] = merged.get(name, 0) + count
        crashed = sum(o.crashed for o in runs)
        if merged or crashed:
            top = ", ".join(
                f"{name} ×{count:,}"
                for name, count in sorted(merged.items(), key=lambda item: -item[1])[:4]
            )
            section.notes.append(
                f"{kind}: failed calls by error (all repeats): {top or 'none'}"
                + (f"; {crashed} worker(s) crashed" if crashed else "")
                + "."
            )
    section.notes.append(PEERS_NOTE)
    return section


def smoke() -> Section:
    return run(repeats=1, processes=2, tasks=2, seconds=3, ttl=2, pace=0.2)
