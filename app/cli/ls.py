"""``weft ls URL``: list streams (SPEC §5 ``GET /streams``), newest first.

A table by default (cut to the terminal's width when stdout is one);
``--json`` prints a JSON array, ``--jsonl`` one JSON object a line. The filters
are the server's: ``--state``, ``--prefix``, ``--meta KEY=VALUE`` (repeatable,
all apply). Pages are followed until ``--limit`` streams are listed.
Exit status: 0, 1 when the server refuses or cannot be reached, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from datetime import UTC, datetime
from typing import Any

import httpx

from app.cli.term import human_bytes, human_duration
from app.client.common import Endpoint
from app.client.errors import server_message

PAGE = 1000  # the server's maximum page size


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="weft ls",
        description="List a Weft server's streams, newest first.",
        epilog="The token may also come from the WEFT_TOKEN environment variable.",
    )
    parser.add_argument("url", help="the server's base URL, e.g. http://127.0.0.1:3060")
    parser.add_argument("--state", choices=("live", "complete", "abandoned"))
    parser.add_argument("--prefix", metavar="ID_PREFIX", help="only ids starting with this")
    parser.add_argument(
        "--meta",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only streams whose metadata has KEY equal to VALUE (repeatable)",
    )
    parser.add_argument("--limit", type=int, default=100, metavar="N", help="at most N (100)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="a JSON array")
    output.add_argument("--jsonl", action="store_true", help="one JSON object a line")
    parser.add_argument("--token", help="bearer token (default: $WEFT_TOKEN)")
    return parser


class Refused(Exception):
    pass


def fetch(http: httpx.Client, endpoint: Endpoint, params: dict[str, str], limit: int) -> list[Any]:
    prefix = endpoint.path().removesuffix("/stream")
    streams: list[Any] = []
    cursor: str | None = None
    while len(streams) < limit:
        page = dict(params, limit=str(min(PAGE, limit - len(streams))))
        if cursor:
            page["cursor"] = cursor
        response = http.get(f"{prefix}/streams", params=page, headers=endpoint.headers())
        if response.status_code != 200:
            message = server_message(response.status_code, response.content)
            raise Refused(f"{message} (HTTP {response.status_code})")
        body = response.json()
        streams.extend(body["streams"])
        cursor = body.get("next")
        if not cursor:
            break
    return streams[:limit]


def _age(stamp: str | None, now: datetime) -> str:
    if not stamp:
        return "-"
    then = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return human_duration(max(0.0, (now - then).total_seconds()))


def table(streams: list[Any], width: int | None) -> list[str]:
    now = datetime.now(UTC)
    rows = [("ID", "STATE", "SIZE", "AGE", "METADATA")]
    for info in streams:
        metadata = info.get("metadata") or {}
        rows.append(
            (
                str(info["id"]),
                str(info["state"]),
                human_bytes(int(info.get("size") or 0)),
                _age(info.get("created_at"), now),
                json.dumps(metadata, separators=(",", ":")) if metadata else "",
            )
        )
    widths = [max(len(row[col]) for row in rows) for col in range(4)]
    lines = []
    for row in rows:
        line = "  ".join(cell.ljust(widths[col]) for col, cell in enumerate(row[:4]))
        line = f"{line}  {row[4]}".rstrip()
        if width is not None and len(line) > width:
            line = line[: max(1, width - 1)] + "…"
        lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.limit < 1:
        parser.error("--limit must be at least 1")
    params: dict[str, str] = {}
    if args.state:
        params["state"] = args.state
    if args.prefix:
        params["prefix"] = args.prefix
    for item in args.meta:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--meta needs KEY=VALUE, got {item!r}")
        params[f"meta.{key}"] = value
    try:
        endpoint = Endpoint(args.url, args.token or os.environ.get("WEFT_TOKEN") or None)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        with httpx.Client(base_url=endpoint.origin, timeout=30, verify=endpoint.verify) as http:
            streams = fetch(http, endpoint, params, args.limit)
    except Refused as exc:
        print(f"weft ls: {exc}", file=sys.stderr)
        return 1
    except httpx.TransportError as exc:
        print(f"weft ls: cannot reach {endpoint.host_header}: {exc}", file=sys.stderr)
        return 1
    try:
        if args.json:
            print(json.dumps(streams, indent=2))
        elif args.jsonl:
            for info in streams:
                print(json.dumps(info, separators=(",", ":")))
        else:
            width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
            print("\n".join(table(streams, width)))
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
