"""Answer "does this error mean a person must log in?", however deeply it is wrapped.

The ``mcp`` SDK runs its transport in anyio task groups, so our errors reach callers
inside ``ExceptionGroup``s, as ``__cause__`` or ``__context__`` of other errors, or as an
HTTP 401 that never went through grantkeeper (httpx or httpx2 ``HTTPStatusError``).
"""

from __future__ import annotations

from ._errors import AuthenticationRequired, ReauthenticationRequired

MAX_DEPTH = 32
"""How deep to look; exception graphs can be cyclic and are never legitimately this deep."""


def authentication_required(exc: BaseException) -> AuthenticationRequired | None:
    """The authentication-required error inside ``exc``, or ``None``.

    Check ``.requires_login`` / ``.requires_reauthentication`` on the result.
    """
    seen: set[int] = set()
    pending: list[tuple[BaseException, int]] = [(exc, 0)]
    fallback: AuthenticationRequired | None = None
    while pending:
        current, depth = pending.pop(0)
        if id(current) in seen or depth > MAX_DEPTH:
            continue
        seen.add(id(current))
        if isinstance(current, AuthenticationRequired):
            return current
        if fallback is None and _is_http_401(current):
            fallback = ReauthenticationRequired(
                "the server rejected the credential (HTTP 401); log in again"
            )
        children: list[BaseException] = []
        if isinstance(current, BaseExceptionGroup):
            children.extend(current.exceptions)
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                children.append(linked)
        pending.extend((child, depth + 1) for child in children)
    return fallback


def _is_http_401(exc: BaseException) -> bool:
    # Duck-typed, so httpx and httpx2 (distinct classes with the same shape) both count.
    response = getattr(exc, "response", None)
    return type(exc).__name__ == "HTTPStatusError" and getattr(response, "status_code", 0) == 401
