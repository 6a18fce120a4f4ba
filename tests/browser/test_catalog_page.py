"""The page's Catalog view in headless Chromium, against the local stack: the list pages through
the catalog with thumbnails, a delete (after its confirm) removes the image from the list, from
S3 and from the next search; a refused listing shows its error; "Find duplicates" runs a report
through the stack's DuplicatesQueue and shows the planted copies' groups side by side, and the
list marks each copy. Saves docs/img/catalog.png."""

from __future__ import annotations

import time

import cv2
import numpy as np

from tests.browser.conftest import SCREENSHOT
from tests.support import CATALOG_NAMES, all_keys, image_path

CATALOG_SCREENSHOT = SCREENSHOT.with_name("catalog.png")
EXTRA = "zz-extra/rocket-brighter.jpg"  # a catalog image of its own content (not a copy of rocket.jpg)
PAGE_SIZE = 4


def _catalog_keys(page) -> list[str]:
    return page.eval_on_selector_all("#cat-list .cat-item", "els => els.map(e => e.dataset.key)")


def _search_keys(page, name: str) -> list[str]:
    """Search with ``name`` through the Search view; the result keys it shows."""
    page.click("#tab-search")
    page.evaluate("() => { document.getElementById('results').innerHTML = ''; }")
    page.set_input_files("#file", str(image_path(name)))
    page.wait_for_selector("#results .result", timeout=30_000)
    return page.eval_on_selector_all("#results .result", "els => els.map(e => e.dataset.key)")


def test_catalog_lists_deletes_and_search_forgets(page, web_stack):
    s3, bucket = web_stack.client(), web_stack.config.bucket
    s3.put_object(
        Bucket=bucket,
        Key="catalog/" + EXTRA,
        Body=image_path("rocket__brighter.jpg").read_bytes(),
        ContentType="image/jpeg",
    )
    web_stack.wait_idle(60)
    try:
        page.goto(f"{web_stack.url}?limit={PAGE_SIZE}#catalog")
        page.wait_for_selector(f"#cat-list .cat-item >> nth={PAGE_SIZE - 1}", timeout=30_000)
        assert len(_catalog_keys(page)) == PAGE_SIZE  # one page of the cursor
        pages = 1
        while page.locator("#cat-more").is_visible():
            before = len(_catalog_keys(page))
            page.click("#cat-more")
            page.wait_for_function(f"() => document.querySelectorAll('#cat-list .cat-item').length > {before}")
            pages += 1
        expected = sorted(["catalog/" + n for n in CATALOG_NAMES] + ["catalog/" + EXTRA])
        assert _catalog_keys(page) == expected
        assert pages == -(-len(expected) // PAGE_SIZE)
        # every thumbnail (presigned GETs of the embedded S3) loaded
        page.wait_for_function(
            "() => [...document.querySelectorAll('#cat-list img')].every(i => i.complete && i.naturalWidth > 0)",
            timeout=15_000,
        )
        assert page.locator("#cat-error").is_hidden()

        # the search finds the extra image before the delete
        assert _search_keys(page, "rocket__brighter.jpg")[0] == "catalog/" + EXTRA

        page.click("#tab-catalog")
        # a dismissed confirm deletes nothing
        item = page.locator(f'#cat-list .cat-item[data-key="catalog/{EXTRA}"]')
        page.once("dialog", lambda d: d.dismiss())
        item.locator("button.del").click()
        time.sleep(0.5)
        assert item.count() == 1 and "catalog/" + EXTRA in all_keys(s3, bucket, "catalog/")

        dialogs: list[str] = []

        def accept(d):
            dialogs.append(d.message)
            d.accept()

        page.once("dialog", accept)
        item.locator("button.del").click()
        item.wait_for(state="detached", timeout=30_000)
        assert EXTRA in dialogs[0]
        assert page.locator("#cat-status").inner_text() == f"Deleted {EXTRA}."
        assert "catalog/" + EXTRA not in _catalog_keys(page)
        assert "catalog/" + EXTRA not in all_keys(s3, bucket, "catalog/")

        # gone from a following search (a warm function that did not serve the delete may keep
        # its index up to its refresh time)
        ttl = float(web_stack.template.functions["SearchFunction"].environment.get("HARMONY_INDEX_TTL_SECONDS") or 10)
        deadline = time.monotonic() + ttl + 10
        while "catalog/" + EXTRA in (keys := _search_keys(page, "rocket__brighter.jpg")):
            assert time.monotonic() < deadline, keys
            time.sleep(1)
        assert keys[0] == "catalog/rocket.jpg"
        assert not [m for m in page.messages if m.startswith("error")], page.messages
    finally:
        s3.delete_object(Bucket=bucket, Key="catalog/" + EXTRA)
        web_stack.wait_idle(60)


def test_catalog_error_is_shown(page, web_stack):
    page.goto(f"{web_stack.url}#catalog")
    page.wait_for_selector("#cat-list .cat-item", timeout=30_000)
    page.fill("#cat-prefix", "../index/")
    page.click("#cat-refresh")
    error = page.locator("#cat-error")
    error.wait_for(state="visible", timeout=30_000)
    assert error.get_attribute("data-code") == "bad_key"
    assert "could not be listed" in error.inner_text() and "400" in error.inner_text()


def test_find_duplicates_shows_the_groups(page, web_stack):
    s3, bucket = web_stack.client(), web_stack.config.bucket
    coffee = cv2.imdecode(np.frombuffer(image_path("coffee.jpg").read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    planted = {
        "catalog/zz-dups/chelsea-copy.jpg": image_path("chelsea.jpg").read_bytes(),  # the same file
        "catalog/zz-dups/coffee-q40.jpg": cv2.imencode(".jpg", coffee, [cv2.IMWRITE_JPEG_QUALITY, 40])[1].tobytes(),
    }
    for key, data in planted.items():
        s3.put_object(Bucket=bucket, Key=key, Body=data, ContentType="image/jpeg")
    web_stack.wait_idle(60)
    try:
        page.goto(f"{web_stack.url}#catalog")
        page.wait_for_selector("#cat-list .cat-item", timeout=30_000)
        page.click("#dup-run")
        page.wait_for_function(
            "() => document.querySelectorAll('#dup-groups .dup-group').length >= 2"
            " || !document.getElementById('cat-error').classList.contains('hidden')",
            timeout=180_000,
        )
        assert page.locator("#cat-error").is_hidden(), page.locator("#cat-error").inner_text()
        groups = page.eval_on_selector_all(
            "#dup-groups .dup-group",
            "gs => gs.map(g => ({keep: g.dataset.keep, members: [...g.querySelectorAll('.dup-member')]"
            ".map(m => m.dataset.key)}))",
        )
        assert sorted((g["keep"], sorted(g["members"])) for g in groups) == [
            ("catalog/chelsea.jpg", ["catalog/chelsea.jpg", "catalog/zz-dups/chelsea-copy.jpg"]),
            ("catalog/coffee.jpg", ["catalog/coffee.jpg", "catalog/zz-dups/coffee-q40.jpg"]),
        ]
        # side by side: one row per group, the keeper first and marked
        first = page.locator("#dup-groups .dup-group").first
        boxes = [m.bounding_box() for m in first.locator(".dup-member").all()]
        assert boxes[0]["y"] == boxes[1]["y"] and boxes[0]["x"] < boxes[1]["x"]
        assert "keeper" in (first.locator(".dup-member").first.get_attribute("class") or "")
        page.wait_for_function(
            "() => [...document.querySelectorAll('#dup-groups img')].every(i => i.complete && i.naturalWidth > 0)",
            timeout=15_000,
        )
        # the list, reloaded after the report, marks each copy with the key its group keeps
        copy_item = page.locator('#cat-list .cat-item[data-key="catalog/zz-dups/coffee-q40.jpg"]')
        copy_item.locator(".badge.dup").wait_for(timeout=30_000)
        assert copy_item.locator(".badge.dup").inner_text() == "duplicate of coffee.jpg"
        assert page.locator('#cat-list .cat-item[data-key="catalog/coffee.jpg"] .badge.dup').count() == 0
        page.wait_for_function(
            "() => [...document.querySelectorAll('#cat-list img')].every(i => i.complete && i.naturalWidth > 0)",
            timeout=15_000,
        )
        CATALOG_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(CATALOG_SCREENSHOT), full_page=True)
        assert CATALOG_SCREENSHOT.stat().st_size > 10_000

        # a fresh page shows the latest report without running it again
        page.goto(f"{web_stack.url}#catalog")
        page.wait_for_selector("#dup-groups .dup-group >> nth=1", timeout=30_000)
        assert not [m for m in page.messages if m.startswith("error")], page.messages
    finally:
        for key in planted:
            s3.delete_object(Bucket=bucket, Key=key)
        web_stack.wait_idle(60)
