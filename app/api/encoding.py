"""Accept-Encoding (RFC 9110 §12.5.3): which content coding a finished
stream's replay is sent in (issue 12; the encoding is app/streams/encoding.py)."""

from __future__ import annotations

import re

CODINGS = ("zstd", "gzip")  # preferred first when weights tie
_QVALUE = re.compile(r"^(?:0(?:\.\d{0,3})?|1(?:\.0{0,3})?)$")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def negotiate(accept_encoding: str | None) -> str | None:
    """The coding to send, or None for the content as it is (identity).

    RFC 9110 §12.5.3: codings are case-insensitive, ``x-gzip`` is ``gzip``
    (§8.4.1.3), q=0 means "not acceptable", ``*`` stands for any coding not
    listed, identity is acceptable unless refused, and an empty field means
    identity only. No field at all: identity (encoding is for those who ask).
    The highest weight wins; a coding wins a tie with identity. A member that
    does not parse (a bad qvalue) is ignored."""
    if accept_encoding is None:
        return None
    weights: dict[str, float] = {}
    for member in accept_encoding.split(","):
        coding, *params = (part.strip() for part in member.split(";"))
        if not coding or not _TOKEN.match(coding):
            continue
        weight = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                value = value.strip()
                if not _QVALUE.match(value):
                    break
                weight = float(value)
        else:
            coding = coding.lower()
            coding = "gzip" if coding == "x-gzip" else coding
            weights[coding] = weight
    star = weights.get("*")
    default = 0.0 if star is None else star
    best = max(CODINGS, key=lambda coding: weights.get(coding, default))
    weight = weights.get(best, default)
    identity = weights.get("identity", 1e-9 if star is None else star)
    return best if weight > 0 and weight >= identity else None
