"""``weft tail URL ID``: replay the end of a stream, then follow it while it is live.

Built on :func:`app.client.tail`, which reconnects with ``?offset=`` after a cut
connection or a server restart, so every byte is written to stdout exactly
once. By default the last ``--lines`` lines are replayed first, as tail(1)
does; ``--from-start`` replays everything, ``--offset N`` starts at byte N.

Exit status: 0 when the stream completes (every byte written), 3 when it is
abandoned, 4 when it is deleted or does not exist, 1 for any other failure
(refused, replaced, retries spent), 2 for bad arguments, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import TypeVar

import httpx

from app.client import Backoff, ClientError, RetriesExhausted, StreamRefused, tail
from app.client.common import Endpoint, HeadInfo, head
from app.client.errors import Retryable, server_message

EXIT_ABANDONED, EXIT_DELETED = 3, 4
WINDOW, MAX_WINDOW = 64 * 1024, 8 * 1024 * 1024
T = TypeVar("T")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="weft tail",
        description="Print a stream's last lines (or all of it), then follow it while it is live.",
        epilog="The token may also come from the WEFT_TOKEN environment variable. Exit status: "
        "0 complete, 3 abandoned, 4 deleted or absent, 1 other failures.",
    )
    parser.add_argument("url", help="the server's base URL, e.g. http://127.0.0.1:3060")
    parser.add_argument("id", help="the stream's id")
    start = parser.add_mutually_exclusive_group()
    start.add_argument(
        "--from-start", action="store_true", help="replay the whole stream, then follow it"
    )
    start.add_argument("--offset", type=int, metavar="N", help="start at byte N")
    start.add_argument(
        "-n", "--lines", type=int, default=10, metavar="N", help="replay the last N lines (10)"
    )
    parser.add_argument("--token", help="bearer token (default: $WEFT_TOKEN)")
    parser.add_argument("--retries", type=int, default=10, metavar="N")
    parser.add_argument("--backoff-factor", type=float, default=2.0, metavar="F")
    parser.add_argument("--min-delay", type=float, default=1.0, metavar="SECONDS")
    parser.add_argument("--max-delay", type=float, default=60.0, metavar="SECONDS")
    return parser


def last_lines_offset(data: bytes, lines: int) -> int | None:
    """Where the last ``lines`` lines of ``data`` start, or None if it holds fewer."""
    end = len(data) - 1 if data.endswith(b"\n") else len(data)
    for _ in range(lines):
        end = data.rfind(b"\n", 0, end)
        if end < 0:
            return None
    return end + 1


def with_retries(
    call: Callable[[], T], backoff: Backoff, on_retry: Callable[[int, float, str], None]
) -> T:
    failures = 0
    while True:
        try:
            return call()
        except (Retryable, httpx.TransportError) as exc:
            if failures >= backoff.retries:
                raise RetriesExhausted(f"Gave up after {backoff.retries} retries: {exc}") from exc
            delay = backoff.delay(failures)
            failures += 1
            on_retry(failures, delay, str(exc))
            time.sleep(delay)


def start_offset(
    http: httpx.Client, endpoint: Endpoint, stream_id: str, lines: int
) -> tuple[int, HeadInfo]:
    """The byte where the last ``lines`` lines start (read backwards in growing windows)."""
    info = head(http, endpoint, stream_id)
    size, window = info.offset, WINDOW
    if lines <= 0:
        return size, info
    while True:
        begin = max(0, size - window)
        response = http.get(
            endpoint.path(stream_id),
            params={"offset": str(begin), "notail": ""},
            headers=endpoint.headers(),
        )
        if response.status_code != 200:
            message = server_message(response.status_code, response.content)
            if response.status_code >= 500:
                raise Retryable(message)
            raise StreamRefused(response.status_code, message)
        found = last_lines_offset(response.content[: size - begin], lines)
        if found is not None or begin == 0 or window >= MAX_WINDOW:
            return begin + (found or 0), info
        window *= 4


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.offset is not None and args.offset < 0:
        parser.error("--offset must be >= 0")
    try:
        backoff = Backoff(args.retries, args.backoff_factor, args.min_delay, args.max_delay)
        endpoint = Endpoint(args.url, args.token or os.environ.get("WEFT_TOKEN") or None)
    except ValueError as exc:
        parser.error(str(exc))

    def retrying(attempt: int, delay: float, reason: str) -> None:
        print(
            f"weft tail: {reason}; reconnecting in {delay:g} s (retry {attempt}/{backoff.retries})",
            file=sys.stderr,
            flush=True,
        )

    out = sys.stdout.buffer
    try:
        with httpx.Client(base_url=endpoint.origin, timeout=30, verify=endpoint.verify) as http:
            if args.from_start:
                offset = 0
            elif args.offset is not None:
                offset = args.offset
            else:
                offset, _ = with_retries(
                    lambda: start_offset(http, endpoint, args.id, args.lines), backoff, retrying
                )
            for chunk in tail(
                args.url,
                args.id,
                offset,
                token=endpoint.token,
                backoff=backoff,
                on_retry=retrying,
            ):
                out.write(chunk)
                out.flush()
                offset += len(chunk)
            final = with_retries(lambda: head(http, endpoint, args.id), backoff, retrying)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Whoever read our stdout has gone (`weft tail ... | head`): not a failure.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except StreamRefused as exc:
        if exc.status == 404:
            print(f"weft tail: the stream {args.id} was deleted or does not exist", file=sys.stderr)
            return EXIT_DELETED
        print(f"weft tail: {exc}", file=sys.stderr)
        return 1
    except ClientError as exc:
        print(f"weft tail: {exc}", file=sys.stderr)
        return 1
    if final.state == "abandoned":
        print(f"weft tail: the stream {args.id} was abandoned", file=sys.stderr)
        return EXIT_ABANDONED
    return 0


if __name__ == "__main__":
    sys.exit(main())
