"""Fuzz every parser that reads what a peer or a disk hands us.

Each suite asserts the same two things: the parser returns a value or raises a typed
``GrantkeeperError`` (never another exception), and no secret it was given appears in the
error's message. Run ``scripts/fuzz`` for 100k cases each; the normal suite runs a few
hundred (``tests/fuzzing.py``).
"""

from __future__ import annotations

import json
import string
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from grantkeeper import FileStore, GrantkeeperError, PostgresStore, StoreCorrupt
from grantkeeper._oauth.auth_server_metadata import AuthServerMetadata, parse_metadata
from grantkeeper._oauth.authorization import parse_callback
from grantkeeper._oauth.registration import ClientRegistration, parse_registration
from grantkeeper._oauth.token_endpoint import TokenResponse, parse_token_response
from grantkeeper._record import record_to_json
from grantkeeper._stores._fs import PrivateDir
from grantkeeper._stores._fs import key_slug as _slug
from grantkeeper._stores.file import FILE_FORMAT
from grantkeeper._stores.postgresql import _key_id
from grantkeeper._stores.sealing import Sealer
from grantkeeper.testing import sample_record
from tests.fuzzing import FUZZ
from tests.helpers import KEY, T0

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
DEEP = b"[" * 100_000 + b"]" * 100_000
"""Nesting deep enough to exhaust the recursion limit of a naive JSON parser."""

secret_text = st.text(string.ascii_letters + string.digits + "-_.~", min_size=12, max_size=40).map(
    lambda tail: f"SECRET-{tail}"
)
"""Distinctive, so a secret cannot coincide with ordinary message text."""
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
)


def json_values(extra: st.SearchStrategy[Any] | None = None) -> st.SearchStrategy[Any]:
    """Any JSON value, sometimes one of ``extra`` (secrets to plant)."""
    return st.recursive(
        scalars if extra is None else scalars | extra,
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3)
        ),
        max_leaves=6,
    )


def assert_clean(exc: BaseException, secrets: list[str]) -> None:
    """A typed error whose message and repr carry none of ``secrets``."""
    assert isinstance(exc, GrantkeeperError), f"untyped {type(exc).__name__}: {exc}"
    shown = f"{exc} {exc!r} {exc.args!r}"
    leaked = [s for s in secrets if s in shown]
    assert not leaked, f"{type(exc).__name__} shows a secret: {shown[:300]}"


# -- token responses ----------------------------------------------------------------------


@st.composite
def token_answers(draw: st.DrawFn) -> tuple[int, dict[str, str], bytes, list[str]]:
    secrets = draw(st.lists(secret_text, min_size=1, max_size=3, unique=True))
    planted = st.sampled_from(secrets)
    value = json_values(planted)
    fields = {
        "access_token": value,
        "token_type": st.sampled_from(["Bearer", "bearer", "mac", "", "DPoP"]) | value,
        "expires_in": st.sampled_from(["3600", " 60 ", "1e309", "-1", "nan", "x"]) | value,
        "refresh_token": value,
        "scope": value,
        "id_token": value,
        "error": st.sampled_from(
            [
                "invalid_grant",
                "invalid_client",
                "unauthorized_client",
                "invalid_request",
                "temporarily_unavailable",
                "server_error",
            ]
        )
        | value,
        "error_description": value,
    }
    body = draw(
        st.one_of(
            st.fixed_dictionaries({}, optional=fields).map(
                lambda d: json.dumps(d, allow_nan=True).encode()
            ),
            st.binary(max_size=200),
            value.map(lambda v: json.dumps(v, allow_nan=True).encode()),
            st.just(DEEP),
        )
    )
    status = draw(
        st.sampled_from([200, 201, 400, 401, 403, 429, 500, 502, 503]) | st.integers(100, 599)
    )
    headers = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "retry-after": st.sampled_from(
                    [
                        "5",
                        "Wed, 21 Oct 2015 07:28:00 GMT",
                        "Wed, 21 Oct 2015 07:28:00 -0000",
                        "soon",
                    ]
                )
                | st.text(max_size=40)
            },
        )
    )
    return status, headers, body, secrets


@FUZZ
@given(token_answers())
@example(
    (400, {}, b'{"error": "invalid_request-rt-SECRETSECRETSECRET1"}', ["rt-SECRETSECRETSECRET1"])
)
@example((503, {"retry-after": "Wed, 21 Oct 2015 07:28:00 -0000"}, b"", ["rt-SECRETSECRETSECRET1"]))
@example((200, {}, DEEP, ["rt-SECRETSECRETSECRET1"]))
@example((503, {"retry-after": "¹"}, b"{}", ["SECRET-000000000000"]))  # found at 100k cases
@example((503, {"retry-after": "9" * 400}, b"{}", ["SECRET-000000000000"]))
def test_token_responses(answer: tuple[int, dict[str, str], bytes, list[str]]) -> None:
    status, headers, body, secrets = answer
    try:
        result = parse_token_response(status, headers, body, now=NOW, secrets=secrets)
    except Exception as exc:
        assert_clean(exc, secrets)
    else:
        # A usable access token, or at least B's refresh token (stored expired, spent next).
        assert isinstance(result, TokenResponse)
        assert result.access_token or result.refresh_token


# -- authorization server metadata --------------------------------------------------------

ISSUER = "https://as.example.test"
urls = st.sampled_from(
    [
        ISSUER + "/token",
        "http://127.0.0.1:8080/token",
        "http://localhost/x",
        "http://as.example.test/token",
        "https://as.example.test/a#frag",
        "ftp://as.example.test/",
        "https://",
        "http://[::1/x",
        "",
    ]
) | st.text(max_size=40)


@st.composite
def metadata_documents(draw: st.DrawFn) -> bytes:
    value = json_values()
    fields = {
        "issuer": st.sampled_from([ISSUER, ISSUER + "/", "http://as.example.test"]) | value,
        "authorization_endpoint": urls | value,
        "token_endpoint": urls | value,
        "registration_endpoint": urls | value,
        "revocation_endpoint": urls | value,
        "scopes_supported": st.lists(st.text(max_size=8), max_size=3) | value,
        "code_challenge_methods_supported": st.lists(
            st.sampled_from(["S256", "plain", "x"]), max_size=3
        )
        | value,
        "authorization_response_iss_parameter_supported": value,
    }
    return draw(
        st.one_of(
            st.fixed_dictionaries({}, optional=fields).map(lambda d: json.dumps(d).encode()),
            st.binary(max_size=200),
            st.just(DEEP),
        )
    )


@FUZZ
@given(metadata_documents())
@example(DEEP)
@example(
    json.dumps(
        {
            "issuer": ISSUER,
            "authorization_endpoint": "http://[::1/x",
            "token_endpoint": ISSUER + "/t",
        }
    ).encode()
)
def test_authorization_server_metadata(body: bytes) -> None:
    try:
        result = parse_metadata(body, expected_issuer=ISSUER)
    except Exception as exc:
        assert_clean(exc, [])
    else:
        assert isinstance(result, AuthServerMetadata) and result.issuer == ISSUER


# -- dynamic client registration ----------------------------------------------------------


@st.composite
def registrations(draw: st.DrawFn) -> tuple[int, bytes, str]:
    # The server has no secret to echo in an error: the client secret appears only where
    # a successful registration puts it.
    secret = draw(secret_text)
    value = json_values()
    fields = {
        "client_id": st.text(max_size=15) | value,
        "client_secret": st.just(secret) | value,
        "token_endpoint_auth_method": st.sampled_from(["none", "client_secret_basic"]) | value,
        "error": value,
        "error_description": value,
    }
    body = draw(
        st.fixed_dictionaries({}, optional=fields).map(lambda d: json.dumps(d).encode())
        | st.binary(max_size=100)
        | st.just(DEEP)
    )
    return draw(st.sampled_from([200, 201, 400, 401, 500]) | st.integers(100, 599)), body, secret


@FUZZ
@given(registrations())
@example((201, DEEP, "cs-SECRETSECRETSECRET1"))
def test_client_registration(answer: tuple[int, bytes, str]) -> None:
    status, body, secret = answer
    try:
        result = parse_registration(status, body)
    except Exception as exc:
        assert_clean(exc, [secret])
    else:
        assert isinstance(result, ClientRegistration) and result.client_id
        assert secret not in repr(result)


# -- callback URLs ------------------------------------------------------------------------

STATE = "state-SECRETSECRETSECRET"
CODE = "code-SECRETSECRETSECRET"


@st.composite
def callbacks(draw: st.DrawFn) -> str:
    base = draw(
        st.sampled_from(
            ["http://127.0.0.1:8765/callback", "http://[::1]:1/cb", "http://[::1/cb", "", "cb"]
        )
        | st.text(max_size=30)
    )
    # The code and the state are the secrets; other parameters echo text of their own.
    secret_values = st.sampled_from([STATE, CODE, ""]) | st.text(max_size=20)
    other_values = st.sampled_from([ISSUER, "access_denied", ""]) | st.text(max_size=20)
    pairs = draw(
        st.lists(
            st.tuples(st.sampled_from(["code", "state"]), secret_values)
            | st.tuples(st.sampled_from(["iss", "error", "error_description", "x"]), other_values),
            max_size=6,
        )
    )
    from urllib.parse import quote

    query = "&".join(f"{quote(k)}={quote(v, safe='')}" for k, v in pairs)
    raw = draw(st.booleans())
    return draw(st.text(max_size=200)) if raw else f"{base}?{query}"


@FUZZ
@given(callbacks(), st.booleans())
@example(f"http://[::1/cb?state={STATE}&code={CODE}", False)
@example(f"http://127.0.0.1/cb?state={STATE}&code={CODE}&iss={ISSUER}", True)
def test_callback_urls(url: str, require_iss: bool) -> None:
    try:
        code = parse_callback(url, expected_state=STATE, issuer=ISSUER, require_iss=require_iss)
    except Exception as exc:
        assert_clean(exc, [STATE, CODE])
    else:
        assert code


# -- stored records -----------------------------------------------------------------------

RECORD = sample_record(
    "at-SECRETSECRETSECRET", "rt-SECRETSECRETSECRET", lifetime=3600, now=T0
).replace(client_secret="cs-SECRETSECRETSECRET")
RECORD_SECRETS = ["at-SECRETSECRETSECRET", "rt-SECRETSECRETSECRET", "cs-SECRETSECRETSECRET"]
FILE_BYTES = json.dumps(
    {
        "format": FILE_FORMAT,
        "key": {"server_url": KEY.server_url, "profile": KEY.profile},
        "version": 3,
        "updated_at": (T0 + timedelta(seconds=1)).isoformat(),
        "record": record_to_json(RECORD),
    },
    indent=2,
).encode()
_HOME = Path(tempfile.mkdtemp(prefix="grantkeeper-fuzz-"))
_STORE = FileStore(_HOME)


@st.composite
def damaged(draw: st.DrawFn, original: bytes) -> bytes:
    """``original`` truncated, bit-flipped, spliced or replaced."""
    data = bytearray(original)
    for _ in range(draw(st.integers(0, 4))):
        if not data:
            break
        where = draw(st.integers(0, len(data) - 1))
        data[where] ^= 1 << draw(st.integers(0, 7))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    if draw(st.integers(0, 9)) == 0:
        data = bytearray(draw(st.binary(max_size=300)))
    return bytes(data)


def _write_record_file(raw: bytes) -> None:
    with PrivateDir(_STORE.directory).open(create=True):
        pass
    (_STORE.directory / (_slug(KEY) + ".json")).write_bytes(raw)
    (_STORE.directory / (_slug(KEY) + ".json")).chmod(0o600)


@FUZZ
@given(damaged(FILE_BYTES))
@example(FILE_BYTES[: len(FILE_BYTES) // 2])
@example(DEEP)
def test_stored_record_files(raw: bytes) -> None:
    _write_record_file(raw)
    try:
        stored = _STORE.read(KEY)
    except Exception as exc:
        assert_clean(exc, RECORD_SECRETS)
        assert isinstance(exc, StoreCorrupt), type(exc).__name__
    else:
        assert stored is not None and stored.version >= 1


_SEALER = Sealer(b"k" * 32)
_PG = PostgresStore("postgresql://fuzz@127.0.0.1:9/none", schema="fuzz", sealer=_SEALER)
_PLAIN_ROW = json.dumps(record_to_json(RECORD)).encode()
_SEALED_ROW = _SEALER.seal(_PLAIN_ROW, bound_to=_key_id(KEY))


@FUZZ
@given(st.booleans(), st.data())
@example(False, None)
def test_postgresql_rows(sealed: bool, data: st.DataObject | None) -> None:
    original = _SEALED_ROW if sealed else _PLAIN_ROW
    raw = data.draw(damaged(original)) if data is not None else DEEP
    try:
        _PG._decode(KEY, raw, _SEALER.fingerprint if sealed else None)
    except Exception as exc:
        assert_clean(exc, RECORD_SECRETS)
        assert isinstance(exc, StoreCorrupt), type(exc).__name__
