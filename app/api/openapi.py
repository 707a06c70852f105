"""What ``/openapi.json`` says beyond the routes' signatures (SPEC §1–§7, §10).

The handlers read their headers and query parameters themselves (numbers are
parsed with the API's own 400s, SPEC §7), so FastAPI cannot see them: routes
declare them with ``openapi_extra=params(...)`` and their errors with
``responses=errors(...)``, every one of which is the ``{"error": "..."}`` body.
The producer POST is a plain ASGI route (its 201 precedes its body, see
``app.api.produce``), so ``install_openapi`` writes its operations out and adds
them to the generated document, and it removes FastAPI's 422: this API answers
a request that fails validation with 400 (``app.api.errors``).
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field

from app.streams.models import ID_RULE, LINK_RULE

REF = "#/components/schemas/"
MAX_COUNT = 2**63 - 1
OCTETS: dict[str, Any] = {"type": "string", "format": "binary"}
COUNT: dict[str, Any] = {"type": "integer", "minimum": 0, "maximum": MAX_COUNT}
STATE: dict[str, Any] = {"type": "string", "enum": ["live", "complete", "abandoned"]}
# SPEC §1; the API refuses any other id with 400.
STREAM_ID: dict[str, Any] = {
    "type": "string",
    "pattern": r"^[A-Za-z0-9_~:@-][A-Za-z0-9._~:@-]{0,199}$",
    "description": ID_RULE,
}

LINK_NAME: dict[str, Any] = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "The link's name.",
    "schema": {"type": "string", "pattern": STREAM_ID["pattern"], "description": LINK_RULE},
}


class Error(BaseModel):
    """Every error response (SPEC §7)."""

    error: str = Field(description="One sentence saying what went wrong.")


State = Literal["live", "complete", "abandoned"]


class StreamSummary(BaseModel):
    """The producer's response body once its body ended cleanly."""

    id: str
    size: int
    sha256: str | None
    state: State


class StreamInfoBody(BaseModel):
    """A stream's info (``GET /streams/{id}``, listings, ``/events`` data)."""

    id: str
    metadata: dict[str, Any]
    state: State
    size: int
    sha256: str | None = Field(description="Hex SHA-256 of the content; null while live.")
    created_at: str = Field(description="RFC 3339.")
    updated_at: str = Field(description="RFC 3339.")
    finished_at: str | None = Field(description="RFC 3339; null while live.")


class StreamDetailBody(StreamInfoBody):
    """``GET /streams/{id}``: the info and what the stream takes at rest."""

    stored_bytes: int = Field(
        description="Bytes the stream takes at rest (less than size once compressed)."
    )


class StreamList(BaseModel):
    streams: list[StreamInfoBody]
    next: str | None = Field(description="The cursor of the next page; null on the last.")


class ShareRequest(BaseModel):
    ttl: float = Field(gt=0, le=365 * 24 * 3600, description="Seconds the link reads the stream.")


class ShareLink(BaseModel):
    url: str
    viewer_url: str
    expires: str = Field(description="Unix time (seconds) the link stops working.")


class LinkRequest(BaseModel):
    stream: str = Field(pattern=STREAM_ID["pattern"], description="The stream's id.")


class LinkBody(BaseModel):
    """A link (``PUT /links/{name}``, listings)."""

    name: str
    stream: str = Field(description="The id of the stream it points at.")
    created_at: str = Field(description="RFC 3339.")
    updated_at: str = Field(description="RFC 3339: when it was last pointed.")


class LinkList(BaseModel):
    links: list[LinkBody]
    next: str | None = Field(description="The cursor of the next page; null on the last.")


class DeletedBuild(BaseModel):
    status: Literal["deleted"]
    buildId: str  # noqa: N815 - Loom's wire name
    deleted: list[str]


class Status(BaseModel):
    status: str


def _header(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "schema": schema or {"type": "string"}}


_ERRORS: dict[int, tuple[str, dict[str, Any]]] = {
    400: ("Bad input: an id, header, query parameter or body that is not valid.", {}),
    401: (
        "A bearer token is required (tokens are configured) and was missing or unknown.",
        {"WWW-Authenticate": _header("Bearer")},
    ),
    403: ("The token lacks the scope, or a share link does not apply here.", {}),
    404: ("No such stream.", {}),
    405: ("Not a method this resource takes.", {}),
    409: ("The request conflicts with the stream's state.", {}),
    410: ("The upload expired; its bytes stay readable at /stream/{id}.", {}),
    412: (
        "Tus-Resumable is missing or names another version.",
        {"Tus-Version": _header("The version this server speaks: 1.0.0.")},
    ),
    413: ("Too large: past limits.stream_bytes, Upload-Length or a body limit.", {}),
    415: ("A PATCH body must be application/offset+octet-stream.", {}),
    416: (
        "The range or offset is past the end of a finished stream.",
        {"Content-Range": _header("bytes */{size}")},
    ),
    423: ("Another request is writing this upload; retry.", {}),
    460: ("The body does not match its Upload-Checksum; nothing was stored.", {}),
    503: ("The storage or the database failed; nothing was changed, try again.", {}),
    507: (
        "The server is out of disk space, or live streams fill its storage quota "
        "(limits.total_bytes); nothing was stored.",
        {},
    ),
}


def errors(*statuses: int, notes: dict[int, str] | None = None) -> dict[int | str, Any]:
    """The ``responses=`` entries of a route's error statuses, all with the one
    error body; ``notes`` replaces a status's general description."""
    notes = notes or {}
    responses: dict[int | str, Any] = {}
    for status in statuses:
        description, headers = _ERRORS[status]
        responses[status] = {"model": Error, "description": notes.get(status, description)}
        if headers:
            responses[status]["headers"] = headers
    return responses


def _parameter(
    where: str, name: str, description: str, schema: dict[str, Any] | None, required: bool
) -> dict[str, Any]:
    parameter = {"name": name, "in": where, "description": description, "required": required}
    parameter["schema"] = schema or {"type": "string"}
    return parameter


def in_query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return _parameter("query", name, description, schema, required=False)


def in_header(
    name: str, description: str, schema: dict[str, Any] | None = None, *, required: bool = False
) -> dict[str, Any]:
    return _parameter("header", name, description, schema, required=required)


def path_id(name: str) -> dict[str, Any]:
    return _parameter("path", name, "The stream's id.", STREAM_ID, required=True)


def flag_query(name: str, description: str) -> dict[str, Any]:
    return in_query(name, f"{description} On when present empty or as 1, true, yes or on.")


def params(*parameters: dict[str, Any], body: dict[str, Any] | None = None) -> dict[str, Any]:
    """An ``openapi_extra`` with these parameters and, optionally, a request body."""
    extra: dict[str, Any] = {"parameters": list(parameters)}
    if body is not None:
        extra["requestBody"] = body
    return extra


def raw_body(media_type: str, description: str, *, required: bool = False) -> dict[str, Any]:
    return {
        "description": description,
        "required": required,
        "content": {media_type: {"schema": OCTETS}},
    }


def json_body(model: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "required": True,
        "content": {"application/json": {"schema": {"$ref": REF + model}}},
    }


def no_body(description: str, **headers: str) -> dict[str, Any]:
    """A success response without a body, with these response headers."""
    response: dict[str, Any] = {"description": description}
    if headers:
        response["headers"] = {
            name.replace("_", "-"): _header(text) for name, text in headers.items()
        }
    return response


def octets(description: str, **headers: str) -> dict[str, Any]:
    response = no_body(description, **headers)
    response["content"] = {"application/octet-stream": {"schema": OCTETS}}
    return response


# Shared parameters.
# A header whose value is JSON: described by content, not a string schema.
METADATA = {
    "name": "X-Stream-Metadata",
    "in": "header",
    "required": False,
    "description": "The stream's metadata: a JSON object (UTF-8, at most "
    "limits.metadata_bytes, nested at most 32 levels). Absent means {}.",
    "content": {"application/json": {"schema": {"type": "object"}}},
}
UPLOAD_OFFSET = in_header("Upload-Offset", "The stream's current size.", COUNT, required=True)
SHARE_LINK = (
    in_query("expires", "A share link's expiry (from POST /streams/{id}/share).", COUNT),
    in_query("signature", "A share link's signature (from POST /streams/{id}/share)."),
)
TUS_RESUMABLE = in_header(
    "Tus-Resumable", "The tus version.", {"type": "string", "enum": ["1.0.0"]}, required=True
)
TUS_UPLOAD = {
    "Upload_Offset": "The upload's offset (bytes stored).",
    "Upload_Expires": "When an idle upload expires (RFC 9110 date).",
}
META_FILTER = (
    "`meta.KEY=VALUE` query parameters keep only streams whose metadata has that "
    "top-level value (a number or boolean matches its JSON text); repeated, all apply."
)

STREAM_HEADERS = {
    "X-Stream-Id": "The stream's id.",
    "X-Stream-State": "live, complete or abandoned.",
    "X-Stream-Metadata": "The stream's metadata as JSON.",
    "X-Stream-Created": "The stream's creation time (RFC 3339); a replaced stream has a new one.",
    "ETag": "Of a finished stream: its quoted hex SHA-256.",
    "Repr-Digest": "Of a finished stream: sha-256=:{base64}: (RFC 9530).",
    "Accept-Ranges": "Of a finished stream: bytes.",
}


def _produce_operation(with_id: bool) -> dict[str, Any]:
    parameters = [path_id("stream_id")] if with_id else []
    parameters += [
        flag_query("force", "Replace an existing stream (needs admin scope as well as write)."),
        METADATA,
    ]
    error_responses: dict[str, Any] = {}
    for status in (400, 401, 403, 409, 413, 503, 507):
        description, headers = _ERRORS[status]
        error_responses[str(status)] = {
            "description": description,
            "content": {"application/json": {"schema": {"$ref": REF + "Error"}}},
        } | ({"headers": headers} if headers else {})
    error_responses["409"]["description"] = "The id is taken (send force=true to replace it)."
    return {
        "tags": ["streams"],
        "summary": "Produce a stream"
        + (" under this id" if with_id else " (the server picks its id)"),
        "description": (
            "The body is the stream's bytes, chunked or with Content-Length. The 201 "
            "and its headers go out as soon as the stream exists, before the body is "
            "read; each chunk is stored and visible to readers as it arrives. When the "
            "body ends the stream is complete and the response body is its summary; an "
            "error after the 201 (size limit, full disk) makes the body "
            '{"error": "..."} instead. A dropped connection leaves the stream live, '
            "resumable with PATCH /stream/{id}. A pre-create webhook may refuse the "
            "stream before it exists: 403 with the hook's message, 503 when the hook "
            "does not answer."
        ),
        "operationId": "produce" + ("_with_id" if with_id else ""),
        "security": [{"bearer": []}, {}],
        "parameters": parameters,
        "requestBody": raw_body("application/octet-stream", "The stream's bytes."),
        "responses": {
            "201": {
                "description": "The stream exists; the body follows when the request body ends.",
                "headers": {
                    "X-Stream-Id": _header("The stream's id."),
                    "Location": _header("/stream/{id}"),
                    "X-Stream-Replaced": _header("true when an existing stream was replaced."),
                },
                "content": {
                    "application/json": {
                        "schema": {
                            "anyOf": [{"$ref": REF + "StreamSummary"}, {"$ref": REF + "Error"}]
                        }
                    }
                },
            },
            **error_responses,
        },
    }


# OpenAPI links: a created stream's id feeds the operations on it. A tus upload
# is not linked to GET /stream/{id}: it stays live until its bytes come, and a
# read of a live stream tails.
_STREAM_OPERATIONS = (
    ("get", "/stream/{stream_id}"),
    ("head", "/stream/{stream_id}"),
    ("patch", "/stream/{stream_id}"),
    ("delete", "/stream/{stream_id}"),
    ("get", "/streams/{stream_id}"),
    ("post", "/streams/{stream_id}/share"),
)
_UPLOAD_OPERATIONS = (
    ("head", "/files/{upload_id}"),
    ("patch", "/files/{upload_id}"),
    ("delete", "/files/{upload_id}"),
)
_CREATED_ID = "$response.header.X-Stream-Id"
_LINKS = {
    ("/stream", "stream_id", _CREATED_ID): _STREAM_OPERATIONS,
    ("/stream/", "stream_id", _CREATED_ID): _STREAM_OPERATIONS,
    ("/stream/{stream_id}", "stream_id", "$request.path.stream_id"): _STREAM_OPERATIONS,
    ("/files", "upload_id", _CREATED_ID): _UPLOAD_OPERATIONS,
    ("/files/", "upload_id", _CREATED_ID): _UPLOAD_OPERATIONS,
}
# Path parameters that are stream ids (a tus upload's id is its stream's).
_ID_PARAMETERS = {"stream_id", "upload_id"}
# Operations that need no token.
_OPEN = {("get", "/healthz"), ("head", "/healthz"), ("get", "/readyz"), ("head", "/readyz")}


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def build_openapi(app: FastAPI) -> dict[str, Any]:
    schema = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        description=app.description,
        routes=app.routes,
    )
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for model in (Error, StreamSummary, ShareRequest, LinkRequest):
        schemas[model.__name__] = model.model_json_schema(ref_template=REF + "{model}")
    components["securitySchemes"] = {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "Needed only when the server has tokens configured (SPEC §6).",
        }
    }
    produce = {
        "/stream": {"post": _produce_operation(with_id=False)},
        "/stream/": {"post": _produce_operation(with_id=False) | {"operationId": "produce_slash"}},
        "/stream/{stream_id}": {"post": _produce_operation(with_id=True)},
    }
    paths: dict[str, dict[str, Any]] = schema["paths"]
    for path, operations in paths.items():
        for method, operation in operations.items():
            responses = operation["responses"]
            responses.pop("422", None)
            operation["responses"] = dict(sorted(responses.items()))
            for parameter in operation.get("parameters", []):
                # Discovery answers for any path (CORS preflights), so OPTIONS keeps a string.
                if (
                    method != "options"
                    and parameter["in"] == "path"
                    and parameter["name"] in _ID_PARAMETERS
                ):
                    parameter["schema"] = STREAM_ID
            if (method, path) in _OPEN or method == "options":
                operation["security"] = []
            else:
                operation.setdefault("security", [{"bearer": []}, {}])
    for path, operations in produce.items():
        paths.setdefault(path, {}).update(operations)
    for (source, parameter, expression), targets in _LINKS.items():
        links = {}
        for method, target in targets:
            operation_id = paths[target][method]["operationId"]
            links[operation_id] = {
                "operationId": operation_id,
                "parameters": {parameter: expression},
            }
        paths[source]["post"]["responses"]["201"]["links"] = links
    schema["paths"] = dict(sorted(paths.items()))
    return schema
