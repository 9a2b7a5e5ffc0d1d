"""Message fingerprints: the same failure with other ids groups as one line of the report."""

from __future__ import annotations

import re
from http import HTTPStatus

__all__ = ["fingerprint"]

_MAX_FINGERPRINT = 512
_H = "[0-9a-fA-F]"
_L, _R = "(?<![0-9A-Za-z])", "(?![0-9A-Za-z])"  # an id's edges: "_" and "-" separate
_C = r"[\w.:@+\-]"  # characters of a "word" that may hold ids: host:port, a.b@c.d, x-1
# Only words with a digit or an "@" are looked at (one pass over the text in C); the
# rules below run on those words alone, each only when the word can hold its shape.
_ANY = re.compile(r"[\d@]")
_WORD = re.compile(rf"(?<!{_C})(?={_C}*?[\d@]){_C}+")
_UUID = re.compile(rf"{_L}{_H}{{8}}-{_H}{{4}}-{_H}{{4}}-{_H}{{4}}-{_H}{{12}}{_R}")
_TS = re.compile(
    r"(?<![0-9])[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"(?:T[0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]+)?)?(?:Z|[+-][0-9]{2}:?[0-9]{2})?)?(?![0-9])"
)
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_IPV4 = re.compile(r"(?<![0-9.])[0-9]{1,3}(?:\.[0-9]{1,3}){3}(?![0-9.])")
_IPV6 = re.compile(  # eight groups or a "::" form, holding a digit ("Foo::bar" is C++)
    rf"(?<![\w:])(?=[0-9a-fA-F:]*[0-9])(?:(?:{_H}{{1,4}}:){{7}}{_H}{{1,4}}"
    rf"|(?:{_H}{{1,4}}(?::{_H}{{1,4}})*)?::(?:{_H}{{1,4}}(?::{_H}{{1,4}})*)?)(?![\w:])"
)
_HEX = re.compile(
    rf"{_L}(?:0[xX]{_H}+|(?=[0-9a-fA-F]*[0-9])(?=[0-9a-fA-F]*[a-fA-F]){_H}{{8,}}){_R}"
)
_ID = re.compile(rf"{_L}(?=[A-Za-z0-9]*[0-9])(?=[A-Za-z0-9]*[A-Za-z])[A-Za-z0-9]{{16,}}{_R}")
_NUM = re.compile(r"(?:(?<![\w)\]>])-)?\d+(?:\.\d+)*")
# HTTP statuses are kept: "HTTP 503", "'404 Not Found'" (httpx), "429, message=" (aiohttp),
# "status=429". Only in such a context, so other three-digit numbers still vary.
_PHRASES = "|".join(
    sorted({re.escape(s.phrase) for s in HTTPStatus if 100 <= s < 600}, key=len, reverse=True)
)
_CODE = re.compile(r"(?<![\w.])[1-5][0-9]{2}(?![\w.])")  # a candidate; its context decides
_CODE_BEFORE = re.compile(
    r"(?:(?<![\w/])HTTP(?:/[0-9.]+|/<n>)?[ :]+|\bstatus(?:[ _]?code)?['\"]?(?: ?[=:] ?| ))\Z"
)
_CODE_AFTER = re.compile(rf", message=| (?:{_PHRASES})(?![A-Za-z])")


def _status_spans(text: str) -> list[tuple[int, int]]:
    """Where ``text`` holds HTTP status codes to keep (usually nowhere: one cheap scan)."""
    spans = []
    for m in _CODE.finditer(text):
        start, end = m.span()
        if _CODE_AFTER.match(text, end) or _CODE_BEFORE.search(text, max(0, start - 24), start):
            spans.append((start, end))
    return spans


def _normalise_word(match: re.Match[str]) -> str:
    w = match.group()
    if w.isdecimal():
        return "<n>"
    if "-" in w:
        if len(w) >= 36:
            w = _UUID.sub("<uuid>", w)
        w = _TS.sub("<ts>", w)
    if "@" in w:
        w = _EMAIL.sub("<email>", w)
    if "." in w:
        w = _IPV4.sub("<ip>", w)
    if ":" in w:
        w = _IPV6.sub("<ip>", w)
    if len(w) >= 8 or "0x" in w or "0X" in w:
        w = _HEX.sub("<hex>", w)
        if len(w) >= 16:
            w = _ID.sub("<id>", w)
    # Last, every digit left: so a fingerprint holds no digit and is its own fingerprint.
    return _NUM.sub("<n>", w)


def fingerprint(message: str) -> str:
    """The message with its ids normalised, so one failure's variants group together.

    ``"user 123 not found"`` and ``"user 456 not found"`` both become
    ``"user <n> not found"``. Runs of whitespace become one space; then, in each
    word holding a digit or an ``@``: UUIDs (``<uuid>``), ISO dates and
    timestamps (``<ts>``), e-mail addresses (``<email>``), IPv4 and IPv6
    addresses (``<ip>``; a port stays ``:<n>``), ``0x`` numbers and hex strings
    of 8+ characters with a digit (``<hex>``), letter-and-digit tokens of 16+
    characters (``<id>``), and last every remaining number, signed or decimal,
    also inside words (``<n>``: ``job_17`` → ``job_<n>``, ``v1.2`` → ``v<n>``).
    Quoted text is kept: it is often what tells failures apart (a missing
    field's name, an HTTP reason phrase); ids inside quotes are normalised like
    anywhere else. HTTP status codes are kept where the text says they are one
    (``"HTTP 503"``, ``"'404 Not Found'"``, ``"429, message="``,
    ``"status=429"``): the status is what tells those failures apart. Only
    the first 512 characters count.

    The result holds no digits but those status codes, and
    ``fingerprint(fingerprint(m)) == fingerprint(m)``. Costs ~1 µs for a short
    message without ids, ~6 µs with a URL and a few numbers (looking for
    status codes adds one scan for three-digit numbers, about 1 µs).
    """
    text = " ".join(message[:_MAX_FINGERPRINT].split())
    if _ANY.search(text) is not None:
        kept = _status_spans(text)
        if not kept:
            text = _WORD.sub(_normalise_word, text)
        else:
            # The text between kept codes is normalised piece by piece.
            parts, last = [], 0
            for start, end in kept:
                parts.append(_WORD.sub(_normalise_word, text[last:start]))
                parts.append(text[start:end])
                last = end
            parts.append(_WORD.sub(_normalise_word, text[last:]))
            text = "".join(parts)
    return text[:_MAX_FINGERPRINT].rstrip()
