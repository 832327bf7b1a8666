"""What each part of the healthy path costs, measured as P2 measures it.

scripts/with-keyring .venv/bin/python -m benchmarks.probe_p2_floor

P2 compares grantkeeper's auth flow with one that only sets a static header. This drives,
in a process set up as P2's (the same servers, login and kind of request; the other peers'
modules not loaded), the flow as it is and the flow with one part taken out at a time: the
clock read and compared, the origin compared, and both with everything else (a flow that
only sets the header from the Keeper's memory). The differences are what each part costs;
the variants are for measuring only (each answers just a healthy request).
"""

from __future__ import annotations

import asyncio
import statistics
import types
from collections.abc import AsyncGenerator, Callable
from typing import Any

from benchmarks._fast_endpoint import fast_endpoint
from benchmarks._peers import Login, logged_in, peer_client
from benchmarks.p2_request_overhead import _HeaderOnly, _requests, drive_flow
from grantkeeper._http_auth.driver import AUTHORIZATION, AuthDriver
from grantkeeper._http_auth.flow import ACTIONABLE

Variant = Callable[[AuthDriver, Any], AsyncGenerator[Any, Any]]


async def _without_clock(self: AuthDriver, request: Any) -> AsyncGenerator[Any, Any]:
    ready = self._memory._ready
    if ready[2] > 0.0:
        try:
            ours = request.url._uri_reference[:4] == self._known
        except AttributeError:
            ours = False
        if ours or self._same_origin(request.url):
            stream = request.stream  # noqa: F841 (kept, as the real flow keeps it)
            request.headers[AUTHORIZATION] = ready[3]
            response = yield request
            if response.status_code not in ACTIONABLE:
                return
    raise RuntimeError("the probe answers healthy requests only")


async def _without_origin(self: AuthDriver, request: Any) -> AsyncGenerator[Any, Any]:
    memory = self._memory
    ready = memory._ready
    if memory._now() < ready[2]:
        stream = request.stream  # noqa: F841 (kept, as the real flow keeps it)
        request.headers[AUTHORIZATION] = ready[3]
        response = yield request
        if response.status_code not in ACTIONABLE:
            return
    raise RuntimeError("the probe answers healthy requests only")


async def _header_only(self: AuthDriver, request: Any) -> AsyncGenerator[Any, Any]:
    request.headers[AUTHORIZATION] = self._memory._ready[3]
    yield request


class _Bound:
    """A flow bound to a driver, as ``HttpxShapedAuth`` binds the real one."""

    def __init__(self, driver: AuthDriver, flow: Variant) -> None:
        self.async_auth_flow = types.MethodType(flow, driver)


async def _measure(login: Login, repeats: int, flows: int) -> dict[str, list[float]]:
    subjects: dict[str, tuple[Any, Any]] = {}
    async with peer_client("static", login) as http:
        request = http.build_request("GET", login.url)
        subjects["static header"] = (_HeaderOnly(http.headers["authorization"]), request)
    async with peer_client("grantkeeper", login) as http:
        await http.get(login.url)  # the Keeper loads the token; the origin is judged once
        await _requests(http, login.url, 50)
        driver = http.auth._driver  # type: ignore[union-attr]
        request = http.build_request("GET", login.url)
        subjects["grantkeeper"] = (http.auth, request)
        subjects["without the clock"] = (_Bound(driver, _without_clock), request)
        subjects["without the origin"] = (_Bound(driver, _without_origin), request)
        subjects["header from memory only"] = (_Bound(driver, _header_only), request)
        seconds: dict[str, list[float]] = {name: [] for name in subjects}
        for auth, sent in subjects.values():
            await drive_flow(auth, sent, flows // 10)  # warm up
        for _ in range(repeats):
            for name, (auth, sent) in subjects.items():
                seconds[name].append(await drive_flow(auth, sent, flows))
    return seconds


def main(repeats: int = 7, flows: int = 50_000) -> None:
    with fast_endpoint() as url, logged_in(url) as login:
        seconds = asyncio.run(_measure(login, repeats, flows))
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    static = medians["static header"]
    whole = medians["grantkeeper"]
    for name, median in medians.items():
        print(f"{name:>24}: {median * 1e6:.2f} µs, {median / static:.3f}× the static header")
    print(f"reading the clock costs {(whole - medians['without the clock']) * 1e6:.2f} µs")
    print(f"the origin comparison costs {(whole - medians['without the origin']) * 1e6:.2f} µs")


if __name__ == "__main__":
    main()
