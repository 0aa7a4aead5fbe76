"""The page in a real browser (Debian's Chromium, driven by Playwright): type a prompt, generate, watch it play."""

from __future__ import annotations

import shutil

import pytest
from service_helpers import PROMPT, WAIT_S, LiveServer

from wan.config import REPO_ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT = REPO_ROOT / "docs" / "service_page.png"
STEPS = 20  # with 17 frames: sampling and decode last long enough for the page's poll to see the bar between 0 and 100

playwright = pytest.importorskip("playwright.sync_api", reason="python playwright is not installed (requirements.txt)")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no system Chromium (apt-get install chromium; CI installs it)"
)


def test_generate_from_the_page_and_watch_it_play(tmp_path):
    live = LiveServer(["--save_dir", str(tmp_path)], page=True)
    try:
        with playwright.sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM,
                headless=True,
                args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"],
            )
            page = browser.new_page(viewport={"width": 1280, "height": 960})
            page.set_default_timeout(WAIT_S * 1000)
            page.goto(live.url + "/")
            page.locator("#prompt textarea").fill(PROMPT)
            status = page.locator("#status textarea")

            page.locator("#frames input").fill("6")  # refused as the CLI refuses it, in one line
            page.locator("#generate").click()
            page.wait_for_function("() => document.querySelector('#status textarea').value.startsWith('error')")
            assert status.input_value() == "error: --frame_num 6: must be 4n+1 (e.g. 5 or 9)"

            page.locator("#frames input").fill("17")
            page.locator("#steps input").fill(str(STEPS))
            page.locator("#seed input").fill("3")
            page.locator("#generate").click()
            page.wait_for_function("() => !document.querySelector('#status textarea').value.startsWith('error')")
            bar = page.locator("#progress progress")
            seen: set[int] = set()
            while "completed" not in status.input_value():
                assert not status.input_value().startswith("error"), status.input_value()
                seen.add(int(bar.get_attribute("value")))
                page.wait_for_timeout(50)
            assert "(seed 3)" in status.input_value() and bar.get_attribute("value") == "100"
            assert any(0 < p < 100 for p in seen), f"the progress bar never stood between 0 and 100: {sorted(seen)}"

            page.wait_for_function(
                "() => { const v = document.querySelector('#video video');"
                " if (v && v.paused && v.readyState >= 2) v.play();"
                " return v !== null && v.duration > 0 && v.currentTime > 0; }"
            )
            duration = page.evaluate("document.querySelector('#video video').duration")
            assert duration > 0
            page.locator("#gallery").scroll_into_view_if_needed()
            page.wait_for_timeout(300)
            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
            browser.close()
        jobs, _ = live.service.store.page(10)
        assert [(job.status, job.settings["prompt"], job.settings["seed"]) for job in jobs] == [
            ("completed", PROMPT, 3)
        ]
    finally:
        live.close()


def test_an_image_uploaded_from_the_page_starts_its_video(tmp_path, i2v_task, i2v_ckpts, images):
    """An i2v server's page has a file input: a bad image gets the CLI's line, a good one its video."""
    argv = ["--task", str(i2v_task), "--ckpt_dir", str(i2v_ckpts["diffusers"]), "--save_dir", str(tmp_path)]
    live = LiveServer([*argv, "--device", "cpu"], page=True)
    try:
        with playwright.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            page = browser.new_page()
            page.set_default_timeout(WAIT_S * 1000)
            page.goto(live.url + "/")
            page.locator("#prompt textarea").fill(PROMPT)
            page.locator("#seed input").fill("3")
            status = page.locator("#status textarea")
            files = page.locator("#image input[type=file]")

            page.locator("#generate").click()  # no image yet: i2v refuses, saying how to give one
            page.wait_for_function("() => document.querySelector('#status textarea').value.startsWith('error')")
            assert "makes a video from an image" in status.input_value()

            files.set_input_files(str(images["transparent"]))
            page.locator("#image").get_by_text("transparent.png").wait_for()
            page.locator("#generate").click()
            page.wait_for_function("() => document.querySelector('#status textarea').value.includes('transparent')")
            assert status.input_value().startswith("error: image transparent.png has transparent pixels; flatten")

            page.locator("#image").get_by_label("Clear").click()
            files.set_input_files(str(images["portrait"]))
            page.locator("#image").get_by_text("portrait.png").wait_for()
            page.locator("#generate").click()
            page.wait_for_function("() => document.querySelector('#status textarea').value.includes('completed')")
            assert "(seed 3)" in status.input_value()
            browser.close()
        jobs, _ = live.service.store.page(10)
        assert [job.status for job in jobs] == ["completed"]
        (stored,) = (tmp_path / "images").iterdir()
        assert jobs[0].request["image"] == stored.stem and jobs[0].settings["image"] == str(stored)
        assert stored.read_bytes() == images["portrait"].read_bytes()  # the file as sent, not re-encoded
    finally:
        live.close()
