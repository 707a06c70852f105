"""Links: names that point at a stream id, such as a job's "latest log"
(NATS object store links). PUT points a name at an existing stream; reading a
link redirects to the stream it names.

A link names an id, not an incarnation: it follows a replaced stream, answers
404 while no stream with its id exists (deleted, evicted, expired), and works
again if that id is created again. Deleting a stream leaves its links alone,
so the delete path stays one statement; a dangling link is one row.
"""

from __future__ import annotations

from typing import Any

from app.errors import InvalidInput, LinkNotFound, StreamNotFound
from app.storage.base import MetadataRepo
from app.streams.models import Link, parse_count, utcnow, validate_link_name, validate_stream_id

MAX_PAGE = 1000
DEFAULT_PAGE = 100


def link_target(body: Any) -> str:
    """The stream id of a ``{"stream": "<id>"}`` body."""
    target = body.get("stream") if isinstance(body, dict) else None
    if not isinstance(target, str):
        raise InvalidInput('The body must be {"stream": "<stream id>"}.')
    return validate_stream_id(target)


class LinkBook:
    def __init__(self, repo: MetadataRepo) -> None:
        self._repo = repo

    async def put(self, name: str, stream_id: str) -> tuple[Link, bool]:
        """Point name at an existing stream; return the link and whether it is
        new. Raises InvalidInput, StreamNotFound."""
        validate_link_name(name)
        validate_stream_id(stream_id)
        if await self._repo.get(stream_id) is None:
            raise StreamNotFound(stream_id)
        return await self._repo.put_link(name, stream_id, utcnow())

    async def resolve(self, name: str) -> Link:
        """The link, when the stream it names exists. Raises InvalidInput,
        LinkNotFound (also when the stream it names does not exist)."""
        link = await self._repo.get_link(validate_link_name(name))
        if link is None:
            raise LinkNotFound(name)
        if await self._repo.get(link.stream_id) is None:
            raise LinkNotFound(name, link.stream_id)
        return link

    async def page(
        self, *, stream_id: str | None, limit: str | None, cursor: str | None
    ) -> tuple[list[Link], str | None]:
        """Links by name, at most limit (default 100, at most 1000); the next
        cursor is the last name when the page is full."""
        if stream_id is not None:
            validate_stream_id(stream_id)
        if cursor is not None:
            validate_link_name(cursor)
        count = parse_count(limit, "limit") if limit is not None else DEFAULT_PAGE
        if count is None or not 1 <= count <= MAX_PAGE:
            raise InvalidInput(f"limit must be between 1 and {MAX_PAGE}.")
        links = await self._repo.links(stream_id=stream_id, after=cursor, limit=count)
        return links, links[-1].name if len(links) == count else None

    async def delete(self, name: str) -> None:
        """Raises InvalidInput, LinkNotFound."""
        if not await self._repo.delete_link(validate_link_name(name)):
            raise LinkNotFound(name)
