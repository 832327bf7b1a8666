"""Show secrets only as a short suffix, fingerprint them, and scrub them from text.

Every value that authenticates is remembered here as it comes into being or is loaded
(:func:`remember`), and every message that may repeat a peer's text is passed through
:func:`scrub_known` where it is built: error messages (the base error class), log events,
the CLI's output and the proxy's JSON-RPC errors. A server that echoes a token, in a
challenge, a body, a reason phrase or a header, then never gets it printed. The kinds fed
in, each where it is made: static bearers and credential headers (``ServerConfig``, a
static token handed to the auth driver, the proxy's ``--header``), access, refresh and
ID tokens (``Credential``, ``TokenResponse``), client secrets (``ServerConfig``,
``Credential``, ``ClientRegistration``), client assertions and every other secret a token
request carries (``client_assertion``, ``TokenRequest``). A new kind is one more
:func:`remember` call where its value is made.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Collection, Iterable
from typing import Any
from urllib.parse import quote, quote_plus

SUFFIX_CHARS = 4
"""Characters of a secret that may be shown: enough to tell two tokens apart in a log."""

MIN_LENGTH_FOR_SUFFIX = 16
"""Shorter secrets show no suffix at all, so a suffix never reveals most of a secret."""


def redact(secret: str | None) -> str:
    """Return a printable stand-in for ``secret``: ``'…abcd'``, ``'…'`` or ``'<none>'``."""
    if secret is None:
        return "<none>"
    if len(secret) < MIN_LENGTH_FOR_SUFFIX:
        return "…"
    return "…" + secret[-SUFFIX_CHARS:]


def fingerprint(secret: str) -> str:
    """Return a stable, non-reversible identifier for ``secret`` (16 hex digits of SHA-256)."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()[:16]


FRAGMENT_CHARS = 8
"""A word sharing this many characters with a secret is hidden whole. Servers truncate what
they echo (``auth Basic WGJLVkQ4``), and eight base64 characters are 48 bits of a secret."""

# What a token, a base64 credential or a percent-encoded form value is made of: the unit
# that is hidden whole when part of it matches a secret. Spaces and ':' split it, so the
# client id beside a Basic pair, and ordinary words, stay readable.
_WORD = re.compile(r"[A-Za-z0-9\-._~+/=%]+")


def scrub(text: str, secrets: Iterable[str], limit: int) -> str:
    """Return at most ``limit`` characters of untrusted ``text`` with every secret hidden.

    Each secret is replaced by ``…``, longest first: not by its :func:`redact` suffix,
    since text a peer wrote reaches output and logs. Then any word that shares
    :data:`FRAGMENT_CHARS` consecutive characters with a secret, in any case (a parser
    lower-cases what it takes for an auth scheme), such as a truncated echo, is replaced by
    ``…``. The exact pass sees the whole text, so cutting it to ``limit`` can never expose
    half of a secret.
    """
    ordered = sorted({secret for secret in secrets if secret}, key=len, reverse=True)
    return _hide(text, ordered, _grams(ordered), limit)


def _grams(secrets: Iterable[str], *, words_too: bool = True) -> frozenset[str]:
    """Every run of :data:`FRAGMENT_CHARS` characters of ``secrets``, lower-cased; without
    ``words_too``, only those that could not be part of an ordinary word."""
    runs = (
        secret[i : i + FRAGMENT_CHARS]
        for secret in secrets
        for i in range(len(secret) - FRAGMENT_CHARS + 1)
    )
    return frozenset(run.lower() for run in runs if words_too or not _wordlike(run))


def _wordlike(gram: str) -> bool:
    """Whether ``gram`` holds no digit and no capital: a run of a word (``producti``), not
    of a random token, whose eight characters almost never all are lower-case letters
    (hex: 0.04 %; base64: 0.13 %). The registry hides what any text repeats of every
    secret of the process: hiding each word that shares a run with a secret named like its
    tenant would hide ordinary text. :func:`scrub` knows the few secrets a text may repeat
    and hides every run."""
    return not any(c.isdigit() or c.isupper() for c in gram)


def _hide(text: str, ordered: Iterable[str], grams: Collection[str], limit: int | None) -> str:
    for secret in ordered:
        if secret in text:
            text = text.replace(secret, "…")
    if limit is not None:
        text = text[:limit]
    if not grams:
        return text

    def hide(match: re.Match[str]) -> str:
        word = match.group()
        lowered = word.lower()
        for i in range(len(word) - FRAGMENT_CHARS + 1):
            if lowered[i : i + FRAGMENT_CHARS] in grams:
                return "…"
        return word

    return _WORD.sub(hide, text)


# -- the process's live secrets ---------------------------------------------------------

MAX_REMEMBERED = 256
"""Secrets kept for :func:`scrub_known`, the least recently seen dropped first. A process
holds a handful at a time (per credential an access and a refresh token, a client secret,
the last assertion); the older ones have expired. Pinned secrets are kept besides."""

MAX_PINNED = 256
"""Secrets of the configuration (static bearers, client secrets, credential headers) kept
for as long as the process lives, however many tokens come and go: they never expire."""

MAX_REMEMBERED_CHARS = 64 * 1024
"""Characters in the fragment index, encodings included: about one entry per character,
so this bounds its memory (a few MB) whatever the tokens' size."""

MIN_REMEMBERED_CHARS = FRAGMENT_CHARS
"""Shorter values are not remembered: no issued secret is that short, and hiding every
occurrence of a short word would hide ordinary text."""

FRAGMENT_SECRET_CHARS = (MIN_LENGTH_FOR_SUFFIX, 4096)
"""Only a secret of this many characters is also hidden by its fragments: a shorter one
(a cookie's ``theme=dark``, an account name) would hide ordinary words that share eight
characters with it, and a longer one (a large ID token) would crowd the index; both are
still hidden wherever they appear whole."""


class _Known:
    """A bounded, thread-safe set of secrets. Adding one costs its own length, whatever
    is already held; readers never take the lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        # Each remembered value, with the forms it takes in text (itself, percent-encoded).
        self.values: OrderedDict[str, tuple[str, ...]] = OrderedDict()
        self.pinned: dict[str, tuple[str, ...]] = {}
        self.chars = 0
        # How many held forms each gram comes from. A reader's membership test on a dict
        # another thread changes is safe; only the dict's own methods touch it.
        self.grams: dict[str, int] = {}
        # Every held form, longest first: the exact pass hides a secret before its parts.
        self.ordered: tuple[str, ...] = ()

    def add(self, value: str, *, pinned: bool = False) -> None:
        with self.lock:
            if value in self.pinned:
                return
            if value in self.values:
                if not pinned:
                    self.values.move_to_end(value)
                    return
                forms = self.values.pop(value)
            else:
                forms = tuple(dict.fromkeys((value, quote(value, safe=""), quote_plus(value))))
                self._count(forms, 1)
            if pinned and len(self.pinned) < MAX_PINNED:
                self.pinned[value] = forms
            else:
                self.values[value] = forms
            while self.values and (
                len(self.values) > MAX_REMEMBERED or self.chars > MAX_REMEMBERED_CHARS
            ):
                if len(self.values) == 1 and value in self.values:
                    break  # the newest stays, whatever its size
                self._count(self.values.popitem(last=False)[1], -1)
            every = {
                form for held in (*self.pinned.values(), *self.values.values()) for form in held
            }
            self.ordered = tuple(sorted(every, key=len, reverse=True))

    def _count(self, forms: tuple[str, ...], step: int) -> None:
        low, high = FRAGMENT_SECRET_CHARS
        indexed = [form for form in forms if low <= len(form) <= high]
        self.chars += step * sum(len(form) for form in indexed)
        for gram in _grams(indexed, words_too=False):
            count = self.grams.get(gram, 0) + step
            if count:
                self.grams[gram] = count
            else:
                del self.grams[gram]

    def clear(self) -> None:
        with self.lock:
            self.values.clear()
            self.pinned.clear()
            self.chars = 0
            self.grams = {}
            self.ordered = ()


_known = _Known()


def _after_fork_in_child() -> None:
    # Another thread may have held the lock at the fork: the child's copy would never open.
    _known.lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # not on Windows, which cannot fork
    os.register_at_fork(after_in_child=_after_fork_in_child)


def remember(*secrets: str | None, pinned: bool = False) -> None:
    """Remember each of ``secrets`` so that :func:`scrub_known` hides it; ``None``, short
    values and (from a malformed file) non-strings are skipped. Call it where a secret is
    made or loaded; ``pinned`` for the configuration's, which never expire."""
    for secret in secrets:
        if isinstance(secret, str) and len(secret) >= MIN_REMEMBERED_CHARS:
            _known.add(secret, pinned=pinned)


def forget_all() -> None:
    """Forget every remembered secret (for tests)."""
    _known.clear()


def scrub_known(text: str, limit: int | None = None) -> str:
    """Return ``text`` with every remembered secret, and any word sharing
    :data:`FRAGMENT_CHARS` characters with one, replaced by ``…``; at most ``limit``
    characters of it when given. Text that holds no secret comes back unchanged."""
    ordered, grams = _known.ordered, _known.grams
    if not ordered:
        return text if limit is None else text[:limit]
    return _hide(text, ordered, grams, limit)


def scrub_known_in(data: Any) -> Any:
    """:func:`scrub_known` applied to every string (keys too) in JSON-like ``data``."""
    if isinstance(data, str):
        return scrub_known(data)
    if isinstance(data, dict):
        return {scrub_known_in(k): scrub_known_in(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [scrub_known_in(item) for item in data]
    return data
