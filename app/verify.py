"""``weft verify [--config PATH] [ID...]`` (SPEC §8 "Integrity"): check streams'
stored bytes against their block checksums and digests, without a server."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator

from app.config import load_settings
from app.errors import ConfigError, StreamNotFound
from app.storage.base import ListQuery, MetadataRepo
from app.storage.factory import build_backends
from app.streams.integrity import check_stream
from app.streams.models import StreamInfo

PAGE = 500


async def verify(config: str | None, ids: list[str]) -> int:
    """Print one line per bad stream; return how many are bad."""
    settings = load_settings(config)
    store, repo, hub = build_backends(settings, read_only=True)
    await store.start()
    await repo.start()
    checked = bad = 0
    try:
        async for stream_id, info in _streams(repo, ids):
            checked += 1
            if info is None:
                problem: str | None = "no such stream"
            else:
                try:
                    problem = await check_stream(store, info)
                except StreamNotFound:
                    problem = "its segments are missing"
            if problem is not None:
                bad += 1
                print(f"{stream_id}: {problem}", flush=True)
    finally:
        await repo.close()
        await hub.close()
        await store.close()
    print(f"weft verify: {checked} streams checked, {bad} bad", file=sys.stderr)
    return bad


async def _streams(
    repo: MetadataRepo,
    ids: list[str],
) -> AsyncIterator[tuple[str, StreamInfo | None]]:
    if ids:
        for stream_id in ids:
            yield stream_id, await repo.get(stream_id)
        return
    before = None
    while True:
        page = await repo.page(ListQuery(limit=PAGE, before=before))
        for info in page:
            yield info.id, info
        if len(page) < PAGE:
            return
        before = (page[-1].created_at, page[-1].id)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="weft verify",
        description="Check streams against their block checksums and digests; "
        "exit 1 when any is bad.",
    )
    parser.add_argument("--config", help="YAML config file (default: the repository's config.yaml)")
    parser.add_argument("ids", nargs="*", metavar="ID", help="streams to check (default: all)")
    args = parser.parse_args(argv)
    try:
        bad = asyncio.run(verify(args.config, args.ids))
    except ConfigError as exc:
        print(f"weft: {exc}", file=sys.stderr)
        return 2
    return 1 if bad else 0
