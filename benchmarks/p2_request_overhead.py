"""P2: what authentication adds to each request on a fast local endpoint.

Two measurements per peer, each against the same fresh, really issued token:

- requests: back-to-back GETs through an ``httpx2.AsyncClient`` to a loopback endpoint that
  answers at once (``benchmarks/_fast_endpoint.py``, its own process): the cost a user sees;
- auth flow: the peer's ``httpx2.Auth`` flow alone, driven in-process for one request and
  its 200 answer: the overhead itself, which the loopback round trip would drown in noise.
  A static header is set when the request is built, not in a flow; its figure is that of
  a flow that does only that, the floor of any bearer authentication.

grantkeeper runs three ways, in turn in the same run: as installed here (the OpenTelemetry
API present, as ``mcp`` brings it, with no SDK), as without the ``otel`` extra (no API:
telemetry off), and with an OpenTelemetry SDK recording its metrics and spans. The healthy
path reports nothing, so the three must cost the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any

import httpx2

from benchmarks._fast_endpoint import fast_endpoint
from benchmarks._measure import Spread, ratio
from benchmarks._peers import PEERS, Login, logged_in, peer_client
from benchmarks._report import Section
from grantkeeper._observe import telemetry

NO_OTEL = "grantkeeper, no OTel API"
WITH_SDK = "grantkeeper, OTel SDK"
VARIANTS = {NO_OTEL: "grantkeeper", WITH_SDK: "grantkeeper"}
"""grantkeeper's telemetry variants, each measured as the peer it runs as."""
CLIENTS = (*PEERS, *VARIANTS)

TELEMETRY_GOAL = 1.1
"""The goal for telemetry: grantkeeper's flow with an SDK recording ≤ this × without the
API. The healthy path reports nothing, so the two run the same code: the bound is this
machine's run-to-run noise on a median of 5, not a budget."""

FLOW_GOAL = 1.2
"""The goal: grantkeeper's auth flow ≤ this × the static-header flow. A healthy request's
auth is one memory read over a static header: a timestamp compared, the origin compared,
the header set. The loopback ratio and the share of the SDK's overhead are reported."""


class _HeaderOnly(httpx2.Auth):
    """The least an auth flow can do: set the one header. The static peer's flow figure."""

    def __init__(self, value: str) -> None:
        self.value = value

    async def async_auth_flow(
        self, request: httpx2.Request
    ) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        request.headers["Authorization"] = self.value
        yield request


async def _requests(http: httpx2.AsyncClient, url: str, count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        response = await http.get(url)
        if response.status_code != 200:
            raise RuntimeError(f"the endpoint answered {response.status_code}")
    return (time.perf_counter() - started) / count


async def drive_flow(
    auth: httpx2.Auth,
    request: httpx2.Request,
    count: int,
    between: Callable[[], object] | None = None,
) -> float:
    """Seconds per auth flow over ``count`` flows of ``request`` answered 200; ``between``
    runs inside each flow, between the request and its answer (P8's budget signature)."""
    response = httpx2.Response(200, text="ok", request=request)
    started = time.perf_counter()
    for _ in range(count):
        flow = auth.async_auth_flow(request)
        await flow.__anext__()
        if between is not None:
            between()
        try:
            await flow.asend(response)
        except StopAsyncIteration:
            pass
        else:
            raise RuntimeError("an auth flow asked for another request after a 200")
    return (time.perf_counter() - started) / count


@contextlib.contextmanager
def _telemetry(client: str) -> Iterator[None]:
    """grantkeeper's telemetry as ``client`` has it: off (no API), reporting to an SDK that
    records in memory, or (any other client) as installed."""
    if client == NO_OTEL:
        telemetry.configure(off=True)
    elif client == WITH_SDK:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
        meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
        telemetry.configure(meter_provider, tracer_provider)
    try:
        yield
    finally:
        telemetry.configure()


async def _measure(
    login: Login, *, repeats: int, requests: int, flows: int
) -> tuple[dict[str, Spread], dict[str, Spread]]:
    over_loopback: dict[str, list[float]] = {client: [] for client in CLIENTS}
    in_flow: dict[str, list[float]] = {client: [] for client in CLIENTS}
    for _ in range(repeats):
        for client in CLIENTS:  # peers take turns, so a noisy moment hurts all of them alike
            peer = VARIANTS.get(client, client)
            with _telemetry(client):
                loop, flow = await _measure_one(peer, login, requests=requests, flows=flows)
            over_loopback[client].append(loop)
            in_flow[client].append(flow)
    return (
        {client: Spread.of(v) for client, v in over_loopback.items()},
        {client: Spread.of(v) for client, v in in_flow.items()},
    )


async def _measure_one(
    peer: str, login: Login, *, requests: int, flows: int
) -> tuple[float, float]:
    """Seconds per request over loopback, and per auth flow, of ``peer``'s client."""
    async with peer_client(peer, login) as http:
        first = await http.get(login.url)
        if "authorization" not in first.request.headers:
            raise RuntimeError(f"{peer} sent no Authorization header")
        await _requests(http, login.url, max(1, requests // 10))  # warm up
        loop = await _requests(http, login.url, requests)
        auth: Any = http.auth or _HeaderOnly(http.headers["authorization"])
        request = http.build_request("GET", login.url)
        await drive_flow(auth, request, max(1, flows // 10))
        return loop, await drive_flow(auth, request, flows)


def run(*, repeats: int = 5, requests: int = 2_000, flows: int = 50_000) -> Section:
    section = Section(
        "P2",
        "per-request auth overhead on a fast local endpoint",
        f"grantkeeper's auth flow ≤ {FLOW_GOAL}× the flow that only sets a static header; "
        f"with an OpenTelemetry SDK recording ≤ {TELEMETRY_GOAL}× without the API",
        [
            "client",
            "per request (loopback)",
            "ratio to static",
            "auth flow per request",
            "flow ratio to static",
            "overhead over static",
            "share of the SDK's overhead",
        ],
    )
    with fast_endpoint() as url, logged_in(url) as login:
        loopback, flow = asyncio.run(
            _measure(login, repeats=repeats, requests=requests, flows=flows)
        )
    static = loopback["static"]
    overhead = {peer: flow[peer].median - flow["static"].median for peer in CLIENTS}
    for peer in CLIENTS:
        share = overhead[peer] / overhead["mcp SDK"] if overhead["mcp SDK"] > 0 else float("nan")
        section.rows.append(
            [
                peer,
                loopback[peer].fmt(" µs", 1e6, 0),
                ratio(loopback[peer], static),
                flow[peer].fmt(" µs", 1e6, 2),
                ratio(flow[peer], flow["static"]),
                f"{overhead[peer] * 1e6:.2f} µs",
                f"{share:.2f}",
            ]
        )
    with_sdk = flow[WITH_SDK].median / flow[NO_OTEL].median
    flow_met = flow["grantkeeper"].median <= FLOW_GOAL * flow["static"].median
    telemetry_met = with_sdk <= TELEMETRY_GOAL
    section.met = flow_met and telemetry_met
    section.notes.append(
        f"Median (min–max) over {repeats} repeats of the mean of {requests:,} sequential "
        f"requests, and of {flows:,} auth flows driven in-process (one request, its 200 "
        "answer). Overhead is a peer's auth-flow time minus that of a flow that only sets the "
        "header (what a static bearer costs per request). The fast endpoint is a bare "
        "asyncio HTTP/1.1 server in its own process; every peer holds the same fresh token, "
        "so nothing is refreshed."
    )
    section.notes.append(
        f"Goals apart: the flow ratio {'met' if flow_met else 'missed'}; telemetry "
        f"{'met' if telemetry_met else 'missed'}: grantkeeper's flow with an OpenTelemetry "
        f"SDK recording is {with_sdk:.3f}× (≤ {TELEMETRY_GOAL}×) "
        f"its flow without the API ({NO_OTEL!r}: telemetry off, as without the otel extra; "
        f"{WITH_SDK!r}: an SDK meter and tracer provider with in-memory readers). "
        "'grantkeeper' is as installed here: the API present (mcp brings it), no SDK."
    )
    return section


def smoke() -> Section:
    return run(repeats=1, requests=20, flows=200)
