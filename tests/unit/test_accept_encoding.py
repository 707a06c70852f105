"""Accept-Encoding negotiation (app/api/encoding.py; RFC 9110 §12.5.3, issue 12)."""

from __future__ import annotations

import pytest

from app.api.encoding import negotiate


@pytest.mark.parametrize(
    ("field", "coding"),
    [
        (None, None),  # no field: identity (encoding is for those who ask)
        ("", None),  # empty: identity only
        ("zstd", "zstd"),
        ("gzip", "gzip"),
        ("x-gzip", "gzip"),
        ("GZip", "gzip"),
        (" gzip ; Q=0.5 , zstd ; q=0.4 ", "gzip"),
        ("gzip, zstd", "zstd"),  # a tie: zstd first
        ("gzip, deflate, br, zstd", "zstd"),  # httpx's default
        ("gzip, deflate", "gzip"),  # requests' default
        ("zstd;q=0", None),
        ("zstd;q=0.000, gzip;q=0.001", "gzip"),
        ("*", "zstd"),
        ("*;q=0", None),
        ("*;q=0.5, zstd;q=0", "gzip"),
        ("gzip;q=0.5, identity", None),  # identity preferred
        ("gzip, identity;q=0.5", "gzip"),
        ("gzip, identity", "gzip"),  # a coding wins a tie with identity
        ("br", None),
        ("gzip;q=2", None),  # not a qvalue: the member is ignored
        ("gzip;q=0.0001", None),
        ("gzip;q=1.000", "gzip"),
        ("gzip;q=1.001", None),
        ("zstd;level=3", "zstd"),  # other parameters are ignored
        (",,gzip,,", "gzip"),
        ("g zip", None),
    ],
)
def test_negotiate_follows_rfc_9110(field: str | None, coding: str | None) -> None:
    assert negotiate(field) == coding
