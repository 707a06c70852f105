"""The resumable producer (SPEC §2, §4): write bytes as they come, never lose one.

``write()`` puts bytes in a bounded SendBuffer and returns; a sender thread
streams the buffer to ``POST /stream[/{id}]`` as chunked frames and, after a
drop or a server restart, asks ``HEAD`` for ``Upload-Offset`` and resumes with
``PATCH`` under exponential backoff. A byte leaves the buffer only once the
server has reported it stored (``Upload-Offset`` of a HEAD or PATCH, or the
POST's final size); while a long request is still open an acknowledger thread
asks HEAD whenever the buffer is half full. A full buffer blocks ``write()``:
back-pressure, never loss.

If a POST drops after the server created a named stream but before its 201
arrived, the retried POST gets 409; the writer then resumes that stream when
it holds a prefix of what this writer sent (it is its own) or, when it holds
no byte yet, carries this writer's metadata and was created after that POST
was sent (a node that died between creating the stream and sending its 201);
it is refused otherwise. Known limit: without an id a lost 201 leaves the
stream the server named live and unused (the retry creates another).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime
from types import TracebackType
from typing import Any

from app.client.acker import acknowledge_while_sending
from app.client.buffer import SendBuffer
from app.client.common import Backoff, Endpoint, HeadInfo, StreamResult, encode_metadata
from app.client.errors import (
    ClientError,
    RetriesExhausted,
    Retryable,
    StreamDeleted,
    StreamGone,
    StreamRefused,
    StreamReplaced,
    is_retryable_status,
    server_message,
)
from app.client.wire import (
    Cancelled,
    Connection,
    ResponseParser,
    exchange,
    head,
    request,
    request_head,
)

DEFAULT_BUFFER = 32 * 1024 * 1024
# How far the server's clock may run behind ours when telling whether an empty
# stream was created by our own dropped POST.
CLOCK_SKEW = 300.0
LONG_CONNECTION = 2.0  # a connection that lived this long was accepted: reset the retries


class StreamWriter:
    """A resumable producer for one stream. ``write()`` is thread-safe; the
    callbacks ``on_created(id)`` and ``on_retry(attempt, delay, reason)`` run on
    the sender thread.

    ``with StreamWriter(url, "build-7") as w: w.write(b"...")`` completes the
    stream on a clean exit and leaves it live (resumable) on an exception.

    ``resume_from=N`` continues an existing live stream that holds N bytes: the
    first byte written is byte N of the stream (sent with ``PATCH``).
    """

    def __init__(
        self,
        url: str,
        stream_id: str | None = None,
        *,
        token: str | None = None,
        force: bool = False,
        metadata: dict[str, Any] | None = None,
        backoff: Backoff | None = None,
        buffer_bytes: int = DEFAULT_BUFFER,
        linger: float = 0.002,
        timeout: float = 60.0,
        on_created: Callable[[str], None] | None = None,
        on_retry: Callable[[int, float, str], None] | None = None,
        resume_from: int | None = None,
    ) -> None:
        self.endpoint = Endpoint(url, token)
        self.backoff = backoff or Backoff()
        self._force, self._metadata = force, encode_metadata(metadata)
        self._timeout = timeout
        self._on_created, self._on_retry = on_created, on_retry
        self._buffer = SendBuffer(buffer_bytes, linger)
        self._cond = self._buffer.cond  # one lock for the buffer and the state below
        self._id = stream_id
        self._started = self._created = self._done = False
        self._maybe_created = False  # a POST dropped before its answer: it may have created ours
        self._posted_at: float | None = None  # wall-clock time of the first POST sent
        self._incarnation: str | None = None  # X-Stream-Created of our stream, once known
        self.retries = 0  # retries so far, for a progress display
        if resume_from is not None:
            if stream_id is None or resume_from < 0:
                raise ValueError("resuming needs the stream's id and its size")
            self._created = True
            self._buffer.start_at(resume_from)
        self._result: StreamResult | None = None
        self._error: BaseException | None = None
        self._threads = [
            threading.Thread(target=self._run, name="weft-sender", daemon=True),
            threading.Thread(target=self._acknowledge, name="weft-acker", daemon=True),
        ]

    # -- the producer's side --------------------------------------------------

    def start(self) -> StreamWriter:
        """Connect now: the POST goes out before any byte is written."""
        with self._cond:
            if not self._started:
                self._started = True
                for thread in self._threads:
                    thread.start()
        return self

    @property
    def stream_id(self) -> str | None:
        """The id, once the server created the stream (or the one asked for)."""
        return self._id

    @property
    def created(self) -> bool:
        """Whether the server has answered 201: the stream exists and is ours to resume."""
        return self._created

    @property
    def acknowledged(self) -> int:
        """Bytes the server has reported stored."""
        with self._cond:
            return self._buffer.base

    @property
    def size(self) -> int:
        """Bytes written so far."""
        with self._cond:
            return self._buffer.total

    def wait_created(self, timeout: float | None = None) -> str:
        """Block until the server answered 201 and return the id; raise if it refused."""
        self.start()
        with self._cond:
            self._cond.wait_for(lambda: self._created or self._done, timeout)
            if self._created and self._id is not None:
                return self._id
            if self._error is not None:
                raise self._error
        raise TimeoutError("the server has not created the stream yet")

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue data; blocks while the buffer of unacknowledged bytes is full."""
        view = memoryview(data).cast("B")
        self.start()
        buffer = self._buffer
        while view:
            with self._cond:
                self._cond.wait_for(lambda: self._done or buffer.used < buffer.capacity)
                self._check_writable()
                taken = buffer.put(view)
            view = view[taken:]

    def read_into(self, fd: int, limit: int = 1 << 20) -> memoryview | None:
        """Read once from ``fd`` straight into the buffer (no copy on the way):
        blocks while the buffer is full, then for the read. Return a view of the
        bytes read (valid until the next call), or None at end of input. For
        one reading thread; not to be mixed with ``write()`` from another."""
        self.start()
        buffer = self._buffer
        with self._cond:
            self._cond.wait_for(lambda: self._done or buffer.used < buffer.capacity)
            self._check_writable()
            places = buffer.free_views(limit)
        # Outside the lock: only this thread writes the free part of the ring.
        size = os.readv(fd, places)
        if not size:
            return None
        with self._cond:
            self._check_writable()
            got = buffer.views(buffer.total, buffer.total + size)
            buffer.commit(size)
        return got[0] if len(got) == 1 else memoryview(b"".join(got))

    def try_write(self, data: bytes | bytearray | memoryview) -> int:
        """Queue what fits without blocking; return how many bytes were taken."""
        self.start()
        with self._cond:
            self._check_writable()
            return self._buffer.put(memoryview(data).cast("B"))

    def _check_writable(self) -> None:
        if self._error is not None:
            raise self._error
        if self._buffer.eof or self._done:
            raise ClientError("The stream writer is closed.")

    def finish(self) -> None:
        """End of input: the stream completes once every byte is stored."""
        self.start()
        with self._cond:
            self._buffer.finish()

    def wait(self, timeout: float | None = None) -> StreamResult:
        """Block until the stream is complete (return the server's report) or failed (raise)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        with self._cond:
            if self._result is not None:
                return self._result
            if self._error is not None:
                raise self._error
        raise TimeoutError("the stream is not complete yet")

    def close(self) -> StreamResult:
        """``finish()`` then ``wait()``."""
        self.finish()
        return self.wait()

    def abort(self, timeout: float | None = None) -> None:
        """Drop the connection without completing: the stream stays live (resumable).
        Waits up to ``timeout`` for the threads (a connect in progress ends first)."""
        with self._cond:
            self._buffer.cancel()
            if not self._started:
                self._started = self._done = True
                self._buffer.stop()
                return
        for thread in self._threads:
            thread.join(timeout)

    def __enter__(self) -> StreamWriter:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

    def _acknowledge(self) -> None:
        acknowledge_while_sending(
            self._buffer,
            self.endpoint,
            stream_id=lambda: self._id if self._created else None,
            finished=lambda: self._done,
            timeout=self._timeout,
            needs_identity=lambda: self._incarnation is None,
            on_head=self._identify,
        )

    def _identify(self, info: HeadInfo) -> None:
        """Remember which incarnation of the id is ours (caller holds the lock)."""
        if self._incarnation is None:
            self._incarnation = info.created

    def _head(self) -> HeadInfo:
        """HEAD our stream; raise StreamDeleted or StreamReplaced if it is not ours any more."""
        assert self._id is not None
        try:
            info = head(self.endpoint, self._id, self._timeout)
        except StreamRefused as exc:
            if exc.status == 404:
                raise StreamDeleted(
                    f"The stream {self._id} was deleted while it was being written."
                ) from exc
            raise
        with self._cond:
            self._identify(info)
            known = self._incarnation
        if known is not None and info.created is not None and info.created != known:
            raise StreamReplaced(
                f"The stream {self._id} was replaced by another producer; "
                "this producer's bytes no longer go anywhere."
            )
        return info

    # -- the sender thread ------------------------------------------------------

    def _run(self) -> None:
        result: StreamResult | None = None
        error: BaseException | None = None
        try:
            try:
                result = self._drive()
            except ClientError as exc:
                raise self._explain(exc) from exc
        except Cancelled:
            error = ClientError("The stream writer was aborted; the stream stays live.")
        except BaseException as exc:  # handed to the producer's thread by wait()
            error = exc
        with self._cond:
            self._result, self._error, self._done = result, error, True
            self._buffer.stop()

    def _drive(self) -> StreamResult:
        failures = 0
        while True:
            progress, started = self._buffer.progress, time.monotonic()
            try:
                result = self._resume() if self._created else self._post()
                if result is not None:
                    return result
                continue  # a PATCH ended at end of input; the completing one follows
            except Retryable as exc:
                lasted = time.monotonic() - started > LONG_CONNECTION
                if lasted or self._buffer.progress != progress:
                    failures = 0
                if failures >= self.backoff.retries:
                    raise RetriesExhausted(
                        f"Gave up after {self.backoff.retries} retries: {exc}"
                    ) from exc
                delay = self.backoff.delay(failures)
                failures += 1
                self.retries += 1
                _log_retry(failures, delay, exc)
                if self._on_retry is not None:
                    self._on_retry(failures, delay, str(exc))
                with self._cond:
                    if self._cond.wait_for(self._buffer.cancelled, delay):
                        raise Cancelled from exc

    def _send(self, method: str, path: str, extra: dict[str, str]) -> ResponseParser:
        headers = self.endpoint.headers()
        headers["Host"] = self.endpoint.host_header
        headers["Content-Type"] = "application/octet-stream"
        headers["Transfer-Encoding"] = "chunked"
        headers["Connection"] = "close"
        headers.update(extra)
        conn = Connection.open(self.endpoint, self._timeout)
        try:
            return exchange(
                conn,
                request_head(method, path, headers),
                self._buffer,
                wake_fd=self._buffer.wake_r,
                on_head=self._on_post_head if method == "POST" else (lambda _response: False),
                io_timeout=self._timeout,
            )
        finally:
            conn.close()

    def _live(self) -> bool:
        """Whether our stream is still live; when the server cannot say now,
        assume so (the resume asks again)."""
        try:
            return self._head().state == "live"
        except Retryable:
            return True
        except ClientError:
            return False

    def _post(self) -> StreamResult:
        with self._cond:
            self._buffer.rewind(0)
        path = self.endpoint.path(self._id) + ("?force=true" if self._force else "")
        extra = {"X-Stream-Metadata": self._metadata} if self._metadata is not None else {}
        if self._posted_at is None:
            self._posted_at = time.time()
        try:
            response = self._send("POST", path, extra)
        except Retryable:
            self._maybe_created = True
            raise
        ours = self._maybe_created and self._id is not None
        if response.status == 409 and ours and self._holds_our_bytes():
            with self._cond:
                self._created = True
            raise Retryable("the answer to the POST that created the stream was lost")
        if response.status != 201:
            raise self._failure(response, taken_is_final=True)
        body = _json(response.body)
        if "error" in body or "size" not in body:
            message = body.get("error", body)
            if self._live():
                # A failure after the 201 that left the stream live (the tail store
                # unreachable, the node's lease lost, a full disk): resume it, as
                # after a dropped connection.
                raise Retryable(f"after the 201: {message}")
            # Ended (the size limit completed it) or gone: the server's last word.
            raise ClientError(f"The server stopped the stream: {message}")
        with self._cond:
            self._buffer.acknowledge(int(body["size"]))
        return self._finished(
            StreamResult(str(body["id"]), int(body["size"]), body.get("sha256"), body["state"])
        )

    def _holds_our_bytes(self) -> bool:
        """Whether the stream our id names is the one a dropped POST of ours
        created: it holds one or more bytes, all of them a prefix of ours, or
        none yet and is ours by its metadata and creation time."""
        assert self._id is not None
        try:
            info = head(self.endpoint, self._id, self._timeout)
        except (ClientError, Retryable):
            return False
        if info.offset == 0:
            with self._cond:
                if self._buffer.base != 0 or not self._empty_and_ours(info):
                    return False
                self._identify(info)
            return True
        with self._cond:
            if self._buffer.base != 0 or not 0 < info.offset <= self._buffer.high:
                return False
            ours = self._buffer.copy(0, info.offset)
        try:
            # On a live stream a Range is ignored: read its first bytes and hang up.
            got = request(
                self.endpoint,
                "GET",
                self.endpoint.path(self._id),
                timeout=self._timeout,
                enough=lambda response: len(response.body) >= len(ours),
            )
        except Retryable:
            return False
        if got.status not in (200, 206) or bytes(got.body[: len(ours)]) != ours:
            return False
        with self._cond:
            self._identify(info)
        return True

    def _empty_and_ours(self, info: HeadInfo) -> bool:
        """A live stream with no byte yet is ours if it has our metadata and was
        created no earlier than our first POST (less a margin for clock skew)."""
        if info.state != "live" or info.metadata is None or info.created is None:
            return False
        try:
            theirs = json.loads(info.metadata)
            created = datetime.fromisoformat(info.created).timestamp()
        except ValueError:
            return False
        mine = json.loads(self._metadata) if self._metadata is not None else {}
        assert self._posted_at is not None
        return bool(theirs == mine and created >= self._posted_at - CLOCK_SKEW)

    def _on_post_head(self, response: ResponseParser) -> bool:
        if response.status != 201:
            return False  # a refusal: stop sending and read why
        stream_id = response.headers.get("x-stream-id") or self._id
        with self._cond:
            self._id, self._created = stream_id, True
            self._buffer.progress += 1
            self._cond.notify_all()
        if self._on_created is not None and stream_id is not None:
            self._on_created(stream_id)
        return True

    def _resume(self) -> StreamResult | None:
        assert self._id is not None
        info = self._head()
        buffer = self._buffer
        with self._cond:
            total, final = buffer.total, buffer.eof
            if info.state != "live":
                if info.state == "complete" and final and info.offset == total:
                    buffer.acknowledge(total)  # the last answer was lost, not the bytes
                    return self._finished(info.result(self._id))
                raise ClientError(
                    f"The stream {self._id} is {info.state} with {info.offset} of {total} "
                    "bytes; it can no longer be resumed."
                )
            if not buffer.base <= info.offset <= buffer.high:
                raise ClientError(
                    f"The server has {info.offset} bytes of stream {self._id}, but "
                    f"{buffer.base} were confirmed stored and {buffer.high} sent; cannot resume."
                )
            buffer.rewind(info.offset)
        extra = {"Upload-Offset": str(info.offset)}
        if final:
            extra["Upload-Complete"] = "?1"
        response = self._send("PATCH", self.endpoint.path(self._id), extra)
        if response.status != 204:
            raise self._failure(response, taken_is_final=False)
        offset = response.headers.get("upload-offset", "")
        with self._cond:
            if offset.isdigit():
                buffer.acknowledge(int(offset))
        if not final:
            return None
        done = self._head()
        if done.state != "complete":
            raise Retryable(f"the stream is still {done.state} after its final PATCH")
        return self._finished(done.result(self._id))

    def _explain(self, exc: ClientError) -> ClientError:
        """A failure of a stream we created may be a delete or a replace in
        disguise (the server then says only "does not exist" or "not live"): ask."""
        if isinstance(exc, StreamGone | RetriesExhausted) or not self._created:
            return exc
        if isinstance(exc, StreamRefused) and exc.status in (401, 403):
            return exc
        try:
            self._head()
        except StreamGone as gone:
            return gone
        except (ClientError, Retryable):
            return exc
        if "does not exist" in str(exc):
            # The server no longer knows our stream, yet the id answers: a new one has it.
            return StreamReplaced(
                f"The stream {self._id} was replaced by another producer; "
                "this producer's bytes no longer go anywhere."
            )
        return exc

    def _failure(self, response: ResponseParser, *, taken_is_final: bool) -> Exception:
        """409 on a POST is "id taken" (final); on a PATCH it is another producer
        still attached or an offset that moved (retried after a fresh HEAD)."""
        status = response.status or 0
        message = server_message(status, bytes(response.body), response.reason)
        if status == 409 and taken_is_final:
            return StreamRefused(status, message)
        if is_retryable_status(status):
            return Retryable(f"HTTP {status}: {message}")
        return StreamRefused(status, message)

    def _finished(self, result: StreamResult) -> StreamResult:
        with self._cond:
            total = self._buffer.total
        if result.state != "complete" or result.size != total:
            raise ClientError(
                f"The server reports the stream {result.state} with {result.size} bytes, "
                f"but {total} were written."
            )
        return result


def _log_retry(attempt: int, delay: float, reason: Exception) -> None:
    import logging  # here: a run that never retries starts without it (~4 ms)

    logging.getLogger("weft.client").info(
        "stream_retry attempt=%d delay=%.3f reason=%s", attempt, delay, reason
    )


def _json(body: bytes | bytearray) -> dict[str, Any]:
    try:
        parsed = json.loads(bytes(body))
    except ValueError:
        return {"error": "the server's answer is not JSON"}
    return parsed if isinstance(parsed, dict) else {"error": "the server's answer is not an object"}
