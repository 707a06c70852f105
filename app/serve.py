"""The server's commands: ``weft [--config PATH] [--host HOST] [--port PORT]``
serves, ``weft verify`` checks stored streams (app/verify.py), ``weft migrate``
applies pending schema migrations and exits (dispatched by app/__main__.py)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import ipaddress
import logging
import resource
import signal
import sys
from types import FrameType

import uvicorn
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from app import verify
from app.api.protocol import SHUTDOWN_GRACE, WeftHttpProtocol
from app.config import Settings, load_settings
from app.errors import ConfigError
from app.logs import configure_logging
from app.main import create_app
from app.storage.factory import build_repo, check_urls
from app.storage.node_claim import NodeClaim, NodeIdInUse

log = logging.getLogger("weft")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _raise_fd_limit() -> None:
    """Every stream's producer, reader and files hold descriptors; a default soft
    limit of 1024 would cap a server at a few hundred live streams."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def migrate(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="weft migrate", description="Apply pending schema migrations without serving"
    )
    parser.add_argument("--config", help="YAML config file (default: the repository's config.yaml)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
        check_urls(settings)
    except ConfigError as exc:
        print(f"weft: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)

    async def run() -> None:
        repo = build_repo(settings)
        try:
            await repo.start()
        finally:
            await repo.close()

    try:
        asyncio.run(run())
    except (SQLAlchemyError, OSError) as exc:
        # The driver's message names host and port, never the password.
        print(f"weft: migration failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print("weft: the database schema is up to date")
    return 0


def _database_error(settings: Settings) -> str | None:
    """Why the database cannot be reached, in one line; None when it answers.
    Asked before serving, so that a database that is down stops the start with
    this line rather than with a traceback from inside uvicorn's lifespan."""

    async def probe() -> None:
        repo = build_repo(settings)
        try:
            async with repo.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        finally:
            await repo.close()

    try:
        asyncio.run(probe())
    except (SQLAlchemyError, OSError) as exc:
        url = make_url(settings.resolved_database_url)
        # The driver's first line says why (refused, timed out, bad password);
        # the rest is SQLAlchemy's background link. The password never shows.
        reason = (str(exc).strip().splitlines() or [""])[0]
        if url.password:
            reason = reason.replace(str(url.password), "***")
        return (
            f"the database (database_url {url.render_as_string(hide_password=True)}) "
            f"cannot be reached: {type(exc).__name__}: {reason}"
        )
    return None


def _node_id_error(settings: Settings) -> str | None:
    """Why this node_id cannot serve (another running node has it), or None.
    Asked before serving for the same reason as _database_error; the lifespan
    then holds the claim for the life of the process."""

    async def probe() -> None:
        repo = build_repo(settings)
        claim = NodeClaim(repo.engine, settings.namespace, settings.resolved_node_id)
        try:
            await claim.take()
            await claim.release()
        finally:
            await repo.close()

    try:
        asyncio.run(probe())
    except NodeIdInUse as exc:
        return str(exc)
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["verify"]:
        return verify.main(argv[1:])
    if argv[:1] == ["migrate"]:
        return migrate(argv[1:])
    parser = argparse.ArgumentParser(prog="weft", description="Weft live stream server")
    parser.add_argument("--config", help="YAML config file (default: the repository's config.yaml)")
    parser.add_argument("--host", help="address to listen on (overrides the config)")
    parser.add_argument("--port", type=int, help="port to listen on (overrides the config)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config, host=args.host, port=args.port)
        check_urls(settings)
    except ConfigError as exc:
        print(f"weft: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    settings.data_dir.mkdir(parents=True, exist_ok=True)  # SQLite's file goes there
    problem = _database_error(settings) or _node_id_error(settings)
    if problem:
        print(f"weft: cannot start: {problem}", file=sys.stderr)
        return 1
    _raise_fd_limit()
    # Every chunk allocates a few short-lived objects; with thousands of
    # connections the default thresholds run full collections often enough to
    # stall every stream for tens of milliseconds.
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    if not settings.tokens and not _loopback(settings.host):
        log.warning(
            "no tokens configured: the API is open to anyone who can reach %s", settings.host
        )
    # uvicorn stops gracefully on SIGTERM and SIGINT, then raises the signal
    # again for the previous handler: a stop asked for is a clean exit (0), not
    # death by signal or a KeyboardInterrupt traceback.
    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, _exit_quietly)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,
        access_log=False,  # AccessLog logs requests without secrets
        http=WeftHttpProtocol.configured(settings.http),
        h11_max_incomplete_event_size=settings.limits.header_bytes,
        # WeftHttpProtocol.shutdown ends requests first; this only catches a task
        # that ignores its disconnect.
        timeout_graceful_shutdown=SHUTDOWN_GRACE + 1,
    )
    return 0


def _exit_quietly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)
