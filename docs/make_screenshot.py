"""Regenerate docs/viewer.png: the viewer tailing a coloured build log.

    .venv/bin/python docs/make_screenshot.py

Needs what the browser tests need (Debian's chromium and chromium-driver, selenium).
It starts its own server on a free port under a temporary directory.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from tests.e2e.helpers import finish_producer, open_producer  # noqa: E402
from tests.e2e.test_ui import browser_missing, make_driver  # noqa: E402
from tests.server import ServerProcess  # noqa: E402

OUTPUT = ROOT / "docs" / "viewer.png"
STREAM_ID = "build-1042-test"
METADATA = '{"buildId":"1042","job":"test","branch":"main"}'

R, G, Y, B, M, C, DIM, BOLD, OFF = (
    "\x1b[31m",
    "\x1b[32m",
    "\x1b[33m",
    "\x1b[34m",
    "\x1b[35m",
    "\x1b[36m",
    "\x1b[2m",
    "\x1b[1m",
    "\x1b[0m",
)
ORANGE = "\x1b[38;5;208m"


def build_log() -> list[str]:
    def stamp(second: int) -> str:
        return f"{DIM}12:04:{second:02d}{OFF} "

    lines = [
        f"{BOLD}{C}==> Step 3/5: install{OFF}",
        f"{stamp(1)}$ pip install -e '.[test]'",
        f"{stamp(3)}Successfully installed weft-0.1.0",
        f"{BOLD}{C}==> Step 4/5: test{OFF}",
        f"{stamp(4)}$ python -m pytest -q",
        f"{BOLD}{'=' * 29} test session starts {'=' * 30}{OFF}",
        "platform linux -- Python 3.11.7, pytest-8.4.1",
        "collected 214 items",
        "",
    ]
    modules = [
        ("tests/unit/test_hub.py", 18, None),
        ("tests/unit/test_reader.py", 24, None),
        ("tests/unit/test_service.py", 41, None),
        ("tests/unit/test_spy.py", 16, None),
        ("tests/e2e/test_produce.py", 27, 19),
        ("tests/e2e/test_consume.py", 33, None),
        ("tests/e2e/test_resume.py", 22, None),
        ("tests/e2e/test_tus.py", 19, 7),
        ("tests/e2e/test_ui.py", 14, None),
    ]
    done = 0
    for name, count, failed in modules:
        marks = "".join(f"{R}F{OFF}" if i == failed else f"{G}.{OFF}" for i in range(count))
        done += count
        lines.append(f"{name} {marks} {G}[{100 * done // 214:3d}%]{OFF}")
    lines += [
        "",
        f"{R}{BOLD}{'=' * 35} FAILURES {'=' * 35}{OFF}",
        f"{R}{BOLD}_________ test_post_over_limit_ends_stream_at_limit _________{OFF}",
        "",
        "    def test_post_over_limit_ends_stream_at_limit(server):",
        "        response = post(server, b'x' * (LIMIT + 1))",
        f"{BOLD}>       assert response.json()['size'] == LIMIT{OFF}",
        f"{R}{BOLD}E       assert 1048577 == 1048576{OFF}",
        "",
        f"{M}tests/e2e/test_produce.py{OFF}:212: AssertionError",
        f"{Y}warnings summary{OFF}",
        f"  {ORANGE}DeprecationWarning{OFF}: datetime.utcnow() is deprecated",
        f"{B}-- Docs: https://docs.pytest.org/en/stable/how-to/capture-warnings.html{OFF}",
        f"{R}=== {BOLD}2 failed{OFF}{R}, {G}212 passed{OFF}{R}, "
        f"{Y}1 warning{OFF}{R} in 41.27s ==={OFF}",
        f"{stamp(46)}{Y}retrying failed tests (attempt 2/3)…{OFF}",
        f"{stamp(47)}$ python -m pytest -q --last-failed",
        f"{stamp(49)}tests/e2e/test_produce.py {G}.{OFF}",
    ]
    return lines


def main() -> int:
    reason = browser_missing()
    if reason:
        print(f"cannot take the screenshot: {reason}", file=sys.stderr)
        return 1
    lines = build_log()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp) / "server"
        workdir.mkdir()
        server = ServerProcess(workdir).start()
        driver = make_driver(Path(tmp) / "profile", width=1200, height=760)
        try:
            conn, head = open_producer(
                server.port, f"/stream/{STREAM_ID}", {"X-Stream-Metadata": METADATA}
            )
            with conn:
                assert head.status == 201, head
                conn.send_chunk("".join(line + "\n" for line in lines).encode())
                conn.send_chunk(f"{DIM}12:04:50{OFF} tests/e2e/test_tus.py ".encode())
                driver.get(f"{server.url}/ui/stream/{STREAM_ID}")
                WebDriverWait(driver, 15).until(
                    lambda d: (
                        d.execute_script("return document.querySelectorAll('#lines .l').length")
                        == len(lines)
                    )
                )
                driver.execute_script("document.activeElement.blur()")
                OUTPUT.write_bytes(driver.get_screenshot_as_png())
                finish_producer(conn)
        finally:
            driver.quit()
            server.stop()
    print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
