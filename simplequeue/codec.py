"""Job data as JSON text that jsonb stores and Python reads back equal: the checks that
refuse what would not, before anything is written, and the decoding of claimed text."""

from __future__ import annotations

import decimal
import json
import re
import sys
import threading
from collections.abc import Callable, Sequence
from json.encoder import c_make_encoder  # type: ignore[attr-defined]
from json.encoder import encode_basestring as c_encode_basestring
from typing import Any

from simplequeue.errors import InvalidJobError

__all__ = ["JSONB_MAX_BYTES", "MAX_DATA_DEPTH", "NUMERIC_MAX_DIGITS", "decode_data", "encode_data"]

MAX_DATA_DEPTH = 256
"""Deepest nesting of arrays and objects in job data: far enough below Python's recursion
limit that any process can decode the payload again, whatever its own stack depth."""

JSONB_MAX_BYTES = 2**28 - 1
"""PostgreSQL's limit on one jsonb value (and on any string in it): 256 MiB."""

NUMERIC_MAX_DIGITS = 131072
"""The most digits PostgreSQL's numeric (what jsonb stores numbers as) takes before the point."""

_JSONB_ENTRY_BYTES = 16
"""Upper bound of jsonb's own bytes per value, key and container (entry, header, padding)."""

# A JSON-escaped NUL that is not itself an escaped backslash followed by "u0000".
_ESCAPED_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
# A JSON string token; alternatives after it match only outside strings.
_JSON_STRING = r'"[^"\\]*(?:\\.[^"\\]*)*"'
_EXPONENT_HINT = re.compile(r"\de\+")
_EXPONENT_FLOAT = re.compile(_JSON_STRING + r"|(-?\d+(?:\.\d+)?e\+\d+)", re.DOTALL)
_LONG_INT = re.compile(_JSON_STRING + rf"|(\d{{{NUMERIC_MAX_DIGITS + 1},}})", re.DOTALL)
_STRINGS = re.compile(_JSON_STRING, re.DOTALL)
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")
_ARRAYS = (list, tuple)
_PLAIN = frozenset({dict, list, str, int, float, bool, type(None)})
"""Types that are no pydantic model: asking them for `model_dump` would cost an exception."""

_ENCODER = json.JSONEncoder(allow_nan=False, ensure_ascii=False, separators=(",", ":"))
"""Built once: json.dumps with non-default options builds a new encoder at every call."""


class _Encoders(threading.local):
    """Each thread's C encoder of `_ENCODER`'s options, built once: `JSONEncoder.encode`
    builds one at every call, a third of the cost of encoding a small payload. Its record
    of the containers it is inside (what finds circular references) is its own, and is
    thrown away after an error, which may leave entries in it."""

    encode: Callable[[Any, int], Sequence[str]] | None = None

    def text(self, data: Any) -> str:
        encode = self.encode
        if encode is None:
            if c_make_encoder is None:  # an interpreter without the C accelerator
                return _ENCODER.encode(data)
            encode = self.encode = c_make_encoder(
                {}, _ENCODER.default, c_encode_basestring, None, ":", ",", False, False, False
            )
        try:
            return "".join(encode(data, 0))
        except BaseException:
            self.encode = None
            raise


_ENCODERS = _Encoders()


def encode_data(data: Any, what: str = "job data") -> str:
    """The job's data as JSON text, or InvalidJobError when it could not be stored in jsonb
    and read back equal: every check runs before anything is written. `what` names the
    value in the errors (a handler's result is encoded alike).

    Refused: what JSON cannot express (NaN, infinities, sets, objects, lone surrogates,
    circular references), NUL characters, non-string object keys (JSON would turn them into
    strings), nesting deeper than MAX_DATA_DEPTH, integers longer than numeric allows, and
    documents over jsonb's 256 MiB. Floats of 1e16 and above are written out in full with a
    ".0", because jsonb would print "1e+16" back as the integer 10000000000000000.
    """
    if type(data) not in _PLAIN and hasattr(data, "model_dump") and callable(data.model_dump):
        # JSON-compatible Python values, then our own checks: pydantic's JSON would write
        # NaN as null, and the payload would not read back as it was given.
        try:
            data = data.model_dump(mode="json")
        except ValueError as exc:  # pydantic's serialization errors are ValueErrors
            raise InvalidJobError(f"{what} (a pydantic model) cannot be serialised: {exc}") from exc
    try:
        text = _ENCODERS.text(data)
        # ASCII text holds no lone surrogate and is its own size; the rest is encoded to check.
        size = len(text) if text.isascii() else len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidJobError(
            f"{what} must be JSON-serialisable as UTF-8: it contains the lone surrogate "
            f"{exc.object[exc.start : exc.end]!r}, which is not a unicode character"
        ) from exc
    except (TypeError, ValueError) as exc:
        hint = " (NaN and infinities have no JSON form)" if "float" in str(exc) else ""
        raise InvalidJobError(f"{what} must be JSON-serialisable: {exc}{hint}") from exc
    except RecursionError as exc:
        raise InvalidJobError(_too_deep(what)) from exc
    if "\\u0000" in text and _ESCAPED_NUL.search(text):
        raise InvalidJobError(
            f"{what} contains a NUL character (\\u0000), which jsonb cannot store"
        )
    if size * (_JSONB_ENTRY_BYTES + 1) > JSONB_MAX_BYTES:
        entries = 1 + sum(text.count(char) for char in ",:[{")
        if size + entries * _JSONB_ENTRY_BYTES > JSONB_MAX_BYTES:
            raise InvalidJobError(
                f"{what} is too large for jsonb: {size} bytes of JSON holding up to "
                f"{entries} values would exceed PostgreSQL's 256 MiB jsonb limit. Store "
                "large blobs elsewhere and pass a reference."
            )
    if (
        size > 2 * MAX_DATA_DEPTH  # a shorter text cannot nest deeper
        and text.count("[") + text.count("{") > MAX_DATA_DEPTH
        and _nesting(text) > MAX_DATA_DEPTH
    ):
        raise InvalidJobError(_too_deep(what))
    _check_keys(data, what)
    digits = sys.get_int_max_str_digits()
    if (digits == 0 or digits > NUMERIC_MAX_DIGITS) and any(
        match.group(1) for match in _LONG_INT.finditer(text)
    ):
        raise InvalidJobError(
            f"{what} holds an integer of more than {NUMERIC_MAX_DIGITS} digits, which "
            "PostgreSQL's numeric cannot store; pass it as a string"
        )
    if "e+" in text and _EXPONENT_HINT.search(text):
        text = _EXPONENT_FLOAT.sub(_positional, text)
    return text


def _too_deep(what: str) -> str:
    return (
        f"{what} is nested more than {MAX_DATA_DEPTH} levels deep (arrays and objects); flatten it"
    )


def _nesting(text: str) -> int:
    """How deeply the arrays and objects of JSON text nest (brackets inside strings aside)."""
    depth = deepest = 0
    for char in _NOT_BRACKETS.sub("", _STRINGS.sub("", text)):
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _check_keys(data: Any, what: str) -> None:
    """Refuse object keys that JSON would turn into strings: they would not be read back.
    (Tuples become lists, which read back equal enough to index the same way.)"""
    stack = [data]
    while stack:
        value = stack.pop()
        if type(value) is dict or isinstance(value, dict):
            for key in value:
                if type(key) is not str and not isinstance(key, str):
                    raise InvalidJobError(
                        f"{what} has the {type(key).__name__} object key {key!r}: JSON "
                        "object keys are strings, so it would be read back as a different "
                        "key; convert the keys to strings first"
                    )
            stack.extend(value.values())
        elif type(value) is list or isinstance(value, _ARRAYS):
            stack.extend(value)


def _positional(match: re.Match[str]) -> str:
    """A float written with a positive exponent, in full and with a fraction, so that jsonb
    prints it back as a float (strings, matched first, stay as they are)."""
    number = match.group(1)
    if number is None:
        return match.group(0)
    text = format(decimal.Decimal(number), "f")
    return text if "." in text else text + ".0"


def decode_data(text: str) -> Any:
    """Claimed JSON text as Python values; InvalidJobError if Python cannot read it."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise InvalidJobError(f"stored payload cannot be decoded: {exc}") from None
