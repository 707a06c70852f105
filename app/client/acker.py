"""The producer's acknowledger: drains the send buffer while a request is still open.

A POST (or PATCH) that streams for hours reports the stored size only when it
ends, but the buffer may drop a byte only once the server has reported it
stored. So whenever the buffer is half full of sent, unacknowledged bytes, this
thread asks ``HEAD`` for ``Upload-Offset`` on its own connection. It also asks
once right after the stream is created, so the writer learns which incarnation
of the id is its own (``X-Stream-Created``) and can tell a replace from a delete.
"""

from __future__ import annotations

from collections.abc import Callable

from app.client.buffer import SendBuffer
from app.client.common import Endpoint, HeadInfo
from app.client.errors import ClientError, Retryable
from app.client.wire import head

POLL_MIN, POLL_MAX = 0.01, 0.5
PACE, PACE_FULL = 0.02, 0.02  # seconds between HEADs that moved the acknowledged offset


def acknowledge_while_sending(
    buffer: SendBuffer,
    endpoint: Endpoint,
    *,
    stream_id: Callable[[], str | None],
    finished: Callable[[], bool],
    timeout: float,
    needs_identity: Callable[[], bool] = lambda: False,
    on_head: Callable[[HeadInfo], None] = lambda _info: None,
) -> None:
    """Run until ``finished()`` or the buffer is cancelled. ``stream_id()`` is None
    until the server created the stream; the callables are called under ``buffer.cond``."""
    poll = POLL_MIN

    def stopped() -> bool:
        return finished() or buffer.cancelled()

    while True:
        with buffer.cond:
            buffer.cond.wait_for(
                lambda: (
                    stopped()
                    or (stream_id() is not None and (buffer.half_full_unacked or needs_identity()))
                )
            )
            current = stream_id()
            if stopped() or current is None:
                return
        try:
            info: HeadInfo | None = head(endpoint, current, timeout)
        except (ClientError, Retryable):
            info = None  # the sender deals with a stream or server that is gone
        offset = None if info is None else info.offset
        with buffer.cond:
            if info is not None:
                on_head(info)
            if offset is not None and buffer.acknowledge(offset):
                poll = POLL_MIN
                # Every HEAD costs the server what it would spend storing bytes: pace
                # them, more tightly while the producer is blocked on a full buffer.
                full = buffer.used >= buffer.capacity
                buffer.cond.wait_for(stopped, PACE_FULL if full else PACE)
                continue
            # Nothing new stored yet: the protocol has no push for this, so ask
            # again after a growing pause rather than in a tight loop.
            buffer.cond.wait_for(stopped, poll)
            poll = min(poll * 2, POLL_MAX)
