from __future__ import annotations

import pytest

from app.api.ranges import parse_range
from app.errors import RangeNotSatisfiable


@pytest.mark.parametrize(
    ("header", "size", "span"),
    [
        ("bytes=0-4", 10, (0, 5)),
        ("bytes=0-0", 10, (0, 1)),
        ("bytes=9-9", 10, (9, 10)),
        ("bytes=5-", 10, (5, 10)),
        ("bytes=3-100", 10, (3, 10)),
        ("bytes=-3", 10, (7, 10)),
        ("bytes=-10", 10, (0, 10)),
        ("bytes=-20", 10, (0, 10)),
    ],
)
def test_satisfiable_range_gives_half_open_span(
    header: str, size: int, span: tuple[int, int]
) -> None:
    assert parse_range(header, size) == span


@pytest.mark.parametrize(
    "header",
    [
        None,
        "bytes=0-1,3-4",
        "items=0-1",
        "bytes=5-2",
        "bytes=",
        "bytes=-",
        "bytes=a-b",
        "0-4",
        "bytes=" + "9" * 5000 + "-",
        "bytes=0-" + "9" * 5000,
        "bytes=-" + "9" * 20,
    ],
)
def test_absent_multi_or_malformed_range_sends_everything(header: str | None) -> None:
    assert parse_range(header, 10) is None


@pytest.mark.parametrize("header", ["bytes=10-", "bytes=10-20", "bytes=-0", "bytes=99999999999-"])
def test_unsatisfiable_range_is_416_with_content_range(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable) as caught:
        parse_range(header, 10)
    assert caught.value.status == 416
    assert caught.value.headers["Content-Range"] == "bytes */10"


def test_any_first_pos_range_on_empty_stream_is_416() -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range("bytes=0-", 0)


def test_suffix_range_on_empty_stream_never_yields_an_empty_span() -> None:
    # An empty span would be sent as 206 with "Content-Range: bytes 0--1/0",
    # which is not a valid header: send the whole (empty) body or answer 416.
    try:
        span = parse_range("bytes=-5", 0)
    except RangeNotSatisfiable:
        return
    assert span is None


def test_leading_zeros_do_not_count_as_digits() -> None:
    assert parse_range("bytes=" + "0" * 50 + "3-" + "0" * 50 + "4", 10) == (3, 5)
