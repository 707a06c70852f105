"""Webhooks (README "Webhooks", like tusd's hooks).

``pre-create`` is asked synchronously before a stream exists and may refuse
it. The ``post-*`` events are written to the outbox (HookOutbox) by the
metadata repository in the transaction of the state change they report; the
Deliverer of every node sends them, at least once, in order per hook and
stream, retrying with capped exponential backoff. Every call is signed like
Stripe's webhooks: ``Weft-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">``.
Secrets and the callers' tokens are never logged or sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import time
import uuid
from collections.abc import Mapping
from contextlib import suppress
from typing import Any
from urllib.parse import urlsplit

import httpx

from app.config import Hook, HookDelivery
from app.errors import Forbidden, NotReady, WeftError
from app.metrics import Metrics
from app.storage.base import HookOutbox, OutboxEntry
from app.streams.models import from_micros, rfc3339, utcnow

log = logging.getLogger("weft.hooks")
POST_EVENTS = ("post-create", "post-complete", "post-abandon", "post-delete")
MESSAGE_CHARS = 500  # of a refusing hook's message, in the 403
ANSWER_BYTES = 16 * 1024  # read of a hook's answer
CLAIM_BATCH = 32
# Seconds a claim outlasts the call's timeout: time to record the outcome. A node
# that dies holding claims delays those deliveries (and their streams') by this much.
CLAIM_MARGIN = 5.0


class HookRefused(Forbidden):
    """A pre-create hook answered non-2xx: nothing was created."""


class HookUnavailable(NotReady):
    message = "A pre-create hook did not answer; nothing was created."


def routes(hooks: tuple[Hook, ...]) -> dict[str, tuple[str, ...]]:
    """The urls of the hooks that take each post-* event (for the repository)."""
    return {event: tuple(h.url for h in hooks if event in h.events) for event in POST_EVENTS}


def signature(secret: str, body: bytes, at: int) -> str:
    mac = hmac.new(secret.encode(), f"{at}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={at},v1={mac}"


def shown(url: str) -> str:
    """A hook's url for logs: no credentials, query or fragment (they may hold secrets)."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"


def backoff(attempts: int, policy: HookDelivery) -> float:
    """Seconds before attempt attempts+1: doubling from min_backoff, capped at
    max_backoff, with "equal jitter" (half fixed, half random) so that
    deliveries failing together do not come back together."""
    ceiling = min(policy.max_backoff, policy.min_backoff * 2.0 ** min(attempts - 1, 60))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def _message(response: httpx.Response, body: bytes) -> str:
    """The hook's reason: its JSON {"error"|"message": ...}, else its text; bounded."""
    text = body.decode("utf-8", "replace")
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        found = parsed.get("error") or parsed.get("message")
        text = found if isinstance(found, str) else ""
    # One line of printable text: no control characters (escape codes) in the error.
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    if len(text) > MESSAGE_CHARS:
        text = text[: MESSAGE_CHARS - 1] + "…"
    return text or f"A pre-create hook refused the stream (HTTP {response.status_code})."


class Hooks:
    """Both kinds of calls of one node. start() and close() bound its client and
    its deliverer; pre_create works from start() on."""

    def __init__(
        self,
        hooks: tuple[Hook, ...],
        *,
        policy: HookDelivery,
        outbox: HookOutbox | None,
        node_id: str,
        metrics: Metrics,
    ) -> None:
        self._hooks = hooks
        self._by_url: Mapping[str, Hook] = {h.url: h for h in hooks}
        self._pre = [h for h in hooks if "pre-create" in h.events]
        self._policy = policy
        self._outbox = outbox if any(routes(hooks).values()) else None
        self._node_id = node_id
        self._metrics = metrics
        self._client: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._retries: list[float] = []  # delays of the retries of the last round
        if self._outbox is not None:
            self._outbox.on_written(self.written)

    async def start(self) -> None:
        if not self._hooks:
            return
        self._client = httpx.AsyncClient(follow_redirects=False)
        if self._outbox is not None:
            # Claims of this node's previous life (killed mid-delivery) are void.
            await self._outbox.release(self._node_id)
            self._task = asyncio.create_task(self._deliver_forever())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            assert self._outbox is not None
            with suppress(WeftError):  # else they expire by themselves
                await self._outbox.release(self._node_id)
        if self._client is not None:
            await self._client.aclose()

    def written(self) -> None:
        """The outbox got rows on this node: deliver now rather than at the next poll."""
        self._wake.set()

    async def _post(self, hook: Hook, document: dict[str, Any]) -> tuple[httpx.Response, bytes]:
        assert self._client is not None
        body = json.dumps(document, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            "Weft-Signature": signature(hook.secret, body, int(time.time())),
            "Weft-Delivery": str(document["id"]),
            "User-Agent": "weft-hooks",
        }
        request = self._client.build_request(
            "POST", hook.url, content=body, headers=headers, timeout=hook.timeout
        )
        response = await self._client.send(request, stream=True)
        try:
            answer = b""
            async for chunk in response.aiter_raw():
                answer += chunk
                if len(answer) >= ANSWER_BYTES:
                    break
            return response, answer[:ANSWER_BYTES]
        finally:
            await response.aclose()

    # -- pre-create -------------------------------------------------------------

    async def pre_create(
        self, stream_id: str | None, metadata: dict[str, Any], scopes: frozenset[str]
    ) -> None:
        """Ask every pre-create hook, in config order. Raises HookRefused (403,
        with the hook's message) on a non-2xx answer and HookUnavailable (503)
        when one does not answer within its timeout: fail closed."""
        for hook in self._pre:
            document = {
                "id": uuid.uuid4().hex,
                "event": "pre-create",
                "stream": {"id": stream_id, "metadata": metadata},
                "scopes": sorted(scopes),
                "time": rfc3339(utcnow()),
            }
            try:
                # Bounded as a whole too: a hook trickling its answer byte by byte.
                response, answer = await asyncio.wait_for(self._post(hook, document), hook.timeout)
            except (httpx.HTTPError, TimeoutError) as exc:
                self._metrics.hook_deliveries.labels("pre-create", "unreachable").inc()
                log.warning(
                    "hook_failed event=pre-create hook=%s error=%s",
                    shown(hook.url),
                    type(exc).__name__,
                )
                raise HookUnavailable() from None
            if not response.is_success:
                self._metrics.hook_deliveries.labels("pre-create", "refused").inc()
                log.info(
                    "hook_refused event=pre-create hook=%s status=%d stream_id=%s",
                    shown(hook.url),
                    response.status_code,
                    stream_id,
                )
                raise HookRefused(_message(response, answer))
            self._metrics.hook_deliveries.labels("pre-create", "accepted").inc()

    # -- post-* -----------------------------------------------------------------

    async def _deliver_forever(self) -> None:
        assert self._outbox is not None
        while True:
            claimed = 0
            try:
                self._wake.clear()
                claimed = await self._deliver_due(self._outbox)
                self._metrics.hook_pending.set(await self._outbox.pending())
            except WeftError as exc:
                log.warning("hook_outbox_unavailable error=%s", exc.message)
            except Exception:
                log.exception("hook_deliverer_failed")
            if claimed:
                continue  # the next of each stream may be due now
            # Look again at the next poll, or sooner when a retry of this node's is due.
            pause = min([self._policy.poll_interval, *self._retries])
            self._retries.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), pause)
            except TimeoutError:
                pass

    async def _deliver_due(self, outbox: HookOutbox) -> int:
        longest = max(h.timeout for h in self._hooks)
        entries = await outbox.claim(self._node_id, hold=longest + CLAIM_MARGIN, limit=CLAIM_BATCH)
        # Each entry is the head of its own (hook, stream): they may go in parallel.
        outcomes = await asyncio.gather(
            *(self._deliver(outbox, entry) for entry in entries), return_exceptions=True
        )
        for entry, outcome in zip(entries, outcomes, strict=True):
            # Its outcome was not recorded: it goes again once its claim expires.
            if isinstance(outcome, WeftError):
                log.warning(
                    "hook_outcome_unsaved delivery_id=%s error=%s", entry.delivery_id, outcome
                )
            elif isinstance(outcome, BaseException):
                raise outcome
        return len(entries)

    async def _deliver(self, outbox: HookOutbox, entry: OutboxEntry) -> None:
        hook = self._by_url.get(entry.hook)
        if hook is None:  # the hook left the config since the event
            log.warning(
                "hook_delivery_dropped delivery_id=%s event=%s stream_id=%s reason=unknown_hook",
                entry.delivery_id,
                entry.event,
                entry.stream_id,
            )
            self._metrics.hook_deliveries.labels(entry.event, "dropped").inc()
            await outbox.delivered(entry, self._node_id)
            return
        document = {
            "id": entry.delivery_id,
            "event": entry.event,
            "stream": json.loads(entry.payload),
            "time": rfc3339(from_micros(entry.created_us)),
        }
        error: str
        try:
            response, _ = await asyncio.wait_for(self._post(hook, document), hook.timeout)
            if response.is_success:
                self._metrics.hook_deliveries.labels(entry.event, "delivered").inc()
                await outbox.delivered(entry, self._node_id)
                return
            error = f"HTTP {response.status_code}"
        except (httpx.HTTPError, TimeoutError) as exc:
            error = type(exc).__name__
        attempts = entry.attempts + 1
        age = time.time() - entry.created_us / 1_000_000
        what = (
            f"delivery_id={entry.delivery_id} event={entry.event} stream_id={entry.stream_id} "
            f"hook={shown(hook.url)} attempt={attempts} error={error}"
        )
        if age > self._policy.give_up_after:
            log.warning("hook_delivery_dropped %s reason=too_old", what)
            self._metrics.hook_deliveries.labels(entry.event, "dropped").inc()
            await outbox.delivered(entry, self._node_id)
            return
        delay = backoff(attempts, self._policy)
        log.warning("hook_delivery_failed %s retry_in=%.2f", what, delay)
        self._metrics.hook_deliveries.labels(entry.event, "failed").inc()
        await outbox.retry(entry, self._node_id, delay=delay)
        self._retries.append(delay)
