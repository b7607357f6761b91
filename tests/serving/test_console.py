"""The agent console in a real headless Chromium: a pushy draft shows the overbearing hint with its evidence
highlighted, a clean draft shows none. Keeps a screenshot in tests/artifacts/console.png.

The server runs the rule baseline behind the same interface as the model (`--engine rules`): a tiny random model
cannot tell pushy from clean, and the shipped model is a placeholder that will change, while the rules decide
these two drafts the same way every time. What is under test is the page and the service, not the classifier.
"""
import socket
import threading
import time
from pathlib import Path

import pytest
import uvicorn

from hengwen.serving.app import ServeSettings, create_app

from ..conftest import headless_chromium

pytestmark = pytest.mark.slow

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
PUSHY = "亲别犹豫啦，现在下单吧，我这个月业绩还差一单"
CLEAN = "好的，您慢慢看，有尺码的问题随时找我"


@pytest.fixture(scope="module")
def server_url():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(ServeSettings(engine="rules")), host="127.0.0.1", port=port,
                                          log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the test server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def browser():
    driver = headless_chromium("1280,860")
    yield driver
    driver.quit()


def type_draft(browser, text):
    from selenium.webdriver.common.by import By
    draft = browser.find_element(By.ID, "draft")
    draft.clear()
    draft.send_keys(text)


def wait_for_hints(browser, draft, state):
    """Waits until the hints shown are the answer for exactly this draft (older answers are dropped)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    hints = browser.find_element(By.ID, "hints")
    WebDriverWait(browser, 20).until(
        lambda _: hints.get_attribute("data-draft") == draft and hints.get_attribute("data-state") != "loading")
    assert hints.get_attribute("data-state") == state
    return hints


def test_pushy_draft_shows_overbearing_with_evidence_and_clean_draft_shows_none(server_url, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    browser.get(server_url + "/")
    turn = browser.find_element(By.ID, "turn-text")
    for text in ("这件羽绒服有黑色L码吗", "好的，我先自己看看，不需要推荐"):
        turn.send_keys(text + Keys.ENTER)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#conversation li.customer")) == 2

    type_draft(browser, PUSHY)
    hints = wait_for_hints(browser, PUSHY, "flagged")
    cards = hints.find_elements(By.CSS_SELECTOR, "article.hint")
    assert [card.get_attribute("data-label") for card in cards] == ["overbearing"]
    highlighted = [mark.text for mark in cards[0].find_elements(By.CSS_SELECTOR, ".evidence mark")]
    assert "现在下单" in highlighted and "业绩" in highlighted
    assert {mark.text for mark in browser.find_elements(By.CSS_SELECTOR, "#draft-preview mark")} >= {"现在下单", "业绩"}
    assert cards[0].find_element(By.CSS_SELECTOR, ".advice").text
    ARTIFACTS.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "console.png"))

    type_draft(browser, CLEAN)
    hints = wait_for_hints(browser, CLEAN, "clean")
    assert hints.find_elements(By.CSS_SELECTOR, "article.hint") == []
    assert browser.find_elements(By.CSS_SELECTOR, "#draft-preview mark") == []
