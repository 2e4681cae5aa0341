"""The tutor page at `/` in a real browser: Debian's headless Chromium driven by Playwright, against a real server
on 127.0.0.1 (tiny models for the mechanics, the embedded pair where the maths must be right). `.ci/run` installs
the browser when it is missing (`apt-get install chromium`); without it these tests say so and are skipped."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from conftest import NATALIA, Server, open_tiny_pair

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium: apt-get install chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
WRONG = ("In April, Natalia sold 48 clips.\n\nIn May, she sold half as many: 48 / 2 = 26 clips.\n\n"
         "Altogether she sold 48 + 26 = 74 clips. The answer is \\boxed{74}.")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """A fresh page that records every URL it asks for."""
    context = browser.new_context(viewport={"width": 1000, "height": 900})
    page = context.new_page()
    page.requested = []
    page.on("request", lambda request: page.requested.append(request.url))
    yield page
    context.close()


@pytest.fixture(scope="module")
def tiny_page_server(tmp_path_factory):
    with open_tiny_pair(tmp_path_factory.mktemp("page"), target_layers=8, endless=True, taus={"signals": 0.5}) as pair:
        args = pair.args(n_ctx=1024)
    server = Server(*args, "--max-tokens", "40")
    yield server
    server.stop()


def test_the_page_loads_with_no_request_outside_this_server(page, tiny_page_server):
    page.goto(tiny_page_server.url + "/")
    page.wait_for_function("window.renderMathInElement !== undefined")
    page.wait_for_function("document.getElementById('pair').textContent.length > 0")
    assert "specguard-local" in page.title()
    assert page.requested and all(url.startswith(tiny_page_server.url + "/") for url in page.requested)


def test_asking_streams_each_step_with_who_wrote_it(page, tiny_page_server):
    page.goto(tiny_page_server.url + "/")
    page.fill("#question", "Count the numbers.")
    page.press("#question", "Control+Enter")  # the keyboard way
    page.wait_for_selector("#stats:not([hidden])")
    steps = page.locator("#steps li")
    assert steps.count() >= 1
    assert all(kind in ("kept", "salvaged", "target") for kind in steps.evaluate_all("els => els.map(e => e.className)"))
    first_mark = steps.first.locator(".mark")
    first_mark.click()  # a tap shows the step's scores
    assert steps.first.locator(".scores").is_visible() and first_mark.get_attribute("aria-expanded") == "true"
    assert "tokens/s" in page.inner_text("#stats") and page.locator("#ask-error").is_hidden()


def test_a_bad_request_shows_a_readable_message(page, tiny_page_server):
    page.goto(tiny_page_server.url + "/")
    page.fill("#question", "word " * 1500)  # longer than the server's context
    page.click("#ask-button")
    error = page.locator("#ask-error")
    error.wait_for(state="visible")
    assert "context" in error.inner_text() and "HTTP 400" in error.inner_text()
    assert page.locator("#steps li").count() == 0


def test_the_page_fits_a_phone(browser, tiny_page_server):
    context = browser.new_context(viewport={"width": 360, "height": 740}, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.goto(tiny_page_server.url + "/")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.tap("#tab-check")
    assert page.locator("#panel-check").is_visible() and page.locator("#panel-ask").is_hidden()
    context.close()


@pytest.fixture(scope="module")
def real_page_server():
    server = Server("--max-tokens", "400")
    yield server
    server.stop()


@pytest.mark.real
def test_a_real_answer_is_highlighted_and_a_corrupted_step_is_flagged(page, real_page_server, tmp_path):
    page.goto(real_page_server.url + "/")
    page.fill("#question", "What is 17 * 23?")
    page.click("#settings summary")
    page.select_option("#method", "target")
    page.click("#ask-button")
    page.wait_for_selector("#answer:not([hidden])", timeout=300_000)
    assert "391" in page.inner_text("#answer") and page.locator("#answer .katex").count() >= 1

    page.click("#tab-check")
    page.fill("#check-question", NATALIA)
    page.fill("#solution", WRONG)
    page.click("#check-button")
    page.wait_for_selector("#verdict:not([hidden])", timeout=300_000)
    classes = page.locator("#checked li").evaluate_all("els => els.map(e => e.className)")
    assert len(classes) == 3 and "doubtful" in classes[1] and "first" in classes[1] and "doubtful" not in classes[0]
    assert "Step 2" in page.inner_text("#verdict") and "48 / 2 = 24, not 26" in page.inner_text("#verdict")
    assert "Why: 48 / 2 = 24, not 26" in page.locator("#checked li").nth(1).inner_text()
    assert "uses 26 from step 2" in page.locator("#checked li").nth(2).inner_text()
    shot = Path(os.environ.get("SPECGUARD_SCREENSHOT", tmp_path / "tutor.png"))  # the README's picture
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
