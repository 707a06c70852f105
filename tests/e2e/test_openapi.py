"""Schemathesis against a real server: every request it derives from
``/openapi.json`` gets an answer that is not a 5xx and that the schema
describes (status code, content type, headers, body, and a 405's Allow).

The schema is the app's own ``openapi()``, built at import so pytest can make
one test per operation (schemathesis's fixture-based loader does not work with
this pytest); the first test checks the server serves exactly that document.

A small fixed budget (``MAX_EXAMPLES`` per operation, a fixed seed, no
example database) keeps the run deterministic and well under the timeout;
the last test follows the schema's links (create, then use the id).
``/spy`` and ``/events`` are endless streams and are left out. A read never
tails: generated ids are fresh (404), and the only live streams, tus uploads,
get ids the server picks; the request timeout bounds it anyway.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from schemathesis.checks import (
    allow_header_conformance,
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.main import create_app
from tests.e2e.helpers import module_server
from tests.server import ServerProcess

MAX_EXAMPLES = 15
CONFIG = {
    "seed": 20261203,
    "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
    "request-timeout": 10.0,
    "cache": {"enabled": False},  # no crash replays from earlier runs: each run is the same
}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    allow_header_conformance,
]
ENDLESS = ["/spy", "/events"]

# tus bodies are raw bytes, like application/octet-stream ones.
schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")


@pytest.fixture(scope="module")
def weft_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(tmp_path_factory.mktemp("openapi"))


DOCUMENT: dict[str, Any] = create_app().openapi()
schema = schemathesis.openapi.from_dict(
    DOCUMENT, config=schemathesis.Config.from_dict(CONFIG)
).exclude(path=ENDLESS)


def test_the_server_serves_the_schema_under_test(weft_server: ServerProcess) -> None:
    served = httpx.get(weft_server.url + "/openapi.json", timeout=10)
    assert served.status_code == 200
    assert served.json() == DOCUMENT


@schema.parametrize()
def test_the_server_answers_as_its_schema_says(
    case: schemathesis.Case, weft_server: ServerProcess
) -> None:
    case.call_and_validate(base_url=weft_server.url, checks=CHECKS)


WORKFLOWS = hypothesis.settings(
    max_examples=12,
    stateful_step_count=6,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)


def test_linked_workflows_answer_as_the_schema_says(weft_server: ServerProcess) -> None:
    """Sequences that follow the schema's links: create a stream (or an upload),
    then read, resume, share and delete it by the id the server answered with."""
    # Without /links: PUT /links/{name} answers 201 or 404 depending on the
    # streams earlier runs left on the server, and hypothesis replays a run
    # expecting the same answers (FlakyStrategyDefinition). The per-operation
    # test above covers the link operations.
    workflow = schema.exclude(path_regex="^/links").as_state_machine()

    class Workflow(workflow):  # type: ignore[valid-type, misc]
        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
            return {"base_url": weft_server.url}

        def validate_response(self, response: Any, case: schemathesis.Case, **kwargs: Any) -> None:
            kwargs.pop("additional_checks", None)
            case.validate_response(response, checks=CHECKS, transport_kwargs=kwargs)

    Workflow.run(settings=WORKFLOWS)
