"""``some-command 2>&1 | bin/stream URL [ID] [options]``: pipe stdin into a stream (SPEC §9).

stdin is read with ``os.read`` as data arrives and handed to a resumable
StreamWriter, so a line typed now is visible to readers now. The stream id goes
to stderr as soon as the server answers. On a terminal (stderr a TTY, no
``--quiet``) a progress line is redrawn in place and a summary ends the run.
``--resume`` continues a live stream from the server's ``Upload-Offset``,
skipping that many bytes of stdin. Exit status: 0 when the server reports the
stream complete with exactly the bytes read, 1 on any failure (a refusal, spent
retries, a size mismatch, a stream replaced or deleted), 2 for bad arguments,
130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import sys
import threading
import time
from typing import Any

from app.cli.link import Linker
from app.cli.term import StatusLine, human_bytes, human_duration, origin_of, stream_url, viewer_url
from app.client.common import Backoff, Endpoint, HeadInfo
from app.client.errors import ClientError, RetriesExhausted, Retryable, StreamRefused
from app.client.wire import head
from app.client.writer import StreamWriter

READ_SIZE = 1024 * 1024  # at most per read: as much as the pipe holds
LINK_WAIT = 60.0  # seconds the end of a run waits for --link's PUT


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stream",
        description="Send stdin to a Weft server as a live stream, as it is read.",
        epilog="The token may also come from the WEFT_TOKEN environment variable.",
    )
    parser.add_argument("url", help="the server's base URL, e.g. http://127.0.0.1:3060")
    parser.add_argument("id", nargs="?", help="stream id (default: the server generates one)")
    parser.add_argument("--force", action="store_true", help="replace a stream with this id")
    parser.add_argument(
        "--meta", action="append", default=[], metavar="KEY=VALUE", help="a metadata field"
    )
    parser.add_argument("--metadata", metavar="JSON", help="metadata as a JSON object")
    parser.add_argument("--token", help="bearer token (default: $WEFT_TOKEN)")
    parser.add_argument(
        "--link", metavar="NAME", help="point the link NAME at the stream as soon as it exists"
    )
    parser.add_argument("--tee", action="store_true", help="copy stdin to stdout as well")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the live stream ID from the bytes the server holds, "
        "skipping that many bytes of stdin (re-run the same producer)",
    )
    parser.add_argument(
        "--quiet", "-q", action="store_true", help="no progress line or summary on a terminal"
    )
    parser.add_argument("--retries", type=int, default=10, metavar="N")
    parser.add_argument("--backoff-factor", type=float, default=2.0, metavar="F")
    parser.add_argument("--min-delay", type=float, default=1.0, metavar="SECONDS")
    parser.add_argument("--max-delay", type=float, default=60.0, metavar="SECONDS")
    return parser


def parse_metadata(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """``--metadata`` first, then each ``--meta KEY=VALUE`` on top (values are strings)."""
    metadata: dict[str, Any] = {}
    if args.metadata is not None:
        try:
            parsed = json.loads(args.metadata)
        except ValueError as exc:
            parser.error(f"--metadata is not valid JSON: {exc}")
        if not isinstance(parsed, dict):
            parser.error("--metadata must be a JSON object")
        metadata.update(parsed)
    for item in args.meta:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--meta needs KEY=VALUE, got {item!r}")
        metadata[key] = value
    return metadata


class Pump:
    """Copies stdin to the writer (and stdout with --tee) on its own thread, so
    the main thread can end at once when the server refuses the stream."""

    def __init__(self, writer: StreamWriter, *, tee: bool, skip: int = 0) -> None:
        self.writer, self.tee = writer, tee
        self.skip = skip  # bytes the stream already holds (--resume): read, not sent
        self.bytes_read = 0
        self.error: OSError | None = None
        self.short_input = False  # stdin ended before the bytes to skip
        self.thread = threading.Thread(target=self._run, name="stdin-pump", daemon=True)

    def _run(self) -> None:
        fd = sys.stdin.fileno()
        with contextlib.suppress(OSError, AttributeError):
            # A pipe of 1 MiB instead of 64 KiB: a burst is taken in fewer reads,
            # and the producer blocks less often on a full pipe.
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, READ_SIZE)
        try:
            while self.bytes_read < self.skip:  # --resume: read, tee, not sent
                data = os.read(fd, min(READ_SIZE, self.skip - self.bytes_read))
                if not data:
                    self.short_input = True
                    self.writer.abort(timeout=0)
                    return
                self.bytes_read += len(data)
                if self.tee:
                    self._tee(data)
            while (view := self.writer.read_into(fd, READ_SIZE)) is not None:
                self.bytes_read += len(view)
                if self.tee:
                    self._tee(view)
        except ClientError:
            return  # the writer failed; the main thread reports why
        except OSError as exc:
            self.error = exc
            self.writer.abort(timeout=0)
            return
        self.writer.finish()

    def _tee(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(sys.stdout.fileno(), view) :]
        except BrokenPipeError:
            # Whoever read our stdout left; the stream itself must go on.
            self.tee = False


def resume_offset(args: argparse.Namespace, token: str | None, backoff: Backoff) -> HeadInfo:
    """HEAD the stream to resume, retrying a server that does not answer (yet)."""
    endpoint = Endpoint(args.url, token)
    failures = 0
    while True:
        try:
            return head(endpoint, args.id)
        except Retryable as exc:
            if failures >= backoff.retries:
                raise RetriesExhausted(f"Gave up after {backoff.retries} retries: {exc}") from exc
            delay = backoff.delay(failures)
            failures += 1
            print(
                f"stream: {exc}; retry {failures}/{backoff.retries} in {delay:g} s",
                file=sys.stderr,
                flush=True,
            )
            time.sleep(delay)


class Progress:
    """The terminal's live progress line: bytes, rate, elapsed, retries."""

    def __init__(self, status: StatusLine, writer: StreamWriter, pump: Pump) -> None:
        self.status, self.writer, self.pump = status, writer, pump
        self.started = time.monotonic()
        self.retry_at: float | None = None  # when the pending retry goes out

    def text(self) -> str:
        elapsed = time.monotonic() - self.started
        sent = max(0, self.pump.bytes_read - self.pump.skip)
        rate = sent / elapsed if elapsed > 0 else 0.0
        parts = [
            self.writer.stream_id or "(creating)",
            human_bytes(self.pump.bytes_read),
            f"{human_bytes(rate)}/s",
            human_duration(elapsed),
            f"{self.writer.retries} retries",
        ]
        if self.retry_at is not None:
            wait = self.retry_at - time.monotonic()
            if wait > 0:
                parts.append(f"retrying in {wait:.0f} s")
            else:
                self.retry_at = None
        return "  ".join(parts)

    def draw(self, *, force: bool = False) -> None:
        self.status.draw(self.text(), force=force)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Intermixed: flags may come before, between or after URL and ID.
    args = parser.parse_intermixed_args(argv)
    metadata = parse_metadata(parser, args)
    try:
        backoff = Backoff(args.retries, args.backoff_factor, args.min_delay, args.max_delay)
    except ValueError as exc:
        parser.error(str(exc))
    if args.resume and args.id is None:
        parser.error("--resume needs the ID of the stream to continue")
    if args.resume and (args.force or metadata):
        parser.error("--resume continues a stream as it is: no --force, --meta or --metadata")
    token = args.token or os.environ.get("WEFT_TOKEN") or None
    terminal = sys.stderr.isatty() and not args.quiet
    status = StatusLine(sys.stderr)
    say = status.message if terminal else (lambda text: print(text, file=sys.stderr, flush=True))
    progress: Progress | None = None
    try:
        linker = Linker(Endpoint(args.url, token), args.link, backoff) if args.link else None
    except ValueError as exc:
        parser.error(str(exc))

    def created(stream_id: str) -> None:
        say(stream_id)
        if linker is not None:
            linker.start(stream_id)

    def retrying(attempt: int, delay: float, reason: str) -> None:
        if progress is not None:
            progress.retry_at = time.monotonic() + delay
        if attempt == 1:
            # The first failure of a run says plainly what is going on; the
            # later ones (up to max-delay apart) stay short.
            say(
                f"stream: {reason}; retrying in {delay:g} s "
                f"(up to {backoff.retries} retries; Ctrl-C to stop)"
            )
        else:
            say(f"stream: retry {attempt}/{backoff.retries} in {delay:g} s: {reason}")

    resume_from: int | None = None
    if args.resume:
        try:
            info = resume_offset(args, token, backoff)
        except StreamRefused as exc:
            reason = "it does not exist" if exc.status == 404 else exc.message
            say(f"stream: cannot resume {args.id}: {reason}")
            return 1
        except ClientError as exc:
            say(f"stream: cannot resume {args.id}: {exc}")
            return 1
        if info.state != "live":
            say(
                f"stream: cannot resume {args.id}: it is {info.state} with {info.offset} bytes; "
                "only a live stream can be continued"
            )
            return 1
        resume_from = info.offset

    try:
        writer = StreamWriter(
            args.url,
            args.id,
            token=token,
            force=args.force,
            metadata=metadata or None,
            backoff=backoff,
            on_created=created,
            on_retry=retrying,
            resume_from=resume_from,
        )
    except ValueError as exc:
        parser.error(str(exc))
    pump = Pump(writer, tee=args.tee, skip=resume_from or 0)
    if resume_from is not None:
        say(args.id)
        if linker is not None:
            linker.start(args.id)
    if terminal:
        progress = Progress(status, writer, pump)
    writer.start()
    pump.thread.start()
    try:
        while True:
            try:
                result = writer.wait(timeout=None if progress is None else 0.1)
                break
            except TimeoutError:
                assert progress is not None
                progress.draw()
    except KeyboardInterrupt:
        writer.abort(timeout=1)
        status.clear()
        if writer.created:
            message = (
                f"stream: interrupted; stream {writer.stream_id} stays live with "
                f"{writer.acknowledged} bytes confirmed stored; continue it with "
                f"--resume {writer.stream_id}"
            )
        else:
            message = "stream: interrupted before the server created the stream; nothing was stored"
        print(message, file=sys.stderr)
        return 130
    except RetriesExhausted as exc:
        status.clear()
        message = f"stream: {exc}."
        if writer.created:
            message += (
                f" Stream {writer.stream_id} stays live with what was stored; "
                f"continue it with --resume {writer.stream_id}."
            )
        print(message, file=sys.stderr)
        return 1
    except ClientError as exc:
        status.clear()
        if pump.short_input:
            reason = (
                f"stdin ended after {pump.bytes_read} bytes, but the stream already holds "
                f"{pump.skip}; it stays live and unchanged"
            )
        elif pump.error is not None:
            reason = f"cannot read stdin: {pump.error}"
        else:
            reason = str(exc)
        print(f"stream: {reason}", file=sys.stderr)
        return 1
    if result.size != pump.bytes_read:
        status.clear()
        print(
            f"stream: the server stored {result.size} bytes but {pump.bytes_read} were read",
            file=sys.stderr,
        )
        return 1
    if linker is not None and (failure := linker.wait(LINK_WAIT)) is not None:
        status.clear()
        print(f"stream: {result.id} is complete, but link {args.link}: {failure}", file=sys.stderr)
        return 1
    if progress is not None:
        status.clear()
        base = origin_of(args.url)
        print(
            f"stream: {result.id} complete, {human_bytes(result.size)} ({result.size} bytes), "
            f"sha256 {result.sha256}, {stream_url(base, result.id)}, "
            f"viewer {viewer_url(base, result.id)}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
