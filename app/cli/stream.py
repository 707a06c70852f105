"""``some-command 2>&1 | bin/stream URL [ID] [options]``: pipe stdin into a stream (SPEC §9).

stdin is read with ``os.read`` as data arrives and handed to a resumable
StreamWriter, so a line typed now is visible to readers now. The stream id goes
to stderr as soon as the server answers. Exit status: 0 when the server reports
the stream complete with exactly the bytes read, 1 on any failure (a refusal,
spent retries, a size mismatch), 2 for bad arguments, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from typing import Any

from app.client import Backoff, ClientError, RetriesExhausted, StreamWriter

READ_SIZE = 64 * 1024


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
    parser.add_argument("--tee", action="store_true", help="copy stdin to stdout as well")
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

    def __init__(self, writer: StreamWriter, *, tee: bool) -> None:
        self.writer, self.tee = writer, tee
        self.bytes_read = 0
        self.error: OSError | None = None
        self.thread = threading.Thread(target=self._run, name="stdin-pump", daemon=True)

    def _run(self) -> None:
        try:
            while data := os.read(sys.stdin.fileno(), READ_SIZE):
                self.bytes_read += len(data)
                if self.tee:
                    self._tee(data)
                self.writer.write(data)
        except ClientError:
            return  # the writer failed; the main thread reports why
        except OSError as exc:
            self.error = exc
            self.writer.abort(timeout=0)
            return
        self.writer.finish()

    def _tee(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(sys.stdout.fileno(), view) :]
        except BrokenPipeError:
            # Whoever read our stdout left; the stream itself must go on.
            self.tee = False


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    metadata = parse_metadata(parser, args)
    try:
        backoff = Backoff(args.retries, args.backoff_factor, args.min_delay, args.max_delay)
    except ValueError as exc:
        parser.error(str(exc))
    token = args.token or os.environ.get("WEFT_TOKEN") or None

    def created(stream_id: str) -> None:
        print(stream_id, file=sys.stderr, flush=True)

    def retrying(attempt: int, delay: float, reason: str) -> None:
        print(
            f"stream: {reason}; retry {attempt}/{backoff.retries} in {delay:g} s",
            file=sys.stderr,
            flush=True,
        )

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
        )
    except ValueError as exc:
        parser.error(str(exc))
    pump = Pump(writer, tee=args.tee)
    writer.start()
    pump.thread.start()
    try:
        result = writer.wait()
    except KeyboardInterrupt:
        writer.abort(timeout=1)
        print("stream: interrupted; the stream stays live and resumable", file=sys.stderr)
        return 130
    except RetriesExhausted as exc:
        message = f"stream: {exc}."
        if writer.created:
            message += f" Stream {writer.stream_id} stays live with what was stored."
        print(message, file=sys.stderr)
        return 1
    except ClientError as exc:
        reason = f"cannot read stdin: {pump.error}" if pump.error is not None else str(exc)
        print(f"stream: {reason}", file=sys.stderr)
        return 1
    if result.size != pump.bytes_read:
        print(
            f"stream: the server stored {result.size} bytes but {pump.bytes_read} were read",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
