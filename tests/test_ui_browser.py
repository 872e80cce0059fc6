"""The web app in a real browser: Debian's Chromium driven by Playwright against `python -m vlm_app ui`.

Uploads a generated video, asks, watches the answer stream in, presses Stop mid-stream, then compares two
models; describes a longer video in chapters and seeks on their timeline. Screenshots go to
artifacts/screenshots/ (git-ignored; CI keeps them as artifacts).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "screenshots"
LONG_ANSWER_TOKENS = 2048



@pytest.fixture
def page(ui_server):
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("the browser test needs Debian's Chromium: apt-get install -y chromium (.ci/run does this)")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        # a fresh temporary profile per launch is Playwright's default
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 950})
        page.goto(ui_server.url)
        page.wait_for_selector("#chat-input textarea")
        try:
            yield page
        finally:
            browser.close()


def set_max_new_tokens(page, tokens: int) -> None:
    field = page.locator("#max-new-tokens input[type=number]")
    if not field.is_visible():
        page.get_by_text("Generation", exact=True).click()
    field.fill(str(tokens))
    field.press("Enter")


def ask(page, box: str, video: Path, prompt: str) -> None:
    page.locator(f"#{box} input[type=file]").set_input_files(str(video))
    page.wait_for_selector(f"#{box} video, #{box} .thumbnail-item, #{box} img", timeout=30_000)
    page.locator(f"#{box} textarea").fill(prompt)
    page.locator(f"#{box} textarea").press("Enter")


def stat(page, element: str, label: str) -> str:
    """The value next to `label` in a stats table."""
    return page.locator(f"#{element} tr", has_text=label).locator("td").last.inner_text().strip()


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_chat_streams_stops_and_compare_shows_both_models(page, ui_server, ui_clip):
    from playwright.sync_api import expect

    set_max_new_tokens(page, LONG_ANSWER_TOKENS)
    ask(page, "chat-input", ui_clip, "Describe the video.")
    answer = page.locator("#chatbot .bot").last

    lengths = set()
    wait_for(lambda: answer.count() and lengths.add(len(answer.inner_text())) is None and
             len([n for n in lengths if n > 0]) >= 3, 60, "three growing partial answers")
    page.screenshot(path=str(SCREENSHOTS / "chat_streaming.png"))

    page.locator("#stop").click()
    expect(page.locator("#chat-stats")).to_contain_text("stopped", timeout=30_000)
    assert stat(page, "chat-stats", "stopped") == "True"
    assert 0 < int(stat(page, "chat-stats", "new tokens")) < LONG_ANSWER_TOKENS
    stopped_text = answer.inner_text()
    time.sleep(1.0)
    assert answer.inner_text() == stopped_text  # nothing more arrives after Stop
    expect(page.locator("#seen")).to_contain_text("frame 0")
    page.screenshot(path=str(SCREENSHOTS / "chat_stopped.png"))

    set_max_new_tokens(page, 24)
    page.get_by_role("tab", name="Compare").click()
    ask(page, "compare-input", ui_clip, "What happens in this clip?")
    for position in (0, 1):
        expect(page.locator(f"#compare-stats-{position}")).to_contain_text("tokens/s", timeout=120_000)
        assert page.locator(f"#compare-answer-{position}").inner_text().strip()
        assert int(stat(page, f"compare-stats-{position}", "frames shown")) > 0
        assert int(stat(page, f"compare-stats-{position}", "visual tokens")) > 0
    headers = [page.locator(f"#compare-header-{position}").inner_text() for position in (0, 1)]
    assert headers == [Path(model).name for model in ui_server.models]  # not blind: named, in order
    page.screenshot(path=str(SCREENSHOTS / "compare.png"), full_page=True)



def test_timeline_cue_click_seeks_and_shows_subtitles(tiny_checkpoints, ui_clip, monkeypatch, tmp_path):
    """Random-weight tiny models never write timestamps, so the answer's cues are pinned here; everything else
    (the real answer, the player, the cue list, seeking, subtitle track and files) runs as in the app."""
    from playwright.sync_api import expect, sync_playwright

    from vlm_app.ui import chat, timeline
    from vlm_app.ui.app import create_app, launch_options

    cues = timeline.find_cues("00:00 - 00:01: a red square enters\n00:01.5 it leaves", duration=2.0)
    monkeypatch.setattr(chat.timeline, "find_cues", lambda text, duration=None: cues)
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    demo, backend = create_app([str(tiny_checkpoints["smolvlm2"])], votes_path=str(tmp_path / "votes.jsonl"),
                               device="cpu")
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **launch_options(backend, "127.0.0.1", None,
                                                                                    False))
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 950})
            page.goto(url)
            page.wait_for_selector("#chat-input textarea")
            set_max_new_tokens(page, 8)
            ask(page, "chat-input", ui_clip, "List the events with times.")
            expect(page.locator("#cues")).to_contain_text("00:01–00:02 · it leaves", timeout=60_000)
            expect(page.locator("#player video")).to_have_count(1)
            assert page.locator("#player track").count() == 1  # the answer as a subtitle track
            page.locator("#cues label", has_text="it leaves").click()
            wait_for(lambda: page.evaluate("document.querySelector('#player video').currentTime") == 1.5, 10,
                     "the player to jump to 1.5 s")
            for suffix in (".srt", ".vtt", ".json"):  # the file list renders name and suffix apart
                expect(page.locator("#downloads")).to_contain_text(suffix)
            page.screenshot(path=str(SCREENSHOTS / "timeline.png"))
            browser.close()
    finally:
        demo.close()
        backend.close()


def test_chapters_of_a_long_video_fill_the_timeline(page, ui_long_clip):
    """A video too long for one answer, described in 4 s chapters: they stream into the chat, then the timeline
    lists them, a click seeks to a chapter's start, and the chapters download as SRT/VTT/JSON."""
    from playwright.sync_api import expect

    set_max_new_tokens(page, 4)
    page.get_by_text("Chapters: the last video part by part", exact=False).click()
    length = page.locator("#segment-seconds input[type=number]")
    length.fill("4")
    length.press("Tab")
    page.locator("#chat-input input[type=file]").set_input_files(str(ui_long_clip))
    page.wait_for_selector("#chat-input video, #chat-input .thumbnail-item", timeout=30_000)
    page.locator("#chapters").click()
    expect(page.locator("#chatbot .bot").last).to_contain_text("Summary:", timeout=120_000)
    for label in ("00:00–00:04", "00:04–00:08", "00:08–00:10"):
        expect(page.locator("#cues")).to_contain_text(label)
    page.locator("#cues label", has_text="00:04–00:08").click()
    wait_for(lambda: page.evaluate("document.querySelector('#player video').currentTime") == 4, 10,
             "the player to jump to the second chapter")
    assert page.locator("#player track").count() == 1  # the chapters as a subtitle track
    for suffix in (".srt", ".vtt", ".json"):
        expect(page.locator("#downloads")).to_contain_text(suffix)
    page.screenshot(path=str(SCREENSHOTS / "chapters.png"), full_page=True)
