"""Open an HTML file in headless Chromium and report what happened, with the standard library only.

Chromium is driven through the DevTools protocol over ``--remote-debugging-pipe`` (fd 3: commands
in, fd 4: replies and events out, each JSON message ended by a NUL byte): no websocket client,
no port, no extra package. :func:`open_page` loads the page, collects console errors, uncaught
exceptions, log errors, dialogs (``alert``) and network requests, runs a probe expression in
the page, and saves a screenshot.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-dev-shm-usage", "--mute-audio",
         "--hide-scrollbars", "--remote-debugging-pipe"]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageResult:
    errors: list[str] = field(default_factory=list)  # console errors, exceptions, log errors
    warnings: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)  # alert/confirm/prompt messages
    requests: list[str] = field(default_factory=list)  # every URL the page requested, but data:
    probe: Any = None  # the value of the probe expression
    screenshot: Path | None = None


class _Pipe:
    def __init__(self, proc: subprocess.Popen, to_browser: int, from_browser: int) -> None:
        self.proc, self.out, self.inp = proc, to_browser, from_browser
        self.next_id = 0
        self._dialogs = 0
        self._write_lock = threading.Lock()
        self.events: queue.Queue = queue.Queue()
        self.replies: dict[int, dict[str, Any]] = {}
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self.inp, 1 << 20)
            except OSError:
                chunk = b""
            if not chunk:
                with self.cond:
                    self.replies[-1] = {"closed": True}
                    self.cond.notify_all()
                return
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "id" in msg:
                    with self.cond:
                        self.replies[msg["id"]] = msg
                        self.cond.notify_all()
                else:
                    if msg.get("method") == "Page.javascriptDialogOpening":
                        # answer at once, here: an open alert() blocks every other command
                        self._dialogs += 1
                        self._write({"id": 10**9 + self._dialogs,
                                     "sessionId": msg.get("sessionId"),
                                     "method": "Page.handleJavaScriptDialog",
                                     "params": {"accept": True}})
                    self.events.put(msg)

    def _write(self, msg: dict[str, Any]) -> None:
        data = json.dumps(msg).encode() + b"\0"
        with self._write_lock:
            while data:
                data = data[os.write(self.out, data):]

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 60) -> dict[str, Any]:
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self._write(msg)
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.next_id not in self.replies:
                if -1 in self.replies:
                    raise RuntimeError(f"chromium closed the pipe during {method}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no reply to {method} in {timeout}s")
                self.cond.wait(left)
            reply = self.replies.pop(self.next_id)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})


def _high(fd: int) -> int:
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 20)
    os.close(fd)
    return high


def _describe(args: list[dict[str, Any]]) -> str:
    return " ".join(str(a.get("value", a.get("description", a.get("type")))) for a in args)


def open_page(html_file: Path, probe: str, screenshot: Path, ready: str = "true",
              width: int = 1280, height: int = 900, timeout: float = 120,
              full_page: bool = True, chromium: str | None = None) -> PageResult:
    """Load ``html_file``; wait until ``ready`` is true; evaluate ``probe``; screenshot it."""
    binary = chromium or find_chromium()
    if binary is None:
        raise FileNotFoundError("no chromium on PATH")
    result = PageResult()
    profile = tempfile.mkdtemp(prefix="kdtune-chromium-")
    to_r, to_w = os.pipe()  # we write commands, chromium reads them on its fd 3
    from_r, from_w = os.pipe()  # chromium writes on its fd 4, we read
    # chromium's ends move to fds >= 20 first, so that putting them on 3 and 4 clobbers nothing
    to_r, from_w = _high(to_r), _high(from_w)
    cmd = [binary, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
           "about:blank"]
    def on_fds_3_and_4() -> None:  # in the child, before exec: chromium's ends on fds 3 and 4
        os.dup2(to_r, 3)
        os.dup2(from_w, 4)

    # close_fds=False keeps 3 and 4; every other fd Python opened is close-on-exec anyway
    proc = subprocess.Popen(cmd, preexec_fn=on_fds_3_and_4, close_fds=False,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    os.close(to_r)
    os.close(from_w)
    pipe = _Pipe(proc, to_w, from_r)
    try:
        target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            pipe.send(f"{domain}.enable", session=session)
        pipe.send("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session=session)
        pipe.send("Page.navigate", {"url": Path(html_file).resolve().as_uri()}, session=session)
        deadline = time.monotonic() + timeout
        loaded = False
        while time.monotonic() < deadline:
            _drain(pipe, result, block=0.2)
            value = pipe.send("Runtime.evaluate", {
                "expression": f"document.readyState === 'complete' && (!!({ready}) || 'loaded')",
                "returnByValue": True}, session=session)
            state = value.get("result", {}).get("value")
            # ready, or loaded with errors already (a broken page may never get ready)
            if state is True or (state == "loaded" and result.errors):
                loaded = True
                break
        if not loaded:
            raise TimeoutError(f"{html_file} did not get ready in {timeout}s")
        time.sleep(0.5)  # let late errors (timers, resize handlers) arrive
        reply = pipe.send("Runtime.evaluate", {"expression": probe, "returnByValue": True,
                                               "awaitPromise": True}, session=session)
        if "exceptionDetails" in reply:
            raise RuntimeError(f"probe failed: {reply['exceptionDetails']}")
        result.probe = reply["result"].get("value")
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = pipe.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
            params |= {"captureBeyondViewport": True, "clip": {
                "x": 0, "y": 0, "width": width, "height": min(int(size["height"]), 16000),
                "scale": 1}}
        shot = pipe.send("Page.captureScreenshot", params, session=session)
        screenshot = Path(screenshot)
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        result.screenshot = screenshot
        _drain(pipe, result, block=0.2)
        try:
            pipe.send("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError):
            pass
    finally:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        os.close(to_w)
        os.close(from_r)
        shutil.rmtree(profile, ignore_errors=True)
    return result


def _drain(pipe: _Pipe, result: PageResult, block: float) -> None:
    end = time.monotonic() + block
    while True:
        try:
            msg = pipe.events.get(timeout=max(0.0, end - time.monotonic()))
        except queue.Empty:
            return
        method, params = msg.get("method", ""), msg.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = f"console.{params['type']}: {_describe(params.get('args', []))}"
            if params["type"] in ("error", "assert"):
                result.errors.append(text)
            elif params["type"] in ("warning", "trace"):  # plotly warns through trace
                result.warnings.append(text)
        elif method == "Runtime.exceptionThrown":
            d = params["exceptionDetails"]
            result.errors.append("uncaught: " + str(d.get("exception", {}).get("description")
                                                    or d.get("text")))
        elif method == "Log.entryAdded":
            entry = params["entry"]
            if entry["level"] == "error":
                result.errors.append(f"log ({entry.get('source')}): {entry.get('text')} "
                                     f"{entry.get('url', '')}".strip())
        elif method == "Network.requestWillBeSent":
            url = params["request"]["url"]
            # Chromium 156 reports inline data: images as requests; they never leave the page
            if not url.startswith("data:"):
                result.requests.append(url)
        elif method == "Page.javascriptDialogOpening":
            result.dialogs.append(params.get("message", ""))


# ----------------------------------------------------------------------------- kdtune reports

REPORT_READY = ("Array.from(document.querySelectorAll('.plotly-graph-div'))"
                ".every(d => d._fullLayout && d.querySelector('.main-svg'))")

# per figure: traces plotly drew from, how many data points the visible ones hold, how many
# SVG marks (markers, lines, bars, boxes, contour fills) ended up on the page
REPORT_PROBE = r"""(() => {
 const len = a => (a && a.length) || 0;
 const figs = Array.from(document.querySelectorAll('.plotly-graph-div')).map(d => {
  const visible = (d._fullData || []).filter(t => t.visible === true);
  return {id: d.id, title: ((d._fullLayout || {}).title || {}).text || '',
   traces: visible.length,
   points: visible.reduce((n, t) => n + Math.max(len(t.x), len(t.y), len(t.z)), 0),
   marks: d.querySelectorAll('.cartesianlayer .trace path, .cartesianlayer .trace .point,'
                             + ' .contourlayer path').length,
   svg: d.querySelectorAll('.main-svg').length};
 });
 return {figures: figs, imgs: document.querySelectorAll('img').length,
         text: document.body.innerText,
         sections: Array.from(document.querySelectorAll('section h2')).map(h => h.textContent)};
})()"""


def sort_probe(table_selector: str, header: str) -> str:
    """JS: click ``header`` of the table, return that column's cell texts, top to bottom."""
    sel, head = json.dumps(table_selector), json.dumps(header)
    return (f"(() => {{const t = document.querySelector({sel});"
            " const ths = Array.from(t.tHead.rows[0].cells);"
            f" const i = ths.findIndex(th => th.textContent === {head}); ths[i].click();"
            " return Array.from(t.tBodies[0].rows).map(r => r.cells[i].textContent);})()")


def check_in_browser(html: Path, screenshot: Path, extra: str = "null") -> dict:
    """Open ``html``; assert what every report must satisfy; return the probe's findings."""
    result = open_page(html, f"({{report: {REPORT_PROBE}, extra: {extra}}})", screenshot,
                       ready=REPORT_READY)
    print(f"screenshot: {result.screenshot}")
    assert result.errors == [], result.errors
    assert result.warnings == [], result.warnings  # plotly reports bad figures as warnings
    assert result.dialogs == [], result.dialogs
    assert result.requests == [html.resolve().as_uri()], result.requests  # offline
    report = result.probe["report"]
    page = html.read_text()
    assert len(report["figures"]) == page.count("class='plotly-graph-div'") > 0
    for fig in report["figures"]:
        assert fig["svg"] >= 1, fig  # rendered
        assert fig["traces"] >= 1 and fig["points"] >= 1, fig  # with data
        assert fig["marks"] >= 1, fig  # drawn
    assert report["imgs"] == 0
    png = Path(result.screenshot).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000
    return {"report": report, "extra": result.probe["extra"]}
