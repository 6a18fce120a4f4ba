"""The web page in headless Chromium: upload an image -> 5 results render; a non-image -> the
error shows; a refused URL -> the error shows. Saves docs/img/page.png."""

from __future__ import annotations

from tests.browser.conftest import SCREENSHOT
from tests.support import image_path


def test_upload_shows_top_5(page, web_stack, tmp_path):
    page.set_input_files("#file", str(image_path("chelsea__hflip.jpg")))
    page.wait_for_selector("#results .result >> nth=4", timeout=30_000)
    results = page.locator("#results .result")
    assert results.count() == 5
    assert results.first.get_attribute("data-key") == "catalog/chelsea.jpg"
    score = float(results.first.locator(".score").inner_text())
    assert 0.5 < score <= 1.0
    assert results.first.locator(".copy").is_visible()  # above the copy threshold: badged
    assert not results.nth(1).locator(".copy").is_visible()
    assert results.first.locator(".bar.ssim .v").inner_text() and results.first.locator(".bar.orb .v").inner_text()
    assert "ms" in page.locator("#took").inner_text()
    assert page.locator("#error").is_hidden()
    # every thumbnail (presigned URLs of the embedded S3) and the query thumbnail actually loaded
    page.wait_for_function(
        "() => [...document.querySelectorAll('#results img, #query-thumb')]"
        ".every(i => i.complete && i.naturalWidth > 0)",
        timeout=15_000,
    )
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 10_000
    assert not [m for m in page.messages if m.startswith("error")], page.messages


def test_non_image_shows_error(page, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("this is not a picture\n")
    page.set_input_files("#file", str(notes))
    error = page.locator("#error")
    error.wait_for(state="visible", timeout=30_000)
    text = error.inner_text()
    assert "not an image" in text and "415" in text
    assert error.get_attribute("data-code") == "not_an_image"
    assert page.locator("#out").is_hidden()


def test_fake_image_type_shows_error(page, tmp_path):
    fake = tmp_path / "fake.jpg"
    fake.write_bytes(b"plain text wearing a .jpg name")
    page.set_input_files("#file", str(fake))  # sent raw as image/jpeg (a binary media type), refused by the API
    error = page.locator("#error")
    error.wait_for(state="visible", timeout=30_000)
    assert error.get_attribute("data-code") == "not_an_image" and "not an image" in error.inner_text()


def test_refused_url_shows_error(page):
    page.fill("#url", "http://127.0.0.1:9/secret.jpg")
    page.click("#url-go")
    error = page.locator("#error")
    error.wait_for(state="visible", timeout=30_000)
    assert "URL is refused" in error.inner_text()
    assert error.get_attribute("data-code") == "url_refused"
