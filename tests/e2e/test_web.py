"""The web page (web/, served by Envoy at /) in a real browser.

Playwright drives Debian's Chromium (/usr/bin/chromium, apt's `chromium`)
against the session mesh. Screenshots of the main states go to
test-artifacts/screenshots/ (git-ignored) for people to look at.
"""
from __future__ import annotations

import base64
import re
import time
import uuid
import zipfile
from pathlib import Path

import pytest
import requests

import testkit
from localmesh.processes import wait_for
from testkit import outside
from testkit.media import (
    analyse_mp3,
    audio_duration,
    decode_audio,
    ebur128,
    make_media,
    make_noise,
    make_silence_ogg,
    make_text_file,
)

ROOT = testkit.ROOT
SHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                 # The test plays an MP3 without a click on the player.
                 "--autoplay-policy=no-user-gesture-required"]
PASSWORD = "correct horse 1"
XSS_NAME = "<img src=x onerror=alert(1)>.mp4"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
       "form-action 'self'; frame-ancestors 'none'")


def has_rpc(name: str) -> bool:
    """Whether this build's MediaService has RPC `name` (DeleteJob lands separately)."""
    from google.protobuf import descriptor_pb2

    from video2mp3.ops import envoy_config

    fds = descriptor_pb2.FileDescriptorSet.FromString(envoy_config.DESCRIPTOR.read_bytes())
    return any(m.name == name for f in fds.file for s in f.service if s.name == "MediaService"
               for m in s.method)


# ------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (CONTRIBUTING.md)", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Page:
    """One browser tab on the page, recording what must never happen:
    script errors, dialogs (an XSS would alert), failed requests other than
    the expected ones."""

    def __init__(self, browser, base_url: str, width: int = 1000, height: int = 900):
        self.base = base_url
        self.context = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.requests: list[str] = []
        self.tokens: set[str] = set()
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("console", self._console)
        self.page.on("dialog", self._dialog)
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.goto(base_url)

    def _console(self, msg) -> None:
        # A failed request is logged too; those the page expects are checked by the tests.
        if msg.type == "error" and "Failed to load resource" not in msg.text:
            self.errors.append(msg.text)

    def _dialog(self, dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def shot(self, name: str, full_page: bool = True) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=full_page)

    def sign_up(self, email: str | None = None) -> str:
        email = email or f"web-{uuid.uuid4().hex[:10]}@example.com"
        self.page.fill("#email", email)
        self.page.fill("#password", PASSWORD)
        self.page.click("#signup")
        self.page.wait_for_selector("#app-view:not([hidden])")
        self.tokens.add(self.token)
        return email

    def check_clean(self) -> None:
        """No token in any URL, no dialog (an XSS would alert), no script error."""
        for url in self.requests:
            assert not any(t and t in url for t in self.tokens), url
        assert not self.dialogs, self.dialogs
        assert not self.errors, self.errors

    @property
    def token(self) -> str:
        return self.page.evaluate("() => sessionStorage.getItem('video2mp3.token')") or ""

    def throttle_upload(self, bytes_per_s: int) -> None:
        cdp = self.context.new_cdp_session(self.page)
        cdp.send("Network.enable")
        cdp.send("Network.emulateNetworkConditions", {
            "offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": bytes_per_s})

    def drop(self, paths: list[Path]) -> None:
        """Drop files on the drop zone as a person dragging them in would."""
        files = [{"name": p.name, "b64": base64.b64encode(p.read_bytes()).decode()} for p in paths]
        dt = self.page.evaluate_handle("""files => {
            const dt = new DataTransfer();
            for (const f of files) {
                const bytes = Uint8Array.from(atob(f.b64), c => c.charCodeAt(0));
                dt.items.add(new File([bytes], f.name, {type: 'video/mp4'}));
            }
            return dt;
        }""", files)
        self.page.dispatch_event("#drop-zone", "dragenter", {"dataTransfer": dt})
        self.page.dispatch_event("#drop-zone", "drop", {"dataTransfer": dt})

    def row(self, name: str):
        return self.page.locator("li.job", has=self.page.locator(".job-name", has_text=name))

    def row_state(self, name: str) -> str:
        return self.row(name).get_attribute("data-state") or ""

    def wait_state(self, name: str, *states: str, timeout: float = 90) -> str:
        wait_for(f"{name} to be {states}", lambda: self.row_state(name) in states, timeout=timeout,
                 interval=0.1)
        return self.row_state(name)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def web(browser, mesh):
    pages: list[Page] = []

    def open_page(**kw) -> Page:
        p = Page(browser, mesh.rest_base_url, **kw)
        pages.append(p)
        return p

    yield open_page
    for p in pages:
        p.close()
    for p in pages:
        p.check_clean()


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Two 8-second videos with a 440 Hz tone, big enough (~2.4 MB) for a
    throttled upload to show its progress."""
    d = tmp_path_factory.mktemp("web-videos")
    return [Path(make_media(d / name, video_codec="h264", duration=8.0, video_size=(320, 240), video_noise=60))
            for name in ("holiday.mp4", "concert.mov")]


def user_of(mesh, token: str) -> str:
    r = requests.get(f"{mesh.rest_base_url}/v1/me", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["id"]


# ------------------------------------------------------------------ the page, without a browser

def test_page_and_assets_are_served_with_security_headers(mesh):
    base = mesh.rest_base_url
    for path, ctype in [("/", "text/html"), ("/static/app.js", "text/javascript"),
                        ("/static/app.css", "text/css")]:
        r = requests.get(base + path, timeout=10)
        assert r.status_code == 200, (path, r.status_code)
        assert r.headers["content-type"].startswith(ctype), path
        assert r.headers["content-security-policy"] == CSP
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"
        assert r.headers["cache-control"] == "no-cache"
        assert r.content == (ROOT / "web" / Path(path).name if path != "/" else ROOT / "web/index.html").read_bytes()
    html = requests.get(base + "/", timeout=10).text
    # No inline script or style and nothing from another origin (works offline).
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)
    assert "style=" not in html
    assert "<style" not in html
    for f in ("index.html", "app.js", "app.css"):
        assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", (ROOT / "web" / f).read_text()), f
    # The REST API is untouched by the page's routes.
    assert "mongodb" in requests.get(base + "/health", timeout=10).json()


# ------------------------------------------------------------------ end to end

def test_convert_two_videos_in_the_browser(web, mesh, videos, tmp_path):
    """Sign up, drop two videos, watch them upload and convert, play one MP3,
    download the other, delete a job, log out."""
    p = web()
    page = p.page
    p.shot("01-login")
    email = p.sign_up()
    assert page.locator("#account-email").text_content() == email
    p.shot("02-signed-in")

    p.throttle_upload(1_000_000)  # ~2.4 s per video, so the progress is visible
    p.drop(videos)
    names = [v.name for v in videos]
    progress: dict[str, list] = {n: [] for n in names}
    screenshot_taken = False
    deadline = time.monotonic() + 120
    while True:
        assert time.monotonic() < deadline, {n: p.row_state(n) for n in names}
        for n in names:
            row = p.row(n)
            state, value, text = row.evaluate(
                "r => [r.dataset.state, r.querySelector('progress').value, r.querySelector('.job-status').textContent]")
            if not progress[n] or progress[n][-1] != (state, value):
                progress[n].append((state, value))
            assert state != "JOB_STATE_FAILED", text
        if not screenshot_taken and all(0 < v < 100 for s, v in (progress[n][-1] for n in names)):
            p.shot("03-uploading")
            screenshot_taken = True
        if all(progress[n][-1][0] == "JOB_STATE_DONE" for n in names):
            break
        time.sleep(0.05)
    for n in names:
        uploading = [v for s, v in progress[n] if s == "UPLOADING" and 0 < v < 100]
        assert len(set(uploading)) >= 3, progress[n]  # the bar moved
        assert uploading == sorted(uploading), progress[n]
        states = [s for s, _ in progress[n]]
        assert states.index("UPLOADING") < states.index("JOB_STATE_DONE"), states
        assert p.row(n).locator(".job-status").text_content().startswith(("Done", "Fetching"))

    # Both rows get a player and a download link named after the upload.
    for n in names:
        p.row(n).locator("audio").wait_for()
    holiday, concert = p.row("holiday.mp4"), p.row("concert.mov")
    assert holiday.locator("a[download]").get_attribute("download") == "holiday.mp3"
    assert concert.locator("a[download]").get_attribute("download") == "concert.mp3"
    assert holiday.locator("audio").get_attribute("src").startswith("blob:")
    p.shot("04-done")

    # Play one in the page: the player knows its length and its clock moves.
    source_s = audio_duration(videos[0])
    played = holiday.locator("audio").evaluate("""async a => {
        if (a.readyState < 1) await new Promise(r => a.addEventListener('loadedmetadata', r, {once: true}));
        await a.play();
        await new Promise(r => setTimeout(r, 700));
        const out = {duration: a.duration, time: a.currentTime, paused: a.paused};
        a.pause();
        return out;
    }""")
    assert abs(played["duration"] - source_s) <= 0.1, (played, source_s)
    assert played["time"] > 0.2, played
    assert not played["paused"], played

    # Download the other: a real MP3 of the 440 Hz tone.
    with page.expect_download() as dl:
        concert.locator("a[download]").click()
    download = dl.value
    assert download.suggested_filename == "concert.mp3"
    saved = tmp_path / "concert.mp3"
    download.save_as(saved)
    duration, freq, _, _ = analyse_mp3(saved)
    assert abs(freq - 440) < 5, freq
    assert abs(duration - audio_duration(videos[1])) < 0.1, duration

    # The list from the server shows both jobs after a reload (newest first).
    page.reload()
    page.wait_for_selector("li.job[data-state='JOB_STATE_DONE'] >> nth=1")
    listed = page.locator("li.job .job-name").all_text_contents()
    assert sorted(listed) == sorted(names), listed
    assert "MP3" in p.row("holiday.mp4").locator(".job-meta").text_content()

    # Delete one job.
    job_id = p.row("holiday.mp4").get_attribute("data-job-id")
    p.row("holiday.mp4").get_by_role("button", name="Delete").click()
    if has_rpc("DeleteJob"):
        p.row("holiday.mp4").wait_for(state="detached")
        r = requests.get(f"{mesh.rest_base_url}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {p.token}"},
                         timeout=10)
        assert r.status_code == 404, r.text
    else:  # DeleteJob is not in this build yet: the page says so and keeps the row.
        status = p.row("holiday.mp4").locator(".job-status")
        wait_for("the delete answer", lambda: "cannot delete" in status.text_content(), timeout=10)
    assert p.row("concert.mov").count() == 1
    p.shot("05-after-delete")

    # Log out: back to the login form, no token kept.
    page.get_by_role("button", name="Log out").click()
    page.wait_for_selector("#auth-view:not([hidden])")
    assert page.locator("#notice").text_content() == "You have logged out."
    assert p.token == ""
    assert page.locator("li.job").count() == 0
    p.shot("06-logged-out")


# ------------------------------------------------------------------ what goes wrong

def test_cancel_mid_upload_leaves_nothing_on_the_server(web, mesh, store, tmp_path):
    big = Path(make_media(tmp_path / "long.mp4", video_codec="h264", duration=20.0, video_size=(320, 240),
                          video_noise=60))
    p = web()
    p.sign_up()
    user_id = user_of(mesh, p.token)
    chunks = store.db["videos.chunks"]
    before = set(chunks.distinct("files_id"))
    p.throttle_upload(500_000)
    p.page.set_input_files("#file-input", str(big))
    row = p.row("long.mp4")
    # Wait until the gateway is storing it, then cancel.
    wait_for("the upload to reach GridFS", lambda: set(chunks.distinct("files_id")) - before, timeout=30)
    fids = list(set(chunks.distinct("files_id")) - before)
    assert 0 < (row.locator("progress").evaluate("b => b.value")) < 100
    p.shot("07-uploading-before-cancel")
    row.get_by_role("button", name="Cancel").click()
    assert p.row_state("long.mp4") == "CANCELLED"
    assert "cancelled" in row.locator(".job-status").text_content()
    p.shot("08-cancelled")
    wait_for("the cancelled upload's chunks to go",
             lambda: chunks.count_documents({"files_id": {"$in": fids}}) == 0, timeout=30)
    assert store.db["videos.files"].count_documents({"_id": {"$in": fids}}) == 0
    assert store.db["videos.files"].count_documents({"metadata.user_id": user_id}) == 0
    assert store.jobs.count_documents({"user_id": user_id}) == 0
    r = requests.get(f"{mesh.rest_base_url}/v1/jobs", headers={"Authorization": f"Bearer {p.token}"}, timeout=10)
    assert r.json()["jobs"] == []


def test_a_text_file_fails_with_its_reason_shown(web, mesh, tmp_path):
    notes = Path(make_text_file(tmp_path / "notes.mp4"))
    p = web()
    p.sign_up()
    p.page.set_input_files("#file-input", str(notes))
    assert p.wait_state("notes.mp4", "JOB_STATE_FAILED", "JOB_STATE_DONE") == "JOB_STATE_FAILED"
    row = p.row("notes.mp4")
    job = requests.get(f"{mesh.rest_base_url}/v1/jobs/{row.get_attribute('data-job-id')}",
                       headers={"Authorization": f"Bearer {p.token}"}, timeout=10).json()
    assert job["error"]
    assert row.locator(".job-status").text_content() == f"Conversion failed: {job['error']}"
    assert row.locator("audio").count() == 0
    p.shot("09-failed")


def test_trim_and_loudness_from_the_page(web, mesh, tmp_path):
    """The page's Start, End and Loudness reach the job; the MP3 has exactly
    the trimmed length and the loudness asked for, as ffmpeg measures it."""
    noise = Path(make_noise(tmp_path / "noise.m4a", 6.0, level=0.05))
    p = web()
    p.sign_up()
    p.page.fill("#start", "1:00")  # not a time the file has: refused before anything is sent
    p.page.fill("#end", "0:30")
    p.page.set_input_files("#file-input", str(noise))
    assert p.page.locator("#notice").text_content() == "End must be after start."
    assert p.row("noise.m4a").count() == 0
    p.page.fill("#start", "0:01.25")
    p.page.fill("#end", "4.75")
    p.page.select_option("#loudness", "-16")
    p.page.set_input_files("#file-input", str(noise))
    assert p.page.locator("#notice").is_hidden()
    assert p.wait_state("noise.m4a", "JOB_STATE_DONE", "JOB_STATE_FAILED") == "JOB_STATE_DONE"
    row = p.row("noise.m4a")
    assert "0:01.250\u20130:04.750 · -16 LUFS" in row.locator(".job-meta").text_content()  # an en dash
    headers = {"Authorization": f"Bearer {p.token}"}
    job_id = row.get_attribute("data-job-id")
    job = requests.get(f"{mesh.rest_base_url}/v1/jobs/{job_id}", headers=headers, timeout=10).json()
    assert (job["options"]["start_ms"], job["options"]["end_ms"], job["options"]["loudness_lufs"]) == (
        "1250", "4750", -16)
    mp3 = requests.get(f"{mesh.rest_base_url}/v1/jobs/{job_id}/mp3", headers=headers, timeout=30).content
    decoded, rate, _ = decode_audio(mp3)
    assert len(decoded) == 3.5 * rate
    assert abs(ebur128(mp3)[0] + 16) <= 1.0
def test_usage_and_a_limit_are_shown(web, videos, tmp_path):
    """The usage line under the drop zone, before and after a conversion;
    the 20-hour file's refusal names the limit per job (3 hours)."""
    p = web()
    p.sign_up()
    usage = p.page.locator("#usage")
    wait_for("the usage line", lambda: "stored" in (usage.text_content() or ""), timeout=20)
    assert usage.text_content() == ("0 bytes of 5.0 GB stored · 0 min of 10 h converted in the last 24 hours · "
                                    "at most 3 h of audio per file")
    p.drop(videos[:1])
    assert p.wait_state(videos[0].name, "JOB_STATE_DONE", "JOB_STATE_FAILED") == "JOB_STATE_DONE"
    wait_for("the MP3 to count", lambda: not (usage.text_content() or "").startswith("0 bytes"), timeout=20)
    # The page asks again once the job is final: the video is gone by then, the MP3 is held.
    assert re.match(r"\d+(\.\d)? KB of 5\.0 GB stored", usage.text_content() or ""), usage.text_content()
    long = make_silence_ogg(tmp_path / "long.ogg", hours=20)
    p.page.set_input_files("#file-input", str(long))
    p.wait_state("long.ogg", "ERROR", timeout=60)
    status = p.row("long.ogg").locator(".job-status").text_content() or ""
    assert status.startswith("The audio is too long: the file declares 20 h"), status
    assert "3 h (MAX_AUDIO_DURATION_S)" in status, status
    p.shot("15-usage-and-limit")


def test_a_hostile_file_name_is_shown_as_text(web, videos):
    p = web()
    p.sign_up()
    p.page.set_input_files("#file-input", files=[{"name": XSS_NAME, "mimeType": "video/mp4",
                                                   "buffer": videos[0].read_bytes()}])
    p.wait_state(XSS_NAME, "JOB_STATE_DONE")
    row = p.row(XSS_NAME)
    row.locator("audio").wait_for()
    assert row.locator(".job-name").text_content() == XSS_NAME
    assert row.locator("a[download]").get_attribute("download") == "<img src=x onerror=alert(1)>.mp3"
    assert p.page.locator("img").count() == 0
    # Again from the server's list after a reload.
    p.page.reload()
    p.row(XSS_NAME).wait_for()
    assert p.row(XSS_NAME).locator(".job-name").text_content() == XSS_NAME
    assert p.page.locator("img").count() == 0
    p.shot("10-hostile-name")
    # The fixture checks that no dialog (alert) opened and no script error happened.


def test_wrong_password_says_so(web, mesh):
    email = f"web-{uuid.uuid4().hex[:10]}@example.com"
    requests.post(f"{mesh.rest_base_url}/v1/users", json={"email": email, "password": PASSWORD}, timeout=20)
    p = web()
    p.page.fill("#email", email)
    p.page.fill("#password", "not my password")
    p.page.click("#login")
    error = p.page.locator("#auth-error")
    wait_for("the login error", lambda: error.text_content() != "", timeout=20)
    assert error.text_content() == "Incorrect email or password."
    assert p.page.locator("#app-view").is_hidden()
    assert p.token == ""
    p.shot("11-wrong-password")


def test_an_expired_session_goes_back_to_login(web):
    p = web()
    p.sign_up()
    # A token the server no longer accepts (as after expiry), then any authenticated call;
    # the session is over too, so renewing it fails (tests/e2e/test_web_sessions.py renews).
    p.page.evaluate("() => sessionStorage.setItem('video2mp3.token', 'expired.token.value')")
    p.page.evaluate("() => sessionStorage.setItem('video2mp3.refresh', 'v2mrt_ended')")
    p.page.reload()
    p.page.wait_for_selector("#auth-view:not([hidden])")
    assert p.page.locator("#notice").text_content() == "Your session has expired. Please log in again."
    assert p.token == ""
    p.shot("12-session-expired")


def test_an_unreachable_server_is_reported(web):
    p = web()
    p.sign_up()
    p.page.route("**/v1/jobs?*", lambda route: route.abort("connectionrefused"))
    p.page.get_by_role("button", name="Refresh").click()
    notice = p.page.locator("#notice")
    notice.wait_for()
    assert "Cannot reach the server" in notice.text_content()
    p.shot("13-unreachable")


def test_too_large_and_too_many_uploads_say_what_to_do(browser, mesh_factory, tmp_path):
    """A small upload limit (1 MiB) and one upload at a time: the page shows
    the limit, and asks to retry when busy."""
    small = mesh_factory(MAX_UPLOAD_BYTES=1024 * 1024, MAX_CONCURRENT_UPLOADS=1)
    big = Path(make_media(tmp_path / "big.mp4", video_codec="h264", duration=10.0, video_size=(320, 240),
                          video_noise=60))
    slow = Path(make_media(tmp_path / "slow.mp4", video_codec="h264", duration=3.0, video_size=(320, 240),
                           video_noise=60))
    assert big.stat().st_size > 2 * 1024 * 1024
    assert slow.stat().st_size < 1024 * 1024
    p = Page(browser, small.rest_base_url)
    try:
        p.sign_up()
        p.page.set_input_files("#file-input", str(big))
        p.wait_state("big.mp4", "ERROR", timeout=60)
        assert p.row("big.mp4").locator(".job-status").text_content() == "Too large: files can be at most 1.0 MB."

        # One slow upload holds the only slot; the next is refused.
        p.throttle_upload(100_000)
        p.page.set_input_files("#file-input", str(slow))
        wait_for("the slow upload to start", lambda: p.row("slow.mp4").locator("progress").evaluate(
            "b => b.value") > 0, timeout=30)
        p.page.set_input_files("#file-input", files=[{"name": "second.mp4", "mimeType": "video/mp4",
                                                       "buffer": b"\0" * 1000}])
        p.wait_state("second.mp4", "ERROR", timeout=30)
        assert "Retry in a few seconds" in p.row("second.mp4").locator(".job-status").text_content()
        p.shot("14-too-large-and-busy")
        p.row("slow.mp4").get_by_role("button", name="Cancel").click()
        p.check_clean()
    finally:
        p.close()


def test_the_page_fits_a_phone(web, videos):
    p = web(width=375, height=812)
    p.shot("15-phone-login", full_page=False)
    p.sign_up()
    p.page.set_input_files("#file-input", str(videos[0]))
    p.wait_state("holiday.mp4", "JOB_STATE_DONE")
    p.row("holiday.mp4").locator("audio").wait_for()
    width = p.page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 375, width
    # Every control is inside the viewport horizontally.
    for box in p.page.locator("button:visible, a:visible, select:visible, audio").evaluate_all(
            "els => els.map(e => { const r = e.getBoundingClientRect(); return [r.left, r.right]; })"):
        assert box[0] >= 0, box
        assert box[1] <= 375, box
    p.shot("16-phone-done")


def test_keyboard_only(web, videos):
    """Tab to the file input (the drop zone's label) and to every row button."""
    p = web()
    page = p.page
    page.focus("#email")
    page.keyboard.type(f"kb-{uuid.uuid4().hex[:8]}@example.com")
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    # Tab past the login button to "Create account".
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.id") == "signup"
    page.keyboard.press("Enter")
    page.wait_for_selector("#app-view:not([hidden])")
    seen = []
    for _ in range(10):
        page.keyboard.press("Tab")
        seen.append(page.evaluate("() => document.activeElement.id"))
        if seen[-1] == "file-input":
            break
    assert seen[-1] == "file-input", seen
    # The focused (hidden) input shows its focus ring on the drop zone.
    outline = page.evaluate("() => getComputedStyle(document.getElementById('drop-zone')).outlineStyle")
    assert outline == "solid", outline
    with page.expect_file_chooser() as fc:
        page.keyboard.press("Space")
    fc.value.set_files(str(videos[0]))
    p.wait_state("holiday.mp4", "JOB_STATE_DONE")
    p.row("holiday.mp4").locator("a[download]").wait_for()
    focused = []  # Refresh, then the player's own controls, then the link
    for _ in range(15):
        page.keyboard.press("Tab")
        focused.append(page.evaluate("() => document.activeElement.textContent"))
        if focused[-1] == "Download MP3":
            break
    assert focused[-1] == "Download MP3", focused
    p.shot("17-keyboard-focus", full_page=False)


def test_cover_art_chapters_and_download_all(web, tmp_path):
    """Tick "Cover picture" and "One MP3 per chapter", drop a video with
    chapters and one without: the first gets a button per chapter and a ZIP,
    "Download all" saves both jobs' MP3s as one ZIP."""
    chapters = [(0, 1500, "Opening"), (1500, 3000, "Closing")]
    talk = outside.make_chaptered_video(tmp_path / "talk.mp4", chapters)
    plain = Path(make_media(tmp_path / "plain.mp4", video_codec="h264", duration=2.0))
    p = web()
    page = p.page
    p.sign_up()
    page.check("#cover-art")
    page.check("#split-chapters")
    p.drop([talk, plain])
    for name in ("talk.mp4", "plain.mp4"):
        assert p.wait_state(name, "JOB_STATE_DONE", "JOB_STATE_FAILED") == "JOB_STATE_DONE"
    row = p.row("talk.mp4")
    assert "cover" in row.locator(".job-meta").text_content()
    row.get_by_role("button", name="2. Closing: talk.mp4").click()
    row.locator("audio").wait_for()
    assert row.locator("a[download]").get_attribute("download") == "talk - 02 - Closing.mp3"
    row.get_by_role("button", name="All chapters: talk.mp4").click()
    with page.expect_download() as dl:
        row.get_by_role("button", name="Download ZIP: talk.mp4").click()
    assert dl.value.suggested_filename == "talk.zip"
    dl.value.save_as(tmp_path / "talk.zip")
    with zipfile.ZipFile(tmp_path / "talk.zip") as z:
        assert z.namelist() == ["talk - 01 - Opening.mp3", "talk - 02 - Closing.mp3"]
    p.row("plain.mp4").locator("audio").wait_for()  # a job without chapters: one MP3, as before
    button = page.locator("#download-all")
    wait_for("Download all", button.is_visible, timeout=10)
    with page.expect_download() as dl:
        button.click()
    assert dl.value.suggested_filename == "video2mp3.zip"
    dl.value.save_as(tmp_path / "all.zip")
    with zipfile.ZipFile(tmp_path / "all.zip") as z:
        assert sorted(z.namelist()) == ["plain.mp3", "talk/talk - 01 - Opening.mp3", "talk/talk - 02 - Closing.mp3"]
