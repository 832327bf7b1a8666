"""The CLI's policy, declared once: exit codes, which errors need a person, the hint that
tells the person what to type, the shared options, logging, and how a command opens a store
and a Keeper. Commands import these and never decide on their own.

Exit codes: 0 ok; 1 error; 2 bad usage; 3 a person must act (log in, or log in again).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import click

from .._status import fix_command

if TYPE_CHECKING:
    from .._keeper import Keeper
    from .._servers import ServerConfig
    from .._stores.base import Store

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
"""A person must log in or log in again; scripts branch on this, not on messages."""

DEBUG_ENV = "GRANTKEEPER_DEBUG"
"""Set to 1 to see tracebacks of unexpected errors (they may show request details)."""

RETRY_UNKNOWN_ENV = "GRANTKEEPER_RETRY_UNKNOWN_OUTCOME"
"""``0`` or ``1``: the Keeper's ``retry_unknown_outcome`` when no flag is given."""

F = TypeVar("F", bound=Callable[..., Any])


# -- who needs a person, and what they type -----------------------------------------------


def _given_server() -> tuple[str, str | None] | None:
    """The ``URL|NAME`` and ``--profile`` the running command was given, if any."""
    ctx = click.get_current_context(silent=True)
    server = ctx.params.get("server") if ctx else None
    if not isinstance(server, str):
        return None
    profile = ctx.params.get("profile") if ctx else None
    return server, profile if isinstance(profile, str) else None


def fail(message: str, code: int = EXIT_ERROR) -> click.exceptions.Exit:
    """Print ``error: message`` on stderr; return the exit to raise.

    Every error the CLI prints passes here, and ``message`` may quote a server (an MCP
    error, a hint built from its challenge): the process's known secrets are hidden."""
    from .._redact import scrub_known

    click.echo(f"error: {scrub_known(message)}", err=True)
    return click.exceptions.Exit(code)


def fail_for(exc: BaseException) -> click.exceptions.Exit:
    """Print ``exc`` in one line, the login hint when a person must act; the exit to raise."""
    from .._errors import GrantkeeperError

    if not (isinstance(exc, GrantkeeperError) and exc.needs_login):
        return fail(str(exc), EXIT_ERROR)
    given = _given_server()
    hint = f"; run: {fix_command(exc, *given)}" if given else ""
    return fail(f"{exc}{hint}", EXIT_AUTH)


def handle_errors(command: F) -> F:
    """Turn grantkeeper errors into one clean line and the documented exit code."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from .._errors import GrantkeeperError

        try:
            return command(*args, **kwargs)
        except GrantkeeperError as exc:
            raise fail_for(exc) from None
        except KeyboardInterrupt as exc:
            from .._signals import Terminated

            if isinstance(exc, Terminated):
                raise fail(f"cancelled ({exc})", exc.exit_code) from None
            raise fail("cancelled", 130) from None
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except Exception as exc:
            if os.environ.get(DEBUG_ENV) == "1":
                raise
            # The message of an unexpected error may quote a request; show only its type.
            raise fail(
                f"unexpected {type(exc).__name__}; set {DEBUG_ENV}=1 to see the traceback"
            ) from None

    return wrapper  # type: ignore[return-value]


# -- logging ------------------------------------------------------------------------------


class _EventFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        # Events carry only non-secret fields by construction (see _log): keys,
        # fingerprints, durations, error classes. Other records may quote a server.
        from .._redact import scrub_known

        return scrub_known(f"{record.levelname.lower()}: {record.getMessage()}")


class _ScrubbingFormatter(logging.Formatter):
    """Python's last-resort format, with the process's known secrets hidden: it prints a
    library's warnings (the ``mcp`` SDK's quote what a server sent)."""

    def format(self, record: logging.LogRecord) -> str:
        from .._redact import scrub_known

        return scrub_known(super().format(record))


_HANDLERS: list[logging.Handler] = []
"""The handler the CLI installed, replaced on each call."""


def configure_logging(verbose: bool) -> None:
    """Without ``verbose`` no log line reaches stderr; with it, every event does."""
    logger = logging.getLogger("grantkeeper")
    while _HANDLERS:
        logger.removeHandler(_HANDLERS.pop())
    handler: logging.Handler
    if verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_EventFormatter())
        logger.setLevel(logging.DEBUG)
    else:
        # Python's last-resort handler would print warnings raw; the CLI reports instead.
        handler = logging.NullHandler()
    _HANDLERS.append(handler)
    logger.addHandler(handler)
    if logging.lastResort is not None:
        logging.lastResort.setFormatter(_ScrubbingFormatter())


def _verbose_callback(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value or ctx.parent is None:
        configure_logging(value)


# -- options ------------------------------------------------------------------------------


def verbose_option(command: F) -> F:
    """``-v/--verbose``: show grantkeeper's structured log events on stderr."""
    return click.option(
        "-v",
        "--verbose",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_verbose_callback,
        help="Show grantkeeper's log events (secrets redacted) on stderr.",
    )(command)


SERVER_METAVAR = "URL|NAME"
"""How every command writes its server argument: a server's URL, or its name in servers.json."""


def server_argument(command: F) -> F:
    """``URL|NAME``: the server a command acts on."""
    return click.argument("server", metavar=SERVER_METAVAR)(command)


def optional_server_argument(command: F) -> F:
    """``[URL|NAME]``: the server a command acts on, or every one."""
    return click.argument("server", metavar=f"[{SERVER_METAVAR}]", required=False)(command)


def store_option(command: F) -> F:
    """``--store SPEC``: which credential store (default ``$GRANTKEEPER_STORE``, else auto)."""
    return click.option(
        "--store",
        "store_spec",
        metavar="SPEC",
        default=None,
        help="auto, file, keyring or postgresql://... Default: $GRANTKEEPER_STORE, else auto.",
    )(command)


def json_option(command: F) -> F:
    """``--json``: machine-readable output on stdout."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(command)


def profile_option(command: F) -> F:
    """``--profile P``: a second credential for the same server, e.g. another account."""
    return click.option(
        "--profile", default=None, help="A second credential of the server, e.g. another account."
    )(command)


CALLBACK_HOSTS = ("localhost", "127.0.0.1")
"""``--callback-host`` choices: ``_oauth.callback_server.CALLBACK_HOSTS``, written out so
that parsing a command line imports no HTTP server (tests/test_callback_host.py holds them
equal)."""


def callback_options(when: str) -> Callable[[F], F]:
    """``--callback-host`` and ``--callback-port`` for a browser login's redirect; ``when``
    says how long they hold (saved for the server, or for this run)."""

    def decorate(command: F) -> F:
        command = click.option(
            "--callback-port",
            type=click.IntRange(0, 65535),
            help=f"Loopback port for the login redirect, {when} (a client registered with "
            "one). Default: the server's setting, else any free port.",
        )(command)
        return click.option(
            "--callback-host",
            type=click.Choice(CALLBACK_HOSTS),
            help=f"Host the login redirect names, {when}: localhost for providers that "
            "register only http://localhost:PORT/... redirects. Default: the server's "
            "setting, else 127.0.0.1.",
        )(command)

    return decorate


def retry_option(command: F) -> F:
    """``--retry-unknown-outcome/--no-retry-unknown-outcome``: the Keeper's policy."""
    return click.option(
        "--retry-unknown-outcome/--no-retry-unknown-outcome",
        "retry_unknown",
        default=None,
        help=(
            "Whether a refresh whose outcome was lost is retried, with backoff, until the "
            "provider answers (default) or needs a new login. "
            f"Default: ${RETRY_UNKNOWN_ENV}, else the server's servers.json setting, else retry."
        ),
    )(command)


# -- stores and keepers -------------------------------------------------------------------


def open_store_for(spec: str | None, *, option: str = "--store") -> Store:
    """The store ``option`` (or, without it, ``$GRANTKEEPER_STORE``) names; a bad spec is a
    usage error that names where it came from."""
    from .._errors import StoreConfigError
    from .._stores.open import STORE_ENV, open_store

    try:
        store = open_store(spec)
    except StoreConfigError as exc:
        where = option if spec is not None else f"${STORE_ENV}"
        raise click.UsageError(f"{where}: {exc.message}") from None
    from .._stores.admin import installed

    if store.name == "keyring" and not installed("keyring"):
        # Asked for by name, the keyring must not be silently empty on a plain install.
        from .._errors import MissingExtra

        raise MissingExtra("the keyring store", "keyring", module="keyring")
    return store


def retry_unknown_outcome(flag: bool | None, config: ServerConfig) -> bool:
    """The unknown-outcome policy: the flag, else the environment, else servers.json, else on."""
    if flag is not None:
        return flag
    raw = os.environ.get(RETRY_UNKNOWN_ENV, "").strip().lower()
    if raw:
        if raw in ("1", "true", "yes", "on"):
            return True
        if raw in ("0", "false", "no", "off"):
            return False
        raise click.UsageError(f"${RETRY_UNKNOWN_ENV} must be 0 or 1, not {raw[:20]!r}")
    if config.retry_unknown_outcome is not None:
        return config.retry_unknown_outcome
    return True


def nothing_stored(store: Store, config: ServerConfig) -> bool:
    """Whether the store holds nothing for the server; a store that cannot say is taken to
    hold something, so that the Keeper meets the error and the host hears of it."""
    from .._errors import StoreError

    try:
        return store.read(config.key) is None
    except StoreError:
        return False


@contextlib.contextmanager
def keeper_for(config: ServerConfig, store: Store, retry: bool | None) -> Iterator[Keeper]:
    """A Keeper for ``config``'s credential, closed (pending writes retried) on the way out."""
    from .._keeper import Keeper

    keeper = Keeper(store, config.key, retry_unknown_outcome=retry_unknown_outcome(retry, config))
    try:
        yield keeper
    finally:
        keeper.close()
