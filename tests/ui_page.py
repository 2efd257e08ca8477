"""The Streamlit UI in a real browser, for tests: `streamlit run clients/ui.py` in its own
process on a free port, headless Debian chromium through selenium, and the few gestures a
person makes on the page (choose in a select box, type a number, upload, chat).

Streamlit's markup is found by its `data-testid`s and the widgets by their labels, as a
person finds them; waits are bounded polls of the page, never sleeps.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
)
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

from tests.server_thread import REPO_ROOT

T = TypeVar("T")

UI_SCRIPT = REPO_ROOT / "clients" / "ui.py"
SCREENSHOTS = REPO_ROOT / "var" / "ui-screenshots"
START_TIMEOUT_S = 60
STEP_TIMEOUT_S = 30  # a click, a rerun
REPLY_TIMEOUT_S = 180  # a generation on two shared CPU cores
WINDOW = (1400, 1100)
CHOOSE_TRIES = 3  # a select box's option clicked again if the list closed unchosen
CHOSEN_S = 5
CHROMIUM_MISSING = (
    "the real-browser UI test needs Debian's chromium and chromium-driver "
    "(`make system-deps` installs them: apt-get install chromium chromium-driver)"
)


def browser_binaries() -> tuple[str, str]:
    """chromium and chromedriver; AssertionError (a failure, not a skip) if missing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    assert chromium and driver, CHROMIUM_MISSING
    return chromium, driver


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class StreamlitProcess:
    """`streamlit run clients/ui.py` against a gRPC target, until stop()."""

    def __init__(self, target: str, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = os.environ | {"GENSERVE_UI_TARGET": target}
        command = [
            sys.executable, "-m", "streamlit", "run", str(UI_SCRIPT),
            "--server.headless=true", "--server.address=127.0.0.1",
            f"--server.port={self.port}", "--server.fileWatcherType=none",
            "--browser.gatherUsageStats=false",
        ]  # fmt: skip
        self._log = log_path.open("wb")
        self._process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def wait_ready(self) -> None:
        """Streamlit's own health endpoint answers "ok" once it serves."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert self._process.poll() is None, f"streamlit exited: see {self._log.name}"
            try:
                if httpx.get(f"{self.url}/_stcore/health", timeout=2).text == "ok":
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"streamlit not up in {START_TIMEOUT_S} s"
            time.sleep(0.2)

    def stop(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._log.close()


def start_browser() -> webdriver.Chrome:
    chromium, driver_path = browser_binaries()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    # The browser's log of the websocket frames it receives: the page's run counter reads
    # the server's script_finished messages there (see Page.runs).
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    network_only = {"enableNetwork": True, "enablePage": False}
    options.add_experimental_option("perfLoggingPrefs", network_only)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--mute-audio",
        "--autoplay-policy=no-user-gesture-required",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
    ):
        options.add_argument(argument)
    service = webdriver.ChromeService(executable_path=driver_path)
    return webdriver.Chrome(options=options, service=service)


def poll(probe: Callable[[], T | bool | None], what: str, timeout: float = STEP_TIMEOUT_S) -> T:
    """The probe's first truthy value; a stale or missing element counts as not yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = probe()
            if value:
                return value  # type: ignore[return-value]
        except (NoSuchElementException, StaleElementReferenceException):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(0.1)


BINARY_FRAME = 2  # a websocket opcode; Streamlit's ForwardMsgs are binary frames
RUN_ENDS = {
    ForwardMsg.FINISHED_SUCCESSFULLY,
    ForwardMsg.FINISHED_WITH_COMPILE_ERROR,
    ForwardMsg.FINISHED_FRAGMENT_RUN_SUCCESSFULLY,
}  # not FINISHED_EARLY_FOR_RERUN: the run that replaces it ends later


def ran_to_an_end(frame: bytes) -> bool:
    """Whether a frame from the server is a script_finished that ends a run."""
    message = ForwardMsg.FromString(frame)
    return message.WhichOneof("type") == "script_finished" and message.script_finished in RUN_ENDS


class Page:
    """The UI's page in the browser: one Streamlit session per open()."""

    def __init__(self, driver: webdriver.Chrome, url: str) -> None:
        self.driver = driver
        self.url = url
        self._runs = 0

    def open(self) -> Page:
        self.driver.get(self.url)
        self.widget("stSelectbox", "Modality", START_TIMEOUT_S)
        self.wait_idle()
        self.runs()  # what the browser got until now: this page's first run, earlier pages'
        self._runs = 0
        return self

    # -- finding -------------------------------------------------------------------------

    def widget(self, testid: str, label: str, timeout: float = STEP_TIMEOUT_S) -> WebElement:
        """The widget (by its data-testid) whose label reads `label`."""

        def find() -> WebElement | None:
            for element in self.driver.find_elements(By.CSS_SELECTOR, f'[data-testid="{testid}"]'):
                labels = element.find_elements(By.CSS_SELECTOR, '[data-testid="stWidgetLabel"]')
                if labels and labels[0].text.strip() == label:
                    return element
            return None

        return poll(find, f"{testid} {label!r}", timeout)

    def wait_idle(self, timeout: float = REPLY_TIMEOUT_S) -> None:
        """The script's run has ended: Streamlit marks its app element with the state."""

        def idle() -> bool:
            app = self.driver.find_element(By.CSS_SELECTOR, '[data-testid="stApp"]')
            return app.get_attribute("data-test-script-state") == "notRunning"

        poll(idle, "the script's run to end", timeout)

    def runs(self) -> int:
        """How many script runs have ended since open(): the script_finished messages the
        server has sent the page. Counted off the wire, not off the page's run-state
        attribute, because React may render a quick run's "running" and "notRunning" as one
        update, and then the attribute never changes."""
        for entry in self.driver.get_log("performance"):
            event = json.loads(entry["message"])["message"]
            if event["method"] != "Network.webSocketFrameReceived":
                continue
            frame = event["params"]["response"]
            if frame.get("opcode") == BINARY_FRAME:
                self._runs += ran_to_an_end(base64.b64decode(frame["payloadData"]))
        return self._runs

    def rerun_after(self, gesture: Callable[[], Any], timeout: float = REPLY_TIMEOUT_S) -> None:
        """Makes the gesture and waits for the run it starts to end."""
        before = self.runs()
        gesture()
        self._run_ended_since(before, timeout)

    def _run_ended_since(self, before: int, timeout: float) -> None:
        """Waits for a run to end beyond the `before` counted, and the page to show it."""
        poll(lambda: self.runs() > before, "a run after the gesture", timeout)
        self.wait_idle(timeout)

    def messages(self, role: str = "") -> list[WebElement]:
        bubbles = self.driver.find_elements(By.CSS_SELECTOR, '[data-testid="stChatMessage"]')
        if not role:
            return bubbles
        avatar = f'[data-testid="stChatMessageAvatar{role.capitalize()}"]'
        return [b for b in bubbles if b.find_elements(By.CSS_SELECTOR, avatar)]

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    # -- gestures ------------------------------------------------------------------------

    def choose(self, label: str, option: str, prefix: bool = False) -> None:
        """A select box's option (Streamlit's is a React Aria combo box); with `prefix`,
        the first option whose text starts so. A click that lands while the list is still
        opening can close it unchosen; then the box still shows the old value and no run
        has started, and the gesture is made again."""

        def field() -> WebElement:
            box = self.widget("stSelectbox", label)
            return box.find_element(By.CSS_SELECTOR, '[role="combobox"]')

        def item() -> WebElement | None:
            for candidate in self.driver.find_elements(By.CSS_SELECTOR, '[role="option"]'):
                text = candidate.text.strip()
                if text == option or (prefix and text.startswith(option)):
                    return candidate
            return None

        def chosen() -> bool:
            value = field().get_attribute("value") or ""
            return value == option or (prefix and value.startswith(option))

        if chosen():
            return
        before = self.runs()
        for _ in range(CHOOSE_TRIES):
            field().click()  # opens its list of options
            poll(item, f"option {option!r} of {label!r}").click()
            try:
                poll(lambda: self.runs() > before or chosen(), f"{option!r} chosen", CHOSEN_S)
                break
            except TimeoutError:
                continue
        self._run_ended_since(before, REPLY_TIMEOUT_S)

    def number(self, label: str, value: float) -> None:
        field = self.widget("stNumberInput", label).find_element(By.TAG_NAME, "input")
        field.send_keys(Keys.CONTROL, "a")
        self.rerun_after(lambda: field.send_keys(str(value), Keys.ENTER))

    def text_area(self, label: str, text: str) -> None:
        area = self.widget("stTextArea", label).find_element(By.TAG_NAME, "textarea")
        area.clear()
        area.send_keys(text)
        # Streamlit commits a text area on Ctrl+Enter (or when it loses the focus).
        self.rerun_after(lambda: area.send_keys(Keys.CONTROL, Keys.ENTER))

    def toggle(self, label: str) -> None:
        switch = self.widget("stCheckbox", label).find_element(By.TAG_NAME, "label")
        self.rerun_after(switch.click)

    def radio(self, label: str, option: str) -> None:
        group = self.widget("stRadio", label)
        for choice in group.find_elements(By.CSS_SELECTOR, '[data-testid="stRadioOption"]'):
            if choice.text.strip() == option:
                self.rerun_after(choice.click)
                return
        raise AssertionError(f"no option {option!r} in {label!r}")

    def upload(self, label: str, path: Path) -> None:
        uploader = self.widget("stFileUploader", label)
        chooser = uploader.find_element(By.CSS_SELECTOR, 'input[type="file"]')
        self.rerun_after(lambda: chooser.send_keys(str(path)))
        poll(lambda: path.name in self.widget("stFileUploader", label).text, f"{path.name} up")

    def chat(self, text: str) -> WebElement:
        """Sends a chat message; the assistant's reply once the run has ended."""
        before = len(self.messages("assistant"))
        box = self.driver.find_element(By.CSS_SELECTOR, '[data-testid="stChatInputTextArea"]')
        box.send_keys(text)
        self.rerun_after(lambda: box.send_keys(Keys.ENTER))
        replies = poll(lambda: self.messages("assistant")[before:], "the reply")
        return replies[-1]

    def watch_progress(self) -> None:
        """From now on, record each text a progress bar on the page shows."""
        self.js(
            """window.__genserveProgress = [];
            new MutationObserver(() => {
                for (const bar of document.querySelectorAll('[data-testid="stProgress"]')) {
                    const seen = window.__genserveProgress, text = bar.innerText.trim();
                    if (text && seen[seen.length - 1] !== text) seen.push(text);
                }
            }).observe(document.body,
                       {subtree: true, childList: true, characterData: true, attributes: true});"""
        )

    def progress_seen(self) -> list[str]:
        seen: list[str] = self.js("return window.__genserveProgress || [];")
        return seen

    def job_cards(self, where: str = "view") -> list[WebElement]:
        """The job cards shown (ui_jobs keys each container `jobcard-<where>-<id>`)."""
        selector = f'[class*="st-key-jobcard-{where}-"]'
        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def job_card(self, where: str, job_id: str) -> WebElement:
        """A job's card as it is now (NoSuchElementException if not shown)."""
        return self.driver.find_element(By.CSS_SELECTOR, f".st-key-jobcard-{where}-{job_id}")

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        assert self.driver.save_screenshot(str(path)), path
        return path


Finder = Callable[[], WebElement]  # finds the element anew: a rerun may replace it


# HTMLMediaElement.readyState: 2 is HAVE_CURRENT_DATA, the frame or sample at the current
# position decoded (1, HAVE_METADATA, is only the header read).
HAVE_CURRENT_DATA = 2


def media_state(page: Page, find: Finder, timeout: float = STEP_TIMEOUT_S) -> dict[str, Any]:
    """An <audio> or <video> once the browser has decoded data at its start (readyState
    >= HAVE_CURRENT_DATA), with what the browser read of it, and what fetching its src
    returns."""
    probe = """const [m, ready] = arguments;
        return m.readyState >= ready && {src: m.currentSrc, duration: String(m.duration),
            readyState: m.readyState, width: m.videoWidth || 0, height: m.videoHeight || 0};"""
    try:
        state: dict[str, Any] = poll(
            lambda: page.js(probe, find(), HAVE_CURRENT_DATA), "media data", timeout
        )
    except TimeoutError:
        error = page.js(
            "const m = arguments[0]; return [m.readyState, m.error && m.error.message];", find()
        )
        raise AssertionError(f"the media did not load: readyState, error = {error}") from None
    state.update(fetched(page, state["src"]))
    return state


def fetched(page: Page, src: str) -> dict[str, Any]:
    """The src fetched by the page itself: its status, type and first bytes (hex)."""
    result: dict[str, Any] = page.driver.execute_async_script(
        """const [src, done] = arguments;
        fetch(src).then(async r => {
            const bytes = new Uint8Array(await r.arrayBuffer());
            const hex = Array.from(bytes.slice(0, 44), b => b.toString(16).padStart(2, "0"));
            done({status: r.status, type: r.headers.get("content-type"),
                  size: bytes.length, head: hex.join("")});
        }).catch(e => done({status: 0, error: String(e)}));""",
        src,
    )
    return result


def decoded_image(page: Page, find: Finder, timeout: float = STEP_TIMEOUT_S) -> dict[str, int]:
    """An <img> once the browser has decoded it (complete, naturalWidth > 0): its size."""
    probe = """const i = arguments[0];
        return i.complete && i.naturalWidth > 0 &&
            {width: i.naturalWidth, height: i.naturalHeight};"""
    size: dict[str, int] = poll(lambda: page.js(probe, find()), "the image to decode", timeout)
    return size
