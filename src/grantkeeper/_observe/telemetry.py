"""Metrics and spans through the OpenTelemetry API, when it is installed (``grantkeeper[otel]``).

grantkeeper reports through ``opentelemetry-api`` only: the application picks the SDK and
its exporters, and until it sets them the API's no-op implementations take the calls.
Without the API nothing is imported, and every function here returns at its first line.
The healthy path (a fresh token served from memory) calls nothing here at all, so it costs
the same either way (benchmark P2 measures both).

Attributes carry keys without their query, store names, outcome classes and error class
names: never a token or a secret. Every call is guarded: telemetry must never fail a
request, whatever an SDK or exporter does. The names are listed in docs/telemetry.md.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .._redact import scrub_known
from .._version import __version__

if TYPE_CHECKING:
    from opentelemetry.trace import Span as Span
    from opentelemetry.trace import SpanContext

SCOPE = "grantkeeper"
"""The instrumentation scope every meter and tracer of grantkeeper is named for."""

DURATION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
"""Histogram bucket bounds in seconds, advised to the SDK: a lock wait or token request
takes from a ms (a peer's answer adopted) to a lock timeout (60 s by default); the SDK's
default bounds are made for milliseconds."""

# Attribute names: OpenTelemetry's semantic conventions where one exists.
KEY = "grantkeeper.credential.key"
STORE = "grantkeeper.store"
OUTCOME = "grantkeeper.refresh.outcome"
PERSISTED = "grantkeeper.refresh.persisted"
RESULT = "grantkeeper.transaction.result"
BACKGROUND = "grantkeeper.transaction.background"
LOCKED = "grantkeeper.adoption.locked"
LOCK_RESULT = "grantkeeper.lock.result"
REASON = "grantkeeper.login.reason"
WAITED = "grantkeeper.link.waited"
ERROR_TYPE = "error.type"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
STATUS = "http.response.status_code"

SPAN_NAME = "grantkeeper.refresh_transaction"


class _Instruments:
    """The meter's instruments and the tracer, made once, on first use."""

    def __init__(self, meter_provider: Any = None, tracer_provider: Any = None) -> None:
        from opentelemetry import metrics, trace

        self.trace = trace
        # The global providers (the application's) unless given: they may be set later,
        # the API's proxies then forward to them.
        meter = metrics.get_meter(SCOPE, __version__, meter_provider=meter_provider)
        self.tracer = trace.get_tracer(SCOPE, __version__, tracer_provider=tracer_provider)
        self.refreshes = meter.create_counter(
            "grantkeeper.refreshes",
            unit="{refresh}",
            description="Token requests that renewed a credential (spent its refresh token), "
            "by outcome class",
        )
        self.stale_serves = meter.create_counter(
            "grantkeeper.stale_serves",
            unit="{request}",
            description="Requests served a still valid token inside its refresh margin",
        )
        self.adoptions = meter.create_counter(
            "grantkeeper.adoptions",
            unit="{adoption}",
            description="Transactions that took another writer's new record instead of "
            "spending a refresh token",
        )
        self.recoveries = meter.create_counter(
            "grantkeeper.recoveries",
            unit="{recovery}",
            description="HTTP 401 answers for which the rejected token was renewed (once per "
            "request) to send the request again",
        )
        self.forced_logins = meter.create_counter(
            "grantkeeper.forced_logins",
            unit="{login}",
            description="Logins a recovery hook ran because only a person could help",
        )
        self.lock_wait = meter.create_histogram(
            "grantkeeper.lock.wait.duration",
            unit="s",
            description="Time a transaction waited for a credential's lock (or adopted "
            "what its holder wrote meanwhile)",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.token_request = meter.create_histogram(
            "grantkeeper.token_request.duration",
            unit="s",
            description="Time of a refresh's token request to the authorization server",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )


_UNSET: Any = object()
_instruments: _Instruments | None = _UNSET
_setup = threading.Lock()


def _get() -> _Instruments | None:
    """The instruments, or ``None`` without the OpenTelemetry API (tried once)."""
    found = _instruments
    if found is not _UNSET:
        return found
    return _make()


def _make() -> _Instruments | None:
    global _instruments
    with _setup:
        if _instruments is _UNSET:
            try:
                _instruments = _Instruments()
            except Exception:  # no API (ImportError), or one that fails: report nothing
                _instruments = None
    return _instruments


def _after_fork_in_child() -> None:
    global _setup
    _setup = threading.Lock()  # a parent thread may have held it (a first import) at the fork


if hasattr(os, "register_at_fork"):  # not on Windows, which cannot fork
    os.register_at_fork(after_in_child=_after_fork_in_child)


def configure(
    meter_provider: Any = None, tracer_provider: Any = None, *, off: bool = False
) -> None:
    """Report to these providers instead of the global ones, or (``off``) as if the API were
    not installed. A seam for benchmarks and tests: applications set the global providers."""
    global _instruments
    with _setup:
        if off:
            _instruments = None
        elif meter_provider is None and tracer_provider is None:
            _instruments = _UNSET  # made again, of the global providers, on first use
        else:
            _instruments = _Instruments(meter_provider, tracer_provider)


def enabled() -> bool:
    """Whether grantkeeper reports through OpenTelemetry (the API is importable)."""
    return _get() is not None


def key_attribute(key: object) -> str:
    """A credential key as an attribute: its server URL without user info, query or
    fragment (where a URL may carry a secret), and its profile."""
    text = str(key)
    url, hashmark, profile = text.partition("#")
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        return "<unparsable>"
    if ":" in host:
        host = f"[{host}]"
    clean = f"{parts.scheme}://{host}{port}{parts.path}" if parts.scheme else parts.path
    return scrub_known(clean + (hashmark + profile if hashmark else ""))


def _endpoint(url: str) -> dict[str, Any]:
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return {}
    return {SERVER_ADDRESS: parts.hostname or "", SERVER_PORT: port}


def refresh(
    key: object,
    endpoint: str,
    seconds: float,
    outcome: str,
    error: BaseException | None = None,
    span: Span | None = None,
) -> None:
    """A refresh's token request ended: ``outcome`` is its class (``_rules.Outcome``)."""
    found = _get()
    if found is None:
        return
    with contextlib.suppress(Exception):
        attributes: dict[str, Any] = {KEY: key_attribute(key), OUTCOME: outcome}
        if error is not None:
            attributes[ERROR_TYPE] = type(error).__name__
            status = getattr(error, "status", None)
            if isinstance(status, int):
                attributes[STATUS] = status
        found.refreshes.add(1, attributes)
        found.token_request.record(seconds, {**attributes, **_endpoint(endpoint)})
    annotate(span, outcome=outcome)


def stale_serve(key: object) -> None:
    """A request was served a valid token inside its refresh margin."""
    found = _get()
    if found is None:
        return
    with contextlib.suppress(Exception):
        found.stale_serves.add(1, {KEY: key_attribute(key)})


def adoption(key: object, *, locked: bool) -> None:
    """A transaction took another writer's new record and spent nothing."""
    found = _get()
    if found is None:
        return
    with contextlib.suppress(Exception):
        found.adoptions.add(1, {KEY: key_attribute(key), LOCKED: locked})


def recovery(key: object, status: int = 401) -> None:
    """A request's ``status`` answer is recovered from with a renewed token."""
    found = _get()
    if found is None:
        return
    with contextlib.suppress(Exception):
        found.recoveries.add(1, {KEY: key_attribute(key), STATUS: status})


def forced_login(key: object, reason: BaseException) -> None:
    """A recovery hook runs a login because of ``reason`` (what only a person can fix)."""
    found = _get()
    if found is None:
        return
    with contextlib.suppress(Exception):
        found.forced_logins.add(1, {KEY: key_attribute(key), REASON: type(reason).__name__})


def lock_waited(
    key: object, store: str, seconds: float, result: str, error: BaseException | None = None
) -> None:
    """A transaction's wait for the lock ended: ``result`` is ``acquired``, ``adopted`` or
    ``failed`` (then ``error`` says why)."""
    found = _get()
    if found is None:
        return
    with contextlib.suppress(Exception):
        attributes: dict[str, Any] = {KEY: key_attribute(key), STORE: store, LOCK_RESULT: result}
        if error is not None:
            attributes[ERROR_TYPE] = type(error).__name__
        found.lock_wait.record(seconds, attributes)


# -- spans ------------------------------------------------------------------------------


def caller() -> SpanContext | None:
    """The span the calling request runs in, to link a transaction to (``None`` if none)."""
    found = _get()
    if found is None:
        return None
    try:
        context = found.trace.get_current_span().get_span_context()
    except Exception:
        return None
    return context if context.is_valid else None


def start_transaction(
    key: object, store: str, *, background: bool, link: SpanContext | None
) -> Span | None:
    """Start the span of one refresh transaction, linked to the request that started it.

    A transaction serves every request that joins it, from any trace: each is a link
    (:func:`add_link`), not a parent. The span is its own trace's root."""
    found = _get()
    if found is None:
        return None
    try:
        from opentelemetry.context import Context
        from opentelemetry.trace import Link, SpanKind

        links = [] if link is None else [Link(link, {WAITED: not background})]
        return found.tracer.start_span(
            SPAN_NAME,
            context=Context(),  # a root: the caller is linked, since others join it too
            kind=SpanKind.INTERNAL,
            attributes={KEY: key_attribute(key), STORE: store, BACKGROUND: background},
            links=links,
        )
    except Exception:
        return None


def add_link(span: Span | None, link: SpanContext | None) -> None:
    """Link ``span`` to a request that joined its transaction and waits for it."""
    if span is None or link is None:
        return
    with contextlib.suppress(Exception):
        span.add_link(link, {WAITED: True})


@contextlib.contextmanager
def current(span: Span | None) -> Iterator[None]:
    """Run a transaction with ``span`` current (so an instrumented HTTP client's token
    request is its child), and mark it with the transaction's error, if any. The span is
    ended by :func:`end`, once no request can join the transaction any more."""
    if span is None:
        yield
        return
    with contextlib.ExitStack() as scope:
        with contextlib.suppress(Exception):
            from opentelemetry.trace import use_span

            scope.enter_context(
                use_span(span, record_exception=False, set_status_on_exception=False)
            )
        try:
            yield
        except BaseException as exc:
            failed(span, exc)
            raise


def end(span: Span | None) -> None:
    """End a transaction's span."""
    if span is not None:
        with contextlib.suppress(Exception):
            span.end()


def failed(span: Span | None, error: BaseException) -> None:
    """Mark a transaction's span as ended by ``error``."""
    if span is None:
        return
    with contextlib.suppress(Exception):
        from opentelemetry.trace import Status, StatusCode

        span.set_attributes({ERROR_TYPE: type(error).__name__, RESULT: "failed"})
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))


def annotate(span: Span | None, **attributes: str | bool | int) -> None:
    """Set ``attributes`` on a transaction's span (short names: ``result``, ``outcome``,
    ``error``, ``persisted``)."""
    if span is None:
        return
    names = {"result": RESULT, "outcome": OUTCOME, "error": ERROR_TYPE, "persisted": PERSISTED}
    with contextlib.suppress(Exception):
        for name, value in attributes.items():
            span.set_attribute(names.get(name, name), value)
