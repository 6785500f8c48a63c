"""The web page's session in a real browser (Playwright, Debian's Chromium):
on a mesh whose access tokens live 8 seconds, the page renews them before
they expire and keeps working long after the first one is dead; a refused
token is renewed once on its 401; Log out ends the session on the server; a
refresh token used elsewhere (stolen) ends the page's session too.
Screenshots go to test-artifacts/screenshots/ as in test_web.py."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import requests

import testkit
from localmesh.processes import wait_for
from testkit.media import make_media

ROOT = testkit.ROOT
SHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
PASSWORD = "correct horse 1"
TTL_S = 8
# The gateway accepts a token this long past its exp (core/tokens.py LEEWAY_S).
LEEWAY_S = 30


@pytest.fixture(scope="module")
def mesh(module_mesh_factory):
    """A mesh whose access tokens live TTL_S seconds."""
    return module_mesh_factory(TOKEN_TTL_SECONDS=str(TTL_S))


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (CONTRIBUTING.md)", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Tab:
    """One tab on the page, recording script errors, the requests to the API and their answers."""

    def __init__(self, browser, base_url: str):
        self.base = base_url
        self.context = browser.new_context(viewport={"width": 1000, "height": 800})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.answers: list[tuple[str, int]] = []  # (path, status)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("console", self._console)
        self.page.on("response", lambda r: self.answers.append((r.url.removeprefix(base_url), r.status)))
        self.page.goto(base_url)

    def _console(self, message) -> None:
        # A failed request is logged too; the tests check the answers themselves.
        if message.type == "error" and "Failed to load resource" not in message.text:
            self.errors.append(message.text)

    def storage(self, name: str) -> str:
        return self.page.evaluate(f"() => sessionStorage.getItem('video2mp3.{name}')") or ""

    def sign_up(self) -> str:
        email = f"webs-{uuid.uuid4().hex[:10]}@example.com"
        self.page.fill("#email", email)
        self.page.fill("#password", PASSWORD)
        self.page.click("#signup")
        self.page.wait_for_selector("#app-view:not([hidden])")
        return email

    def calls(self, path: str) -> list[int]:
        self.page.wait_for_timeout(50)  # Playwright delivers the events it queued meanwhile
        return [status for p, status in self.answers if p.startswith(path)]

    def shot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def tab(browser, mesh):
    t = Tab(browser, mesh.rest_base_url)
    yield t
    t.close()
    assert not t.errors, t.errors


def gateway_status(base: str, token: str) -> int:
    return requests.get(f"{base}/v1/jobs", headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code


def refresh(base: str, token: str) -> requests.Response:
    return requests.post(f"{base}/v1/sessions:refresh", json={"refresh_token": token}, timeout=10)


def test_the_page_renews_its_token_before_it_expires(tab, mesh, tmp_path):
    base = mesh.rest_base_url
    tab.sign_up()
    first, first_refresh = tab.storage("token"), tab.storage("refresh")
    assert first_refresh.startswith("v2mrt_")
    wait_for(
        "the page to renew its token", lambda: tab.storage("token") not in ("", first), timeout=TTL_S + 5, interval=0.2
    )
    assert tab.storage("refresh") not in ("", first_refresh)
    # Wait until the first token is dead for good (exp plus the gateway's leeway),
    # while the page keeps renewing its own.
    wait_for(
        "the first token to be refused",
        lambda: gateway_status(base, first) == 401,
        timeout=TTL_S + LEEWAY_S + 15,
        interval=1,
    )
    assert len(tab.calls("/v1/sessions:refresh")) >= 4
    assert set(tab.calls("/v1/sessions:refresh")) == {200}
    assert gateway_status(base, tab.storage("token")) == 200

    # Still logged in, and working: upload a video, see it done, refresh the list.
    video = make_media(tmp_path / "renewed.mp4", duration=1.0)
    tab.page.set_input_files("#file-input", str(video))
    row = tab.page.locator("li.job", has=tab.page.locator(".job-name", has_text="renewed.mp4"))
    wait_for(
        "the upload to be converted",
        lambda: row.get_attribute("data-state") == "JOB_STATE_DONE",
        timeout=90,
        interval=0.2,
    )
    tab.page.click("#refresh")
    wait_for("the list to load", lambda: tab.calls("/v1/jobs?") and tab.calls("/v1/jobs?")[-1] == 200, timeout=10)
    assert tab.page.locator("#auth-view").is_hidden()
    assert 401 not in tab.calls("/v1/")  # renewed before expiry, never after a refusal
    tab.shot("21-session-renewed")


def test_a_refused_token_is_renewed_once_on_its_401(tab):
    tab.sign_up()
    before = len(tab.calls("/v1/sessions:refresh"))
    tab.page.evaluate("() => sessionStorage.setItem('video2mp3.token', 'refused.token.value')")
    tab.page.reload()  # the page reads its tokens when it starts
    wait_for("the list to load after renewing", lambda: tab.calls("/v1/jobs?")[-1:] == [200], timeout=15)
    assert tab.calls("/v1/jobs?")[-2:] == [401, 200]
    assert len(tab.calls("/v1/sessions:refresh")) == before + 1
    assert tab.storage("token").count(".") == 2
    assert tab.page.locator("#auth-view").is_hidden()
    assert tab.page.locator("#notice").is_hidden()


def test_log_out_ends_the_session_on_the_server(tab, mesh):
    base = mesh.rest_base_url
    tab.sign_up()
    access, refresh_token = tab.storage("token"), tab.storage("refresh")
    tab.page.get_by_role("button", name="Log out").click()
    tab.page.wait_for_selector("#auth-view:not([hidden])")
    assert tab.page.locator("#notice").text_content() == "You have logged out."
    assert tab.storage("token") == tab.storage("refresh") == ""
    assert tab.calls("/v1/sessions:revoke") == [200]
    r = refresh(base, refresh_token)
    assert r.status_code == 401
    assert r.json()["details"][0]["reason"] == "SESSION_REVOKED"
    me = requests.get(f"{base}/v1/me", headers={"Authorization": f"Bearer {access}"}, timeout=10)
    assert me.status_code == 401


def test_a_refresh_token_used_elsewhere_ends_the_pages_session(tab, mesh):
    base = mesh.rest_base_url
    tab.sign_up()
    stolen = tab.storage("refresh")
    assert refresh(base, stolen).status_code == 200  # a thief renews first
    # The page's next renewal presents the same (now spent) token: the server
    # ends the session, and the page says so.
    tab.page.evaluate("() => sessionStorage.setItem('video2mp3.token', 'refused.token.value')")
    tab.page.reload()
    tab.page.wait_for_selector("#auth-view:not([hidden])")
    assert "session was ended" in tab.page.locator("#notice").text_content()
    assert tab.storage("token") == ""
    tab.shot("22-session-reused")
