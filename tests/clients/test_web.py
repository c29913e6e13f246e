"""The web page at / in headless Chromium (Debian's, driven by Playwright): chat streams, stop aborts,
Markdown is rendered without HTML injection, the API key stays in localStorage, translate works.
Screenshots land in artifacts/ (gitignored)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.clients.metrics_util import scrape, total, wait_for
from tests.helpers.live_server import SubprocessServer

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
LAST_ANSWER = ".msg.assistant:last-child .content"

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"{CHROMIUM} absent: `make test-tools` installs Debian's chromium")


@pytest.fixture(scope="module")
def page(live_server: SubprocessServer):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")
    with sync_api.sync_playwright() as p:
        # --no-sandbox: tests run as root, where Chromium's sandbox refuses to start
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        page.set_default_timeout(60_000)
        page.goto(live_server.base_url + "/")
        page.wait_for_selector("#model option[value=default]", state="attached")
        yield page
        browser.close()


def answer_length(page) -> int:
    return page.eval_on_selector(LAST_ANSWER, "el => el.textContent.length")


def test_chat_streams_and_stop_aborts_on_the_server(page, live_server: SubprocessServer) -> None:
    url = live_server.base_url
    aborted_before = total(scrape(url), "glmserve:request_success_total", finished_reason="abort")
    page.fill("#max-tokens", "1000")
    page.fill("#prompt", "Write a long story about a brave cat who sails around the world.")
    page.press("#prompt", "Enter")
    page.wait_for_selector(".msg.assistant.streaming")
    page.wait_for_function(f"document.querySelector('{LAST_ANSWER}').textContent.trim().length > 0")
    first = answer_length(page)
    # it grows while streaming: more text arrives after the first paint
    page.wait_for_function(f"document.querySelector('{LAST_ANSWER}').textContent.length > {max(first, 20)}")
    assert page.is_disabled("#send") and page.is_enabled("#stop")
    page.click("#stop")
    page.wait_for_selector(".msg.assistant.stopped")
    assert "stopped" in page.text_content("#chat-status")
    assert page.is_enabled("#send") and page.is_disabled("#stop")
    # AbortController closed the connection; the server aborted the generation
    assert wait_for(lambda: total(scrape(url), "glmserve:request_success_total", finished_reason="abort")
                    >= aborted_before + 1, timeout=10)
    assert wait_for(lambda: total(scrape(url), "glmserve:num_requests_running") == 0, timeout=5)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-chat.png"), full_page=True)


def test_a_follow_up_answer_completes_with_ttft(page) -> None:
    page.fill("#max-tokens", "4")
    page.fill("#temperature", "0")
    page.fill("#prompt", "你好！")
    page.click("#send")
    page.wait_for_selector(".msg.assistant.done")
    assert page.locator(".msg.user").count() == 2
    status = page.text_content("#chat-status")
    assert "TTFT" in status and "tok/s" in status


def test_markdown_from_the_model_cannot_inject_html(page) -> None:
    html = page.evaluate("""() => {
        const el = document.createElement('div');
        el.innerHTML = window.glmserveMarkdown.renderMarkdown(
            '**bold** <img src=x onerror="window.__pwned=1"> [x](javascript:alert(1)) `<b>`\\n' +
            '```html\\n<script>window.__pwned=2</script>\\n```\\n- item <i>i</i>');
        document.body.appendChild(el);
        return el.innerHTML;
    }""")
    assert "<strong>bold</strong>" in html and "<li>item &lt;i&gt;i&lt;/i&gt;</li>" in html
    assert "&lt;img src=x" in html and "<img" not in html and "<script" not in html
    assert "href" not in html  # only http(s) links become anchors
    assert "<code>&lt;b&gt;</code>" in html
    page.wait_for_timeout(100)  # an onerror handler would have fired by now
    assert page.evaluate("window.__pwned") is None


def test_api_key_is_kept_in_local_storage_only(page, live_server: SubprocessServer) -> None:
    page.fill("#api-key", "sk-test-local")
    page.dispatch_event("#api-key", "change")
    assert page.evaluate("localStorage.getItem('glmserve.apiKey')") == "sk-test-local"
    page.reload()
    page.wait_for_selector("#model option[value=default]", state="attached")
    assert page.input_value("#api-key") == "sk-test-local"
    page.fill("#api-key", "")
    page.dispatch_event("#api-key", "change")


def test_translate_tab_streams_a_translation(page) -> None:
    page.click("[data-tab=translate]")
    assert page.is_hidden("#panel-chat") and page.is_visible("#panel-translate")
    page.fill("#tr-input", "你好，世界。")  # short: the server caps a translation at ~2x the source tokens
    page.fill("#tr-target", "en")
    page.click("#tr-run")
    page.wait_for_function("document.getElementById('tr-status').textContent !== '…'", timeout=150_000)
    assert page.text_content("#tr-status") == "done"
    assert page.text_content("#tr-output").strip()
    page.screenshot(path=str(ARTIFACTS / "web-translate.png"), full_page=True)
