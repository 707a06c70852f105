"""Single-range ``Range: bytes=...`` parsing (RFC 9110 §14)."""

from __future__ import annotations

import re

from app.errors import RangeNotSatisfiable

_RANGE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*")
# Any byte position below 2**63 has at most 19 significant digits; a longer
# number makes the header unparsable (ignored), so int() never meets 5,000 digits.
_DIGITS = 19


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The half-open byte span a Range header asks for, or None to send everything
    (no header, a form we do not serve such as several ranges, or bad syntax,
    which RFC 9110 says to ignore). Raises RangeNotSatisfiable."""
    if header is None:
        return None
    match = _RANGE.fullmatch(header)
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if any(len(number.lstrip("0")) > _DIGITS for number in (first, last)):
        return None
    first, last = (number.lstrip("0") or "0" if number else "" for number in (first, last))
    if not first:  # suffix: the last N bytes
        length = int(last)
        if length == 0:
            raise RangeNotSatisfiable(size)
        if size == 0:
            return None  # satisfiable (RFC 9110 §14.1.3), but 206 cannot express it
        return max(0, size - length), size
    start = int(first)
    end = size if not last else min(int(last) + 1, size)
    if last and int(last) < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable(size)
    return start, end
