"""The web page at `/`, driven in a real browser (Debian's chromium through
Playwright) against a real gateway and GPU node on 127.0.0.1.

Screenshots land in $GPUBUS_SCREENSHOTS (docs/screenshots to refresh the
README's) or in the session's work directory.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Locator, Page, expect

from gateway.web import STATIC_DIR as STATIC
from tests import speech_audio
from tests.harness import ADMIN_TOKEN, TESTDATA, Gateway, Proc, expected_text, start_node, stop_all, words
from tests.media_files import wav_of_seconds
from tests.test_formats import check_srt_syntax

pytestmark = pytest.mark.timeout(180)

JOB_WAIT_MS = 90_000


@dataclass
class WebUser:
    user_id: str
    key: str
    gpu_node: Proc


@pytest.fixture(scope="module")
def web_user(gateway: Gateway) -> Iterator[WebUser]:
    """One user with their own GPU node (run on the CPU here) for the module."""
    user_id = f"web-{secrets.token_hex(3)}"
    key = gateway.create_key(user_id)
    node = start_node(gateway, "gpu", key=key, name=f"gpu-{user_id}")
    yield WebUser(user_id, key, node)
    node.stop()


@pytest.fixture(scope="module")
def shots(workdir: Path) -> Path:
    out = Path(os.environ.get("GPUBUS_SCREENSHOTS") or workdir / "screenshots")
    out.mkdir(parents=True, exist_ok=True)
    return out


@dataclass
class Tab:
    """A page, every URL it asked for, and what went wrong in it (script errors,
    CSP refusals, a missing asset)."""

    page: Page
    requests: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def console(self, kind: str, text: str) -> None:
        """Script errors and CSP refusals; an API answer of 401/409 is the page's business."""
        if kind == "error" and not text.startswith("Failed to load resource"):
            self.problems.append(f"console: {text}")

    def only_the_gateway_was_called(self, gw: Gateway) -> None:
        origin = urlsplit(gw.url).netloc
        foreign = [u for u in self.requests if urlsplit(u.removeprefix("blob:")).netloc != origin]
        assert self.requests and not foreign, foreign
        assert not self.problems, self.problems


@pytest.fixture
def tab(browser: Browser) -> Iterator[Tab]:
    context = browser.new_context(viewport={"width": 1280, "height": 860}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(30_000)
    t = Tab(page)
    page.on("request", lambda r: t.requests.append(r.url))
    page.on("pageerror", lambda e: t.problems.append(f"page error: {e}"))
    page.on("console", lambda m: t.console(m.type, m.text))
    page.on(
        "response",
        lambda r: t.problems.append(f"{r.status} {r.url}") if r.status >= 400 and "/api/" not in r.url else None,
    )
    yield t
    context.close()


def sign_in(page: Page, gw: Gateway, key: str) -> None:
    """Waits for the page's script to have attached its handlers: a full run
    once clicked Sign in before they were (the browser's own submission,
    refused by the CSP, left the click waiting 30 s for a navigation)."""
    page.goto(gw.url)
    page.locator("html[data-ready=true]").wait_for(state="attached")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()


def submit(page: Page) -> Locator:
    """Click Submit and return the row of the job the gateway accepted. The module's
    user keeps earlier tests' jobs, so "the first row" can still be an older job
    until the list refreshes: the row is found by the id the POST answered with."""
    posted = page.expect_response(lambda r: r.request.method == "POST" and urlsplit(r.url).path == "/api/v1/jobs")
    with posted as response:
        page.get_by_role("button", name="Submit").click()
    job_id = response.value.json()["job_id"]
    return page.locator(f'#jobs > li[data-job-id="{job_id}"]')


def test_page_is_served_with_a_strict_content_security_policy(gateway: Gateway):
    with gateway.client(None) as c:
        page = c.get("/")
        script = c.get("/static/js/app.js")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    # No inline script or style to allow: every script is a file from this origin
    assert re.findall(r"<script[^>]*>", page.text) == ['<script type="module" src="/static/js/app.js">']
    assert "style=" not in page.text and "<style" not in page.text
    assert script.status_code == 200 and script.headers["content-security-policy"] == csp
    # and no script names another host
    for js in (STATIC / "js").glob("*.js"):
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", js.read_text()), js


def test_wrong_key_shows_a_clear_sign_in_error(gateway: Gateway, tab: Tab):
    page = tab.page
    # Given a key that was never issued
    sign_in(page, gateway, "gpb_" + secrets.token_hex(16))
    # Then the page says so plainly, stays on the sign-in form and keeps nothing
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("API key was not accepted")
    expect(page.get_by_label("API key")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#app")).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('gpubus.apiKey')") is None
    # And the admin token is not a way in either
    page.get_by_label("API key").fill(ADMIN_TOKEN)
    page.get_by_role("button", name="Sign in").click()
    expect(alert).to_contain_text("admin token")
    tab.only_the_gateway_was_called(gateway)


def test_upload_on_gpu_to_transcript_and_srt_download(gateway: Gateway, web_user: WebUser, tab: Tab, shots: Path):
    page = tab.page
    # Given a signed-in user whose GPU node is online
    sign_in(page, gateway, web_user.key)
    expect(page.get_by_text(f"Signed in as {web_user.user_id}")).to_be_visible()
    expect(page.locator("#gpu-hint")).to_contain_text("1 GPU node of yours online")
    expect(page.locator("#nodes")).to_contain_text("GPU")
    # When they pick hello.wav, switch "Run on GPU" on, choose SRT and submit
    page.get_by_label("choose files").set_input_files(TESTDATA / "hello.wav")
    expect(page.get_by_role("list", name="Files to process")).to_contain_text("hello.wav")
    page.get_by_role("switch", name="Run on GPU").check()
    page.get_by_label("Language").select_option("en")
    page.get_by_label("Output format").select_option("srt")
    row = submit(page)
    # Then the upload reports its progress and the job is queued on the GPU lane
    expect(page.locator("#uploads")).to_contain_text("Uploaded · queued on GPU")
    expect(page.get_by_role("progressbar", name="Upload of hello.wav")).to_have_attribute("value", "100")
    expect(row).to_contain_text("hello.wav")
    # And the row follows the job (over SSE) to succeeded, on the GPU lane, with node, duration and speed
    expect(row).to_have_attribute("data-status", "succeeded", timeout=JOB_WAIT_MS)
    expect(row.locator(".badge")).to_have_text("Succeeded")
    expect(row.locator(".lane")).to_have_text("GPU")
    expect(row).to_contain_text("Real-time factor")
    expect(row.locator(".facts")).to_contain_text("gpu-")
    expect(row.get_by_role("button", name="Download hello.wav as SRT")).to_be_visible()
    assert any(re.search(r"/api/v1/jobs/j[0-9a-f]{32}/events$", u) for u in tab.requests)

    # When they open the transcript
    row.get_by_role("button", name="Open transcript of hello.wav").click()
    dialog = page.get_by_role("dialog", name="hello.wav")
    expect(dialog).to_be_visible()
    # Then the spoken words are there, with segment timestamps
    segments = dialog.get_by_role("list", name="Segments")
    expect(segments.locator("li").first).to_contain_text(re.compile(r"^0:00\.\d – 0:0\d\.\d"))
    shown = words(segments.inner_text())
    assert len(words(expected_text("hello")) & shown) >= 8, shown
    page.screenshot(path=shots / "transcript.png")

    # And the SRT download (fetched with the bearer header, saved from a blob) is the transcript
    with page.expect_download() as dl:
        dialog.get_by_role("button", name="Download as SRT").click()
    assert dl.value.suggested_filename == "hello.srt"
    srt = Path(dl.value.path()).read_text()
    check_srt_syntax(srt)
    assert len(words(expected_text("hello")) & words(srt)) >= 8, srt
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    tab.only_the_gateway_was_called(gateway)


def drop_file(page: Page, path: Path) -> None:
    """A real drop event on the drop zone, carrying the file's bytes."""
    data = base64.b64encode(path.read_bytes()).decode()
    transfer = page.evaluate_handle(
        """([name, b64]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], name, { type: 'application/octet-stream' }));
            return dt;
        }""",
        [path.name, data],
    )
    page.locator("#dropzone").dispatch_event("dragenter", {"dataTransfer": transfer})
    page.locator("#dropzone").dispatch_event("drop", {"dataTransfer": transfer})


def test_running_job_shows_its_text_growing(
    gateway: Gateway, web_user: WebUser, shared_cpu_node: Proc, tab: Tab, shots: Path, tmp_path: Path
):
    page = tab.page
    talk = wav_of_seconds(TESTDATA / "long.wav", 150, tmp_path / "talk.wav")
    sign_in(page, gateway, web_user.key)
    # Given a long file being transcribed on a CPU node, which decodes one 30 s window after another
    # (a GPU node's batched pipeline finishes a batch of windows at once: its text comes batch by batch)
    page.get_by_label("choose files").set_input_files(talk)
    page.get_by_role("switch", name="Run on GPU").uncheck()
    page.get_by_role("button", name="Submit").click()
    row = page.locator("#jobs > li", has_text="talk.wav").first
    # Then its text appears under it while it still runs, segment by segment
    page.wait_for_function(
        "li => li.dataset.status === 'running' && li.querySelector('.job-live').textContent.includes('Section 1')",
        arg=row.element_handle(),
        timeout=JOB_WAIT_MS,
    )
    first = row.locator(".job-live").text_content() or ""
    page.wait_for_function(
        "([li, n]) => li.dataset.status !== 'running' || li.querySelector('.job-live').textContent.length > n",
        arg=[row.element_handle(), len(first)],
        timeout=JOB_WAIT_MS,
    )
    page.screenshot(path=shots / "live-text.png")
    # And once finished the transcript is what the button opens; the live text goes
    expect(row).to_have_attribute("data-status", "succeeded", timeout=JOB_WAIT_MS)
    expect(row.locator(".job-live")).to_be_hidden()
    assert first.startswith("Section 1")


def test_priority_chosen_on_the_page_and_shown_in_the_fleet_panel(
    gateway: Gateway, web_user: WebUser, tab: Tab, shots: Path
):
    page = tab.page
    sign_in(page, gateway, web_user.key)
    expect(page.locator("#gpu-hint")).to_contain_text("1 GPU node of yours online")
    # Given a file sent to the GPU at priority High
    page.get_by_label("choose files").set_input_files(TESTDATA / "hello.wav")
    page.get_by_role("switch", name="Run on GPU").check()
    page.get_by_label("Priority", exact=True).select_option("high")
    row = submit(page)
    expect(page.locator("#uploads")).to_contain_text("Uploaded · queued on GPU")
    expect(row).to_have_attribute("data-status", "succeeded", timeout=JOB_WAIT_MS)
    # Then the job has that priority, and the fleet panel lists the user's jobs by priority
    with gateway.client(web_user.key) as c:
        assert c.get(f"/api/v1/jobs/{row.get_attribute('data-job-id')}").json()["priority"] == "high"
    waiting = page.get_by_role("list", name="Your waiting jobs by priority")
    expect(waiting.locator("li[data-priority=high]")).to_contain_text("High", timeout=20_000)
    expect(waiting.locator("li[data-priority=high]")).to_contain_text("waiting")
    expect(page.locator("#pool-line")).to_contain_text("shared pool")
    page.locator(".col-side").screenshot(path=shots / "fleet-priorities.png")
    tab.only_the_gateway_was_called(gateway)


def test_failed_job_reads_plainly_and_retry_fails_again_the_same_way(
    gateway: Gateway, web_user: WebUser, tab: Tab, shots: Path
):
    page = tab.page
    sign_in(page, gateway, web_user.key)
    expect(page.locator("#gpu-hint")).to_contain_text("1 GPU node of yours online")
    # Given a file that is not media, dropped on the page and sent to the GPU
    drop_file(page, TESTDATA / "garbage.bin")
    page.get_by_role("switch", name="Run on GPU").check()
    page.get_by_role("button", name="Submit").click()
    expect(page.locator("#uploads")).to_contain_text("Uploaded · queued on GPU")
    row = page.locator("#jobs > li", has_text="garbage.bin").first
    # Then it fails with the error in plain words (and the code for whoever debugs it)
    expect(row).to_have_attribute("data-status", "failed", timeout=JOB_WAIT_MS)
    plain = "This file could not be read: it is damaged, cut short, or not what its name says."
    expect(row.locator(".job-error")).to_contain_text(plain)
    expect(row.locator(".job-error code")).to_have_text("DECODE_FAILED")
    job_id = row.get_attribute("data-job-id")

    # When they press Retry (from the keyboard) without fixing anything
    row.get_by_role("button", name="Retry garbage.bin").focus()
    page.keyboard.press("Enter")
    # Then it runs again (attempt 2) and fails again with the same readable error
    expect(row.locator(".facts")).to_contain_text("Attempt2", timeout=10_000)
    expect(row).to_have_attribute("data-status", "failed", timeout=JOB_WAIT_MS)
    expect(row.locator(".job-error")).to_contain_text(plain)
    # and keyboard focus has followed the row's actions (Retry → Cancel → Retry), never dropped to the page
    expect(row.get_by_role("button", name="Retry garbage.bin")).to_be_focused()
    with gateway.client(web_user.key) as c:
        job = c.get(f"/api/v1/jobs/{job_id}").json()
    assert (job["status"], job["attempts"], job["error"]["code"]) == ("failed", 2, "DECODE_FAILED")
    expect(page.get_by_role("status")).to_contain_text("garbage.bin: Failed")
    tab.only_the_gateway_was_called(gateway)


def test_pdf_and_image_to_their_text_in_the_result_view(
    gateway: Gateway, shared_cpu_node, web_user: WebUser, tab: Tab, shots: Path, tmp_path: Path
):
    from tests import document_files as files

    page = tab.page
    sign_in(page, gateway, web_user.key)
    # When a PDF and a PNG are picked and submitted with "Run on GPU" on
    pdf, png = files.pdf_3_pages(tmp_path / "report.pdf"), files.text_png(tmp_path / "note.png")
    page.get_by_label("choose files").set_input_files([pdf, png])
    page.get_by_role("switch", name="Run on GPU").check()
    page.get_by_label("Output format").select_option("srt")  # a document has none: Markdown instead
    page.get_by_role("button", name="Submit").click()
    pdf_row = page.locator("#jobs > li", has_text="report.pdf").first
    png_row = page.locator("#jobs > li", has_text="note.png").first
    # Then the PDF runs on CPU saying why, the image on the user's GPU node
    expect(pdf_row).to_have_attribute("data-status", "succeeded", timeout=JOB_WAIT_MS)
    expect(png_row).to_have_attribute("data-status", "succeeded", timeout=JOB_WAIT_MS)
    expect(pdf_row.locator(".facts")).to_contain_text("documents run on CPU unless your GPU node has")
    expect(png_row.locator(".lane")).to_have_text("GPU")
    expect(pdf_row.locator(".facts")).to_contain_text("Pages3")
    expect(pdf_row.get_by_role("button", name="Download report.pdf as MD")).to_be_visible()
    # And the PDF's result view shows its Markdown (as text), with its table, and no subtitle downloads
    pdf_row.get_by_role("button", name="Open result of report.pdf").click()
    dialog = page.get_by_role("dialog", name="report.pdf")
    expect(dialog.locator("#tr-meta")).to_contain_text("Quarterly Report · PDF · 3 pages")
    expect(dialog.locator("#tr-text")).to_contain_text("| Mango | 12 |")
    expect(dialog.get_by_role("button", name="Download as SRT")).to_be_hidden()
    page.screenshot(path=shots / "document-result.png")
    dialog.get_by_role("button", name="Close transcript").click()
    # And the image's shows the recognised lines
    png_row.get_by_role("button", name="Open result of note.png").click()
    dialog = page.get_by_role("dialog", name="note.png")
    expect(dialog.locator("#tr-meta")).to_contain_text("1 page · 3 lines")
    assert {"quick", "lazy", "invoice"} <= words(dialog.locator("#tr-text").inner_text())
    tab.only_the_gateway_was_called(gateway)


def test_gpu_node_that_stops_mid_job_shows_the_move_to_cpu(
    gateway: Gateway, web_user: WebUser, tab: Tab, shots: Path, tmp_path: Path
):
    page = tab.page
    lecture = wav_of_seconds(TESTDATA / "long.wav", 150, tmp_path / "lecture.wav")
    # A CPU node of the user's to fall back to, starting while the page works
    starting = ThreadPoolExecutor(1).submit(
        start_node, gateway, "cpu", key=web_user.key, name=f"cpu-{web_user.user_id}"
    )
    cpu: Proc | None = None
    try:
        sign_in(page, gateway, web_user.key)
        expect(page.locator("#gpu-hint")).to_contain_text("1 GPU node of yours online")
        # Given a long file running on the GPU node, its progress bar moving
        page.get_by_label("choose files").set_input_files(lecture)
        page.get_by_role("switch", name="Run on GPU").check()
        page.get_by_role("button", name="Submit").click()
        row = page.locator("#jobs > li", has_text="lecture.wav").first
        page.wait_for_function(
            "li => li.dataset.status === 'running' && li.querySelector('progress').value > 0",
            arg=row.element_handle(),
            timeout=JOB_WAIT_MS,
        )
        expect(row.locator(".lane")).to_have_text("GPU")
        cpu = starting.result(timeout=60)
        # When the GPU node stops answering (no progress, no ack)
        web_user.gpu_node.signal(signal.SIGSTOP)
        # Then the row says the job moved to CPU and why, and it finishes there
        note = "Moved from GPU to CPU: the GPU node did not finish it in time."
        expect(row.locator(".job-note")).to_have_text(note, timeout=JOB_WAIT_MS)
        expect(row).to_have_attribute("data-status", "succeeded", timeout=JOB_WAIT_MS)
        expect(row.locator(".lane")).to_have_text("CPU")
        expect(row.locator(".facts")).to_contain_text("cpu-")
        expect(row.locator(".facts")).to_contain_text("Attempt2")
        page.screenshot(path=shots / "job-list.png", full_page=True)

        # And on a phone-sized screen the list reads in one column, actions under each job, no sideways scroll
        page.set_viewport_size({"width": 390, "height": 844})
        body, actions = row.locator(".job-body").bounding_box(), row.locator(".job-actions").bounding_box()
        assert actions["y"] >= body["y"] + body["height"] - 1, (body, actions)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        page.screenshot(path=shots / "job-list-narrow.png", full_page=True)
        tab.only_the_gateway_was_called(gateway)
    finally:
        web_user.gpu_node.kill()
        stop_all([cpu or starting.result(timeout=60)])


@pytest.mark.skipif(not speech_audio.espeak_available(), reason="espeak-ng is not installed")
def test_label_speakers_switch_shows_who_spoke_and_offers_rttm(
    gateway: Gateway, web_user: WebUser, tab: Tab, tmp_path: Path
):
    page = tab.page
    conversation = speech_audio.write_wav(speech_audio.two_speakers(), tmp_path / "meeting.wav")
    # Given a signed-in user, When they switch "Label speakers" on, say 2 speakers and submit a conversation
    sign_in(page, gateway, web_user.key)
    page.get_by_label("choose files").set_input_files(conversation)
    expect(page.get_by_label("Speakers", exact=True)).to_be_hidden()
    page.get_by_role("switch", name="Label speakers").check()
    page.get_by_label("Speakers", exact=True).select_option("2")
    row = submit(page)
    expect(row).to_have_attribute("data-status", "succeeded", timeout=JOB_WAIT_MS)
    # Then its transcript names the two speakers, line by line
    row.get_by_role("button", name="Open transcript of meeting.wav").click()
    dialog = page.get_by_role("dialog", name="meeting.wav")
    expect(page.locator("#tr-meta")).to_contain_text("2 speakers")
    segments = dialog.get_by_role("list", name="Segments")
    expect(segments).to_contain_text("SPEAKER_00: ")
    expect(segments).to_contain_text("SPEAKER_01: ")
    # And RTTM, who spoke when, downloads
    with page.expect_download() as dl:
        dialog.get_by_role("button", name="Download as RTTM").click()
    assert dl.value.suggested_filename == "meeting.rttm"
    rows = [line.split() for line in Path(dl.value.path()).read_text().splitlines()]
    assert len(rows) >= 4 and {r[7] for r in rows} == {"SPEAKER_00", "SPEAKER_01"}
    tab.only_the_gateway_was_called(gateway)
