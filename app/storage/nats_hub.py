"""The hub across nodes, over NATS (DESIGN "Scale-out", SPEC §12.2).

Releases (tusd's lock exchange) are core NATS requests to the lease holder,
on ``<ns>.release.<digest of its node id>`` (node ids may hold any character):
a holder that is gone has no subscription there, so the asker learns at once.

Progress goes over core NATS, one subject per stream (``<ns>.progress.<id>``):
only the newest matters, so a lost one is harmless. Lifecycle events go
through the JetStream stream ``<ns>_events``: stored, in one cluster-wide
order, and numbered by its sequence (``HubEvent.seq``), which is what
``/events`` shows on every node.

Subscribers on the publishing node are served at once, in process (a NATS
round trip, even on loopback, costs hundreds of microseconds; readers tail on
these events); the connection is ``no_echo`` and lifecycle events carry their
sender, so the copies coming back are not delivered twice. Feeds alone take
their events from JetStream, so that every node's feed has the same order.

nats-py's futures can hang when the connection drops: every wait on it is
bounded here.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import logging
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy, DiscardPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError

from app.errors import NotReady
from app.storage.base import ReleaseHandler
from app.storage.memory_hub import MemoryFeed, MemorySubscription, _Channel
from app.streams.models import EventKind, HubEvent, StreamInfo, StreamState

log = logging.getLogger("weft.hub")

TIMEOUT = 2.0  # bound of every wait on NATS
OUTBOX = 10_000  # lifecycle events (and streams with pending progress) waiting to be sent
EVENTS_KEEP = 100_000  # lifecycle events the JetStream stream keeps
EVENTS_MAX_AGE = 24 * 3600.0
RELEASE_WAIT = 5.0  # a holder ends an idle producer, checkpoints and releases within this
HEARTBEAT = 1.0  # the events consumer is re-created after two missed heartbeats
ORIGIN = "Weft-Origin"
_FINISHING = (EventKind.COMPLETED, EventKind.ABANDONED, EventKind.DELETED)


def subject_token(stream_id: str) -> str:
    """Stream ids may hold '.', NATS's token separator ('%' never occurs in an id)."""
    return stream_id.replace(".", "%2E")


def where(servers: list[str]) -> str:
    """host:port of each server, never the credentials a URL may carry."""
    return ",".join(urlsplit(url).netloc.rpartition("@")[2] for url in servers)


# -- the wire form of an event -----------------------------------------------------


def encode(event: HubEvent) -> bytes:
    body: dict[str, Any] = {
        "kind": event.kind.value,
        "id": event.stream_id,
        "key": event.key,
        "size": event.size,
        "state": None if event.state is None else event.state.value,
    }
    info = event.info
    if info is not None:
        body["info"] = {
            "id": info.id,
            "key": info.key,
            "metadata": info.metadata,
            "state": info.state.value,
            "size": info.size,
            "sha256": info.sha256,
            "created_at": info.created_at.isoformat(),
            "updated_at": info.updated_at.isoformat(),
            "finished_at": None if info.finished_at is None else info.finished_at.isoformat(),
            "expected_size": info.expected_size,
            "tus": info.tus,
        }
    return json.dumps(body, separators=(",", ":")).encode()


def decode(data: bytes) -> HubEvent:
    body = json.loads(data)
    raw = body.get("info")
    info = None
    if raw is not None:
        finished = raw["finished_at"]
        info = StreamInfo(
            id=raw["id"],
            key=raw["key"],
            metadata=raw["metadata"],
            state=StreamState(raw["state"]),
            size=raw["size"],
            sha256=raw["sha256"],
            created_at=datetime.fromisoformat(raw["created_at"]),
            updated_at=datetime.fromisoformat(raw["updated_at"]),
            finished_at=None if finished is None else datetime.fromisoformat(finished),
            expected_size=raw["expected_size"],
            tus=raw["tus"],
        )
    state = body["state"]
    return HubEvent(
        EventKind(body["kind"]),
        body["id"],
        body["key"],
        body["size"],
        None if state is None else StreamState(state),
        info,
    )


# -- subscribers -----------------------------------------------------------------------


class _StreamChannel(_Channel):
    """A channel that events may reach twice or out of order (in process and over
    NATS; progress over core NATS, lifecycle over JetStream): a copy of the latest
    event, progress not beyond the latest, and progress of a finished incarnation
    are dropped, so a late progress never hides a completion."""

    __slots__ = ("finished", "nats")

    def __init__(self) -> None:
        super().__init__()
        self.finished: set[str] = set()
        self.nats: NatsSubscription | None = None

    def offer(self, event: HubEvent) -> None:
        latest = self.latest
        if event.kind is EventKind.PROGRESS:
            if event.key in self.finished:
                return
            if latest is not None and latest.key == event.key and latest.size >= event.size:
                return
        else:
            if latest is not None and latest == event:
                return
            if event.kind in _FINISHING:
                self.finished.add(event.key)
        self.put(event)


class _Feed(MemoryFeed):
    """Buffers everything until it knows where "now" was when it was opened."""

    def __init__(self) -> None:
        super().__init__()
        self.floor: int | None = None

    def put(self, event: HubEvent) -> None:
        if self.floor is not None and (event.seq or 0) <= self.floor:
            return
        super().put(event)

    def set_floor(self, floor: int) -> None:
        self.floor = floor
        kept = [e for e in self._queue if (e.seq or 0) > floor]
        self._queue.clear()
        self._queue.extend(kept)


@dataclass
class _Outgoing:
    msg_id: str
    event: HubEvent


# -- the hub ---------------------------------------------------------------------------


class NatsHub:
    """One node's hub; nodes with the same namespace see each other's events."""

    def __init__(
        self,
        servers: list[str],
        namespace: str,
        node_id: str,
        *,
        timeout: float = TIMEOUT,
        outbox: int = OUTBOX,
    ) -> None:
        self.servers = servers
        self.namespace = namespace
        self.node_id = node_id
        self.stream_name = f"{namespace}_events"
        self.events_subject = f"{namespace}.events"
        self._timeout = timeout
        self._outbox_limit = outbox
        # Tells this instance's lifecycle events from other nodes' (a node id
        # could be configured twice; this cannot).
        self._origin = f"{node_id}/{uuid.uuid4().hex}"
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._events_sub: JetStreamContext.PushSubscription | None = None
        self._channels: dict[str, _StreamChannel] = {}
        self._feeds: set[_Feed] = set()
        self._progress: dict[str, HubEvent] = {}
        self._lifecycle: collections.deque[_Outgoing] = collections.deque()
        self._queued = 0  # lifecycle events ever queued
        self._sent = 0  # ... and acknowledged by JetStream (or dropped)
        self._stored_seq = 0  # the sequence of this node's last stored event
        self._delivered_seq = 0  # the sequence of the last event the consumer delivered
        self._changed = asyncio.Event()  # set (and replaced) when any of these move
        self._wake = asyncio.Event()
        self._connected = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self._releasing: set[asyncio.Task[None]] = set()
        self._closed = False
        self.dropped = 0  # events the outbox had no room for

    # -- start and stop -----------------------------------------------------------

    async def start(self) -> None:
        try:
            self._nc = await connect(
                self.servers,
                f"weft {self.node_id}",
                self._timeout,
                (self._on_error, self._on_disconnected, self._on_reconnected),
                no_echo=True,
            )
            self._connected.set()
            self._js = self._nc.jetstream(timeout=self._timeout)
            # Only events stored from now on: the consumer nats-py re-creates after
            # a NATS restart starts after the last event it saw, or at the very
            # first one when it saw none.
            self._delivered_seq = await self._ensure_stream()
            self._events_sub = await asyncio.wait_for(
                self._js.subscribe(
                    self.events_subject,
                    stream=self.stream_name,
                    cb=self._on_lifecycle,
                    ordered_consumer=True,
                    idle_heartbeat=HEARTBEAT,
                    deliver_policy=DeliverPolicy.NEW,
                ),
                self._timeout,
            )
        except Exception as exc:
            await self._close_connection()
            raise NotReady(f"NATS ({where(self.servers)}) is not reachable: {_why(exc)}") from exc
        self._sender = asyncio.create_task(self._send())

    async def _ensure_stream(self) -> int:
        """Create the events stream unless it exists; return its last sequence."""
        assert self._js is not None
        config = StreamConfig(
            name=self.stream_name,
            subjects=[self.events_subject],
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_msgs=EVENTS_KEEP,
            max_age=EVENTS_MAX_AGE,
        )
        try:
            info = await asyncio.wait_for(self._js.add_stream(config), self._timeout)
        except BadRequestError:
            # It exists (another node made it, perhaps with other limits): use it.
            info = await asyncio.wait_for(self._js.stream_info(self.stream_name), self._timeout)
        return info.state.last_seq

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._sender is not None:
            # What is already queued goes out, and reaches this node's own feeds,
            # if NATS answers soon.
            queued = self._queued
            with suppress(TimeoutError):
                await self._wait_until(lambda: self._sent >= queued, self._timeout)
                await self._wait_until(
                    lambda: self._delivered_seq >= self._stored_seq, self._timeout
                )
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
        for task in self._releasing:
            task.cancel()
        for feed in self._feeds:
            feed.close()
        await self._close_connection()

    async def _close_connection(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None:
            with suppress(Exception):
                await asyncio.wait_for(nc.close(), self._timeout)

    async def check(self) -> None:
        """Raise NotReady unless JetStream answers now."""
        if self._nc is None or self._js is None or not self._nc.is_connected:
            raise NotReady(f"NATS ({where(self.servers)}) is not reachable.")
        try:
            await asyncio.wait_for(self._js.stream_info(self.stream_name), self._timeout)
        except Exception as exc:
            raise NotReady(f"NATS ({where(self.servers)}) does not answer: {_why(exc)}") from exc

    # -- connection state ---------------------------------------------------------

    async def _on_error(self, exc: Exception) -> None:
        log.warning("nats_error node=%s error=%s", self.node_id, _why(exc))

    async def _on_disconnected(self) -> None:
        self._connected.clear()
        if not self._closed:
            log.warning("nats_disconnected node=%s servers=%s", self.node_id, where(self.servers))

    async def _on_reconnected(self) -> None:
        self._connected.set()
        self._wake.set()
        log.info("nats_reconnected node=%s", self.node_id)

    # -- publish ------------------------------------------------------------------

    def publish(self, event: HubEvent) -> None:
        channel = self._channels.get(event.stream_id)
        if channel is not None:
            channel.offer(event)
        if self._closed:
            return
        if event.kind is EventKind.PROGRESS:
            # Newest wins: a stream has at most one progress waiting.
            self._progress.pop(event.stream_id, None)
            self._progress[event.stream_id] = event
            if len(self._progress) > self._outbox_limit:
                del self._progress[next(iter(self._progress))]
                self.dropped += 1
        else:
            if len(self._lifecycle) >= self._outbox_limit:
                self._lifecycle.popleft()
                self._mark_sent()
                self.dropped += 1
                log.warning("hub_outbox_full node=%s dropped=%d", self.node_id, self.dropped)
            self._queued += 1
            self._lifecycle.append(_Outgoing(f"{self._origin}/{self._queued}", event))
        self._wake.set()

    def _mark_sent(self) -> None:
        self._sent += 1
        self._notify()

    def _notify(self) -> None:
        woken, self._changed = self._changed, asyncio.Event()
        woken.set()

    async def _wait_until(self, done: Callable[[], bool], timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not done():
                await self._changed.wait()

    async def _send(self) -> None:
        """One task sends everything, lifecycle events one at a time in order
        (each waits for JetStream's ack; a retry carries the same Nats-Msg-Id,
        so JetStream stores it once)."""
        backoff = 0.05
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._progress or self._lifecycle:
                nc, js = self._nc, self._js
                if nc is None or js is None:
                    return
                if not nc.is_connected:
                    with suppress(TimeoutError):
                        await asyncio.wait_for(self._connected.wait(), self._timeout)
                    continue
                await self._send_progress(nc)
                if not self._lifecycle:
                    continue
                out = self._lifecycle[0]
                try:
                    ack = await asyncio.wait_for(
                        js.publish(
                            self.events_subject,
                            encode(out.event),
                            timeout=self._timeout,
                            headers={"Nats-Msg-Id": out.msg_id, ORIGIN: self._origin},
                        ),
                        self._timeout + 0.5,
                    )
                except Exception as exc:
                    log.warning("hub_event_not_sent node=%s error=%s", self.node_id, _why(exc))
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
                backoff = 0.05
                self._stored_seq = max(self._stored_seq, ack.seq)
                if self._lifecycle and self._lifecycle[0] is out:
                    self._lifecycle.popleft()
                    self._mark_sent()

    async def _send_progress(self, nc: Client) -> None:
        pending = list(self._progress.values())
        self._progress = {}
        sent = 0
        try:
            async with asyncio.timeout(self._timeout):
                for event in pending:
                    subject = f"{self.namespace}.progress.{subject_token(event.stream_id)}"
                    await nc.publish(subject, encode(event))
                    sent += 1
        except Exception as exc:
            log.debug("progress_not_sent node=%s error=%s", self.node_id, _why(exc))
            await asyncio.sleep(0.05)
            # Kept for the next round, unless a newer one came meanwhile.
            for event in pending[sent:]:
                self._progress.setdefault(event.stream_id, event)

    # -- releases -----------------------------------------------------------------

    async def serve_releases(self, handler: ReleaseHandler) -> None:
        nc = self._nc
        if nc is None:
            return

        async def on_request(msg: Msg) -> None:
            # A task each: letting go waits for a producer to stop, and the
            # subscription's other requests must not queue behind it.
            task = asyncio.create_task(self._answer_release(msg, handler))
            self._releasing.add(task)
            task.add_done_callback(self._releasing.discard)

        subject = self._release_subject(self.node_id)
        await asyncio.wait_for(nc.subscribe(subject, cb=on_request), self._timeout)

    def _release_subject(self, node_id: str) -> str:
        return f"{self.namespace}.release.{hashlib.sha256(node_id.encode()).hexdigest()[:20]}"

    async def _answer_release(self, msg: Msg, handler: ReleaseHandler) -> None:
        try:
            body = json.loads(msg.data)
            released = await handler(body["id"], body["key"])
            if released is not None and msg.reply:
                await msg.respond(b"released" if released else b"busy")
        except Exception as exc:
            log.warning("release_not_answered node=%s error=%s", self.node_id, _why(exc))

    async def ask_release(self, stream_id: str, key: str, node_id: str) -> bool:
        nc = self._nc
        if nc is None or not nc.is_connected:
            return False
        subject = self._release_subject(node_id)
        body = json.dumps({"id": stream_id, "key": key}).encode()
        try:
            reply = await asyncio.wait_for(
                nc.request(subject, body, timeout=RELEASE_WAIT), RELEASE_WAIT + 0.5
            )
        except Exception as exc:  # the holder is gone, or did not answer in time
            log.info("release_unanswered stream_id=%s error=%s", stream_id, _why(exc))
            return False
        return bool(reply.data == b"released")

    # -- receive ------------------------------------------------------------------

    async def _on_lifecycle(self, msg: Msg) -> None:
        try:
            seq = msg.metadata.sequence.stream
            if seq <= self._delivered_seq:
                return  # from before this hub started, or seen already
            event = replace(decode(msg.data), seq=seq)
        except Exception as exc:  # another version's or a stranger's message
            log.warning("hub_event_unreadable error=%s", _why(exc))
            return
        if (msg.headers or {}).get(ORIGIN) != self._origin:
            channel = self._channels.get(event.stream_id)
            if channel is not None:
                channel.offer(event)
        for feed in self._feeds:
            feed.put(event)
        self._delivered_seq = seq
        self._notify()

    def _progress_handler(
        self, channel: _StreamChannel
    ) -> Callable[[Msg], Coroutine[Any, Any, None]]:
        async def handle(msg: Msg) -> None:
            try:
                event = decode(msg.data)
            except Exception as exc:
                log.warning("hub_event_unreadable error=%s", _why(exc))
                return
            channel.offer(event)

        return handle

    # -- subscribe ----------------------------------------------------------------

    @asynccontextmanager
    async def subscribe(self, stream_id: str) -> AsyncIterator[MemorySubscription]:
        channel = self._channels.get(stream_id)
        if channel is None:
            channel = self._channels[stream_id] = _StreamChannel()
        channel.subscribers += 1
        try:
            if channel.nats is None and self._nc is not None:
                await self._follow(stream_id, channel)
            yield MemorySubscription(channel)
        finally:
            channel.subscribers -= 1
            if channel.subscribers == 0:
                del self._channels[stream_id]
                if channel.nats is not None:
                    with suppress(Exception):
                        await asyncio.wait_for(channel.nats.unsubscribe(), self._timeout)

    async def _follow(self, stream_id: str, channel: _StreamChannel) -> None:
        """Subscribe to the stream's progress; wait (briefly) until the server has
        the subscription, so that a publish on another node after this returns
        is seen."""
        nc = self._nc
        assert nc is not None
        subject = f"{self.namespace}.progress.{subject_token(stream_id)}"
        try:
            async with asyncio.timeout(self._timeout):
                channel.nats = await nc.subscribe(subject, cb=self._progress_handler(channel))
                if nc.is_connected:
                    # flush's own timeout is whole seconds; the block's is the bound.
                    await nc.flush(math.ceil(self._timeout))
        except Exception as exc:  # disconnected: nats-py subscribes again on reconnect
            log.debug("progress_subscribe_pending stream_id=%s error=%s", stream_id, _why(exc))

    @asynccontextmanager
    async def feed(self) -> AsyncIterator[MemoryFeed]:
        feed = _Feed()
        self._feeds.add(feed)
        try:
            feed.set_floor(await self._horizon())
            yield feed
        finally:
            self._feeds.discard(feed)

    async def _horizon(self) -> int:
        """The last stored event sequence once this node's queued events are stored:
        a feed opened now starts after it. 0 (everything) when NATS does not answer."""
        if self._js is None:
            return 0
        try:
            queued = self._queued
            await self._wait_until(lambda: self._sent >= queued, self._timeout)
            info = await asyncio.wait_for(self._js.stream_info(self.stream_name), self._timeout)
        except Exception as exc:
            log.warning("hub_feed_horizon_unknown node=%s error=%s", self.node_id, _why(exc))
            return 0
        return info.state.last_seq


async def connect(
    servers: list[str],
    name: str,
    timeout: float,
    callbacks: tuple[
        Callable[[Exception], Awaitable[None]],
        Callable[[], Awaitable[None]],
        Callable[[], Awaitable[None]],
    ],
    *,
    no_echo: bool = False,
) -> Client:
    """A connection that reconnects by itself for ever, every wait bounded by
    timeout; callbacks: (error, disconnected, reconnected)."""
    error_cb, disconnected_cb, reconnected_cb = callbacks
    return await asyncio.wait_for(
        nats.connect(
            servers=servers,
            name=name,
            no_echo=no_echo,
            connect_timeout=timeout,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            error_cb=error_cb,
            disconnected_cb=disconnected_cb,
            reconnected_cb=reconnected_cb,
        ),
        timeout * 2,
    )


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
