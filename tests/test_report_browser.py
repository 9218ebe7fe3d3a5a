"""The report in a real headless Chromium: no console errors, no network requests, every section present.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: the browser reads
NUL-terminated JSON commands on fd 3 and writes replies/events on fd 4), with the standard library only.
A negative control page (an external image and a console error) proves that the detectors see both.
The report of a real ``memlens run`` (tiny demo set, see ``_fake_run.real_run``) is checked the same way and
its full-page screenshot is written to ``<repo>/test-artifacts/report.png``; the fabricated run (escaping of
odd file names) to ``report-fake.png``.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _fake_run import WEIRD_IMAGE, make_fake_run, real_run

pytestmark = [pytest.mark.browser, pytest.mark.skipif(sys.platform != "linux", reason="pipe CDP driver is Linux-only")]

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome", "headless_shell")


def _find_chromium() -> str | None:
    env = os.environ.get("MEMLENS_CHROMIUM")
    if env:
        return env
    return next((p for p in (shutil.which(c) for c in CANDIDATES) if p), None)


class Browser:
    """A minimal DevTools-protocol client over the debugging pipe (standard library only)."""

    def __init__(self, exe: str, profile: Path, log_path: Path):
        to_chrome_r, to_chrome_w = os.pipe()
        from_chrome_r, from_chrome_w = os.pipe()
        # move the child's ends above fd 4 so that dup2 onto 3 and 4 cannot clobber them
        child_r = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)
        child_w = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
        os.close(to_chrome_r)
        os.close(from_chrome_w)

        def _pipes_to_3_and_4() -> None:  # runs in the child before exec
            os.dup2(child_r, 3)
            os.dup2(child_w, 4)

        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-extensions", "--disable-default-apps", "--mute-audio",
                 "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={profile}",
                 "--remote-debugging-pipe", "about:blank"]
        self.log = open(log_path, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen([exe, *flags], stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
                                     pass_fds=(3, 4), preexec_fn=_pipes_to_3_and_4)
        os.close(child_r)
        os.close(child_w)
        self.w, self.r = to_chrome_w, from_chrome_r
        self.buf = b""
        self.next_id = 0
        self.events: list[dict] = []

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no message from Chromium in time")
            ready, _, _ = select.select([self.r], [], [], left)
            if not ready:
                continue
            chunk = os.read(self.r, 1 << 20)
            if not chunk:
                raise EOFError("Chromium closed the debugging pipe")
            self.buf += chunk
        raw, self.buf = self.buf.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        self.next_id += 1
        msg: dict = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def wait_for(self, method: str, session: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        for ev in self.events:
            if ev["method"] == method and ev.get("sessionId") == session:
                return ev
        while True:
            ev = self._read_message(deadline)
            if "method" in ev:
                self.events.append(ev)
                if ev["method"] == method and ev.get("sessionId") == session:
                    return ev

    def open_page(self, width: int = 1280, height: int = 900) -> str:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=session)
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=session)
        return session

    def load(self, session: str, url: str, settle: float = 0.3) -> None:
        """Navigate and wait for the load event, then collect late events for ``settle`` seconds."""
        self.send("Page.navigate", {"url": url}, session=session)
        self.wait_for("Page.loadEventFired", session)
        self.evaluate(session, "1")
        end = time.monotonic() + settle
        while time.monotonic() < end:
            try:
                ev = self._read_message(end)
            except TimeoutError:
                break
            if "method" in ev:
                self.events.append(ev)

    def evaluate(self, session: str, expr: str):
        res = self.send("Runtime.evaluate", {"expression": expr, "returnByValue": True}, session=session)
        if "exceptionDetails" in res:
            raise RuntimeError(f"evaluate failed: {res['exceptionDetails']}")
        return res["result"].get("value")

    def problems(self, session: str) -> tuple[list[str], list[str]]:
        """(console errors and exceptions, network request URLs) seen by ``session``."""
        errors, requests = [], []
        for ev in self.events:
            if ev.get("sessionId") != session:
                continue
            m, p = ev["method"], ev.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert", "warning"):
                errors.append("console." + p["type"] + ": " + " ".join(str(a.get("value", a.get("description")))
                                                                        for a in p.get("args", [])))
            elif m == "Runtime.exceptionThrown":
                errors.append("exception: " + json.dumps(p.get("exceptionDetails", {}))[:300])
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") in ("error", "warning"):
                e = p["entry"]
                errors.append(f"log.{e.get('level')} ({e.get('source')}): {e.get('text')} {e.get('url', '')}")
            elif m == "Network.requestWillBeSent":
                requests.append(p["request"]["url"])
        return errors, requests

    def screenshot(self, session: str, path: Path, max_height: int = 24000) -> tuple[int, int]:
        metrics = self.send("Page.getLayoutMetrics", session=session)
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        width, height = 1280, int(min(max_height, max(900, size["height"])))
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=session)
        import base64

        data = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True},
                         session=session, timeout=60)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return width, height

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except (OSError, EOFError, TimeoutError, RuntimeError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for fd in (self.w, self.r):
            try:
                os.close(fd)
            except OSError:
                pass
        self.log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    exe = _find_chromium()
    if exe is None:
        pytest.skip("headless Chromium not found (install Debian's `chromium` package or set MEMLENS_CHROMIUM)")
    tmp = tmp_path_factory.mktemp("chromium")
    log_path = tmp / "chromium.log"
    b = Browser(exe, tmp / "profile", log_path)
    try:
        b.send("Browser.getVersion", timeout=60)
    except (EOFError, TimeoutError) as exc:
        b.close()
        pytest.fail(f"Chromium ({exe}) did not start: {exc}\n{log_path.read_text(errors='replace')[-2000:]}")
    yield b
    b.close()


def test_detectors_see_console_errors_and_requests(browser, tmp_path):
    """Negative control: a page with an external image and a console error is caught by both detectors."""
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><title>bad</title><img src="http://127.0.0.1:9/x.png">'
                    '<script>console.error("deliberate error")</script>')
    session = browser.open_page()
    browser.load(session, page.as_uri())
    errors, requests = browser.problems(session)
    assert any("deliberate error" in e for e in errors), errors
    assert "http://127.0.0.1:9/x.png" in requests, requests


def _check_page(browser: Browser, report: Path, min_images: int) -> str:
    """Load ``report``; assert no console errors, no requests, every section, decoded images. Returns the session."""
    from memlens.report import SECTION_IDS

    session = browser.open_page()
    browser.load(session, report.as_uri(), settle=0.5)

    errors, requests = browser.problems(session)
    assert errors == [], errors
    external = [u for u in requests if not (u.startswith("data:") or u == report.as_uri())]
    assert external == [], f"the report made requests: {external}"

    ids = browser.evaluate(session, "Array.from(document.querySelectorAll('section[id]')).map(s => s.id)")
    assert ids == list(SECTION_IDS)
    headings = browser.evaluate(session, "Array.from(document.querySelectorAll('section h2')).map(h => h.innerText)")
    assert all(h.strip() for h in headings)

    images = browser.evaluate(session, "Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
    assert len(images) > min_images
    assert all(done and width > 0 for done, width in images), "an inline image did not decode"
    assert browser.evaluate(session, "document.querySelectorAll('script').length") == 0
    # nothing overflows the page sideways at a laptop width
    assert browser.evaluate(session, "document.documentElement.scrollWidth <= window.innerWidth + 1")
    return session


def test_report_in_chromium(browser, tmp_path):
    fake = make_fake_run(tmp_path, n=60, simulated=True)
    from memlens.report import build_report

    report = build_report(fake.run)
    session = _check_page(browser, report, 20)
    text = browser.evaluate(session, "document.body.innerText")
    assert WEIRD_IMAGE in text  # the file name is shown as text ...
    assert not browser.evaluate(session, "Array.from(document.querySelectorAll('b')).some(b => b.textContent === 'x')")
    assert "Simulated scores" in text
    shot = ARTIFACTS / "report-fake.png"
    browser.screenshot(session, shot)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_real_run_report_in_chromium(browser, tmp_path_factory):
    """The report that `memlens run` wrote for a real (tiny) demo run; its screenshot is the test artefact."""
    t0 = time.monotonic()
    r = real_run(tmp_path_factory)
    t_run = time.monotonic() - t0
    report = r.run / "report.html"
    session = _check_page(browser, report, 40)
    text = browser.evaluate(session, "document.body.innerText")
    assert "Simulated scores" in text and "not computed" not in text
    # the thumbnails are the images themselves, shown at a readable size
    sizes = browser.evaluate(session, "Array.from(document.querySelectorAll('.thumb img')).map(i => i.width)")
    assert len(sizes) == 32 and min(sizes) >= 100
    shot = ARTIFACTS / "report.png"
    width, height = browser.screenshot(session, shot)
    assert shot.stat().st_size > 10_000
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"pipeline (if not shared) {t_run:.1f} s; checked in Chromium in {time.monotonic() - t0 - t_run:.1f} s; "
          f"screenshot {width}x{height} at {shot}")
