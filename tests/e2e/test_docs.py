"""``/docs`` and ``/openapi.json`` on a real server: the docs page loads only
assets the server itself serves (it works with no internet), and renders."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from html.parser import HTMLParser

import httpx
import pytest

from tests.e2e.helpers import module_server
from tests.e2e.test_ui import browser_missing, make_driver, wait_until
from tests.server import ServerProcess

ASSET_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.urls.append(value)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(tmp_path_factory.mktemp("docs"))


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


def test_docs_page_names_no_external_url(http: httpx.Client) -> None:
    page = http.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert re.findall(r"https?://", page.text) == []
    assert "url: '/openapi.json'" in page.text


def test_docs_assets_are_served_with_their_types(http: httpx.Client) -> None:
    links = Links()
    links.feed(http.get("/docs").text)
    assert sorted(links.urls) == [
        "/docs/static/swagger-ui-bundle.js",
        "/docs/static/swagger-ui.css",
        "/ui/static/favicon.svg",
    ]
    for url in links.urls:
        asset = http.get(url)
        assert asset.status_code == 200, url
        assert asset.headers["content-type"] == ASSET_TYPES[url[url.rindex(".") :]], url
        assert len(asset.content) > 100, url


def test_openapi_json_is_served_and_other_doc_urls_are_not(http: httpx.Client) -> None:
    schema = http.get("/openapi.json")
    assert schema.status_code == 200
    assert schema.headers["content-type"] == "application/json"
    assert "/stream/{stream_id}" in schema.json()["paths"]
    for path in ("/redoc", "/docs/oauth2-redirect", "/docs/static/LICENSE", "/docs/static/x.js"):
        missing = http.get(path)
        assert missing.status_code == 404, path
        assert missing.json() == {"error": "Not found."}


def test_docs_render_the_operations_in_a_browser(
    server: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> None:
    reason = browser_missing()
    if reason:
        pytest.skip(reason)
    profile = tmp_path_factory.mktemp("docs-profile")
    driver = make_driver(profile)
    try:
        driver.get(server.url + "/docs")
        paths = wait_until(
            driver,
            "the operations",
            lambda d: (
                len(d.find_elements("css selector", ".opblock-summary-path")) >= 20
                and d.find_elements("css selector", ".opblock-summary-path")
            ),
        )
        shown = {element.get_attribute("data-path") for element in paths}
        assert {"/stream", "/stream/{stream_id}", "/files/{upload_id}"} <= shown
        console = driver.get_log("browser")  # type: ignore[no-untyped-call]
        assert [e for e in console if e["level"] == "SEVERE"] == []
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
