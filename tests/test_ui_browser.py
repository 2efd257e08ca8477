"""The Streamlit UI in a real browser: `streamlit run clients/ui.py` in its own process,
pointed at a real gRPC server (the suite's tiny one), driven through selenium in headless
Debian chromium as a person would: choose the modality, set one parameter, ask, and check
what the page shows. The browser must decode each image, load each audio and video, and
fetch their sources; the server's usage log says what each request carried.

Screenshots land in var/ui-screenshots/ for a person to look at. Without chromium and its
driver the tests fail (they are not skipped): `make system-deps` installs them.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

from genserve.client import GenServe
from genserve.client.ui_mesh import PREVIEW_SIZE
from tests.media_calls import png_bytes
from tests.server_thread import ServerThread
from tests.speech import SENTENCE, speak, word_error_rate
from tests.ui_page import (
    REPLY_TIMEOUT_S,
    Finder,
    Page,
    StreamlitProcess,
    decoded_image,
    media_state,
    poll,
    start_browser,
)

# Prompt tokens the page's copy of a reply may differ from the model's own by: the page
# shows it rendered as markdown, and its text is tokenized again.
RETOKENIZE_SLACK = 3
SYSTEM_PROMPT = "You are a helpful assistant."
# The tiny model, greedy, repeats the number after this first turn, and not without it.
FIRST_TURN = "Remember the number 42."
SECOND_TURN = "Which number did I ask you to remember?"


@pytest.fixture(scope="module")
def ui(tiny_server: ServerThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("streamlit") / "streamlit.log"
    process = StreamlitProcess(f"localhost:{tiny_server.port}", log)
    try:
        process.wait_ready()
        yield process.url
    finally:
        process.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    driver = start_browser()
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(ui: str, browser: webdriver.Chrome) -> Page:
    """A fresh Streamlit session (its own history) for each test."""
    return Page(browser, ui).open()


@pytest.fixture(scope="module")
def sdk(tiny_server: ServerThread) -> Iterator[GenServe]:
    with GenServe(f"localhost:{tiny_server.port}") as gs:
        yield gs


def request_id(message: WebElement) -> str:
    """The request ID a reply's caption shows ("<modality> · request ID <id>")."""
    captions = message.find_elements(By.CSS_SELECTOR, '[data-testid="stCaptionContainer"]')
    texts = [c.text for c in captions if "request ID" in c.text]
    assert texts, f"no request ID on {message.text!r}"
    return texts[-1].rsplit(" ", 1)[1]


def reply_text(message: WebElement) -> str:
    blocks = message.find_elements(By.CSS_SELECTOR, '[data-testid="stMarkdownContainer"]')
    return "\n".join(b.text for b in blocks if "request ID" not in b.text).strip()


def one(message: WebElement, selector: str) -> WebElement:
    """The first element there, once there is one."""
    return poll(
        lambda: next(iter(message.find_elements(By.CSS_SELECTOR, selector)), None), selector
    )


def finder(root: WebElement | Callable[[], WebElement], selector: str) -> Finder:
    """Finds the element anew (NoSuchElementException while there is none, which polls
    take as "not yet"); a root given as a callable is found anew too."""

    def find() -> WebElement:
        element = root() if callable(root) else root
        return element.find_element(By.CSS_SELECTOR, selector)

    return find


def plain(text: str) -> str:
    """Text as the page shows it or the model wrote it: markdown marks and spacing off."""
    return " ".join(re.sub(r"[*_`#>]", " ", text).split())


def greedy_text(page: Page, max_new_tokens: int) -> None:
    page.choose("Modality", "text")
    page.number("max_new_tokens", max_new_tokens)
    page.choose("do_sample", "false")


def test_text_streams_into_the_reply_with_the_parameter_set(
    page: Page, tiny_server: ServerThread
) -> None:
    greedy_text(page, 8)
    reply = page.chat("What is FastAPI?")
    assert reply_text(reply)
    row = tiny_server.wait_for_usage_row(request_id(reply))
    assert row["status_code"] == "OK"
    assert 1 <= row["completion_tokens"] <= 8  # the form's max_new_tokens reached the server
    page.screenshot("text")


def test_two_turns_the_second_carries_the_first_and_the_system_prompt(
    page: Page, tiny_server: ServerThread, sdk: GenServe
) -> None:
    """The tiny model's answers are its own, so what is checked is what it was asked:
    the prompt tokens each request carried (the usage log) against the same messages
    sent by the SDK. The first turn counts exactly (system prompt + question); the second
    within the slack of re-tokenizing the page's copy of the first answer, while the
    question alone, or the conversation under the default system prompt, counts far off.
    With greedy decoding the second answer is then what the model says to the whole
    conversation, not to the question alone."""
    greedy_text(page, 24)
    page.text_area("system_prompt", SYSTEM_PROMPT)
    first = page.chat(FIRST_TURN)
    answer = reply_text(first)
    second = page.chat(SECOND_TURN)
    rows = [tiny_server.wait_for_usage_row(request_id(m)) for m in (first, second)]
    page.screenshot("chat-two-turns")

    def prompt_tokens(**fields: Any) -> int:
        return sdk.text.generate(max_new_tokens=1, do_sample=False, **fields).prompt_tokens

    conversation = [
        {"role": "user", "content": FIRST_TURN},
        {"role": "assistant", "content": answer},
    ]
    assert rows[0]["prompt_tokens"] == prompt_tokens(prompt=FIRST_TURN, system_prompt=SYSTEM_PROMPT)
    with_history = prompt_tokens(
        prompt=SECOND_TURN, messages=conversation, system_prompt=SYSTEM_PROMPT
    )
    alone = prompt_tokens(prompt=SECOND_TURN, system_prompt=SYSTEM_PROMPT)
    default_system = prompt_tokens(prompt=SECOND_TURN, messages=conversation)
    carried = rows[1]["prompt_tokens"]
    assert abs(carried - with_history) <= RETOKENIZE_SLACK, (carried, with_history)
    assert with_history - alone > rows[0]["completion_tokens"]  # the first turn made it long
    assert abs(default_system - with_history) > 2 * RETOKENIZE_SLACK  # the system prompt counts

    # The dependence itself. Greedy decoding is a function of its input: the second answer
    # is the one the model gives the whole conversation, and not the one it gives the
    # question alone (which cannot know the number it was told).
    def greedy(**fields: Any) -> str:
        return plain(sdk.text.generate(max_new_tokens=24, do_sample=False, **fields).text)

    shown = plain(reply_text(second))
    told = greedy(prompt=SECOND_TURN, messages=conversation, system_prompt=SYSTEM_PROMPT)
    not_told = greedy(prompt=SECOND_TURN, system_prompt=SYSTEM_PROMPT)
    assert shown == told, (shown, told, not_told)
    assert "42" in shown and "42" not in not_told, (shown, not_told)


def test_image_decodes_at_the_width_asked(page: Page, tiny_server: ServerThread) -> None:
    page.choose("Modality", "image")
    page.number("width", 96)
    reply = page.chat("a red square on a white table")
    size = decoded_image(page, finder(reply, "img"))
    assert size == {"width": 96, "height": 64}  # the form's width; the model's height
    assert tiny_server.wait_for_usage_row(request_id(reply))["status_code"] == "OK"
    page.screenshot("image")


def test_audio_loads_at_the_sample_rate_asked(page: Page) -> None:
    page.choose("Modality", "audio")
    page.number("sample_rate", 16000)
    reply = page.chat("Hello from genserve.")
    state = media_state(page, finder(reply, "audio"))
    assert state["status"] == 200 and state["size"] > 0, state
    assert 0 < float(state["duration"]) < 60, state  # seconds the browser read
    head = bytes.fromhex(state["head"])
    assert head[:4] == b"RIFF" and head[8:12] == b"WAVE", state
    assert struct.unpack("<I", head[24:28])[0] == 16000
    page.screenshot("audio")


def test_video_from_an_upload_plays(page: Page, tmp_path: Path) -> None:
    picture = tmp_path / "room.png"
    picture.write_bytes(png_bytes(64, 64))
    page.choose("Modality", "video")
    page.upload("image (PNG, JPEG or WebP)", picture)
    page.number("num_frames", 3)
    page.watch_progress()
    reply = page.chat("make it move")
    state = media_state(page, finder(reply, "video"))
    assert state["status"] == 200 and state["size"] > 0, state
    assert (state["width"], state["height"]) == (64, 64)
    assert 0 < float(state["duration"]) < 60, state
    assert bytes.fromhex(state["head"])[4:8] == b"ftyp"
    steps = page.progress_seen()  # the server's progress events, as the page showed them
    assert any(re.search(r"\b\d+/\d+$", step) for step in steps), steps
    page.screenshot("video")


def test_mesh_shows_a_rendered_preview_and_a_download(page: Page) -> None:
    page.choose("Modality", "mesh")
    page.number("num_inference_steps", 4)
    reply = page.chat("a chair")
    size = decoded_image(page, finder(reply, "img"))
    assert size == {"width": PREVIEW_SIZE, "height": PREVIEW_SIZE}
    assert "preview of mesh-" in reply.text
    button = one(reply, '[data-testid="stDownloadButton"]')
    assert "Download mesh-" in button.text and ".obj" in button.text
    page.screenshot("mesh")


def test_embedding_shows_its_vectors(page: Page) -> None:
    page.choose("Modality", "embedding")
    page.choose("Model", "all-MiniLM-L6-v2 (", prefix=True)  # by name, not the default
    reply = page.chat("genserve serves models over gRPC")
    shown = one(reply, '[data-testid="stJson"]').text
    assert "embeddings" in shown and "all-MiniLM-L6-v2" in shown, shown
    page.screenshot("embedding")


def test_transcription_of_an_uploaded_recording(page: Page, tmp_path: Path) -> None:
    recording = tmp_path / "speech.wav"
    speak(SENTENCE, recording)
    page.choose("Modality", "transcription")
    page.upload("audio (WAV, FLAC, MP3 or OGG)", recording)
    page.number("beam_size", 2)
    reply = page.chat("transcribe")
    assert word_error_rate(SENTENCE, reply_text(reply)) < 0.3, reply_text(reply)
    page.screenshot("transcription")


def test_errors_show_their_code_and_request_id(page: Page, tiny_server: ServerThread) -> None:
    page.choose("Modality", "image")
    reply = page.chat("x" * 3000)  # over the server's prompt limit
    error = one(reply, '[data-testid="stAlert"]').text
    assert "INVALID_ARGUMENT" in error, error
    shown_id = error.rsplit("request ID ", 1)[1].rstrip(")")
    assert tiny_server.wait_for_usage_row(shown_id)["status_code"] == "INVALID_ARGUMENT"
    page.screenshot("error")


def test_jobs_run_from_the_chat_and_play_in_the_jobs_view(
    page: Page, sdk: GenServe, tmp_path: Path
) -> None:
    page.choose("Modality", "image")
    page.toggle("Run as a job")
    page.number("num_inference_steps", 10)
    page.watch_progress()
    page.chat("a blue circle")
    image_job = newest_job(page)
    size = decoded_image(
        page, finder(lambda: page.job_card("chat", image_job), "img"), REPLY_TIMEOUT_S
    )
    assert size == {"width": 64, "height": 64}
    picture = tmp_path / "still.png"
    picture.write_bytes(png_bytes(64, 64, (40, 90, 200)))
    page.choose("Modality", "video")
    page.upload("image (PNG, JPEG or WebP)", picture)
    page.number("num_frames", 3)
    page.chat("make it move")
    video_job = newest_job(page)
    assert video_job != image_job
    media_state(page, finder(lambda: page.job_card("chat", video_job), "video"), REPLY_TIMEOUT_S)
    # The cards polled the jobs: a progress bar (queued, or step k of n) before each file.
    assert page.progress_seen(), "no job progress was shown"
    page.screenshot("jobs-chat")

    page.radio("View", "Jobs")
    listed = [card_job(card) for card in page.job_cards("view")]
    assert listed[:2] == [video_job, image_job]  # newest first
    state = media_state(page, finder(lambda: page.job_card("view", video_job), "video"))
    assert state["status"] == 200 and state["size"] > 0, state
    assert (state["width"], state["height"]) == (64, 64)
    assert 0 < float(state["duration"]) < 60, state
    image = decoded_image(page, finder(lambda: page.job_card("view", image_job), "img"))
    assert image["width"] == 64
    for job in (image_job, video_job):
        assert "succeeded" in page.job_card("view", job).text
        assert sdk.job(job).info.state.value == "succeeded"
    page.screenshot("jobs-view")


def card_job(card: WebElement) -> str:
    """The job id in a card's key (its container's class `st-key-jobcard-<where>-<id>`)."""
    classes = (card.get_attribute("class") or "").split()
    (key,) = (c for c in classes if c.startswith("st-key-jobcard-"))
    return key.rsplit("-", 1)[1]


def newest_job(page: Page) -> str:
    cards = poll(lambda: page.job_cards("chat"), "the job's card")
    return card_job(cards[-1])
