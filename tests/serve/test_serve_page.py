"""The web page in a real headless browser (Debian's chromium, driven by Selenium): chat streams, images appear."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator

import openai
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if shutil.which(path) is None]
    assert not missing, f"install Debian's chromium and chromium-driver (.ci/run does): {missing} not found"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="genloom-chromium-")
    # The flags of a closed machine: no sandbox as root, and no background connections to Google's hosts.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _wait(driver: webdriver.Chrome, condition, timeout: float = 30):
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: condition(d))


def test_chat_streams_a_reply_into_the_page(server, browser):
    browser.get(server.url + "/")
    _wait(browser, lambda d: len(Select(d.find_element(By.ID, "chat-model")).options) == 3)
    Select(browser.find_element(By.ID, "chat-model")).select_by_value("chat")
    browser.find_element(By.ID, "chat-temperature").clear()
    browser.find_element(By.ID, "chat-temperature").send_keys("1")
    browser.find_element(By.ID, "chat-seed").send_keys("1")
    browser.find_element(By.ID, "chat-input").send_keys("What is 2 + 2?")
    browser.find_element(By.ID, "chat-send").click()
    reply = ("const r = document.querySelectorAll('.message.assistant .text');"
             "return r.length ? r[r.length - 1].textContent : ''")
    # Streamed: text is on the page while the Stop button is still enabled (the answer is not complete).
    _wait(browser, lambda d: d.execute_script(reply))
    _wait(browser, lambda d: d.find_element(By.ID, "chat-send").is_enabled())  # the stream ended
    expected = openai.OpenAI(base_url=server.url + "/v1", api_key="-").chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "What is 2 + 2?"}], temperature=1, seed=1)
    assert browser.execute_script(reply) == expected.choices[0].message.content
    assert browser.find_elements(By.CSS_SELECTOR, ".message.user .text")[-1].text == "What is 2 + 2?"
    assert browser.find_element(By.ID, "status").text == ""


def test_the_image_tab_draws_into_the_gallery_with_either_method(server, browser):
    browser.get(server.url + "/")
    browser.find_element(By.ID, "tab-images").click()
    _wait(browser, lambda d: len(Select(d.find_element(By.ID, "image-model")).options) == 2)
    picker = Select(browser.find_element(By.ID, "image-model"))
    assert [o.text for o in picker.options] == ["images (tokens)", "diffusion (diffusion)"]
    steps = browser.find_element(By.ID, "image-steps")
    assert not steps.is_enabled() and steps.get_attribute("placeholder") == "16 (fixed)"  # 4x4 image tokens
    browser.find_element(By.ID, "image-prompt").send_keys("a red circle")
    browser.find_element(By.ID, "image-n").clear()
    browser.find_element(By.ID, "image-n").send_keys("2")
    browser.find_element(By.ID, "image-send").click()
    _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gallery img.generated")) == 2)
    picker.select_by_value("diffusion")
    assert steps.is_enabled() and steps.get_attribute("placeholder") == "20"
    steps.send_keys("3")
    browser.find_element(By.ID, "image-send").click()
    _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gallery img.generated")) == 4)
    widths = browser.execute_script("return [...document.querySelectorAll('#gallery img')].map(i => i.naturalWidth)")
    assert widths == [8, 8, 8, 8]
    link = browser.find_element(By.CSS_SELECTOR, "#gallery a")
    assert link.get_attribute("download").endswith(".png")


def test_the_translate_tab_shows_the_translation(server, browser):
    browser.get(server.url + "/")
    browser.find_element(By.ID, "tab-translate").click()
    _wait(browser, lambda d: len(Select(d.find_element(By.ID, "translate-model")).options) == 1)
    browser.find_element(By.ID, "translate-input").send_keys("a red circle")
    browser.find_element(By.ID, "translate-send").click()
    _wait(browser, lambda d: d.find_element(By.ID, "translate-send").is_enabled()
          and d.find_element(By.ID, "status").text == "" and d.find_element(By.ID, "translate-output").text != "")
