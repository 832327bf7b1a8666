"""The loopback listener: one path, one use, our Host only, typed errors for port and time."""

from __future__ import annotations

import socket

import httpx
import pytest

from grantkeeper import CallbackServer, CallbackTimeout, CallbackUnavailable


def get(url: str, **headers: str) -> httpx.Response:
    return httpx.get(url, headers=headers, trust_env=False, timeout=10.0)


def test_first_redirect_wins_and_a_second_is_refused() -> None:
    with CallbackServer(expected_state="s1") as listener:
        assert listener.redirect_uri == f"http://127.0.0.1:{listener.port}/callback"
        first = get(listener.redirect_uri + "?code=c1&state=s1")
        assert first.status_code == 200 and "Login complete" in first.text
        assert first.headers["referrer-policy"] == "no-referrer"
        second = get(listener.redirect_uri + "?code=c2&state=s1")
        assert second.status_code == 409
        assert listener.wait(0) == listener.redirect_uri + "?code=c1&state=s1"


def test_other_paths_and_methods_are_refused_without_consuming() -> None:
    with CallbackServer() as listener:
        assert get(f"http://127.0.0.1:{listener.port}/other?code=x").status_code == 404
        post = httpx.post(listener.redirect_uri, trust_env=False)
        assert post.status_code == 405
        assert not listener.used


def test_a_foreign_host_header_is_refused() -> None:
    with CallbackServer() as listener:
        answer = get(listener.redirect_uri + "?code=x&state=y", Host="evil.example:80")
        assert answer.status_code == 400 and not listener.used
        assert (
            get(listener.redirect_uri + "?code=x", Host=f"localhost:{listener.port}").status_code
            == 200
        )
        assert listener.used


@pytest.mark.parametrize(
    ("query", "shown"),
    [
        ("error=access_denied&state=s", "access_denied"),
        ("code=c&state=wrong", "does not belong"),
        ("state=s", "no authorization code"),
    ],
)
def test_bad_redirects_get_a_failure_page(query: str, shown: str) -> None:
    with CallbackServer(expected_state="s") as listener:
        answer = get(f"{listener.redirect_uri}?{query}")
        assert answer.status_code == 400 and shown in answer.text
        # Consumed all the same: the login that waits reports the typed error.
        assert listener.wait(0).endswith(query)


def test_a_port_in_use_is_a_typed_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(CallbackUnavailable, match=f"port {port}"), CallbackServer(port=port):
            pass


def test_no_redirect_in_time_is_a_typed_error() -> None:
    with CallbackServer() as listener, pytest.raises(CallbackTimeout):
        listener.wait(0)


def test_a_pasted_url_counts_as_the_redirect_and_rearm_waits_again() -> None:
    with CallbackServer() as listener:
        assert listener.deliver("http://127.0.0.1/callback?code=a&state=b")
        assert not listener.deliver("http://127.0.0.1/callback?code=z&state=b")
        listener.rearm("next")
        assert not listener.used
        assert get(listener.redirect_uri + "?code=c&state=next").status_code == 200
