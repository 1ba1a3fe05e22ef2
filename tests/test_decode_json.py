"""coordinator/api/http.py decode_json: the shared decoder gives json.loads' values, refuses
what it refused, and still finds an integer beyond 64 bits or unstorable text in any body."""

from __future__ import annotations

from decimal import Decimal

import pytest

from common.errors import BadRequest, Unprocessable
from coordinator.api.http import MAX_JSON_DEPTH, decode_json


def test_values_are_json_loads_values() -> None:
    assert decode_json(b'{"a": [1, 2.0, 3.5, -0, "x"], "n": 9223372036854775807, "m": -9223372036854775808}') == {
        "a": [1, 2, 3.5, 0, "x"], "n": 2**63 - 1, "m": -(2**63)}
    assert decode_json(b"\xef\xbb\xbf" + b'{"bom": 1}') == {"bom": 1}
    assert decode_json('{"wide": "é"}'.encode("utf-16")) == {"wide": "é"}
    assert decode_json(b'{"digits": "12345678901234567890123"}') == {"digits": "12345678901234567890123"}
    assert decode_json(b'{"price": 1.10}', parse_float=Decimal) == {"price": Decimal("1.10")}


@pytest.mark.parametrize("body", [b"nope", b'{"a": NaN}', b'{"a": Infinity}', b'{"a": 1e400}', b"", b'{"a": 1'])
def test_what_is_not_json_is_invalid_json(body: bytes) -> None:
    with pytest.raises(BadRequest) as refused:
        decode_json(body)
    assert refused.value.code == "invalid_json"


def test_an_integer_beyond_64_bits_is_refused_by_name() -> None:
    for body, field in [(b'{"a": {"b": 9223372036854775808}}', "a.b"), (b'{"a": [-9223372036854775809]}', "a.0")]:
        with pytest.raises(Unprocessable) as refused:
            decode_json(body)
        assert refused.value.field == field
    assert decode_json(b'{"a": 9223372036854775808}', replace_bad_text=True) == {"a": 9.223372036854776e18}


def test_unstorable_text_and_depth() -> None:
    with pytest.raises(Unprocessable):
        decode_json(b'{"a": "\\u0000"}')
    assert decode_json(b'{"a": "x\\u0000\\ud800"}', replace_bad_text=True) == {"a": "x\ufffd\ufffd"}
    assert decode_json(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH) is not None
    with pytest.raises(BadRequest) as refused:
        decode_json(b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1))
    assert refused.value.code == "json_too_deep"
    # Brackets inside strings count toward neither.
    assert decode_json(b'{"a": "' + b"[" * 100 + b'"}') == {"a": "[" * 100}
