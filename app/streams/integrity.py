"""What happens on corruption (SPEC §8 "Integrity"): one warning line and a
count per bad block, and ``weft verify``'s check of whole streams."""

from __future__ import annotations

import hashlib
import logging

from app.errors import CorruptBlock
from app.metrics import Metrics
from app.storage.base import SegmentStore
from app.streams.models import StreamInfo, StreamState

log = logging.getLogger("weft.integrity")
READ_BLOCK = 1 << 20


def report(metrics: Metrics | None, stream_id: str, exc: CorruptBlock, during: str) -> None:
    if metrics is not None:
        metrics.corrupt_blocks.inc()
    log.warning(
        "corrupt_block stream_id=%s segment=%d block=%d offset=%d flaw=%r during=%s",
        stream_id,
        exc.segment,
        exc.block,
        exc.offset,
        exc.flaw,
        during,
    )


async def check_stream(store: SegmentStore, info: StreamInfo) -> str | None:
    """Why a stream's stored bytes are not what its row says, or None when they
    are: every block against its checksum, and a finished stream's size and
    SHA-256 against the row. A live stream is checked up to its last checksum:
    bytes after it may be being written by a running server right now."""
    stored = await store.size(info.key)
    size = max(stored, info.size) if info.state.finished else stored
    hasher = hashlib.sha256()
    offset = 0
    while offset < size:
        try:
            data = await store.read(info.key, offset, READ_BLOCK)
        except CorruptBlock as exc:
            if info.state is StreamState.LIVE and exc.uncovered:
                break
            return f"block {exc.block} of segment {exc.segment} at offset {exc.offset}: {exc.flaw}"
        if not data:
            break
        hasher.update(data)
        offset += len(data)
    if not info.state.finished:
        return None
    if offset != info.size:
        return f"holds {offset} bytes, its row says {info.size}"
    if info.sha256 is not None and hasher.hexdigest() != info.sha256:
        return f"SHA-256 {hasher.hexdigest()} differs from its row's {info.sha256}"
    return None
