"""The browser viewer (SPEC §11), driven in a real headless Chromium.

The browser tests need Debian's ``chromium`` and ``chromium-driver`` packages and
skip without them; selenium never downloads a browser or driver. The tests at the
top only need HTTP and always run.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.e2e.helpers import finish_producer, module_server, open_producer, unique_id
from tests.server import ServerProcess

try:
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.chrome.webdriver import WebDriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webelement import WebElement
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover - the browser tests skip
    webdriver = None  # type: ignore[assignment]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WAIT = 15.0
TOKEN = "ui-test-token-0123456789"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
    "--disable-dev-shm-usage",
    "--disable-features=BackForwardCache",
)


def browser_missing() -> str | None:
    if webdriver is None:
        return "selenium is not installed (pip install -e '.[test]')"
    for path, _package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not path.is_file():
            return f"{path} is missing: apt-get install chromium chromium-driver"
    return None


def make_driver(profile: Path, *, width: int = 1280, height: int = 800) -> WebDriver:
    """Headless Chromium from the system packages, with a fresh profile."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: selenium-manager is never run, so nothing is downloaded.
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(tmp_path_factory.mktemp("ui"))


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        yield http


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    reason = browser_missing()
    if reason:
        pytest.skip(reason)
    profile = tmp_path_factory.mktemp("chromium-profile")
    browser = make_driver(profile)
    try:
        yield browser
    finally:
        browser.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def browser(driver: WebDriver) -> Iterator[WebDriver]:
    """The shared browser, left on a blank page after each test so nothing keeps
    a connection to a server that is about to stop. A script error or a Content
    Security Policy violation during the test fails it."""
    driver.get_log("browser")  # type: ignore[no-untyped-call]  # start with an empty console
    yield driver
    console = driver.get_log("browser")  # type: ignore[no-untyped-call]
    driver.get("about:blank")
    # 4xx answers the page expects (401 before a token, 404 for a missing stream)
    # are logged by the network layer; anything else severe is a bug.
    errors = [e for e in console if e["level"] == "SEVERE" and e["source"] != "network"]
    assert not errors, errors


# -- helpers --------------------------------------------------------------------


def wait_until(driver: WebDriver, what: str, condition: Callable[[WebDriver], Any]) -> Any:
    try:
        return WebDriverWait(driver, WAIT, poll_frequency=0.05).until(condition)
    except TimeoutException:
        body = driver.execute_script("return document.body ? document.body.innerText : ''")
        raise AssertionError(f"timed out waiting for {what}; the page shows:\n{body}") from None


def find(driver: WebDriver, css: str) -> WebElement | None:
    found = driver.find_elements(By.CSS_SELECTOR, css)
    return found[0] if found else None


def element(driver: WebDriver, css: str) -> WebElement:
    found = find(driver, css)
    assert found is not None, f"no {css} on the page"
    return found


def visible_text(driver: WebDriver, css: str) -> str:
    """The rendered text of the first match, "" when it is absent or hidden (read in one
    script call, so a re-rendered element is never a stale reference)."""
    text: str = driver.execute_script(
        "const e = document.querySelector(arguments[0]);"
        "return e && e.checkVisibility() ? e.innerText : ''",
        css,
    )
    return text


def log_lines(driver: WebDriver) -> list[str]:
    """The text of every line in the log pane, the open last line included."""
    lines: list[str] = driver.execute_script(
        "return [...document.querySelectorAll('#lines .l .t, #partial:not([hidden]) .t')]"
        ".map(e => e.textContent)"
    )
    return lines


def stream_page(server: ServerProcess, stream_id: str, query: str = "") -> str:
    return f"{server.url}/ui/stream/{quote(stream_id, safe='')}{query}"


def post_stream(
    client: httpx.Client,
    stream_id: str,
    data: bytes,
    metadata: dict[str, Any] | None = None,
    token: str | None = None,
) -> None:
    headers = {"X-Stream-Metadata": json.dumps(metadata or {})}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    response = client.post(f"/stream/{stream_id}", content=data, headers=headers)
    assert response.status_code == 201, response.text


def rgb(css_colour: str) -> tuple[int, int, int]:
    match = re.fullmatch(r"rgba?\((\d+), (\d+), (\d+)(?:, [\d.]+)?\)", css_colour)
    assert match, css_colour
    red, green, blue = (int(part) for part in match.groups())
    return red, green, blue


# -- HTTP: pages and static files ---------------------------------------------------


def test_ui_without_slash_redirects_to_the_list(client: httpx.Client) -> None:
    response = client.get("/ui?state=live")
    assert response.status_code == 307
    assert response.headers["location"] == "ui/?state=live"
    assert client.get("/ui", follow_redirects=True).url.path == "/ui/"


@pytest.mark.parametrize("path", ["/ui/", "/ui/stream/some-id"])
def test_pages_are_html_with_strict_csp_and_no_cache(client: httpx.Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["referrer-policy"] == "no-referrer"
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    # No inline script or style: every script is a file.
    assert re.search(r"<script(?![^>]*\bsrc=)", response.text) is None
    assert " style=" not in response.text and "<style" not in response.text


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("stream.js", "text/javascript; charset=utf-8"),
        ("ansi.js", "text/javascript; charset=utf-8"),
        ("viewer.css", "text/css; charset=utf-8"),
        ("favicon.svg", "image/svg+xml"),
    ],
)
def test_static_files_have_their_content_type(
    client: httpx.Client, name: str, content_type: str
) -> None:
    response = client.get(f"/ui/static/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    "path",
    [
        "/ui/static/missing.js",
        "/ui/static/..%2F..%2Fmain.py",
        "/ui/static/%2e%2e%2fui.py",
        "/ui/static/../../api/ui.py",
        "/ui/static/index.html",
        "/ui/static/.hidden.js",
        "/ui/nothing-here",
    ],
)
def test_unknown_or_escaping_asset_is_404_json(server: ServerProcess, path: str) -> None:
    # A raw request: httpx would normalise the dots away.
    with httpx.Client(base_url=server.url) as http:
        request = http.build_request("GET", server.url)
        request.url = request.url.copy_with(raw_path=path.encode())
        response = http.send(request)
    assert response.status_code == 404
    assert response.json() == {"error": "Not found."}


def test_pages_need_no_token_on_an_authenticated_server(
    server_factory: Callable[..., ServerProcess],
) -> None:
    secured = server_factory(tokens=[TOKEN])
    with httpx.Client(base_url=secured.url) as http:
        assert http.get("/ui/").status_code == 200
        assert http.get("/ui/stream/x").status_code == 200
        assert http.get("/ui/static/common.js").status_code == 200
        assert http.get("/streams").status_code == 401


# -- the ANSI parser, run in the browser -----------------------------------------------


ANSI_CASES = [
    # (chunks fed one by one, completed lines, open line)
    (["\x1b[1;31mA\x1b[0m B\n"], ['<span class="f1 B">A</span> B'], ""),
    (
        ["\x1b[91mx\x1b[103my\x1b[39;49mz"],
        [],
        '<span class="f9">x</span><span class="f9 b11">y</span>z',
    ),
    (
        ["\x1b[38;5;208mo\x1b[48;5;17mp"],
        [],
        '<span class="f208">o</span><span class="f208 b17">p</span>',
    ),
    (["\x1b[38;2;255;0;0mt"], [], '<span class="f196">t</span>'),
    (["\x1b[7mr\x1b[27m"], [], '<span class="fi bi">r</span>'),
    (["\x1b[3", "2mG\n"], ['<span class="f2">G</span>'], ""),
    (
        ["<img src=x onerror=alert(1)> & \"'\n"],
        ["&lt;img src=x onerror=alert(1)&gt; &amp; &quot;&#39;"],
        "",
    ),
    (["\x1b]0;title\x07t\x1b]8;;http://x\x1b\\link\n"], ["tlink"], ""),
    (["\x1b[2K\x1b[1G\x1b[?25lx\x1b(B\n"], ["x"], ""),
    (["10%\r50%\r", "100%\r\n", "a\r\r\nb"], ["100%", "a"], "b"),
    (["tab\there\x07\x08\n"], ["tab\there"], ""),
    (
        ["\x1b[1mbold\x1b[22m\x1b[4mu\x1b[24m"],
        [],
        '<span class="B">bold</span><span class="U">u</span>',
    ),
]


def test_ansi_parser_renders_sgr_and_escapes_html(
    browser: WebDriver, server: ServerProcess
) -> None:
    browser.get(f"{server.url}/ui/")
    results = browser.execute_async_script(
        """
        const [cases, done] = arguments;
        import('/ui/static/ansi.js').then((m) => done(cases.map(([chunks]) => {
          const parser = new m.AnsiLines();
          const lines = chunks.flatMap((chunk) => parser.feed(chunk));
          return [lines, parser.partialHtml()];
        })), (error) => done(String(error)));
        """,
        [[chunks] for chunks, _, _ in ANSI_CASES],
    )
    assert isinstance(results, list), results
    for (chunks, lines, partial), (got_lines, got_partial) in zip(ANSI_CASES, results, strict=True):
        assert (got_lines, got_partial) == (lines, partial), chunks


# -- the viewer in the browser ------------------------------------------------------


def test_list_shows_a_stream_created_after_the_page_loaded_and_its_completion(
    browser: WebDriver, server: ServerProcess
) -> None:
    browser.get(f"{server.url}/ui/")
    wait_until(browser, "the list to load", lambda d: "stream" in visible_text(d, "#summary"))
    stream_id = unique_id("ui-new")
    conn, head = open_producer(
        server.port, f"/stream/{stream_id}", {"X-Stream-Metadata": '{"job":"ui-list"}'}
    )
    with conn:
        assert head.status == 201
        conn.send_chunk(b"first line\n")
        row = f'tr[data-id="{stream_id}"]'
        wait_until(browser, "the new stream's row", lambda d: find(d, row) is not None)
        assert visible_text(browser, f"{row} .state") == "live"
        assert "job=ui-list" in visible_text(browser, row)
        first, href = browser.execute_script(
            "return [document.querySelector('#rows tr').dataset.id,"
            " document.querySelector(arguments[0] + ' a').href]",
            row,
        )
        assert first == stream_id, "live streams come first"
        assert href == stream_page(server, stream_id)
        finish_producer(conn)
    wait_until(
        browser,
        "the row to turn complete",
        lambda d: visible_text(d, f"{row} .state") == "complete",
    )


def test_list_sizes_and_ages_of_live_streams_keep_moving(
    browser: WebDriver, server: ServerProcess
) -> None:
    stream_id = unique_id("ui-growing")
    conn, head = open_producer(server.port, f"/stream/{stream_id}")
    with conn:
        assert head.status == 201
        conn.send_chunk(b"x" * 100)
        browser.get(f"{server.url}/ui/")
        row = f'tr[data-id="{stream_id}"]'
        wait_until(browser, "the row at 100 bytes", lambda d: "100 B" in visible_text(d, row))
        age = visible_text(browser, f"{row} .age")
        conn.send_chunk(b"y" * 5000)  # no event says so: the list must look again
        # Within a few seconds (the list used to look every 10 s and age every 15 s).
        soon = WebDriverWait(browser, 6.0, poll_frequency=0.05)
        soon.until(lambda d: "KiB" in visible_text(d, row), "the size did not move on")
        soon.until(lambda d: visible_text(d, f"{row} .age") != age, "the age did not move on")
        finish_producer(conn)


def test_list_filter_matches_id_and_metadata_text(
    browser: WebDriver, server: ServerProcess, client: httpx.Client
) -> None:
    alpha, beta = unique_id("ui-alpha"), unique_id("ui-beta")
    post_stream(client, alpha, b"a\n", {"branch": "main"})
    post_stream(client, beta, b"b\n", {"branch": "feature/x"})
    browser.get(f"{server.url}/ui/")
    wait_until(
        browser, "both rows", lambda d: len(d.find_elements(By.CSS_SELECTOR, "#rows tr")) >= 2
    )

    def shown(d: WebDriver) -> set[str]:
        ids: list[str] = d.execute_script(
            "return [...document.querySelectorAll('#rows tr')].map(r => r.dataset.id)"
        )
        return set(ids)

    box = find(browser, "#filter")
    assert box is not None
    box.send_keys("feature/")
    wait_until(browser, "only the feature stream", lambda d: shown(d) == {beta})
    box.clear()
    box.send_keys(alpha[-12:])
    wait_until(browser, "only the alpha stream", lambda d: shown(d) == {alpha})
    assert "q=" in browser.current_url


def test_live_stream_lines_appear_while_the_producer_writes(
    browser: WebDriver, server: ServerProcess
) -> None:
    stream_id = unique_id("ui-live")
    conn, head = open_producer(server.port, f"/stream/{stream_id}")
    with conn:
        assert head.status == 201
        conn.send_chunk(b"replayed line\n")
        browser.get(stream_page(server, stream_id))
        wait_until(browser, "the replayed line", lambda d: log_lines(d) == ["replayed line"])
        assert visible_text(browser, "#state") == "live"
        conn.send_chunk(b"tailed line\nand a partial")
        wait_until(
            browser,
            "the tailed lines",
            lambda d: log_lines(d) == ["replayed line", "tailed line", "and a partial"],
        )
        conn.send_chunk(b" line, finished\n")
        wait_until(
            browser,
            "the partial line to complete",
            lambda d: log_lines(d)[2:] == ["and a partial line, finished"],
        )
        finish_producer(conn)
    wait_until(browser, "the end of the stream", lambda d: visible_text(d, "#state") == "complete")
    assert "End of stream" in visible_text(browser, "#end")
    assert "3 lines" in visible_text(browser, "#size")


def test_ansi_red_renders_red_with_line_numbers(
    browser: WebDriver, server: ServerProcess, client: httpx.Client
) -> None:
    stream_id = unique_id("ui-ansi")
    post_stream(client, stream_id, b"plain\n\x1b[31mred\x1b[0m after\n\x1b[1;32mgreen\x1b[0m\n")
    browser.get(stream_page(server, stream_id))
    wait_until(browser, "three lines", lambda d: len(log_lines(d)) == 3)
    red = browser.execute_script(
        "const s = [...document.querySelectorAll('#lines .t span')]"
        ".find(e => e.textContent === 'red');"
        "return s ? getComputedStyle(s).color : null"
    )
    r, g, b = rgb(red)
    assert r >= 180 and g < 110 and b < 110, red
    plain = browser.execute_script(
        "return getComputedStyle(document.querySelector('#lines .l .t')).color"
    )
    assert rgb(plain) != (r, g, b)
    numbers = browser.execute_script(
        "return [...document.querySelectorAll('#lines .l .n')].map(e => "
        "getComputedStyle(e, '::before').content)"
    )
    assert numbers == ['"1"', '"2"', '"3"']
    weight = browser.execute_script(
        "const s = [...document.querySelectorAll('#lines .t span')]"
        ".find(e => e.textContent === 'green'); return getComputedStyle(s).fontWeight"
    )
    assert int(weight) >= 600


def test_stream_content_is_shown_as_text_never_as_markup(
    browser: WebDriver, server: ServerProcess, client: httpx.Client
) -> None:
    stream_id = unique_id("ui-xss")
    hostile = (
        '<img src=x onerror="document.title=\'pwned\'"><script>document.title="pwned"</script>'
    )
    post_stream(client, stream_id, hostile.encode() + b"\n", {"x": "<b>meta</b>"})
    browser.get(stream_page(server, stream_id))
    wait_until(browser, "the line", lambda d: log_lines(d) == [hostile])
    assert browser.find_elements(By.CSS_SELECTOR, "#log img, #log script") == []
    assert len(browser.find_elements(By.CSS_SELECTOR, "#meta b")) == 1  # the key, not the value
    assert "pwned" not in browser.title
    assert "<b>meta</b>" in visible_text(browser, "#meta")


def test_stream_page_shows_the_links_that_point_at_it(
    browser: WebDriver, server: ServerProcess, client: httpx.Client
) -> None:
    stream_id = unique_id("ui-links")
    post_stream(client, stream_id, b"linked\n")
    for name in ("main-latest", "nightly"):
        assert client.put(f"/links/{name}-{stream_id}", json={"stream": stream_id}).is_success
    browser.get(stream_page(server, stream_id))
    wait_until(browser, "the links", lambda d: visible_text(d, "#links"))
    assert visible_text(browser, "#links").split("\n") == [
        f"link main-latest-{stream_id}",
        f"link nightly-{stream_id}",
    ]
    unlinked = unique_id("ui-unlinked")
    post_stream(client, unlinked, b"alone\n")
    browser.get(stream_page(server, unlinked))
    wait_until(browser, "the log", lambda d: log_lines(d) == ["alone"])
    assert visible_text(browser, "#links") == ""


def test_missing_stream_shows_a_readable_error(browser: WebDriver, server: ServerProcess) -> None:
    browser.get(stream_page(server, "no-such-stream"))
    wait_until(browser, "the error", lambda d: visible_text(d, "#error"))
    text = visible_text(browser, "#error")
    assert "Stream not found" in text
    assert "The stream with ID no-such-stream does not exist" in text
    assert not element(browser, "#log").is_displayed()


def test_follow_turns_off_when_scrolling_up_and_back_on_with_the_toggle(
    browser: WebDriver, server: ServerProcess
) -> None:
    stream_id = unique_id("ui-follow")
    conn, head = open_producer(server.port, f"/stream/{stream_id}")
    with conn:
        assert head.status == 201
        conn.send_chunk(b"".join(b"line %d\n" % n for n in range(1, 301)))
        browser.get(stream_page(server, stream_id))
        wait_until(browser, "300 lines", lambda d: len(log_lines(d)) == 300)
        at_end = (
            "const l = document.getElementById('log');"
            "return l.scrollHeight - l.scrollTop - l.clientHeight < 4"
        )
        wait_until(browser, "the view at the end", lambda d: d.execute_script(at_end))
        browser.execute_script("document.getElementById('log').scrollTop = 0")
        wait_until(browser, "follow to turn off", lambda d: not element(d, "#follow").is_selected())
        conn.send_chunk(b"".join(b"more %d\n" % n for n in range(1, 51)))
        wait_until(browser, "350 lines", lambda d: len(log_lines(d)) == 350)
        assert browser.execute_script("return document.getElementById('log').scrollTop") == 0
        element(browser, "#follow").click()
        wait_until(browser, "the view back at the end", lambda d: d.execute_script(at_end))
        finish_producer(conn)


def test_big_log_keeps_the_newest_lines_and_says_the_rest_is_in_the_download(
    browser: WebDriver, server: ServerProcess, client: httpx.Client
) -> None:
    stream_id = unique_id("ui-big")
    post_stream(client, stream_id, b"".join(b"row %d\n" % n for n in range(1, 60_001)))
    browser.get(stream_page(server, stream_id))
    wait_until(browser, "the last line", lambda d: d.find_elements(By.ID, "L60000"))
    shown = browser.execute_script("return document.querySelectorAll('#lines .l').length")
    assert 50_000 <= shown <= 55_000
    note = visible_text(browser, "#trimmed")
    assert "not shown" in note and "download" in note
    assert browser.execute_script("return document.getElementById('L60000').textContent") == (
        "row 60000"
    )


def test_token_server_asks_for_a_token_and_keeps_it_out_of_urls(
    server_factory: Callable[..., ServerProcess], browser: WebDriver
) -> None:
    secured = server_factory(tokens=[TOKEN])
    stream_id = unique_id("ui-auth")
    with httpx.Client(base_url=secured.url, timeout=10) as http:
        post_stream(http, stream_id, b"\x1b[33msecret\x1b[0m content\n", token=TOKEN)
    browser.get(stream_page(secured, stream_id))
    token_input = wait_until(browser, "the token form", lambda d: find(d, "#token-input"))
    assert log_lines(browser) == []
    token_input.send_keys("wrong-token")
    element(browser, "#token-submit").click()
    wait_until(browser, "the form again", lambda d: "refused" in visible_text(d, "#token-reason"))
    element(browser, "#token-input").send_keys(TOKEN)
    element(browser, "#token-submit").click()
    wait_until(browser, "the stream", lambda d: log_lines(d) == ["secret content"])
    assert TOKEN not in browser.current_url

    browser.get(f"{secured.url}/ui/")
    wait_until(browser, "the list, without asking", lambda d: find(d, f'tr[data-id="{stream_id}"]'))
    assert browser.execute_script("return localStorage.getItem('weft.token')") == TOKEN
    urls = browser.execute_script(
        "return performance.getEntries().map(e => e.name).concat([location.href])"
    )
    assert urls and not [url for url in urls if TOKEN in url]
    assert TOKEN not in browser.current_url


def test_share_link_opens_in_the_viewer_without_a_token(
    server_factory: Callable[..., ServerProcess], browser: WebDriver
) -> None:
    secured = server_factory(tokens=[TOKEN])
    stream_id = unique_id("ui-share")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=secured.url, timeout=10) as http:
        post_stream(http, stream_id, b"shared \x1b[35mcontent\x1b[0m\n", token=TOKEN)
        response = http.post(f"/streams/{stream_id}/share", json={"ttl": 600}, headers=auth)
    assert response.status_code == 200, response.text
    viewer_url = response.json()["viewer_url"]
    assert viewer_url.startswith(f"/ui/stream/{stream_id}?")

    browser.get(secured.url + viewer_url)
    wait_until(browser, "the shared stream", lambda d: log_lines(d) == ["shared content"])
    assert find(browser, "#token-form") is None
    assert browser.execute_script("return localStorage.getItem('weft.token')") is None
    download = find(browser, "#download")
    assert download is not None and "signature=" in str(download.get_attribute("href"))
    assert not element(browser, "#share").is_displayed()

    tampered = re.sub(r"signature=[^&]+", "signature=AAAA", viewer_url)
    browser.get(secured.url + tampered)
    wait_until(
        browser, "the refusal", lambda d: "share link is not valid" in visible_text(d, "#error")
    )


def test_share_button_shows_a_viewer_link_that_works(
    browser: WebDriver, server: ServerProcess, client: httpx.Client
) -> None:
    stream_id = unique_id("ui-sharebtn")
    post_stream(client, stream_id, b"to share\n")
    browser.get(stream_page(server, stream_id))
    wait_until(browser, "the line", lambda d: log_lines(d) == ["to share"])
    element(browser, "#share").click()
    url = wait_until(
        browser, "the share link", lambda d: element(d, "#share-url").get_attribute("value")
    )
    assert url.startswith(stream_page(server, stream_id) + "?") and "signature=" in url
    browser.get(url)
    wait_until(browser, "the shared page", lambda d: log_lines(d) == ["to share"])


def test_token_without_read_scope_shows_access_denied(
    server_factory: Callable[..., ServerProcess], browser: WebDriver
) -> None:
    secured = server_factory(tokens=[TOKEN, {"token": "write-only", "scopes": ["write"]}])
    stream_id = unique_id("ui-forbidden")
    with httpx.Client(base_url=secured.url, timeout=10) as http:
        post_stream(http, stream_id, b"hidden\n", token=TOKEN)
    browser.get(f"{secured.url}/ui/static/favicon.svg")  # the origin, to set its storage
    browser.execute_script("localStorage.setItem('weft.token', 'write-only')")
    browser.get(stream_page(secured, stream_id))
    wait_until(browser, "the refusal", lambda d: "Access denied" in visible_text(d, "#error"))
    assert "read" in visible_text(browser, "#error")
    assert log_lines(browser) == []


def test_viewer_resumes_at_its_offset_after_a_server_restart(
    server_factory: Callable[..., ServerProcess], browser: WebDriver
) -> None:
    restartable = server_factory()
    stream_id = unique_id("ui-restart")
    conn, head = open_producer(restartable.port, f"/stream/{stream_id}")
    with conn:
        assert head.status == 201
        conn.send_chunk(b"before the restart\n")
        browser.get(stream_page(restartable, stream_id))
        wait_until(browser, "the first line", lambda d: log_lines(d) == ["before the restart"])
        restartable.kill()
    restartable.start()
    with httpx.Client(base_url=restartable.url, timeout=10) as http:
        size = len(b"before the restart\n")
        response = http.patch(
            f"/stream/{stream_id}",
            content=b"after the restart\n",
            headers={"Upload-Offset": str(size), "Upload-Complete": "?1"},
        )
        assert response.status_code == 204, response.text
    # The state badge and the text are painted separately: wait for both.
    wait_until(
        browser,
        "the rest of the stream",
        lambda d: visible_text(d, "#state") == "complete" and len(log_lines(d)) >= 2,
    )
    assert log_lines(browser) == ["before the restart", "after the restart"]
