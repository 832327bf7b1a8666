"""Crash chaos against the real authorization server: SIGKILL a refresh at every stage.

One injection: a *victim* process and ``processes - 1`` *survivors* share one credential
and all report a 401 for its current access token, so one refresh is due. The victim takes
the lock first and is killed with SIGKILL at one instrumented point; the survivors, queued
on the lock, carry on. The oracle then checks what the issue promises:

- the store parses (and the file store has no unreadable record file);
- the authorization server saw no replayed refresh token (``replays`` in its stats); with
  ``retry_unknown_outcome`` on, exactly the one documented retry after a lost answer;
- the credential is lost only when the victim died between the provider's answer and the
  durable write (or, without the retry, anywhere between the intent note and that write);
- each loss is reported: a survivor logged ``refresh.outcome_unknown`` and raised
  ``ReauthenticationRequired``, the store is marked, and ``status`` says so;
- otherwise every survivor holds the same token, and the server says it is active;
- no token appears in any survivor's logs.

Kill points come from the Keeper's ``checkpoint`` test seam plus two test-only wrappers:
an httpx transport that dies once the token endpoint has answered (during the provider
call), and a store that dies inside the write of the refreshed record (a torn temp file
for the file store; a random instant within the write for the others). Production code
has no chaos switch: a Keeper's ``checkpoint`` is ``None`` unless a test passes one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver
import multiprocessing.process
import multiprocessing.synchronize
import os
import queue
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from grantkeeper import (
    CredentialKey,
    FileStore,
    Keeper,
    KeyringStore,
    PostgresStore,
    ReauthenticationRequired,
    Store,
    Stored,
)
from grantkeeper._oauth.auth_server_metadata import parse_metadata
from grantkeeper._oauth.code_flow import run_code_flow
from grantkeeper._record import Credential
from grantkeeper._status import AuthState, status_of
from grantkeeper._stores._fs import key_slug as _slug
from harness import remember_secret
from harness.authserver import AuthServer
from harness.children import reap, signal_own_child
from tests.helpers import LogLines

STAGES = (
    "lock_wait",
    "after_read",
    "before_provider",
    "in_provider",
    "after_provider",
    "before_write",
    "mid_write",
    "after_write",
)
"""Where the victim is killed, in transaction order."""

ANSWERED = frozenset({"in_provider", "after_provider", "before_write", "mid_write"})
"""The provider answered (the old refresh token is spent) and the answer is not durable."""

NOTED = ANSWERED | {"before_provider"}
"""The durable intent note is written and the answer is not: the outcome is unknown."""

RESOURCE = "http://127.0.0.1:9/mcp"
REDIRECT_URI = "http://127.0.0.1:9/callback"
KEY = CredentialKey.for_server(RESOURCE)

WAIT = 60.0
"""Upper bound on any wait of the harness: a hung process fails the run, never hangs it."""


# -- what a worker process needs ----------------------------------------------------------


@dataclass(frozen=True)
class StoreSpec:
    """How a worker opens the shared store (picklable, unlike the store itself)."""

    kind: str  # file | postgresql | keyring
    home: str
    dsn: str = ""
    schema: str = ""
    service: str = ""

    def open(self) -> Store:
        """Open the store in this process."""
        if self.kind == "file":
            return FileStore(self.home)
        if self.kind == "postgresql":
            return PostgresStore(self.dsn, schema=self.schema)
        if self.kind == "keyring":
            return KeyringStore(self.home, service=self.service)
        raise ValueError(f"unknown store kind {self.kind!r}")


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(WAIT)  # never reached: SIGKILL cannot be caught


class _DyingTransport(httpx.HTTPTransport):
    """Dies once the token endpoint has answered and the answer is read, before the
    Keeper sees it: the request was processed, the process is gone."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        response.read()
        _die()
        return response


class _DyingStore:
    """Wraps a store; dies inside the write of a refreshed record (intent cleared)."""

    def __init__(self, inner: Store, rng: random.Random) -> None:
        self.inner = inner
        self.name = inner.name
        self._rng = rng
        self._write_seconds = 0.001

    def read(self, key: CredentialKey) -> Stored | None:
        return self.inner.read(key)

    def write(self, key: CredentialKey, record: Credential, *, expected_version: int | None) -> int:
        if record.intent is not None or record.reauth_reason is not None:
            # The intent note: time it, to aim the kill inside the next write.
            started = time.monotonic()
            version = self.inner.write(key, record, expected_version=expected_version)
            self._write_seconds = time.monotonic() - started
            return version
        if isinstance(self.inner, FileStore):
            # Killed during write(2) of the temp file: half a file, never renamed.
            self._torn_file_write(key, record, expected_version)
        # Other stores: killed at a random instant of the write (before, during or after
        # the backend applied it), aimed by how long the intent note took to write.
        timer = threading.Timer(self._rng.uniform(0.0, 1.5 * self._write_seconds), _die)
        timer.start()
        version = self.inner.write(key, record, expected_version=expected_version)
        _die()
        return version

    def _torn_file_write(
        self, key: CredentialKey, record: Credential, expected_version: int | None
    ) -> None:
        assert isinstance(self.inner, FileStore)
        name = _slug(key) + ".json"
        directory = self.inner.directory
        payload = json.dumps({"format": "grantkeeper-credential", "version": 1}).encode() * 40
        temp = directory / f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        os.write(fd, payload[: self._rng.randrange(1, len(payload))])
        os.fsync(fd)
        _die()

    def delete(self, key: CredentialKey, *, expected_version: int | None = None) -> bool:
        return self.inner.delete(key, expected_version=expected_version)

    def keys(self) -> list[CredentialKey]:
        return self.inner.keys()

    @contextlib.contextmanager
    def lock(self, key: CredentialKey, *, timeout: float = 60.0) -> Iterator[None]:
        with self.inner.lock(key, timeout=timeout):
            yield


def _victim_checkpoint(
    stage: str,
    locked: multiprocessing.synchronize.Event,
    at_lock_wait: multiprocessing.synchronize.Event,
) -> Callable[[str], None]:
    def checkpoint(name: str) -> None:
        if name == "locked":
            locked.set()
        if name == "lock_wait" and stage == "lock_wait":
            at_lock_wait.set()  # the parent holds the lock and kills us while we wait
        elif name == stage:
            _die()

    return checkpoint


@dataclass
class WorkerResult:
    """What one survivor saw."""

    pid: int
    token: str | None
    error: str | None
    error_type: str | None
    logs: list[str]


def worker(
    role: str,
    stage: str,
    spec: StoreSpec,
    rejected: str,
    retry_unknown_outcome: bool,
    seed: int,
    locked: multiprocessing.synchronize.Event,
    at_lock_wait: multiprocessing.synchronize.Event,
    go: multiprocessing.synchronize.Event,
    results: multiprocessing.Queue[WorkerResult],
) -> None:
    """Body of a victim or survivor process (runs in a forkserver child)."""
    os.setsid()  # its own session: the parent signals it, and nothing else
    rng = random.Random(seed)
    handler = LogLines()
    logger = logging.getLogger("grantkeeper")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    store = spec.open()
    http: httpx.Client | None = None
    checkpoint: Callable[[str], None] | None = None
    if role == "victim":
        if stage == "in_provider":
            http = httpx.Client(transport=_DyingTransport(), trust_env=False)
        if stage == "mid_write":
            store = _DyingStore(store, rng)
        checkpoint = _victim_checkpoint(stage, locked, at_lock_wait)
    else:
        go.wait(WAIT)
    keeper = Keeper(
        store,
        KEY,
        http_client=http,
        retry_unknown_outcome=retry_unknown_outcome,
        # Every injection forces a refresh with a 401 for the token the last one obtained:
        # a server rejecting fresh tokens, by design here, so no rejection throttle.
        rejection_interval=timedelta(0),
        checkpoint=checkpoint,
    )
    token = error = error_type = None
    try:
        token = keeper.credential(rejected=rejected, timeout=WAIT).access_token
    except Exception as exc:
        error, error_type = str(exc), type(exc).__name__
    if role == "victim":
        # Reached only if the stage was never hit; the parent counts that as a miss.
        error, error_type = f"victim survived stage {stage}", "NotInjected"
    keeper.close()
    results.put(WorkerResult(os.getpid(), token, error, error_type, handler.lines))


# -- the run ------------------------------------------------------------------------------


@dataclass
class StageFigures:
    """Figures for one kill point."""

    injections: int = 0
    losses: int = 0
    reported: int = 0
    replays: int = 0


@dataclass
class ChaosReport:
    """Figures and oracle violations of one run."""

    store: str
    retry_unknown_outcome: bool
    processes: int
    stages: dict[str, StageFigures] = field(
        default_factory=lambda: {stage: StageFigures() for stage in STAGES}
    )
    violations: list[str] = field(default_factory=list)
    logins: int = 0
    seconds: float = 0.0

    @property
    def total(self) -> StageFigures:
        """The figures of every stage added up: injections, credentials lost (re-authentication
        required), losses reported (typed error, diagnostic log, marked store, status) and
        refresh tokens the authorization server saw replayed."""
        return StageFigures(
            *(sum(getattr(f, n.name) for f in self.stages.values()) for n in fields(StageFigures))
        )

    def table(self) -> str:
        """A small table for people."""
        policy = "retry once" if self.retry_unknown_outcome else "no retry"
        rows = [
            f"store={self.store} policy={policy} processes={self.processes} "
            f"injections={self.total.injections} losses={self.total.losses} "
            f"reported={self.total.reported} "
            f"replays={self.total.replays} violations={len(self.violations)} "
            f"logins={self.logins} seconds={self.seconds:.1f}",
            f"  {'stage':<16}{'injections':>11}{'losses':>8}{'reported':>10}{'replays':>9}",
        ]
        for stage, f in self.stages.items():
            rows.append(
                f"  {stage:<16}{f.injections:>11}{f.losses:>8}{f.reported:>10}{f.replays:>9}"
            )
        return "\n".join(rows)


class Chaos:
    """A real authorization server, one shared credential, and injections against it."""

    def __init__(
        self,
        server: AuthServer,
        spec: StoreSpec,
        *,
        processes: int = 3,
        retry_unknown_outcome: bool = False,
        seed: int = 0,
    ) -> None:
        if processes < 2:
            raise ValueError("chaos needs a victim and at least one survivor")
        self.server = server
        self.spec = spec
        self.processes = processes
        self.retry = retry_unknown_outcome
        self.rng = random.Random(seed)
        self.context = forkserver()
        self.store = spec.open()
        self.http = httpx.Client(timeout=10.0, trust_env=False)
        discovery = self.http.get(f"{server.issuer}/.well-known/openid-configuration")
        self.discovery = discovery.json()
        self.metadata = parse_metadata(discovery.content, expected_issuer=server.issuer)
        self.report = ChaosReport(spec.kind, retry_unknown_outcome, processes)
        self._secrets: set[str] = set()

    def close(self) -> None:
        """Close the harness's own connections."""
        self.http.close()
        close = getattr(self.store, "close", None)
        if close is not None:
            close()

    # -- helpers ----------------------------------------------------------------------

    def login(self) -> Credential:
        """A new grant from the real server, stored for every process."""
        self.report.logins += 1
        return run_code_flow(
            self.store,
            KEY,
            metadata=self.metadata,
            resource=RESOURCE,
            redirect_uri=REDIRECT_URI,
            authorize=lambda url: self.server.approve(url, REDIRECT_URI),
            http=self.http,
            scope="mcp",
        )

    def active(self, access_token: str) -> bool:
        """Whether the server accepts ``access_token`` (introspection)."""
        answer = self.http.post(
            self.discovery["introspection_endpoint"],
            data={"token": access_token},
            auth=("introspector", "introspector-secret"),
        )
        return answer.status_code == 200 and answer.json().get("active") is True

    def _remember(self, stored: Stored | None) -> None:
        if stored is not None:
            for secret in (stored.record.access_token, stored.record.refresh_token):
                if secret:
                    self._secrets.add(secret)
                    remember_secret(secret)  # the suite's log guard checks this process

    def _spawn(
        self, role: str, stage: str, rejected: str, events: tuple[Any, ...], results: Any
    ) -> multiprocessing.process.BaseProcess:
        process = self.context.Process(
            target=worker,
            args=(role, stage, self.spec, rejected, self.retry, self.rng.randrange(2**32))
            + events
            + (results,),
            daemon=True,
        )
        process.start()
        return process

    # -- one injection ----------------------------------------------------------------

    def inject(self, stage: str) -> None:
        """Kill a refresh at ``stage``; check the oracle; leave a usable credential."""
        number = self.report.total.injections + 1
        figures = self.report.stages[stage]
        figures.injections += 1
        where = f"injection {number} ({self.spec.kind}, {stage})"
        before = self.store.read(KEY)
        if before is None or before.record.reauth_reason:
            self.login()
            before = self.store.read(KEY)
        assert before is not None
        self._remember(before)
        rejected = before.record.access_token
        stats = self.server.stats()

        locked, at_lock_wait, go = (self.context.Event() for _ in range(3))
        results: multiprocessing.Queue[WorkerResult] = self.context.Queue()
        events = (locked, at_lock_wait, go)
        survivors: list[multiprocessing.process.BaseProcess] = []
        victim: multiprocessing.process.BaseProcess | None = None
        seen: list[WorkerResult] = []
        try:
            for _ in range(self.processes - 1):
                survivors.append(self._spawn("survivor", stage, rejected, events, results))
            if stage == "lock_wait":
                with self.store.lock(KEY, timeout=WAIT):
                    victim = self._spawn("victim", stage, rejected, events, results)
                    if not at_lock_wait.wait(WAIT):
                        self.report.violations.append(f"{where}: the victim never waited")
                    # Waiting for the lock we hold: killed through the guard, ours only.
                    signal_own_child(_pid(victim), signal.SIGKILL, parent=_forkserver_pid())
                    victim.join(WAIT)
            else:
                victim = self._spawn("victim", stage, rejected, events, results)
                # Survivors queue on the lock while the victim holds it.
                if not locked.wait(WAIT):
                    self.report.violations.append(f"{where}: the victim never took the lock")
            go.set()
            victim.join(WAIT)
            if victim.exitcode != -signal.SIGKILL:
                self.report.violations.append(f"{where}: victim exit code {victim.exitcode}")
            for _ in survivors:
                try:
                    seen.append(results.get(timeout=WAIT))
                except queue.Empty:
                    self.report.violations.append(f"{where}: a survivor sent no result")
                    break
            for process in survivors:
                process.join(WAIT)
                if process.is_alive():
                    self.report.violations.append(f"{where}: a survivor did not exit")
        finally:
            # A hung or stopped worker must not outlive the injection (nor hang the exit).
            for process in [*survivors, *([victim] if victim is not None else [])]:
                reap(process, parent=_forkserver_pid(), timeout=WAIT)
        with contextlib.suppress(queue.Empty):
            extra = results.get_nowait()
            self.report.violations.append(f"{where}: the victim reported {extra.error}")
        self._check(where, stage, figures, seen, stats)

    def _check(
        self,
        where: str,
        stage: str,
        figures: StageFigures,
        seen: list[WorkerResult],
        stats_before: dict[str, Any],
    ) -> None:
        violations = self.report.violations
        stats = self.server.stats()
        replays = int(stats["replays"]) - int(stats_before["replays"])
        figures.replays += replays
        try:
            after = self.store.read(KEY)
        except Exception as exc:
            violations.append(f"{where}: the store does not parse: {type(exc).__name__}")
            return
        problems = getattr(self.store, "problems", None)
        if problems is not None and problems():
            violations.append(f"{where}: unreadable record files: {problems()}")
        if after is None:
            violations.append(f"{where}: the record vanished")
            return
        self._remember(after)
        for result in seen:
            if result.token:
                self._secrets.add(result.token)
                remember_secret(result.token)
        lines = [line for result in seen for line in result.logs]
        if any(secret in line for secret in self._secrets for line in lines):
            violations.append(f"{where}: a token appeared in a survivor's log")

        lost = after.record.reauth_reason is not None
        allowed = ANSWERED if self.retry else NOTED
        if replays and not (self.retry and replays == 1 and stage in ANSWERED and lost):
            violations.append(f"{where}: the server saw {replays} replayed refresh token(s)")
        if not lost:
            tokens = {r.token for r in seen}
            errors = [f"{r.error_type}: {r.error}" for r in seen if r.error]
            if errors:
                violations.append(f"{where}: survivors failed: {errors}")
            elif len(tokens) != 1 or after.record.access_token not in tokens:
                violations.append(f"{where}: survivors disagree or differ from the store")
            elif not self.active(after.record.access_token):
                violations.append(f"{where}: the server rejects the token survivors hold")
            if after.record.intent is not None:
                violations.append(f"{where}: an intent note outlived a good refresh")
            return
        figures.losses += 1
        if stage not in allowed:
            violations.append(f"{where}: credential lost outside the unknown-outcome window")
        # Reported, never silent: a typed error to every caller, a diagnostic, the mark,
        # and the status a person sees.
        typed = all(r.error_type == ReauthenticationRequired.__name__ for r in seen)
        diagnosed = any("refresh.outcome_unknown" in line for line in lines)
        status = status_of(KEY, after.record, now=datetime.now(UTC))
        if typed and diagnosed and status.state is AuthState.REAUTHENTICATION_REQUIRED:
            figures.reported += 1
        else:
            violations.append(
                f"{where}: a silent loss (typed={typed}, diagnosed={diagnosed}, "
                f"status={status.state.value}, survivors got "
                f"{sorted(str(r.error_type) for r in seen)})"
            )

    # -- a run ------------------------------------------------------------------------

    def run(self, injections: int, stages: tuple[str, ...] = STAGES) -> ChaosReport:
        """Inject ``injections`` kills, cycling through ``stages`` in shuffled rounds."""
        started = time.monotonic()
        order: list[str] = []
        for _ in range(injections):
            if not order:
                order = list(stages)
                self.rng.shuffle(order)
            self.inject(order.pop())
        self.report.seconds += time.monotonic() - started
        return self.report


_forkserver: multiprocessing.context.ForkServerContext | None = None


def _forkserver_pid() -> int:
    """The pid of the forkserver (our child) that forked every worker."""
    pid = getattr(multiprocessing.forkserver._forkserver, "_forkserver_pid", None)
    if not isinstance(pid, int):
        raise RuntimeError("the forkserver is not running")
    return pid


def _pid(process: multiprocessing.process.BaseProcess) -> int:
    if process.pid is None:
        raise RuntimeError("the worker never started")
    return process.pid


def forkserver() -> multiprocessing.context.ForkServerContext:
    """A forkserver context with grantkeeper preloaded: a worker starts in milliseconds."""
    global _forkserver
    if _forkserver is None:
        _forkserver = multiprocessing.get_context("forkserver")
        _forkserver.set_forkserver_preload(["grantkeeper", "httpx", "tests.chaos.engine"])
    return _forkserver


def summary(reports: list[ChaosReport]) -> dict[str, Any]:
    """Figures of several runs as JSON-ready data."""
    return {
        "runs": [
            {
                "store": r.store,
                "retry_unknown_outcome": r.retry_unknown_outcome,
                "processes": r.processes,
                "injections": r.total.injections,
                "losses": r.total.losses,
                "reported": r.total.reported,
                "replays": r.total.replays,
                "violations": r.violations,
                "seconds": round(r.seconds, 1),
                "per_stage": {s: dataclasses.asdict(f) for s, f in r.stages.items()},
            }
            for r in reports
        ],
        "totals": dict(
            sum(
                (
                    Counter({"injections": r.total.injections, "losses": r.total.losses})
                    for r in reports
                ),
                Counter(),
            )
        ),
    }


def temp_home(base: Path, name: str) -> str:
    """A private GRANTKEEPER_HOME under ``base``."""
    home = base / name
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    return str(home)
