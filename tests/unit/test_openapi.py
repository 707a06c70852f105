"""Facts /openapi.json must state about the API (SPEC §2–§7, §10)."""

from __future__ import annotations

from typing import Any

import pytest

from app.main import create_app

METHODS = {"get", "head", "post", "put", "patch", "delete", "options"}
ERROR_REF = {"$ref": "#/components/schemas/Error"}


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return create_app().openapi()


def operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


def test_every_endpoint_of_the_spec_is_described(schema: dict[str, Any]) -> None:
    described = {(method, path) for method, path, _ in operations(schema)}
    expected = {
        ("post", "/stream"),
        ("post", "/stream/"),
        ("post", "/stream/{stream_id}"),
        ("get", "/stream/{stream_id}"),
        ("head", "/stream/{stream_id}"),
        ("patch", "/stream/{stream_id}"),
        ("delete", "/stream/{stream_id}"),
        ("delete", "/stream/build/{build_id}"),
        ("get", "/spy"),
        ("get", "/streams"),
        ("get", "/streams/{stream_id}"),
        ("post", "/streams/{stream_id}/share"),
        ("get", "/events"),
        ("get", "/metrics"),
        ("get", "/healthz"),
        ("head", "/healthz"),
        ("get", "/readyz"),
        ("options", "/files/"),
        ("post", "/files/"),
        ("options", "/files/{upload_id}"),
        ("head", "/files/{upload_id}"),
        ("patch", "/files/{upload_id}"),
        ("delete", "/files/{upload_id}"),
    }
    assert expected <= described, expected - described


def test_produce_describes_its_body_headers_and_answers(schema: dict[str, Any]) -> None:
    for path in ("/stream", "/stream/", "/stream/{stream_id}"):
        operation = schema["paths"][path]["post"]
        names = {(p["in"], p["name"]) for p in operation["parameters"]}
        assert {("query", "force"), ("header", "X-Stream-Metadata")} <= names
        assert ("path", "stream_id") in names or "{" not in path
        assert "application/octet-stream" in operation["requestBody"]["content"]
        created = operation["responses"]["201"]
        assert {"X-Stream-Id", "Location"} <= set(created["headers"])
        assert operation["responses"]["409"]["content"]["application/json"]["schema"] == ERROR_REF
        get_stream = schema["paths"]["/stream/{stream_id}"]["get"]["operationId"]
        assert get_stream in created["links"]


def test_no_operation_lists_422(schema: dict[str, Any]) -> None:
    listing = [(m, p) for m, p, op in operations(schema) if "422" in op["responses"]]
    assert listing == []
    assert "HTTPValidationError" not in schema["components"]["schemas"]


def test_every_error_response_is_the_error_body(schema: dict[str, Any]) -> None:
    assert schema["components"]["schemas"]["Error"]["required"] == ["error"]
    for method, path, operation in operations(schema):
        for status, response in operation["responses"].items():
            if int(status) >= 400:
                content = response["content"]
                assert content == {"application/json": {"schema": ERROR_REF}}, (method, path)


def test_path_parameters_are_declared(schema: dict[str, Any]) -> None:
    for method, path, operation in operations(schema):
        declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
        in_path = {part[1:-1] for part in path.split("/") if part.startswith("{")}
        assert declared == in_path, (method, path)


def test_tus_operations_declare_their_headers(schema: dict[str, Any]) -> None:
    def headers(method: str, path: str) -> set[str]:
        operation = schema["paths"][path][method]
        return {p["name"] for p in operation["parameters"] if p["in"] == "header"}

    for method, path in (("post", "/files/"), ("head", "/files/{upload_id}")):
        assert "Tus-Resumable" in headers(method, path)
    assert {"Tus-Resumable", "Upload-Offset", "Upload-Checksum"} <= headers(
        "patch", "/files/{upload_id}"
    )
    patch = schema["paths"]["/files/{upload_id}"]["patch"]
    assert list(patch["requestBody"]["content"]) == ["application/offset+octet-stream"]
    assert {"Upload-Length", "Upload-Metadata"} <= headers("post", "/files/")


def test_reads_and_resumes_declare_their_parameters(schema: dict[str, Any]) -> None:
    get = schema["paths"]["/stream/{stream_id}"]["get"]
    names = {p["name"] for p in get["parameters"]}
    assert {"offset", "notail", "Range"} <= names
    assert {"200", "206", "404", "416"} <= set(get["responses"])
    patch = schema["paths"]["/stream/{stream_id}"]["patch"]
    offset = next(p for p in patch["parameters"] if p["name"] == "Upload-Offset")
    assert offset["required"] is True
    assert "Upload-Offset" in patch["responses"]["204"]["headers"]
