"""``python -m bench.loadgen MODE ...``: see bench/loadgen/__init__.py."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

from bench.loadgen.bulk import run_many, run_post, run_read, run_sink, run_source
from bench.loadgen.common import emit, raise_fd_limit
from bench.loadgen.tail import run_tail


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="bench load generator")
    sub = parser.add_subparsers(dest="mode", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--host", default="127.0.0.1")
    common.add_argument("--port", type=int, default=0)
    common.add_argument("--seed", type=int, default=5)

    tail = sub.add_parser("tail", parents=[common])
    tail.add_argument("--target", choices=("weft", "piping", "raw"), default="weft")
    tail.add_argument("--role", choices=("producer", "reader", "both"), required=True)
    tail.add_argument("--prefix", default="lat-")
    tail.add_argument("--first", type=int, default=0, help="number of the first stream")
    tail.add_argument("--streams", type=int, default=1)
    tail.add_argument("--total", type=int, default=0, help="streams over all workers")
    tail.add_argument("--readers", type=int, default=1, help="readers per stream")
    tail.add_argument("--interval-ms", type=float, default=10.0)
    tail.add_argument("--duration", type=float, default=10.0)
    tail.add_argument("--line-bytes", type=int, default=100)
    tail.add_argument("--start-delay", type=float, default=0.3)
    tail.add_argument("--spread", action="store_true", help="spread producers over an interval")
    tail.add_argument("--concurrency", type=int, default=64, help="connections opened at once")
    tail.add_argument("--lat-out", help="write latencies (int64 microseconds) here")
    tail.add_argument(
        "--read-port", type=int, default=0, help="readers' port (another node); default --port"
    )

    post = sub.add_parser("post", parents=[common])
    post.add_argument("--id", required=True)
    post.add_argument("--size", type=int, required=True)
    post.add_argument("--chunked", action="store_true")
    post.add_argument("--hold", action="store_true", help="wait for 'finish' before the end")
    post.add_argument("--wait-go", action="store_true")

    read = sub.add_parser("read", parents=[common])
    read.add_argument("--id", required=True)
    read.add_argument("--stall", action="store_true", help="stop reading until 'resume'")
    read.add_argument("--rcvbuf", type=int, default=0)

    many = sub.add_parser("many", parents=[common])
    many.add_argument("--streams", type=int, required=True)
    many.add_argument("--size", type=int, required=True, help="bytes per stream")
    many.add_argument("--prefix", default="live-")

    sub.add_parser("sink", parents=[common])
    source = sub.add_parser("source", parents=[common])
    source.add_argument("--size", type=int, required=True)
    args = parser.parse_args(argv)
    if args.mode == "tail" and not args.total:
        args.total = args.first + args.streams
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_fd_limit()
    if args.mode == "tail":
        try:
            import uvloop

            result = uvloop.run(run_tail(args))
        except ImportError:
            result = asyncio.run(run_tail(args))
    else:
        result = {
            "post": run_post,
            "read": run_read,
            "many": run_many,
            "sink": run_sink,
            "source": run_source,
        }[args.mode](args)
    emit("result", result)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
        sys.exit(main())
