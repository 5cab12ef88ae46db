"""A real browser on the gateway: headless Chromium (Debian's chromium and
chromium-driver, driven by selenium) opens a snapshot's page, follows a
directory link, downloads a file and gets its exact bytes, and leaves a
screenshot of each page in the test artifacts (``$KACHERY_TEST_ARTIFACTS``,
default ``test-artifacts/`` in the checkout)."""

import os
import random
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from server_helpers import command_path, servers  # noqa: F401  (fixture)

pytestmark = pytest.mark.server

ARTIFACTS = Path(os.environ.get("KACHERY_TEST_ARTIFACTS",
                                Path(__file__).resolve().parent.parent / "test-artifacts"))


@pytest.fixture
def browser(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    chromium = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.skip("needs Debian's chromium and chromium-driver (scripts/install.sh --test)")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=900,700", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(argument)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    service = webdriver.ChromeService(executable_path=driver_path, log_output=str(tmp_path / "driver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.downloads = downloads
    try:
        yield driver
    finally:
        driver.quit()


def test_chromium_browses_a_snapshot_and_downloads_exact_bytes(tmp_path, browser, servers):  # noqa: F811
    from selenium.webdriver.common.by import By

    payload = random.Random(7).randbytes(300_000)
    tree = tmp_path / "results"
    (tree / "run 1").mkdir(parents=True)
    (tree / "run 1" / "traces ü.bin").write_bytes(payload)
    (tree / "notes.md").write_text("# notes\n")
    storage = tmp_path / "server-storage"
    env = dict(os.environ, KACHERY_STORAGE_DIR=str(storage), KACHERY_CONFIG="/nonexistent")
    url = subprocess.run([command_path("kachery-store"), str(tree)], env=env, check=True,
                         capture_output=True, text=True).stdout.strip()
    server = servers.kachery(storage=storage)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    browser.get(f"{server.url}/sha1dir/{url.split('://', 1)[1]}")  # redirected to the slash form
    assert browser.title == url
    assert "2 files" in browser.find_element(By.CLASS_NAME, "summary").text
    browser.save_screenshot(str(ARTIFACTS / "gateway-snapshot.png"))

    browser.find_element(By.LINK_TEXT, "run 1/").click()
    assert browser.current_url.endswith("/run%201/")
    assert browser.find_element(By.TAG_NAME, "nav").text.endswith("/ run 1")
    browser.save_screenshot(str(ARTIFACTS / "gateway-directory.png"))

    copy = browser.find_elements(By.CSS_SELECTOR, "button.copy")[-1]
    assert copy.get_attribute("data-url").endswith("/traces ü.bin")
    copy.click()
    deadline = time.monotonic() + 5
    while copy.text == "copy" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert copy.text == "copied"
    for name in ("gateway-snapshot.png", "gateway-directory.png"):  # the artifacts were saved
        assert (ARTIFACTS / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    browser.find_element(By.CSS_SELECTOR, "a.download").click()
    saved = browser.downloads / "traces ü.bin"
    deadline = time.monotonic() + 30
    while not saved.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert saved.exists(), sorted(os.listdir(browser.downloads))
    assert saved.read_bytes() == payload
    # no script error on either page (the copy script is the only one, allowed by its hash)
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors
