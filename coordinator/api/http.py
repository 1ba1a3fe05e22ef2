"""Request and response helpers shared by the handlers."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import trio
from pydantic import BaseModel
from quart import Response, request

from common.clock import parse_rfc3339, to_millis
from common.errors import BadRequest, PayloadTooLarge, RequestTimeout, Unprocessable, UnsupportedMediaType
from common.models import parse_body
from coordinator.api.registry import QueryParam
from coordinator.request_state import current, current_or_none

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

JSON = "application/json; charset=utf-8"


# Quart's own limit is set well above ours so that an oversize body can be read and thrown
# away: answering 413 before the client has finished sending leaves it blocked on a full
# socket, while draining lets it read the error envelope.
DRAIN_LIMIT_BYTES = 16 * 1024 * 1024


async def raw_body() -> bytes:
    """The request body, at most ``max_body_bytes``; raises ``PayloadTooLarge`` past that, and
    ``RequestTimeout`` if it has not all arrived within ``body_timeout_seconds``."""
    state = current()
    settings = state.svc.settings
    limit = settings.max_body_bytes
    received = bytearray()
    oversize = False
    with body_deadline(settings.body_timeout_seconds):
        async for chunk in state.body():
            if oversize or len(received) + len(chunk) > limit:
                oversize = True
                continue
            received += chunk
    state.body_read = True
    if oversize:
        raise PayloadTooLarge(f"the request body is over {limit // 1024} KiB")
    return bytes(received)


@contextmanager
def body_deadline(seconds: float) -> Iterator[None]:
    """Raise ``RequestTimeout`` if the block (reading the request body) outlasts ``seconds``.
    The connection is closed after the answer, since the rest of the body is still unread;
    the request's ``body_timed_out`` tells later readers not to wait for it again."""
    state = current()
    if state.body_timed_out:
        raise RequestTimeout("the request body did not arrive in time")
    with trio.move_on_after(seconds) as scope:
        yield
    if scope.cancelled_caught:
        state.body_timed_out = True
        raise RequestTimeout(f"the request body did not arrive within {seconds:g} s")


# Deeper than any body this API takes (a job's env is two levels) and far below what the
# recursive JSON decoder survives: 1,000 levels raise RecursionError inside ``json.loads``.
MAX_JSON_DEPTH = 32
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(rb"[\[\]{}]")


def json_depth(data: bytes) -> int:
    """The deepest nesting of arrays and objects in ``data``, counted without parsing it (and so
    without recursion): brackets inside strings are skipped. Unbalanced input is counted as far
    as it goes; the parser then refuses it."""
    depth = deepest = 0
    for match in _BRACKET.finditer(_STRING.sub(b"", data)):
        if match.group() in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth = max(0, depth - 1)
    return deepest


# Integers are stored as 64-bit (SQLite's INTEGER, PostgreSQL's BIGINT): one beyond that range
# would fail inside the database (OverflowError in sqlite3, NumericValueOutOfRange on
# PostgreSQL), so the body is refused before any model or query sees it.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class _OutOfRange(str):
    """Stands in for a number beyond 64 bits while parsing; the walk then names its field."""

    __slots__ = ()


def _json_int(text: str) -> int | _OutOfRange:
    value = int(text)
    return value if INT64_MIN <= value <= INT64_MAX else _OutOfRange(text)


def _json_number(text: str) -> float | int:
    """JSON has one number type: 3.0 is the integer 3 (as JSON Schema's ``integer`` says), so an
    integral value becomes an int before the strict models see it."""
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{text} is out of range")
    # Beyond 64 bits it stays a float: a float field takes it, an integer field refuses it.
    return int(value) if value.is_integer() and INT64_MIN <= value < 2.0**63 else value


def _no_constant(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")


# Strings neither database can store: PostgreSQL's text refuses NUL, and neither sqlite3 nor
# psycopg can encode a lone surrogate (JSON's "\ud800", or raw bytes ED A0 80, which json.loads
# decodes with surrogatepass). Only bodies holding such an escape or bytes, or a number beyond
# 64 bits, are walked. Any surrogate left in a decoded str is a lone one (json.loads joins pairs).
_SUSPECT = re.compile(rb"\\u0000|\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_DECODER = json.JSONDecoder(parse_float=_json_number, parse_int=_json_int, parse_constant=_no_constant)
_LONG_DIGITS = re.compile(rb"[0-9]{19}")


def _field(path: tuple[str | int, ...]) -> str | None:
    return ".".join(str(part) for part in path) or None


def _check_values(value: Any, replace_bad_text: bool) -> Any:
    """``value`` (decoded JSON) with every string and number storable. An integer beyond 64
    bits is 422 ``invalid_value`` naming its field; so is a string holding NUL or a lone
    surrogate. With ``replace_bad_text`` those characters become U+FFFD, one for one, and such
    an integer a float (which an integer field of the event then refuses).
    Iterative, so a deep body cannot exhaust the stack."""
    def fix(item: Any, path: tuple[str | int, ...]) -> Any:
        if isinstance(item, _OutOfRange):
            if replace_bad_text:  # an agent's event: its integer field refuses a float, event by event
                return float(item)
            raise Unprocessable(f"{item[:40]} is outside the 64-bit integer range", field=_field(path))
        if isinstance(item, str) and _UNSTORABLE.search(item):
            if not replace_bad_text:
                field = _field(path)
                if "\x00" in item and field is not None:  # worded as the models word control characters
                    raise Unprocessable(f"{field}: must not contain control characters", field=field)
                raise Unprocessable("the text holds a NUL character or a lone UTF-16 surrogate, "
                                    "which cannot be stored", field=field)
            return _UNSTORABLE.sub("\ufffd", item)
        return item

    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    value = fix(value, ())
    while stack:
        item, path = stack.pop()
        if isinstance(item, dict):
            for key in list(item):
                child = item.pop(key)
                fixed_key = fix(key, (*path, key))
                item[fixed_key] = fix(child, (*path, fixed_key))
                stack.append((child, (*path, fixed_key)))
        elif isinstance(item, list):
            for index, child in enumerate(item):
                item[index] = fix(child, (*path, index))
                stack.append((child, (*path, index)))
    return value


def decode_json(data: bytes, *, replace_bad_text: bool = False, **options: Any) -> Any:
    """Parse a request body (already bounded in size by ``raw_body``); 400 ``json_too_deep``
    past ``MAX_JSON_DEPTH`` levels, 400 ``invalid_json`` for anything that does not parse
    (including NaN and Infinity, which are not JSON). 422 ``invalid_value`` (naming the field)
    for a number beyond 64 bits or a string holding NUL or a lone surrogate, which no store can
    keep: the same answer on SQLite and PostgreSQL. With ``replace_bad_text`` (agents' events:
    a job's output may hold NUL bytes) such characters become U+FFFD instead."""
    # Nesting needs an opening bracket a level, so a body with no more brackets than the limit
    # (nearly every one) cannot be too deep: counted in C, without the scan below.
    if data.count(b"{") + data.count(b"[") > MAX_JSON_DEPTH and json_depth(data) > MAX_JSON_DEPTH:
        raise BadRequest(f"the request body nests deeper than {MAX_JSON_DEPTH} levels", code="json_too_deep")
    if not options:
        # The usual call: one decoder made once (``json.loads`` with hooks builds a decoder and
        # its scanner on every call, most of a small body's parse). A 64-bit overflow needs 19
        # digits or more in a row, so only such a body is walked for one (``_check_values``).
        try:
            # As json.loads reads bytes: the encoding detected, lone surrogates let through.
            decoded = _DECODER.decode(data.decode(json.detect_encoding(data), "surrogatepass"))
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise BadRequest("the request body is not valid JSON", code="invalid_json") from exc
        suspect = _LONG_DIGITS.search(data) or _SUSPECT.search(data)
        return _check_values(decoded, replace_bad_text) if suspect else decoded
    too_big = False

    def parse_int(text: str) -> int | _OutOfRange:
        nonlocal too_big
        parsed = _json_int(text)
        too_big = too_big or isinstance(parsed, _OutOfRange)
        return parsed

    options.setdefault("parse_float", _json_number)
    options.setdefault("parse_int", parse_int)
    options.setdefault("parse_constant", _no_constant)
    try:
        decoded = json.loads(data, **options)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadRequest("the request body is not valid JSON", code="invalid_json") from exc
    return _check_values(decoded, replace_bad_text) if too_big or _SUSPECT.search(data) else decoded


def require_json_media_type() -> None:
    """415 ``unsupported_media_type`` unless the body is declared ``application/json``.

    For the endpoints a web page must not reach: an HTML form can send a JSON-shaped body as
    ``text/plain`` to any origin, and a script on another origin can send ``application/json``
    only after a CORS preflight, which this server never grants."""
    if current().mimetype != "application/json":
        raise UnsupportedMediaType("send the body as application/json", field="Content-Type")


async def json_body(model: type[M]) -> M:
    return parse_body(model, decode_json(await raw_body()))


def respond(payload: BaseModel | dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response. The ``id`` of the object answered is left on the request's
    ``response_id`` for the audit hook (coordinator/observability.py), which so never parses a
    response again."""
    if isinstance(payload, BaseModel):
        body = payload.model_dump_json()
        found = getattr(payload, "id", None)
    else:
        body = json.dumps(payload)
        found = payload.get("id")
    state = current_or_none()
    if isinstance(found, str) and state is not None:
        state.response_id = found
    return Response(body, status=status, content_type=JSON, headers=headers)


def query_limit(default: int = 50, maximum: int = 500) -> int:
    text = request.args.get("limit")
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError as exc:
        raise BadRequest("limit must be an integer", code="invalid_type", field="limit") from exc
    if not 1 <= value <= maximum:
        raise Unprocessable(f"limit must be between 1 and {maximum}", field="limit")
    return value


# Each repeated filter becomes one SQL term; SQLite refuses an expression deeper than 1,000, and
# nobody filters on more than a handful of labels.
MAX_FILTERS = 20


def query_list(name: str, maximum: int = MAX_FILTERS) -> list[str]:
    """Every value of a repeatable query parameter; 400 ``too_many_filters`` past ``maximum``."""
    values = request.args.getlist(name)
    if len(values) > maximum:
        raise BadRequest(f"at most {maximum} {name} filters may be given", code="too_many_filters", field=name)
    return values


# A cursor is the sort key of the last item returned (an id, or a sequence number): opaque to
# clients, but any string of this form is a valid position, so the document can state exactly
# which cursors the server takes.
CURSOR_PATTERN = r"^[A-Za-z0-9_]{1,64}$"
_CURSOR = re.compile(CURSOR_PATTERN)
CURSOR = QueryParam("cursor", {"type": "string", "pattern": CURSOR_PATTERN}, "nextCursor of the previous page")
# Lists ordered by a sequence number (audit events, delivery attempts) take that number.
SEQ_CURSOR = QueryParam("cursor", {"type": "string", "pattern": "^[0-9]{1,18}$"}, "nextCursor of the previous page")


def encode_cursor(last_key: str) -> str:
    return last_key


def decode_cursor(cursor: str | None) -> str | None:
    """The position a ``cursor`` query parameter names; None for the first page. 400 for a
    string no page could have returned."""
    if cursor is None:
        return None
    if not _CURSOR.match(cursor):
        raise BadRequest("the cursor is not one this API returned", code="invalid_cursor", field="cursor")
    return cursor


def _id_of(item: Any) -> str:
    return str(item.id)


def split_page(found: Sequence[T], limit: int, key: Callable[[T], str] = _id_of) -> tuple[list[T], str | None]:
    """``found`` was fetched with ``limit + 1`` rows: the page to return, and the cursor past it
    (None on the last page)."""
    page = list(found[:limit])
    return page, (encode_cursor(key(page[-1])) if len(found) > limit else None)


def query_time(name: str) -> int | None:
    """An optional RFC 3339 query parameter, in epoch milliseconds; 400 if it does not parse."""
    text = request.args.get(name)
    if text is None:
        return None
    try:
        return to_millis(parse_rfc3339(text))
    except ValueError as exc:
        raise BadRequest(f"{name} must be an RFC 3339 time such as 2026-04-26T09:13:21Z", code="invalid_type",
                         field=name) from exc
