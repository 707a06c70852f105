"""The unsealed tail of every live stream, in NATS JetStream (DESIGN "Scale-out",
SPEC §12.2).

Layout: ``tail_shards`` JetStream streams ``<ns>_tail_<k>`` (file storage,
``nats.replicas`` copies, no limits) hold one subject per Weft stream,
``<ns>.tail.<k>.<key>``, k a stable hash of the storage key. A few JetStream
streams rather than one per Weft stream: each replicated stream is a Raft
group, and a per-stream ``max_bytes`` would be reserved up front.

A message is a run of the stream's bytes; its header ``Weft-Offset`` is the
stream offset of its first byte. The stored end is therefore the subject's last
message's offset plus its length, and a reader finds the message that covers
an offset by a binary search over direct gets (one get for a reader that goes
on where it stopped), then takes the messages after it in batches.

Writes: one publish in flight per subject, and whatever is appended meanwhile
goes out as the next message, up to ~1 MB (group commit). Each publish carries
``Nats-Expected-Last-Subject-Sequence``, the subject's last sequence as this
writer knows it: once anyone else has appended (a node that took the stream
over), JetStream refuses it (error 10071) and the writer is Fenced for good.
Only one publish is in flight because the next message's expected sequence is
the sequence JetStream gives the one before (other subjects share the stream).
A writer whose publish failed (NATS down, a timeout) is replaced by resume(),
which removes that publish again if it was stored after all: JetStream holds
what was acknowledged, no more.

A purge keeps the subject's last message, so that the stored end and the
fencing sequence outlive it. Every wait on nats-py is bounded (its futures can
hang when the connection drops): NATS down means StorageUnavailable (503).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import logging
import uuid
import zlib
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import TypeVar

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, StorageType, StreamConfig
from nats.js.errors import APIError, BadRequestError, NotFoundError

from app.errors import Fenced, NotFound, NotReady, StorageUnavailable
from app.storage.nats_hub import _why, connect, subject_token, where
from app.storage.tail_cache import RecentMessages
from app.storage.tail_follow import ARRIVAL_WAIT, Follow, Followers

log = logging.getLogger("weft.tail")

T = TypeVar("T")
TIMEOUT = 2.0  # bound of every wait on NATS
SHARDS = 4
MAX_MESSAGE = 1024 * 1024  # bytes of one message, at most (and below the server's max_payload)
HEADROOM = 1024  # room for the headers within max_payload
BATCH_BYTES = 1024 * 1024  # at least this much per fetch: other readers may want more
RECENT_BYTES = 64 * 1024 * 1024  # tail messages kept for this node's readers
POSITIONS = 4096  # streams whose last read message is remembered
BATCH = 256  # messages a read asks for at once (direct get batches, nats-server 2.11+)
OFFSET = "Weft-Offset"
WRITER = "Weft-Writer"  # which writer published it: tells a writer whether its last try landed
EXPECTED = "Nats-Expected-Last-Subject-Sequence"
WRONG_LAST_SEQUENCE = 10071  # JetStream's error code for a failed expected-sequence check


@dataclass(frozen=True)
class TailState:
    """What JetStream holds for one stream: the offset of its end and the
    subject's last sequence (0: no message)."""

    size: int
    seq: int


@dataclass(frozen=True)
class _Message:
    seq: int
    offset: int
    data: bytes
    writer: str = ""

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


class _Pending:
    __slots__ = ("data", "end", "future")

    def __init__(self, data: memoryview, end: int, future: asyncio.Future[int]) -> None:
        self.data, self.end, self.future = data, end, future


class TailWriter:
    """Appends to one stream's subject. ``size`` and ``seq`` are what JetStream
    has acknowledged. After any failed publish the writer appends no more (its
    last publish may or may not have been stored): JetStreamTail.resume() gives
    the one that goes on, unless it was fenced."""

    def __init__(
        self, tail: JetStreamTail, key: str, state: TailState, writer_id: str | None = None
    ) -> None:
        self._tail = tail
        self.key = key
        self.id = writer_id or uuid.uuid4().hex
        self.size = state.size
        self.seq = state.seq
        self.messages = 0  # messages this writer published
        self._queued_end = state.size
        self._queue: collections.deque[_Pending] = collections.deque()
        self._pump: asyncio.Task[None] | None = None
        self._failure: Exception | None = None

    @property
    def failure(self) -> Exception | None:
        """Why this writer appends no more (None while it may)."""
        return self._failure

    async def append(self, data: bytes | memoryview) -> int:
        """Store data at the end; return the stream's size after it, once
        JetStream has acknowledged it. Raises Fenced, StorageUnavailable."""
        if not data:
            return self._queued_end
        return await self._enqueue(memoryview(data))

    async def claim(self) -> int:
        """Publish an empty message: every other writer of this stream is fenced from now on."""
        return await self._enqueue(memoryview(b""))

    async def close(self) -> None:
        """Let what is queued finish (bounded); then the writer appends no more."""
        pump = self._pump
        if pump is not None:
            with suppress(Exception):
                await asyncio.wait_for(asyncio.shield(pump), self._tail.timeout * 2)
        if self._failure is None:
            self._failure = StorageUnavailable("The tail writer was closed.")

    async def _enqueue(self, data: memoryview) -> int:
        if self._failure is not None:
            raise self._failure.with_traceback(None)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieved)
        self._queued_end += len(data)
        self._queue.append(_Pending(data, self._queued_end, future))
        if self._pump is None:
            self._pump = asyncio.create_task(self._run())
        # A caller that gives up (its client went away) leaves the bytes to be
        # stored all the same: they were handed over in order.
        return await asyncio.shield(future)

    async def _run(self) -> None:
        try:
            while self._queue and self._failure is None:
                payload, done = self._take()
                try:
                    seq = await self._send(payload)
                except Exception as exc:
                    self._fail(exc, done)
                    return
                self.seq, self.size = seq, self.size + len(payload)
                self.messages += 1
                for item in done:
                    if not item.future.done():
                        item.future.set_result(item.end)
        finally:
            self._pump = None

    async def _send(self, payload: bytes) -> int:
        headers = {OFFSET: str(self.size), EXPECTED: str(self.seq), WRITER: self.id}
        try:
            return await self._tail._publish(self.key, payload, headers)
        except Fenced:
            # Perhaps not someone else: a try of this writer's that failed, and
            # that nats-py sent after its reconnect, once resume() had looked.
            if not await self._tail._drop_stray(self):
                raise
        return await self._tail._publish(self.key, payload, headers)

    def _take(self) -> tuple[bytes, list[_Pending]]:
        """The next message: queued appends from the head, up to max_message
        bytes (a longer append goes out in several), and the appends it completes."""
        room = self._tail.max_message
        parts: list[memoryview] = []
        done: list[_Pending] = []
        while self._queue and (room or not parts):
            item = self._queue[0]
            piece = item.data[:room]
            parts.append(piece)
            room -= len(piece)
            if len(piece) == len(item.data):
                done.append(self._queue.popleft())
            else:
                item.data = item.data[len(piece) :]
        return b"".join(parts), done

    def _fail(self, exc: Exception, taken: list[_Pending]) -> None:
        if isinstance(exc, Fenced):
            log.warning("tail_fenced key=%s seq=%d", self.key, self.seq)
        self._failure = exc
        for item in [*taken, *self._queue]:
            if not item.future.done():
                item.future.set_exception(exc)
        self._queue.clear()


class JetStreamTail:
    def __init__(
        self,
        servers: list[str],
        namespace: str,
        *,
        node_id: str = "weft",
        shards: int = SHARDS,
        replicas: int = 1,
        timeout: float = TIMEOUT,
        max_message: int = MAX_MESSAGE,
    ) -> None:
        self.servers = servers
        self.namespace = namespace
        self.node_id = node_id
        self.shards = shards
        self.replicas = replicas
        self.timeout = timeout
        self.max_message = max_message
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._batches = False  # the server answers a direct get with several messages
        # key -> the last message a read ended in: where a reader goes on.
        self._positions: collections.OrderedDict[str, _Message] = collections.OrderedDict()
        self._recent: RecentMessages[_Message] = RecentMessages(RECENT_BYTES)
        self._followers = Followers(
            self._on_delivery, self.subject, lambda key: self.stream_name(self.shard(key))
        )

    # -- names --------------------------------------------------------------------

    def shard(self, key: str) -> int:
        return zlib.crc32(key.encode()) % self.shards

    def stream_name(self, shard: int) -> str:
        return f"{self.namespace}_tail_{shard}"

    def subject(self, key: str) -> str:
        return f"{self.namespace}.tail.{self.shard(key)}.{subject_token(key)}"

    # -- start and stop -----------------------------------------------------------

    async def start(self) -> None:
        """Connect and create the shard streams (raise NotReady when NATS cannot be reached)."""
        try:
            self._nc = await connect(
                self.servers,
                f"weft tail {self.node_id}",
                self.timeout,
                (self._on_error, self._on_disconnected, self._on_reconnected),
            )
            self._js = self._nc.jetstream(timeout=self.timeout)
            for shard in range(self.shards):
                await self._ensure_stream(shard)
        except Exception as exc:
            await self.close()
            raise NotReady(
                f"NATS JetStream ({where(self.servers)}) is not usable: {_why(exc)}"
            ) from exc
        self.max_message = min(self.max_message, self._nc.max_payload - HEADROOM)
        version = self._nc.connected_server_version
        self._batches = (version.major, version.minor) >= (2, 11)

    async def _ensure_stream(self, shard: int) -> None:
        assert self._js is not None
        config = StreamConfig(
            name=self.stream_name(shard),
            subjects=[f"{self.namespace}.tail.{shard}.*"],
            storage=StorageType.FILE,
            num_replicas=self.replicas,
            discard=DiscardPolicy.OLD,
            allow_direct=True,
        )
        try:
            await asyncio.wait_for(self._js.add_stream(config), self.timeout)
        except BadRequestError:
            # It exists (another node made it, perhaps another version): use it.
            await asyncio.wait_for(self._js.stream_info(config.name or ""), self.timeout)

    async def close(self) -> None:
        await self._followers.close()
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None:
            with suppress(Exception):
                await asyncio.wait_for(nc.close(), self.timeout)

    async def check(self) -> None:
        """Raise NotReady unless JetStream answers now."""
        try:
            await self._api("answer", lambda js: js.stream_info(self.stream_name(0)))
        except StorageUnavailable as exc:
            raise NotReady(exc.message) from None

    async def _on_error(self, exc: Exception) -> None:
        log.warning("nats_tail_error node=%s error=%s", self.node_id, _why(exc))

    async def _on_disconnected(self) -> None:
        if self._nc is not None:
            log.warning("nats_tail_disconnected node=%s", self.node_id)

    async def _on_reconnected(self) -> None:
        log.info("nats_tail_reconnected node=%s", self.node_id)

    # -- the calls ----------------------------------------------------------------

    async def _api(self, what: str, call: Callable[[JetStreamContext], Awaitable[T]]) -> T:
        """One bounded call. NotFoundError passes; a failed expected-sequence
        check is Fenced; anything else is StorageUnavailable."""
        nc, js = self._nc, self._js
        if nc is None or js is None or not nc.is_connected:
            # Not even queued: nats-py would send it after a reconnect, when the
            # caller has long been told it failed.
            raise StorageUnavailable(
                f"NATS JetStream ({where(self.servers)}) is not connected; could not {what}."
            )
        try:
            return await asyncio.wait_for(call(js), self.timeout + 0.5)
        except NotFoundError:
            raise
        except APIError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                raise Fenced() from None
            raise StorageUnavailable(
                f"NATS JetStream ({where(self.servers)}) refused to {what}: {exc.description}"
            ) from None
        except Exception as exc:
            raise StorageUnavailable(
                f"NATS JetStream ({where(self.servers)}) did not {what}: {_why(exc)}"
            ) from None

    async def _publish(self, key: str, payload: bytes, headers: dict[str, str]) -> int:
        subject = self.subject(key)
        ack = await self._api(
            "store the data",
            lambda js: js.publish(subject, payload, timeout=self.timeout, headers=headers),
        )
        return ack.seq

    async def _get(self, key: str, *, after: int | None = None) -> _Message | None:
        """The subject's first message at or after sequence ``after``, or its last
        message (after=None); None when there is none."""
        stream, subject = self.stream_name(self.shard(key)), self.subject(key)
        try:
            if after is None:
                raw = await self._api(
                    "read the tail",
                    lambda js: js.get_msg(stream, subject=subject, direct=True),
                )
            else:
                seq = after
                raw = await self._api(
                    "read the tail",
                    lambda js: js.get_msg(stream, seq=seq, subject=subject, direct=True, next=True),
                )
        except NotFoundError:
            return None
        return _message(raw.seq, raw.headers, raw.data)

    async def _following(self, key: str, after: int, want: int) -> list[_Message]:
        """The subject's messages from sequence ``after`` on, about want bytes
        of them: one batch, where the server has them (one round trip for up to
        BATCH messages, where single gets would take one each)."""
        if not self._batches:
            one = await self._get(key, after=after)
            return [] if one is None else [one]
        nc = self._nc
        stream, subject = self.stream_name(self.shard(key)), self.subject(key)
        request = {"seq": after, "next_by_subj": subject, "batch": BATCH, "max_bytes": want}

        async def fetch() -> list[_Message]:
            assert nc is not None
            inbox = nc.new_inbox()
            sub = await nc.subscribe(inbox)
            try:
                await nc.publish(
                    f"$JS.API.DIRECT.GET.{stream}", json.dumps(request).encode(), reply=inbox
                )
                found: list[_Message] = []
                while True:
                    msg = await sub.next_msg(self.timeout)
                    headers = msg.headers or {}
                    status = headers.get("Status")
                    if status in ("204", "404"):  # the end of the batch, or nothing
                        return found
                    if status:
                        raise StorageUnavailable(f"A batch read was refused ({status}).")
                    found.append(_message(int(headers.get("Nats-Sequence", 0)), headers, msg.data))
            finally:
                with suppress(Exception):
                    await sub.unsubscribe()

        return await self._api("read the tail", lambda js: fetch())

    # -- the tail's contract ------------------------------------------------------

    async def state(self, key: str) -> TailState:
        """The stored end and the subject's last sequence (what a node taking over starts from)."""
        last = await self._get(key)
        return TailState(0, 0) if last is None else TailState(last.end, last.seq)

    async def size(self, key: str) -> int:
        return (await self.state(key)).size

    async def last_seq(self, key: str) -> int:
        return (await self.state(key)).seq

    async def open(
        self, key: str, expected_seq: int | None = None, *, claim: bool = False
    ) -> TailWriter:
        """A writer at the stored end. With expected_seq (a sequence read before,
        by state()), Fenced unless nothing was appended since. With claim, an
        empty message is published first: every older writer is fenced at once."""
        state = await self.state(key)
        if expected_seq is not None and state.seq != expected_seq:
            raise Fenced()
        writer = TailWriter(self, key, state)
        if claim:
            await writer.claim()
        return writer

    async def _drop_stray(self, writer: TailWriter) -> bool:
        """Remove the subject's last message if it is an unacknowledged try of
        writer's, right after what writer has; True if writer may go on."""
        key = writer.key
        last = await self._get(key)
        if last is None or last.writer != writer.id or last.offset != writer.size:
            return False
        stream, stray = self.stream_name(self.shard(key)), last.seq
        await self._api("drop a failed append", lambda js: js.delete_msg(stream, stray))
        log.info("tail_unacknowledged_dropped key=%s seq=%d", key, stray)
        now = await self._get(key)
        return (0 if now is None else now.seq) == writer.seq

    async def resume(self, writer: TailWriter) -> TailWriter:
        """A writer that goes on where writer failed (a timeout, NATS down) at
        what writer had acknowledged; its last try, if it was stored all the
        same, is removed. Fenced when anyone else appended since. (A try that
        nats-py sends only after a reconnect, once this has run, lands later:
        the new writer's next publish is refused and removes it then.)"""
        if isinstance(writer.failure, Fenced):
            raise writer.failure
        last = await self._get(writer.key)
        # The failed try, if it was stored after all, goes: JetStream holds what
        # was acknowledged (the caller was told it failed).
        if (0 if last is None else last.seq) != writer.seq and not await self._drop_stray(writer):
            raise Fenced()
        return TailWriter(self, writer.key, TailState(writer.size, writer.seq), writer.id)

    async def first_offset(self, key: str) -> int | None:
        """The offset of the subject's first message (what a purge left), None without one."""
        first = await self._get(key, after=1)
        return None if first is None else first.offset

    async def read(self, key: str, offset: int, limit: int) -> bytes:
        """Up to limit bytes from offset; empty at the stored end. NotFound when
        the bytes at offset were purged."""
        if limit <= 0:
            return b""
        follow = self._followers.get(key)
        message = self._recent.covering(key, offset)
        waited = False
        if message is None and follow is not None and follow.active and follow.end == offset:
            # A reader tailing along with the follow: the next bytes are on their way.
            message = await self._delivered(follow, offset)
            waited = message is None
        if message is None:
            message = await self._covering(key, offset)
            if message is None:
                return b""  # nothing there yet: the follow was right not to deliver
            if message.offset > offset:
                raise NotFound(f"Bytes at {offset} are no longer in the tail of {key}.")
            self._recent.add(key, message)
            if follow is not None and waited and follow.stale:
                self._followers.drop(key, follow)  # it did not deliver what is there
                follow = None
            if follow is None and self._js is not None:
                self._followers.start(self._js, key, message.seq, message.end)
        out = bytearray(message.data[offset - message.offset :])
        while len(out) < limit:
            following = self._recent.covering(key, message.end)
            if following is None or following.offset != message.end:
                after = message.seq + 1
                want = max(limit - len(out), BATCH_BYTES)  # others may read on
                batch = await self._recent.once(
                    key, after, functools.partial(self._following, key, after, want)
                )
                for fetched in batch:
                    self._recent.add(key, fetched)
                if not batch or batch[0].offset != message.end:
                    break  # the end, or a purge or delete meanwhile
                following = batch[0]
            message = following
            out += message.data
        self._remember(key, message)
        return bytes(out[:limit])

    async def _delivered(self, follow: Follow, offset: int) -> _Message | None:
        """The cached message at offset once the follow delivered it (briefly
        waited for); None if it did not come."""
        try:
            arrived = await follow.wait_beyond(offset, ARRIVAL_WAIT)
        except TimeoutError:
            return None
        return self._recent.covering(follow.key, offset) if arrived else None

    def _on_delivery(self, key: str, msg: Msg) -> int | None:
        """Cache a message the follow of key delivered; its end, None if it is not usable."""
        try:
            message = _message(msg.metadata.sequence.stream, msg.headers, msg.data)
        except Exception:
            return None
        self._recent.add(key, message)
        return message.end

    async def purge(self, key: str, up_to: int) -> None:
        """Drop the messages that end at or before up_to (sealed and uploaded
        bytes), but for the subject's last message."""
        message = await self._covering(key, up_to)
        if message is None:
            last = await self._get(key)
            if last is None:
                return
            message = last
        stream, subject = self.stream_name(self.shard(key)), self.subject(key)
        keep = message.seq
        await self._api(
            "purge the tail", lambda js: js.purge_stream(stream, seq=keep, subject=subject)
        )
        self._positions.pop(key, None)

    async def delete(self, key: str) -> None:
        """Drop every message of the stream (a missing one is not an error)."""
        stream, subject = self.stream_name(self.shard(key)), self.subject(key)
        await self._api("delete the tail", lambda js: js.purge_stream(stream, subject=subject))
        self._positions.pop(key, None)
        self._recent.forget(key)
        self._followers.drop(key)

    # -- finding an offset --------------------------------------------------------

    async def _covering(self, key: str, offset: int) -> _Message | None:
        """The subject's first message that ends beyond offset; None if none does."""
        lowest = 1
        known = self._positions.get(key)
        if known is not None and known.end <= offset:
            lowest = known.seq + 1
        first = await self._get(key, after=lowest)
        if first is None or first.end > offset:
            return first
        last = await self._get(key)
        if last is None or last.end <= offset:
            return None
        # The smallest sequence s whose next message ends beyond offset (true of
        # last.seq, false of first.seq): a binary search over sequences.
        low, high, best = first.seq + 1, last.seq, last
        while low < high:
            middle = (low + high) // 2
            probe = await self._get(key, after=middle)
            if probe is None:  # purged meanwhile
                return None
            if probe.end > offset:
                high, best = middle, probe
            else:
                low = probe.seq + 1
        return best

    def _remember(self, key: str, message: _Message) -> None:
        self._positions[key] = message
        self._positions.move_to_end(key)
        if len(self._positions) > POSITIONS:
            self._positions.popitem(last=False)


def _retrieved(future: asyncio.Future[int]) -> None:
    """Mark the failure of an append whose caller gave up as seen (no warning at GC)."""
    if not future.cancelled():
        future.exception()


def _message(seq: int | None, headers: dict[str, str] | None, data: bytes | None) -> _Message:
    headers = headers or {}
    try:
        offset = int(headers[OFFSET])
    except (KeyError, ValueError):
        raise StorageUnavailable(
            f"A message in the tail (sequence {seq}) has no valid {OFFSET} header."
        ) from None
    return _Message(seq or 0, offset, data or b"", headers.get(WRITER, ""))
