"""Named servers: ``GRANTKEEPER_HOME/servers.json`` maps a short name to a server's settings.

A name saves typing (``grantkeeper token notion``) and carries what a URL cannot: a
profile, a pre-registered client, scopes, or a static bearer token for servers without
OAuth. The file may hold secrets (a client secret, a bearer token), so it is written
atomically with mode 0600 and never followed through a symlink.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ._errors import LockTimeout, ProtocolError, ServerConfigError, StoreError
from ._oauth.callback_server import CALLBACK_HOSTS
from ._oauth.urls import require_secure
from ._paths import grantkeeper_home
from ._platform import DirHandle, loose_mode
from ._record import CredentialKey, canonical_url
from ._redact import redact, remember
from ._stores._fs import PrivateDir
from ._stores.admin import StoreCheck

SERVERS_FILE = "servers.json"
SERVERS_LOCK = "servers.lock"
"""The file's write lock: the name earlier versions lock, so old and new processes exclude
each other."""
FILE_FORMAT = "grantkeeper-servers"
"""Marks the file, so a stray JSON file is never mistaken for it."""

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
"""Names are typed on command lines: short, no spaces, no URL punctuation."""


@dataclass(frozen=True)
class ServerConfig:
    """One MCP server and how to authenticate to it. ``repr`` hides every secret."""

    url: str
    name: str | None = None
    profile: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    scope: str | None = None
    bearer_token: str | None = None
    bearer_token_env: str | None = None
    """Name of an environment variable holding the bearer token (keeps it out of the file)."""
    headers: dict[str, str] = field(default_factory=dict)
    """Extra static headers for the MCP transport, e.g. an API key. ``${VAR}`` in a value is
    the environment variable ``VAR``, read when a request is made (see
    :func:`expand_headers`); the file keeps the ``${VAR}`` text."""
    callback_port: int | None = None
    """A fixed loopback port for the login redirect, for clients registered with one."""
    callback_host: str | None = None
    """The host named in the login redirect: ``"127.0.0.1"`` (``None``, the default) or
    ``"localhost"``, for providers that register only ``http://localhost:PORT/...``
    redirects. The listener binds the loopback address either way."""
    client_metadata_url: str | None = None
    """This client's ID metadata document (SEP-991), used as client id where supported."""
    grant: str | None = None
    """``"client_credentials"`` for a machine client; otherwise a person logs in."""
    client_auth_method: str | None = None
    """How a client-credentials client authenticates: ``client_secret_basic`` (default with a
    secret), ``client_secret_post`` or ``private_key_jwt``."""
    client_key_file: str | None = None
    """A PEM private key file for ``private_key_jwt`` (the key itself is never stored here)."""
    client_key_env: str | None = None
    """Name of an environment variable holding that PEM private key."""
    retry_unknown_outcome: bool | None = None
    """The :class:`~grantkeeper.Keeper` option for this server; ``None`` keeps the default."""
    client_issuer: str | None = None
    """The authorization server that issued ``client_id`` (its issuer URL). When the server
    names another one (it moved, SEP-2352), that client is not presented there: a browser
    login registers at the new one, a machine or cross-app login stops and says so."""
    dpop: bool | None = None
    """Whether logins bind tokens to a DPoP key (RFC 9449): ``None`` where the authorization
    server advertises DPoP, ``True`` always, ``False`` never."""
    workload_identity_file: str | None = None
    """A file holding the workload's own identity token (a JWT, e.g. a Kubernetes projected
    service-account token): logins and renewals use the jwt-bearer grant with it, read anew
    each time (workload identity federation, SEP-1933)."""
    workload_identity_env: str | None = None
    """Name of an environment variable holding that token instead."""
    resource_indicator: bool | None = None
    """``False`` never sends the ``resource`` parameter (RFC 8707) at login or refresh:
    for authorization servers that refuse it next to ``scope`` (Microsoft Entra v2,
    AADSTS9010010). Tokens are then not bound to this server; ``status`` says so."""

    def __post_init__(self) -> None:
        # Whatever a server echoes of these is hidden from every message (see _redact).
        # Runs before _from_json checks the types, so it skips what is not a string.
        remember(
            self.bearer_token,
            self.client_secret,
            *credential_header_values(self.headers),
            pinned=True,
        )

    def __repr__(self) -> str:
        shown = [f"url={self.url!r}", f"name={self.name!r}"]
        if self.profile:
            shown.append(f"profile={self.profile!r}")
        if self.client_id:
            shown.append(f"client_id={self.client_id!r}")
        if self.client_secret:
            shown.append(f"client_secret={redact(self.client_secret)!r}")
        if self.bearer_token:
            shown.append(f"bearer_token={redact(self.bearer_token)!r}")
        if self.headers:
            shown.append(f"headers={sorted(self.headers)!r}")
        if self.retry_unknown_outcome is not None:
            shown.append(f"retry_unknown_outcome={self.retry_unknown_outcome!r}")
        if self.dpop is not None:
            shown.append(f"dpop={self.dpop!r}")
        if self.resource_indicator is not None:
            shown.append(f"resource_indicator={self.resource_indicator!r}")
        return f"ServerConfig({', '.join(shown)})"

    __str__ = __repr__

    @property
    def key(self) -> CredentialKey:
        """The key of this server's OAuth credential in the store."""
        return CredentialKey.for_server(self.url, self.profile)

    @property
    def label(self) -> str:
        """How to name this server to a person: its name, else its URL."""
        return self.name or self.url

    def bearer(self) -> str | None:
        """The static bearer token, from the file or the environment, if one is configured."""
        if self.bearer_token_env:
            value = os.environ.get(self.bearer_token_env)
            if not value:
                raise ServerConfigError(
                    f"server {self.label!r} takes its token from ${self.bearer_token_env}, "
                    "which is not set"
                )
            remember(value, pinned=True)
            return value
        return self.bearer_token

    def request_headers(self, environ: Mapping[str, str] | None = None) -> dict[str, str]:
        """:attr:`headers` as they are sent: each ``${VAR}`` replaced (:func:`expand_headers`)."""
        return expand_headers(self.headers, environ, server=self.label)

    @property
    def static(self) -> bool:
        """Whether a static bearer token (in the file or the environment) replaces OAuth."""
        return bool(self.bearer_token or self.bearer_token_env)

    @property
    def secrets(self) -> bool:
        """Whether this entry holds a secret itself (not by reference to the environment)."""
        return bool(self.client_secret or self.bearer_token or self.headers)


_CREDENTIAL_HEADER = re.compile(r"auth|cookie|key|token|secret|password|credential", re.I)
"""Names of headers whose values authenticate (``Authorization``, ``X-API-Key``, ...)."""


def credential_header_values(headers: object) -> list[str]:
    """The values among ``headers`` that authenticate, and the credential after an
    ``Authorization`` scheme; other headers (``Accept``) hold ordinary words.

    Of a value with ``${VAR}`` references, only the text around them: a reference is no
    secret (hidden, it would hide the variable's name from the error that names it), and
    what it stands for is remembered when it is read (:func:`expand_headers`)."""
    values: list[str] = []
    for name, value in headers.items() if isinstance(headers, dict) else ():
        if isinstance(name, str) and isinstance(value, str) and _CREDENTIAL_HEADER.search(name):
            for whole in (value, value.strip().partition(" ")[2].strip()):
                values += _ANY_REFERENCE.split(whole)
    return values


_REFERENCE = re.compile(r"\$(\$?)\{([^}]*)\}")
"""``${VAR}`` in a header value, or its escape ``$${VAR}`` (which stands for ``${VAR}``)."""

_ANY_REFERENCE = re.compile(r"\$\$?\{[^}]*\}")
""":data:`_REFERENCE` without its groups, to split a value on (``re.split`` keeps groups)."""

_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def expand_headers(
    headers: Mapping[str, str],
    environ: Mapping[str, str] | None = None,
    *,
    server: str | None = None,
    secrets: list[str] | None = None,
) -> dict[str, str]:
    """``headers`` with each ``${VAR}`` in a value replaced by the environment variable
    ``VAR`` (from ``environ``, else ``os.environ``), as mcp-remote users write them.

    Only the environment, and only once: no default values, no files, no shell, and a
    value that itself holds ``${...}`` stays as it is. ``$VAR`` without braces is literal,
    and ``$${VAR}`` is the literal text ``${VAR}``. What a variable holds authenticates,
    as a rule (``Authorization: Bearer ${TOKEN}``): each value put in is remembered as a
    secret (:func:`~grantkeeper._redact.remember`) and, when ``secrets`` is given, added
    to it. Raises :class:`ServerConfigError` naming the header and the variable, never a
    value, when a variable is unset or empty, or a value holds what HTTP cannot carry.
    """
    env = os.environ if environ is None else environ
    where = f" of server {server!r}" if server else ""
    expanded: dict[str, str] = {}
    put_in: list[str] = []
    for name, value in headers.items():
        if not isinstance(value, str) or "${" not in value:
            expanded[name] = value  # a malformed file's non-string: httpx2 says what it is
            continue

        def substitute(match: re.Match[str], header: str = name) -> str:
            if match.group(1):  # $${VAR}: the escape
                return match.group()[1:]
            variable = match.group(2)
            if not _VARIABLE_NAME.fullmatch(variable):
                # Not shown: what is between the braces may be a pasted secret.
                raise ServerConfigError(
                    f"header {header!r}{where} has a '${{...}}' that does not name an "
                    "environment variable (letters, digits and '_'); write $${ for a literal ${"
                )
            found = env.get(variable)
            if not found:
                raise ServerConfigError(
                    f"header {header!r}{where} takes ${{{variable}}} from the environment, "
                    "which is not set (or empty)"
                )
            if not found.isascii() or any((c < " " and c != "\t") or c == "\x7f" for c in found):
                # A line break would end the header and start another one of its text.
                raise ServerConfigError(
                    f"header {header!r}{where}: ${{{variable}}} holds a character an HTTP "
                    "header cannot carry (a line break, a control or non-ASCII character)"
                )
            put_in.append(found)
            return found

        read = len(put_in)
        expanded[name] = _REFERENCE.sub(substitute, value)
        if len(put_in) > read:  # the whole value holds a secret; an escape alone does not
            put_in.append(expanded[name])
    # Whatever a server echoes of them is hidden from every message (see _redact).
    remember(*put_in, pinned=True)
    if secrets is not None:
        secrets.extend(put_in)
    return expanded


def require_callback_host(config: ServerConfig, where: str) -> None:
    """Raise :class:`ServerConfigError` unless ``config.callback_host`` is unset or one of
    the two loopback names: any other would be a redirect off loopback, or one the listener
    (bound to 127.0.0.1) never sees. Checked wherever a config enters: servers.json, a
    save, a login given a :class:`ServerConfig` directly."""
    if config.callback_host is not None and config.callback_host not in CALLBACK_HOSTS:
        raise ServerConfigError(f"{where}: callback_host must be {' or '.join(CALLBACK_HOSTS)}")


def _path(home: str | os.PathLike[str] | None) -> Path:
    return (Path(home) if home is not None else grantkeeper_home()) / SERVERS_FILE


def _from_json(name: str, data: Any) -> ServerConfig:
    if not isinstance(data, dict):
        raise ServerConfigError(f"{SERVERS_FILE}: server {name!r} is not an object")
    known = {f.name for f in fields(ServerConfig)} - {"name"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ServerConfigError(f"{SERVERS_FILE}: server {name!r} has unknown keys {unknown}")
    try:
        config = ServerConfig(name=name, **data)
        require_secure(config.url, f"server {name!r} url")
    except TypeError:
        raise ServerConfigError(f"{SERVERS_FILE}: server {name!r} is malformed") from None
    except ServerConfigError:
        raise
    except ProtocolError as exc:
        raise ServerConfigError(f"{SERVERS_FILE}: {exc}") from None
    bad_types = [
        f.name
        for f in fields(ServerConfig)
        if f.name
        not in ("headers", "callback_port", "retry_unknown_outcome", "dpop", "resource_indicator")
        and getattr(config, f.name) is not None
        and not isinstance(getattr(config, f.name), str)
    ]
    for flag in ("retry_unknown_outcome", "dpop", "resource_indicator"):
        if getattr(config, flag) not in (None, True, False):
            bad_types.append(flag)
    if bad_types or not isinstance(config.headers, dict):
        raise ServerConfigError(f"{SERVERS_FILE}: server {name!r} has malformed {bad_types}")
    require_callback_host(config, f"{SERVERS_FILE}: server {name!r}")
    return config


def _to_json(config: ServerConfig) -> dict[str, Any]:
    data = asdict(config)
    data.pop("name")
    return {k: v for k, v in data.items() if v not in (None, {}, "")}


def _home_dir(path: Path) -> PrivateDir:
    # GRANTKEEPER_HOME may be a directory the user chose, so its mode is theirs; the file
    # in it is still never followed through a symlink, created 0600, replaced atomically.
    return PrivateDir(path.parent, owner_only=False)


def _read(path: Path, dirh: DirHandle | None = None) -> dict[str, Any]:
    home = _home_dir(path)
    try:
        if dirh is None:
            with home.open(create=False) as opened:
                found = home.read_file(opened, path.name) if opened is not None else None
        else:
            found = home.read_file(dirh, path.name)
    except StoreError as exc:
        raise ServerConfigError(str(exc)) from None
    if found is None:
        return {}
    raw, mode = found
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        document = None
    if not isinstance(document, dict) or document.get("format") != FILE_FORMAT:
        raise ServerConfigError(f"{path} is malformed; fix or delete it")
    servers = document.get("servers", {})
    if not isinstance(servers, dict):
        raise ServerConfigError(f"{path}: servers is not an object")
    if loose_mode(mode) and any(_holds_secret(entry) for entry in servers.values()):
        # The same rule as a credential file: a secret others can read is refused, not used.
        raise ServerConfigError(
            f"{path} holds secrets but is readable by others (mode {mode:o}); run: chmod 600 {path}"
        )
    return servers


def _holds_secret(entry: Any) -> bool:
    return isinstance(entry, dict) and any(
        entry.get(name) for name in ("client_secret", "bearer_token", "headers")
    )


def servers_file(home: str | os.PathLike[str] | None = None) -> Path:
    """Where the servers file lives: ``GRANTKEEPER_HOME/servers.json``."""
    return _path(home)


def loose_permissions(home: str | os.PathLike[str] | None = None) -> str | None:
    """What is wrong with the servers file's permissions, with the fix; ``None`` if nothing.

    ``doctor`` reports it; reading the file refuses the same file when it holds secrets.
    """
    path = _path(home)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    mode = stat.S_IMODE(info.st_mode)
    if stat.S_ISLNK(info.st_mode):
        return f"{path} is a symlink"
    if loose_mode(mode):
        return f"{path} has mode {mode:o}; run: chmod 600 {path}"
    return None


def servers_file_check(home: str | os.PathLike[str] | None = None) -> StoreCheck:
    """Whether ``servers.json`` keeps its secrets private (it may hold client secrets and
    static tokens: group or world access is a problem, with the exact ``chmod``)."""
    problem = loose_permissions(home)
    if problem is not None:
        return StoreCheck("servers file", False, problem)
    path = servers_file(home)
    return StoreCheck("servers file", True, f"{path}: private" if path.exists() else "none yet")


def load_servers(home: str | os.PathLike[str] | None = None) -> list[ServerConfig]:
    """Every configured server, sorted by name."""
    servers = _read(_path(home))
    return [_from_json(name, servers[name]) for name in sorted(servers)]


def _update(home: str | os.PathLike[str] | None, change: Callable[[dict[str, Any]], None]) -> None:
    """Read-modify-write the file under its lock (:data:`SERVERS_LOCK`, a bounded wait),
    then replace it atomically (temp file, fsync, rename, fsync of the directory)."""
    path = _path(home)
    directory = _home_dir(path)
    try:
        with directory.updating(path.name, lock=SERVERS_LOCK) as dirh:
            servers = _read(path, dirh)
            change(servers)
            payload = json.dumps({"format": FILE_FORMAT, "servers": servers}, indent=2).encode()
            directory.write_atomic(dirh, path.name, payload)
    except LockTimeout:
        raise  # retryable: another process is mid-update
    except StoreError as exc:
        raise ServerConfigError(str(exc)) from None


def default_name(url: str) -> str:
    """A name for ``url`` when none is given: its host, with the port if not the default."""
    parts = urlsplit(canonical_url(url))
    return re.sub(r"[^A-Za-z0-9._-]+", "-", parts.netloc).strip("-.") or "server"


def save_server(config: ServerConfig, home: str | os.PathLike[str] | None = None) -> ServerConfig:
    """Add or replace the server ``config.name`` (derived from the URL when ``None``).

    A derived name already used by another URL gets a numeric suffix; an explicit one
    replaces the old entry, as the user asked.
    """
    require_secure(config.url, "server URL")
    require_callback_host(config, f"server {config.label!r}")  # else the file would not load
    saved: list[ServerConfig] = []

    def change(servers: dict[str, Any]) -> None:
        name = config.name
        if name is None:
            base = default_name(config.url)
            name, n = base, 1
            while name in servers and not _same_server(servers[name], config):
                n += 1
                name = f"{base}-{n}"
        if not NAME_PATTERN.match(name):
            raise ServerConfigError(
                f"server name {name[:70]!r} must be letters, digits, '.', '_' or '-'"
            )
        final = ServerConfig(**{**asdict(config), "name": name})
        servers[name] = _to_json(final)
        saved.append(final)

    _update(home, change)
    return saved[0]


def _same_server(data: Any, config: ServerConfig) -> bool:
    if not isinstance(data, dict) or not isinstance(data.get("url"), str):
        return False
    try:
        return (
            canonical_url(data["url"]) == canonical_url(config.url)
            and data.get("profile") == config.profile
        )
    except ValueError:
        return False


def remove_server(name: str, home: str | os.PathLike[str] | None = None) -> bool:
    """Forget the server ``name``; return whether it was configured."""
    found: list[bool] = []
    _update(home, lambda servers: found.append(servers.pop(name, None) is not None))
    return found[0]


def _looks_like_url(text: str) -> bool:
    return "://" in text


def resolve_server(
    name_or_url: str, home: str | os.PathLike[str] | None = None, *, profile: str | None = None
) -> ServerConfig:
    """The server and credential a user means by ``name_or_url`` and ``profile``.

    A name must be configured. A URL matches a configured server with the same canonical
    URL, else stands for itself with default settings. ``profile`` selects another
    credential of the same server, whether it is named or given by URL: an entry saved
    with that profile wins, else the server's entry without a profile lends its settings.

    Raises :class:`ServerConfigError` rather than act on a credential other than the one
    named: a name saved with profile ``a`` asked for with ``--profile b``, or a profile on
    a server that uses a static bearer token (which has no profiles).
    """
    text = name_or_url.strip()
    servers = load_servers(home)
    if not _looks_like_url(text):
        named = next((config for config in servers if config.name == text), None)
        if named is None:
            known = ", ".join(c.name for c in servers if c.name) or "none yet"
            raise ServerConfigError(
                f"no server named {text[:70]!r} (configured: {known}); "
                "use a URL, or run: grantkeeper login URL --name NAME"
            )
        if profile is None or named.profile == profile:
            return named
        if named.profile is not None:
            raise ServerConfigError(
                f"server {text!r} is saved with profile {named.profile!r}, not {profile!r}; "
                f"drop --profile, or name the server by its URL: {named.url}"
            )
        return _with_profile(named, profile, servers, text)
    try:
        url = canonical_url(require_secure(text, "server URL"))
    except ValueError:
        raise ServerConfigError(f"{text[:200]!r} is not an http(s) URL") from None
    except ProtocolError as exc:  # plain HTTP off loopback, a fragment
        raise ServerConfigError(str(exc)) from None
    for config in servers:
        if canonical_url(config.url) == url and config.profile == profile:
            return config
    for config in servers:
        if canonical_url(config.url) == url and config.profile is None and not config.static:
            return _with_profile(config, profile, servers, text)
    return ServerConfig(url=url, profile=profile)


def _with_profile(
    base: ServerConfig, profile: str | None, servers: list[ServerConfig], given: str
) -> ServerConfig:
    """``base``'s settings for the credential ``profile``: its own entry when one is saved."""
    if profile is None:
        return base
    url = canonical_url(base.url)
    for config in servers:
        if canonical_url(config.url) == url and config.profile == profile:
            return config
    if base.static:
        raise ServerConfigError(
            f"server {given!r} uses a static bearer token, which has no profiles; drop --profile"
        )
    # The entry's name stays for messages; it is not saved under that name (see login).
    return replace(base, profile=profile)
