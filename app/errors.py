"""One exception hierarchy for the whole service (SPEC §7).

The domain and storage raise these; one handler in ``app.api.errors`` renders
them as ``{"error": "..."}`` with the class's status and headers.
"""

from __future__ import annotations


class WeftError(Exception):
    status: int = 500
    message: str = "Internal server error."

    def __init__(self, message: str | None = None, *, headers: dict[str, str] | None = None):
        self.message = message or self.message
        self.headers = headers or {}
        super().__init__(self.message)


class InvalidInput(WeftError):
    status = 400
    message = "The request is not valid."


class Unauthorized(WeftError):
    status = 401
    message = "A valid bearer token is required."

    def __init__(self, message: str | None = None):
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(WeftError):
    status = 403
    message = "This token may not do that."


class StreamNotFound(WeftError):
    status = 404

    def __init__(self, stream_id: str):
        super().__init__(f"The stream with ID {stream_id} does not exist")


class NotFound(WeftError):
    status = 404
    message = "Not found."


class LinkNotFound(NotFound):
    def __init__(self, name: str, stream_id: str | None = None):
        if stream_id is None:
            super().__init__(f"The link {name} does not exist.")
        else:  # the link is there, the stream it names is not (app/streams/links.py)
            super().__init__(f"The link {name} points at stream {stream_id}, which does not exist.")


class MethodNotAllowed(WeftError):
    status = 405
    message = "Method not allowed."


class UploadGone(WeftError):
    """tus: an upload left idle past its Upload-Expires (its stream is abandoned)."""

    status = 410

    def __init__(self, upload_id: str) -> None:
        super().__init__(f"The upload with ID {upload_id} expired; start a new upload.")


class PreconditionFailed(WeftError):
    """tus: the request's Tus-Resumable names a version this server does not speak."""

    status = 412

    def __init__(self, version: str) -> None:
        super().__init__(
            f"This server speaks tus {version}: send 'Tus-Resumable: {version}'.",
            headers={"Tus-Version": version},
        )


class UnsupportedMediaType(WeftError):
    status = 415
    message = "A PATCH body must have Content-Type application/offset+octet-stream."


class UploadLocked(WeftError):
    """tus: another request is writing the upload (tus clients retry a 423)."""

    status = 423

    def __init__(self, upload_id: str) -> None:
        super().__init__(f"The upload with ID {upload_id} is being written by another request.")


class ChecksumMismatch(WeftError):
    """tus checksum extension: the body does not match its Upload-Checksum."""

    status = 460

    def __init__(self, algorithm: str) -> None:
        super().__init__(f"The body does not match its {algorithm} Upload-Checksum; not stored.")


class Conflict(WeftError):
    status = 409
    message = "The request conflicts with the stream's state."


class StreamExists(Conflict):
    def __init__(self, stream_id: str):
        super().__init__(
            f"The stream with ID {stream_id} already exists. "
            "Specify force=true query param to override."
        )


class StreamNotLive(Conflict):
    def __init__(self, stream_id: str, state: str):
        super().__init__(f"The stream with ID {stream_id} is {state}, not live.")


class StreamBusy(Conflict):
    def __init__(self, stream_id: str):
        super().__init__(f"The stream with ID {stream_id} already has a producer writing to it.")


class ProducerReplaced(StreamBusy):
    """An idle producer's request ended because another request resumed its
    stream (possibly through another node): tusd's lock exchange."""

    def __init__(self, stream_id: str):
        Conflict.__init__(
            self,
            f"Another request resumed the stream with ID {stream_id}; this one was ended. "
            "HEAD gives the stored offset.",
        )


class Fenced(Conflict):
    """The tail store refused an append because someone else appended since
    this writer last did (a node that took the stream over): this writer can
    never append again."""

    message = "Another node has taken over writing this stream; this writer may not append."


class OffsetMismatch(Conflict):
    def __init__(self, stream_id: str, size: int):
        super().__init__(
            f"The stream with ID {stream_id} has {size} bytes; resume from that offset.",
            headers={"Upload-Offset": str(size)},
        )


class TooLarge(WeftError):
    status = 413
    message = "The stream exceeds the configured size limit."


class RangeNotSatisfiable(WeftError):
    status = 416

    def __init__(self, size: int, message: str | None = None):
        super().__init__(
            message or "The requested range is not satisfiable.",
            headers={"Content-Range": f"bytes */{size}"},
        )


class NotReady(WeftError):
    status = 503
    message = "The service is not ready."


class StorageUnavailable(NotReady):
    """A write to the database or the disk failed for a reason other than space."""

    message = "The server could not save the change; nothing was changed, try again."


class LeaseLost(NotReady):
    """This node no longer holds the stream's producer lease (another node took
    it over, or it could not be renewed in time): the bytes were not stored."""

    def __init__(self, stream_id: str) -> None:
        super().__init__(
            f"This server no longer holds the stream {stream_id} for writing; nothing was "
            "stored, resume from its Upload-Offset."
        )


class InsufficientStorage(WeftError):
    """The disk (or the database's disk) is full, or below limits.min_free_bytes."""

    status = 507
    message = "The server is out of disk space; nothing more can be stored until space is freed."


class BodyCut(WeftError):
    """A response body that has started cannot be completed: the connection is
    closed without ending the body, so the client cannot take what it got for
    the whole (SPEC §8 "Integrity")."""

    message = "The response was cut short."


class CorruptBlock(BodyCut):
    """A stored block failed its checksum, or the segment holds fewer or more
    bytes than its checksums cover. ``offset`` is the stream offset of the
    first byte that is not good; ``uncovered`` says that the bytes from there
    on merely have no checksum (appended after the last one was written)."""

    def __init__(
        self, key: str, segment: int, block: int, offset: int, flaw: str, *, uncovered: bool
    ) -> None:
        self.key, self.segment, self.block, self.offset = key, segment, block, offset
        self.flaw, self.uncovered = flaw, uncovered
        super().__init__(f"Block {block} of segment {segment} is corrupt ({flaw}).")


class ConfigError(Exception):
    """The configuration is invalid; the message names the offending key."""
