"""Many processes, many threads each, sharing one credential through rounds of rotation.

Each round, every thread of every process asks for a credential at once (a barrier
releases them together). Rounds alternate between two ways a rotation is due: the shared
virtual clock moves past expiry, or every caller reports a 401 for the token it holds.
A correct credential layer spends exactly one refresh per round, and every caller ends
the round holding the same new token.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import multiprocessing
import multiprocessing.synchronize
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.sharedctypes import Synchronized

import httpx

from grantkeeper import CredentialKey, HttpxAuth, Keeper, Store
from harness.children import reap

BARRIER_TIMEOUT = 120.0
"""Upper bound on any wait in the fleet: a hung worker fails the run instead of hanging it."""

StoreFactory = Callable[[], Store]


@dataclass
class RoundResult:
    """What one process saw in one round."""

    pid: int
    round: int
    tokens: list[str]
    errors: list[str]
    lock_waits: list[float] = field(default_factory=list)
    """Milliseconds each transaction of the round waited for the credential's lock."""
    calls: list[float] = field(default_factory=list)
    """Milliseconds each caller of the round waited for its credential."""
    provider_calls: list[float] = field(default_factory=list)
    """Milliseconds of each successful provider call (refresh) this process made."""
    adopted_waiting: list[float] = field(default_factory=list)
    """Milliseconds each transaction waited before adopting a peer's commit, unlocked."""
    cpu_ms: float = 0.0
    """CPU time (ms, every thread) the process spent in the round."""


@dataclass
class FleetReport:
    """What the whole fleet saw."""

    processes: int
    threads: int
    rounds: int
    requests: int = 0
    tokens_per_round: list[set[str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock_waits: list[float] = field(default_factory=list)
    """Milliseconds every locked transaction of the fleet waited for the lock."""
    calls: list[float] = field(default_factory=list)
    """Milliseconds every caller of the fleet waited for its credential."""
    provider_calls: list[float] = field(default_factory=list)
    """Milliseconds of every successful provider call (refresh) of the fleet."""
    adopted_waiting: list[float] = field(default_factory=list)
    """Milliseconds every transaction waited before adopting a peer's commit, unlocked."""
    cpu_per_round: list[float] = field(default_factory=list)
    """CPU time (ms) the fleet's processes spent in each round, all of them together."""

    @property
    def distinct_tokens(self) -> int:
        """How many different tokens callers ended rounds with, over all rounds."""
        return len(set().union(*self.tokens_per_round)) if self.tokens_per_round else 0


def _virtual_clock(offset: Synchronized[float]) -> Callable[[], datetime]:
    def now() -> datetime:
        return datetime.now(UTC) + timedelta(seconds=offset.value)

    return now


class _LockWaits(logging.Handler):
    """Collects, in this process, ``waited_ms`` of each ``transaction.locked`` event
    (``waits``) and of each ``transaction.adopted_waiting`` one (``adopted``), and the
    ``duration_ms`` of each successful ``refresh.provider_call`` (``provider``)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.waits: list[float] = []
        self.adopted: list[float] = []
        self.provider: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "grantkeeper", None)
        if not isinstance(fields, dict):
            return
        name = fields.get("event")
        if name == "transaction.locked":
            self.waits.append(float(fields["waited_ms"]))
        elif name == "transaction.adopted_waiting":
            self.adopted.append(float(fields["waited_ms"]))
        elif name == "refresh.provider_call" and fields.get("outcome") == "ok":
            self.provider.append(float(fields["duration_ms"]))

    def take(self) -> tuple[list[float], list[float], list[float]]:
        """``(lock waits, adopted waits, provider calls)`` since the last take."""
        taken = (self.waits, self.adopted, self.provider)
        self.waits, self.adopted, self.provider = [], [], []
        return taken


def _round(
    keeper: Keeper, held: dict[int, str], mode: str, use: Callable[[], None] | None = None
) -> tuple[list[str], list[str], list[float]]:
    """Release one thread per slot at once; each asks for a credential, then ``use``s it.
    Returns the tokens, the errors, and how long (ms) each caller waited for its credential."""
    start = threading.Barrier(len(held) or 1)
    tokens: list[str] = []
    errors: list[str] = []
    calls: list[float] = []

    def call(slot: int) -> None:
        start.wait(BARRIER_TIMEOUT)
        try:
            rejected = held.get(slot) if mode == "reject" else None
            began = time.perf_counter()
            credential = keeper.credential(rejected=rejected, timeout=BARRIER_TIMEOUT)
            calls.append((time.perf_counter() - began) * 1000)
            if use is not None:
                use()
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            return
        held[slot] = credential.access_token
        tokens.append(credential.access_token)

    workers = [threading.Thread(target=call, args=(slot,)) for slot in range(len(held) or 1)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return tokens, errors, calls


def _worker(
    store_factory: StoreFactory,
    key: CredentialKey,
    threads: int,
    modes: list[str],
    barrier: multiprocessing.synchronize.Barrier,
    offset: Synchronized[float],
    results: multiprocessing.Queue[RoundResult],
    resource_url: str | None = None,
    warm: bool = False,
) -> None:
    os.setsid()  # its own session: reap() signals it, and nothing else
    waits = _LockWaits()
    logger = logging.getLogger("grantkeeper")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(waits)
    store = store_factory()
    keeper = Keeper(store, key, clock=_virtual_clock(offset))
    first_error = ""
    try:
        initial = keeper.access_token(timeout=BARRIER_TIMEOUT)
    except Exception as exc:  # reported with the first round
        initial, first_error = "", f"{type(exc).__name__}: {exc}"
    if warm and not first_error:
        try:
            _warm(store, key)
        except Exception as exc:  # reported with the first round; the token is still held
            first_error = f"warming up: {type(exc).__name__}: {exc}"
    held = dict.fromkeys(range(threads), initial)
    barrier.wait(BARRIER_TIMEOUT)  # every worker holds the initial token: the clock may move
    use = None
    if resource_url is not None:
        use = functools.partial(_initialize, _resource_client(keeper), resource_url)
    for number, mode in enumerate(modes):
        barrier.wait(BARRIER_TIMEOUT)
        cpu = time.process_time()
        tokens, errors, calls = _round(keeper, held, mode, use)
        cpu_ms = (time.process_time() - cpu) * 1000
        if first_error and number == 0:
            errors.insert(0, first_error)
        locked, adopted, provider = waits.take()
        results.put(
            RoundResult(
                os.getpid(), number, tokens, errors, locked, calls, provider, adopted, cpu_ms
            )
        )
    keeper.close()


def _warm(store: Store, key: CredentialKey) -> None:
    """Have what a long-lived MCP client process has: what making its MCP connection's HTTP
    client left behind (made as ``grantkeeper.mcp`` makes it, then closed: the imports and
    the trust store context every grantkeeper client shares, so that a first refresh's own
    client costs well under a millisecond, not the ~50 ms of CPU of a process's first), and
    the store's lock session and watch, open once it has waited for a peer (a benchmark
    measures rounds, not a process's first connections, whichever round it would make them
    in). Not the Keeper's HTTP client: only a lock's holder makes one."""
    from grantkeeper.mcp import httpx_client_factory

    asyncio.run(httpx_client_factory().aclose())
    with store.lock(key, timeout=BARRIER_TIMEOUT):
        pass
    watch = getattr(store, "wait_for_change", None)  # the optional Watchable protocol
    if watch is not None:
        record = store.read(key)
        watch(key, None if record is None else record.version, 0)


def _resource_client(keeper: Keeper) -> httpx.Client:
    return httpx.Client(
        auth=HttpxAuth(keeper),
        headers={"accept": "application/json, text/event-stream"},
        timeout=BARRIER_TIMEOUT,
        trust_env=False,
    )


def _initialize(client: httpx.Client, url: str) -> None:
    """One MCP request to ``url`` with the credential (its proof, if DPoP); it must pass."""
    from harness.mcp_server import INITIALIZE

    response = client.post(url, json=INITIALIZE)
    if response.status_code != 200:
        raise RuntimeError(f"the resource answered HTTP {response.status_code}")


def run_fleet(
    store_factory: StoreFactory,
    key: CredentialKey,
    *,
    processes: int = 8,
    threads: int = 4,
    rounds: int = 6,
    lifetime: float = 3600,
    on_round: Callable[[int, set[str]], None] | None = None,
    gate: Callable[[int], None] | None = None,
    resource_url: str | None = None,
    warm: bool = False,
) -> FleetReport:
    """Run the fleet; ``lifetime`` is how far the clock jumps in an ``expire`` round.

    ``resource_url``: every caller then sends an MCP ``initialize`` there with the token it
    got (through :class:`~grantkeeper.HttpxAuth`), which must be accepted.

    ``gate(number)`` runs before each round starts: fleets on several hosts wait there for
    the signal that starts the round everywhere at once.

    ``warm``: every process has, before the first round, what a long-lived MCP client
    process has (its MCP connection's HTTP client, its lock session and watch: see
    :func:`_warm`).
    """
    context = multiprocessing.get_context("spawn")
    modes = ["expire" if number % 2 == 0 else "reject" for number in range(rounds)]
    barrier = context.Barrier(processes + 1)
    offset: Synchronized[float] = context.Value("d", 0.0)
    results: multiprocessing.Queue[RoundResult] = context.Queue()
    report = FleetReport(processes, threads, rounds)
    workers = [
        context.Process(
            target=_worker,
            args=(store_factory, key, threads, modes, barrier, offset, results, resource_url, warm),
            daemon=True,
        )
        for _ in range(processes)
    ]
    try:
        for worker in workers:
            worker.start()
        # Every worker has loaded the credential before the first round moves the clock: a
        # worker that loaded it after would refresh it outside any round.
        barrier.wait(BARRIER_TIMEOUT)
        for number, mode in enumerate(modes):
            if gate is not None:
                gate(number)
            if mode == "expire":
                with offset.get_lock():
                    offset.value += lifetime
            barrier.wait(BARRIER_TIMEOUT)
            seen: set[str] = set()
            report.cpu_per_round.append(0.0)
            for _ in range(processes):
                try:
                    result = results.get(timeout=BARRIER_TIMEOUT)
                except queue.Empty:
                    report.errors.append(f"round {number}: a worker sent no result")
                    break
                report.requests += len(result.tokens) + len(result.errors)
                report.lock_waits += result.lock_waits
                report.calls += result.calls
                report.provider_calls += result.provider_calls
                report.adopted_waiting += result.adopted_waiting
                report.cpu_per_round[-1] += result.cpu_ms
                seen.update(result.tokens)
                report.errors += [f"round {number} pid {result.pid}: {e}" for e in result.errors]
            report.tokens_per_round.append(seen)
            if on_round is not None:
                on_round(number, seen)
        for worker in workers:
            worker.join(BARRIER_TIMEOUT)
    finally:
        # A hung or stopped worker must not outlive the run (nor hang the interpreter's exit).
        for worker in workers:
            reap(worker, timeout=BARRIER_TIMEOUT)
    return report


def die_at(stage: str, current: str) -> None:
    """Checkpoint for crash tests: SIGKILL this process when the transaction reaches ``stage``."""
    if current == stage:
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)  # never reached: SIGKILL cannot be caught
