"""The tus 1.0.0 wire format: header parsing and formatting, and the statuses
tus adds to SPEC §7. The router (``app.api.tus``) holds the behaviour.

``Upload-Metadata`` is ``key base64value`` pairs joined by commas. A key whose
value is left out has an empty value (tus: "the value MAY be empty"), so it is
stored as the empty string ``""``, never as JSON null. Values must decode to
UTF-8: a stream's metadata is JSON text (SPEC §1), so binary values get 400.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from typing import Any

from starlette.datastructures import Headers

from app.errors import ChecksumMismatch, InvalidInput, PreconditionFailed, TooLarge

TUS_VERSION = "1.0.0"
EXTENSIONS = (
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "termination",
    "checksum",
    "expiration",
)
OFFSET_OCTET_STREAM = "application/offset+octet-stream"
# A PATCH with Upload-Checksum is held in memory until it is verified (a
# mismatch must store nothing); this bounds that buffer per connection.
CHECKSUM_BODY_LIMIT = 64 * 1024 * 1024

_HASHES: dict[str, Callable[[], Any]] = {
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
    "md5": lambda: hashlib.md5(usedforsecurity=False),
}

_CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": ", ".join(
        (
            "Upload-Offset",
            "Location",
            "Upload-Length",
            "Tus-Version",
            "Tus-Resumable",
            "Tus-Max-Size",
            "Tus-Extension",
            "Upload-Metadata",
            "Upload-Defer-Length",
            "Upload-Concat",
            "Upload-Expires",
            "Tus-Checksum-Algorithm",
        )
    ),
}
_PREFLIGHT = {
    "Access-Control-Allow-Methods": "POST, HEAD, PATCH, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": ", ".join(
        (
            "Authorization",
            "Content-Type",
            "Upload-Offset",
            "Upload-Length",
            "Upload-Metadata",
            "Upload-Defer-Length",
            "Upload-Checksum",
            "Tus-Resumable",
            "X-HTTP-Method-Override",
            "X-Requested-With",
        )
    ),
    "Access-Control-Max-Age": "86400",
}


def response_headers() -> dict[str, str]:
    """On every /files response, errors included."""
    return {"Tus-Resumable": TUS_VERSION, **_CORS}


def options_headers(max_size: int | None) -> dict[str, str]:
    """Discovery (tus OPTIONS) and CORS preflight share one answer."""
    headers = {
        "Tus-Version": TUS_VERSION,
        "Tus-Extension": ",".join(EXTENSIONS),
        "Tus-Checksum-Algorithm": ",".join(_HASHES),
        **_PREFLIGHT,
    }
    if max_size is not None:
        headers["Tus-Max-Size"] = str(max_size)
    return headers


def require_version(headers: Headers) -> None:
    if headers.get("tus-resumable", "").strip() != TUS_VERSION:
        raise PreconditionFailed(TUS_VERSION)


def is_offset_octet_stream(headers: Headers) -> bool:
    media_type = headers.get("content-type", "").partition(";")[0]
    return media_type.strip().lower() == OFFSET_OCTET_STREAM


def check_room(*, offset: int, body: int | None, total: int | None, buffered: bool) -> None:
    """Refuse with 413, before anything is stored, a body whose Content-Length
    would take the upload past its Upload-Length or the checksum buffer (the
    service checks the stream size limit)."""
    if body is None:
        return
    end = offset + body
    if total is not None and end > total:
        raise TooLarge(f"The body would take the upload past its Upload-Length of {total} bytes.")
    if buffered and body > CHECKSUM_BODY_LIMIT:
        raise TooLarge(
            f"A body with Upload-Checksum may be at most {CHECKSUM_BODY_LIMIT} bytes; "
            "send smaller chunks."
        )


def decode_metadata(raw: str | None, *, limit: int) -> dict[str, Any]:
    """``Upload-Metadata`` as a metadata dict of strings (see the module docstring)."""
    metadata: dict[str, Any] = {}
    if raw is None or not raw.strip():
        return metadata
    for pair in raw.split(","):
        key, _, value = pair.strip().partition(" ")
        value = value.strip()
        if not key or " " in value:
            raise InvalidInput("Upload-Metadata must be comma-separated 'key base64value' pairs.")
        try:
            # Starlette decodes header bytes as Latin-1; keys may be UTF-8.
            key = key.encode("latin-1").decode("utf-8")
            text = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeError):
            raise InvalidInput(
                f"Upload-Metadata value of '{key}' is not base64 of UTF-8 text."
            ) from None
        if key in metadata:
            raise InvalidInput(f"Upload-Metadata has the key '{key}' twice.")
        metadata[key] = text
    if len(json.dumps(metadata).encode()) > limit:
        raise InvalidInput(f"Upload-Metadata is larger than {limit} bytes.")
    return metadata


def encode_metadata(metadata: dict[str, Any]) -> str | None:
    """A stream's metadata as ``Upload-Metadata``. Non-string values (from
    ``X-Stream-Metadata``) go as their JSON text; keys tus cannot carry are left out."""
    pairs = []
    for key, value in metadata.items():
        if not key or "," in key or any(ord(c) <= 0x20 or ord(c) == 0x7F for c in key):
            continue
        text = value if isinstance(value, str) else json.dumps(value)
        encoded = base64.b64encode(text.encode()).decode("ascii")
        # Header values go out as Latin-1: this sends a UTF-8 key's own bytes.
        wire_key = key.encode("utf-8").decode("latin-1")
        pairs.append(f"{wire_key} {encoded}" if encoded else wire_key)
    return ",".join(pairs) or None


def http_date(value: datetime) -> str:
    """RFC 9110 IMF-fixdate, as Upload-Expires wants."""
    return format_datetime(value, usegmt=True)


@dataclass(frozen=True)
class Checksum:
    algorithm: str
    digest: bytes

    def verify(self, body: bytes) -> None:
        """Raises ChecksumMismatch (460)."""
        actual = _HASHES[self.algorithm]()
        actual.update(body)
        if not hmac.compare_digest(actual.digest(), self.digest):
            raise ChecksumMismatch(self.algorithm)


def parse_checksum(raw: str | None) -> Checksum | None:
    """``Upload-Checksum: <algorithm> <base64 digest>``; an unsupported algorithm is 400."""
    if raw is None:
        return None
    algorithm, _, encoded = raw.strip().partition(" ")
    algorithm = algorithm.lower()
    if algorithm not in _HASHES:
        supported = ", ".join(_HASHES)
        raise InvalidInput(
            f"Upload-Checksum algorithm '{algorithm}' is not supported; use one of {supported}."
        )
    try:
        digest = base64.b64decode(encoded.strip(), validate=True)
    except binascii.Error:
        raise InvalidInput("Upload-Checksum must be '<algorithm> <base64 digest>'.") from None
    return Checksum(algorithm, digest)
