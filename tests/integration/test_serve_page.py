"""The page at / in a real headless Chromium (Debian's chromium, driven by Playwright; no browser download): it
loads, takes an image through its file input, and shows the server's top-1 class and five bars."""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import httpx
import pytest
from serving import split_pngs, start_server, train_and_deploy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# as the issue asks: no GPU, no background traffic, no component updates, a fresh profile
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT = os.environ.get("REPARAM_PAGE_SCREENSHOT")  # docs/img/serve_page.png is made with this set


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium; .ci/run does)")
def test_page_uploads_an_image_and_shows_the_top1_class(tmp_path: Path) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    run, _ = train_and_deploy(tmp_path)
    images, labels = split_pngs()
    # with an API key: what a browser user sees without it, then with it typed in
    server = start_server(run, tmp_path / "server", env={"LIT_SERVER_API_KEY": "s3cret"})
    try:
        image = tmp_path / "digit.png"
        image.write_bytes(images[0])
        expected = httpx.post(
            f"{server.url}/predict",
            json={"image": base64.b64encode(images[0]).decode()},
            headers={"X-API-Key": "s3cret"},
        ).json()
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch_persistent_context(
                str(tmp_path / "profile"),
                executable_path=CHROMIUM,
                headless=True,
                args=FLAGS,
                viewport={"width": 720, "height": 560},
            )
            try:
                page = browser.new_page()
                failed = []  # any request of the page's own that failed (the browser's favicon request was a 401)
                page.on("response", lambda r: failed.append(r.url) if r.status >= 400 else None)
                page.goto(server.url + "/")
                page.wait_for_function("document.getElementById('about').textContent.includes('API key')")
                assert page.inner_text("#about") == "this server needs an API key: type it in the API key field"
                page.set_input_files("#file", str(image))
                page.wait_for_function("document.getElementById('error').textContent !== ''")
                assert page.inner_text("#error") == "this server needs an API key: type it in the API key field"
                page.fill("#key", "wrong")
                page.wait_for_function("document.getElementById('about').textContent.startsWith('wrong')")
                assert page.inner_text("#about") == "wrong API key: check the API key field"
                page.fill("#key", "s3cret")  # the model's information follows the key as it is typed
                page.wait_for_function("document.getElementById('about').textContent.includes('accuracy')")
                assert failed and all(url.endswith(("/info", "/predict")) for url in failed), failed
                page.set_input_files("#file", str(image))
                page.wait_for_selector("#top1", timeout=60_000)
                assert page.inner_text("#top1") == expected["predictions"][0]["class"]
                assert page.locator(".row").count() == 5
                assert page.inner_text("#error") == ""
                if SCREENSHOT:
                    page.screenshot(path=SCREENSHOT)
            finally:
                browser.close()
    finally:
        assert server.stop() == 0
