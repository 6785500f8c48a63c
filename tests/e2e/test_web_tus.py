"""The web page's resumable uploads (tus-js-client, web/tus.min.js) in Chromium:
a big file goes by tus, the network drops in the middle (the browser goes
offline), and the upload goes on from where the server says it got to once
the network is back. Drives Debian's Chromium like tests/e2e/test_web.py."""
from __future__ import annotations

from pathlib import Path

import pytest
import requests

from localmesh.processes import wait_for
from testkit.media import make_media
from testkit.tcp_proxy import TcpProxy
from tests.e2e.test_web import Page, browser  # noqa: F401 - the browser fixture

TUS_MIN_BYTES = 8 * 1024 * 1024  # web/app.js


@pytest.fixture(scope="module")
def big_video(tmp_path_factory) -> Path:
    path = Path(make_media(tmp_path_factory.mktemp("web-tus") / "festival.mp4", video_codec="h264", duration=20.0,
                           video_size=(640, 480), video_noise=80))
    assert path.stat().st_size > TUS_MIN_BYTES, path.stat().st_size
    return path


@pytest.fixture
def page(browser, mesh):  # noqa: F811 - the fixture imported above
    p = Page(browser, mesh.rest_base_url)
    yield p
    p.close()
    p.check_clean()


def test_a_big_upload_resumes_after_the_network_drops(browser, mesh, big_video):  # noqa: F811
    """The page is reached through a slowed-down TCP proxy; in the middle of the
    PATCH the proxy drops every connection and the browser goes offline for a
    moment. tus-js-client asks the server (HEAD) where it got to and sends the rest."""
    size = big_video.stat().st_size
    host, port = mesh.rest_base_url.removeprefix("http://").split(":")
    with TcpProxy(host, int(port)) as proxy:
        page = Page(browser, f"http://127.0.0.1:{proxy.port}")
        try:
            methods: list[tuple[str, str]] = []
            page.page.on("request", lambda r: methods.append((r.method, r.url)) if "/v1/uploads" in r.url else None)
            page.sign_up()
            proxy.rate = 3e6  # the upload lasts long enough to be cut
            page.drop([big_video])
            row = page.row(big_video.name)
            wait_for("a fifth of the upload sent",
                     lambda: int(row.locator("progress").get_attribute("value") or 0) >= 20, timeout=60, interval=0.05)
            assert "resumable" in row.locator(".job-meta").inner_text()
            page.context.set_offline(True)
            proxy.cut()
            page.page.wait_for_timeout(2000)
            page.shot("tus-offline")
            proxy.rate = None
            proxy.restore()
            page.context.set_offline(False)
            page.wait_state(big_video.name, "JOB_STATE_DONE", timeout=120)
            page.shot("tus-resumed-done")
            # It resumed: asked the server where it got to, and did not start again.
            kinds = [m for m, _ in methods]
            assert kinds.count("POST") == 1, methods
            assert "HEAD" in kinds, methods
            assert len({u for m, u in methods if m in ("PATCH", "HEAD")}) == 1  # one upload, one URL
            job_id = next(u for m, u in methods if m == "PATCH").rstrip("/").rsplit("/", 1)[-1]
            job = requests.get(f"{mesh.rest_base_url}/v1/jobs/{job_id}",
                               headers={"Authorization": f"Bearer {page.token}"}, timeout=10).json()
            assert (job["state"], job["video_size_bytes"], job["filename"]) == (
                "JOB_STATE_DONE", str(size), big_video.name)
            page.page.wait_for_selector(f"li.job[data-job-id='{job_id}'] audio", timeout=60)
        finally:
            page.close()
        page.check_clean()


def test_cancel_terminates_the_upload(page, mesh, big_video):
    methods: list[tuple[str, str]] = []
    page.page.on("request", lambda r: methods.append((r.method, r.url)) if "/v1/uploads" in r.url else None)
    page.sign_up()
    page.throttle_upload(1_000_000)
    page.drop([big_video])
    row = page.row(big_video.name)
    wait_for("some of the upload sent", lambda: int(row.locator("progress").get_attribute("value") or 0) >= 5,
             timeout=60, interval=0.05)
    row.get_by_role("button", name=f"Cancel: {big_video.name}").click()
    page.wait_state(big_video.name, "CANCELLED", timeout=10)
    wait_for("the DELETE", lambda: any(m == "DELETE" for m, _ in methods), timeout=10)
    url = next(u for m, u in methods if m == "DELETE")
    wait_for("the upload gone", lambda: requests.head(url, headers={
        "Authorization": f"Bearer {page.token}", "Tus-Resumable": "1.0.0"}, timeout=10).status_code == 404,
        timeout=15)
