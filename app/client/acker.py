"""The producer's acknowledger: drains the send buffer while a request is still open.

A POST (or PATCH) that streams for hours reports the stored size only when it
ends, but the buffer may drop a byte only once the server has reported it
stored. So whenever the buffer is half full of sent, unacknowledged bytes, this
thread asks ``HEAD`` for ``Upload-Offset`` on its own connection.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx

from app.client.buffer import SendBuffer
from app.client.common import Endpoint, head
from app.client.errors import ClientError, Retryable

POLL_MIN, POLL_MAX = 0.01, 0.5


def acknowledge_while_sending(
    buffer: SendBuffer,
    endpoint: Endpoint,
    *,
    stream_id: Callable[[], str | None],
    finished: Callable[[], bool],
    timeout: float,
) -> None:
    """Run until ``finished()`` or the buffer is cancelled. ``stream_id()`` is None
    until the server created the stream; both are read under ``buffer.cond``."""
    poll = POLL_MIN

    def stopped() -> bool:
        return finished() or buffer.cancelled()

    with httpx.Client(base_url=endpoint.origin, timeout=timeout) as http:
        while True:
            with buffer.cond:
                buffer.cond.wait_for(
                    lambda: stopped() or (stream_id() is not None and buffer.half_full_unacked)
                )
                current = stream_id()
                if stopped() or current is None:
                    return
            try:
                offset: int | None = head(http, endpoint, current).offset
            except (ClientError, Retryable):
                offset = None  # the sender deals with a stream or server that is gone
            with buffer.cond:
                if offset is not None and buffer.acknowledge(offset):
                    poll = POLL_MIN
                    continue
                # Nothing new stored yet: the protocol has no push for this, so ask
                # again after a growing pause rather than in a tight loop.
                buffer.cond.wait_for(stopped, poll)
                poll = min(poll * 2, POLL_MAX)
