"""common.signing: what the coordinator sends is what a receiver verifies, and nothing else."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from common.signing import SignatureError, compute_v1, parse_signature_header, signature_header, verify

BODY = b'{"id":"evt_1","type":"job.created"}'


def test_v1_is_hmac_sha256_over_timestamp_dot_body() -> None:
    expected = hmac.new(b"whsec_a", b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert compute_v1("whsec_a", 1700000000, BODY) == expected
    assert signature_header(["whsec_a"], 1700000000, BODY) == f"t=1700000000,v1={expected}"


def test_one_v1_per_secret_and_either_verifies() -> None:
    header = signature_header(["whsec_new", "whsec_old"], 1700000000, BODY)
    timestamp, signatures = parse_signature_header(header)
    assert timestamp == 1700000000 and len(signatures) == 2
    assert verify(header, BODY, "whsec_new", now=1700000000) == 1700000000
    assert verify(header, BODY, "whsec_old", now=1700000100) == 1700000000
    with pytest.raises(SignatureError, match=r"^no signature matches the secret$"):
        verify(header, BODY, "whsec_other", now=1700000000)


@pytest.mark.parametrize(
    ("header", "body", "now", "message"),
    [
        (None, BODY, 1700000000, r"^the X-Compute-Signature header is missing$"),
        ("v1=abc", BODY, 1700000000, r"^the signature header has no timestamp$"),
        ("t=1700000000", BODY, 1700000000, r"^the signature header has no v1 signature$"),
        ("t=soon,v1=abc", BODY, 1700000000, r"^the signature timestamp is not an integer$"),
        ("SIGNED", BODY + b" ", 1700000000, r"^no signature matches the secret$"),
        ("SIGNED", BODY, 1700000301, r"^the signature timestamp is outside the tolerance$"),
        ("SIGNED", BODY, 1699999699, r"^the signature timestamp is outside the tolerance$"),
    ],
)
def test_rejections(header: str | None, body: bytes, now: int, message: str) -> None:
    if header == "SIGNED":
        header = signature_header(["whsec_a"], 1700000000, BODY)
    with pytest.raises(SignatureError, match=message):
        verify(header, body, "whsec_a", now=now)


def test_tolerance_edge_is_accepted() -> None:
    header = signature_header(["whsec_a"], 1700000000, BODY)
    assert verify(header, BODY, "whsec_a", now=1700000300) == 1700000000
